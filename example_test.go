package etcdkit_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// exampleEtcd starts an embedded etcd member for an example. A real program
// passes its cluster's endpoints instead.
func exampleEtcd() (endpoint string, stop func()) {
	srv, err := etcdtest.New()
	if err != nil {
		log.Fatal(err)
	}
	return srv.Endpoint(), srv.Close
}

// exampleClient starts an embedded etcd member and connects a client to it
// under namespace ns; stop closes both.
func exampleClient(ns string) (c *etcdkit.Client, stop func()) {
	endpoint, stopEtcd := exampleEtcd()
	c, err := etcdkit.New(context.Background(), etcdkit.Config{Endpoints: []string{endpoint}, Namespace: ns})
	if err != nil {
		stopEtcd()
		log.Fatal(err)
	}
	return c, func() { _ = c.Close(); stopEtcd() }
}

func ExampleNew() {
	endpoint, stop := exampleEtcd()
	defer stop()
	ctx := context.Background()

	c, err := etcdkit.New(ctx, etcdkit.Config{
		Endpoints: []string{endpoint},
		Namespace: "billing", // every key of c lives under billing/
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	fmt.Println(c.Namespace())
	// Output: billing
}

func ExampleKey() {
	c, stop := exampleClient("billing")
	defer stop()
	ctx := context.Background()

	type Limits struct {
		MaxConns int `json:"max_conns"`
	}
	limits := etcdkit.NewKey(c, "config/limits", etcdkit.JSON[Limits]())

	if _, err := limits.Create(ctx, Limits{MaxConns: 100}); err != nil {
		log.Fatal(err)
	}
	if _, err := limits.Create(ctx, Limits{MaxConns: 1}); errors.Is(err, etcdkit.ErrExists) {
		fmt.Println("already configured")
	}
	v, err := limits.Update(ctx, func(cur Limits, exists bool) (Limits, error) {
		cur.MaxConns *= 2
		return cur, nil
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(v.Data.MaxConns, v.Version)

	// A stale compare-and-swap learns the current value from the error.
	_, err = limits.CompareAndSwap(ctx, Limits{MaxConns: 7}, v.Revision-1)
	var conflict *etcdkit.ConflictError[Limits]
	if errors.As(err, &conflict) {
		fmt.Println("conflict, current:", conflict.Current.Data.MaxConns)
	}
	// Output:
	// already configured
	// 200 2
	// conflict, current: 200
}

func ExamplePrefix() {
	c, stop := exampleClient("")
	defer stop()
	ctx := context.Background()

	flags := etcdkit.NewPrefix(c, "flags", etcdkit.JSON[bool]())
	for name, on := range map[string]bool{"search/v2": true, "dark-mode": false} {
		if _, err := flags.Key(name).Put(ctx, on); err != nil {
			log.Fatal(err)
		}
	}
	entries, _, err := flags.List(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range entries {
		fmt.Println(e.Name, e.Data)
	}
	// Output:
	// dark-mode false
	// search/v2 true
}

func ExampleKey_Watch() {
	c, stop := exampleClient("")
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	mode := etcdkit.NewKey(c, "config/mode", etcdkit.String())
	if _, err := mode.Put(ctx, "lenient"); err != nil {
		log.Fatal(err)
	}
	// The current value first, then every change, with no gap between them.
	// The watch starts in the background; Synced says its start is fixed.
	w := mode.Watch(ctx, etcdkit.WithInitial())
	defer w.Close()
	<-w.Synced()
	if _, err := mode.Put(ctx, "strict"); err != nil {
		log.Fatal(err)
	}
	if err := mode.Delete(ctx); err != nil {
		log.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		ev, ok := <-w.Events()
		if !ok {
			log.Fatal(w.Err())
		}
		fmt.Println(ev.Type, ev.Name, ev.Value, ev.Initial)
	}
	// Output:
	// Put config/mode lenient true
	// Put config/mode strict false
	// Delete config/mode  false
}

func ExamplePrefix_Cache() {
	c, stop := exampleClient("")
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	routes := etcdkit.NewPrefix(c, "routes", etcdkit.String())
	if _, err := routes.Key("/api").Put(ctx, "backend-a"); err == nil {
		log.Fatal("a name with a leading slash is refused")
	}
	if _, err := routes.Key("api").Put(ctx, "backend-a"); err != nil {
		log.Fatal(err)
	}
	cache, err := routes.Cache(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()
	<-cache.Synced()

	// Reads are served from memory.
	v, ok := cache.Get("api")
	fmt.Println(v.Data, ok)

	changes := cache.Subscribe()
	defer changes.Close()
	<-changes.Synced()
	if _, err := routes.Key("api").Put(ctx, "backend-b"); err != nil {
		log.Fatal(err)
	}
	ev := <-changes.Events()
	v, _ = cache.Get("api")
	fmt.Println(ev.Name, ev.Value, v.Data)
	// Output:
	// backend-a true
	// api backend-b backend-b
}

func ExampleClient_NewSession() {
	c, stop := exampleClient("")
	defer stop()
	ctx := context.Background()

	s, err := c.NewSession(ctx, 5*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(s.State(), s.TTL())
	// Close revokes the lease: every key attached to it goes at once.
	if err := s.Close(); err != nil {
		log.Fatal(err)
	}
	<-s.Done()
	fmt.Println(errors.Is(s.Err(), etcdkit.ErrClosed))
	// Output:
	// live 5s
	// true
}

func ExampleNewEphemeral() {
	c, stop := exampleClient("")
	defer stop()
	ctx := context.Background()

	presence := etcdkit.NewKey(c, "workers/w1", etcdkit.String())
	e, err := etcdkit.NewEphemeral(ctx, presence, "10.0.0.7:8080", 5*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	v, err := presence.Get(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(v.Data, v.Lease == int64(e.Lease()))

	// The key lives as long as its owner; Close removes it at once.
	if err := e.Close(); err != nil {
		log.Fatal(err)
	}
	_, err = presence.Get(ctx)
	fmt.Println(errors.Is(err, etcdkit.ErrNotFound))
	// Output:
	// 10.0.0.7:8080 true
	// true
}

func ExampleElection() {
	c, stop := exampleClient("")
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	e := etcdkit.NewElection(c, "billing-scheduler", 5*time.Second)
	lead, err := e.Campaign(ctx, "worker-1")
	if err != nil {
		log.Fatal(err)
	}
	info, err := e.Leader(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(info.ID, info.Token == lead.Token())

	// Writes guarded by the fencing token apply only while worker-1 still
	// leads; lead.Context() is cancelled before anyone else can win.
	job := etcdkit.NewKey(c, "jobs/nightly", etcdkit.String())
	if _, err := etcdkit.GuardedPut(lead.Context(), lead, job, "scheduled"); err != nil {
		log.Fatal(err)
	}
	if err := lead.Resign(ctx); err != nil {
		log.Fatal(err)
	}
	_, err = etcdkit.GuardedPut(ctx, lead, job, "late write")
	fmt.Println(errors.Is(err, etcdkit.ErrNotLeader))
	_, err = e.Leader(ctx)
	fmt.Println(errors.Is(err, etcdkit.ErrNoCandidate))
	// Output:
	// worker-1 true
	// true
	// true
}

func ExampleService() {
	c, stop := exampleClient("")
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	type NodeMeta struct {
		Zone string `json:"zone"`
	}
	svc := etcdkit.NewService(c, "search", etcdkit.JSON[NodeMeta]())
	tr, err := svc.Track(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()

	reg, err := svc.Register(ctx, etcdkit.Instance[NodeMeta]{ID: "node-1", Addr: "127.0.0.1:9001", Meta: NodeMeta{Zone: "a"}}, 5*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	// A second process claiming the same ID is refused.
	_, err = svc.Register(ctx, etcdkit.Instance[NodeMeta]{ID: "node-1", Addr: "127.0.0.1:9999"}, 5*time.Second)
	fmt.Println(errors.Is(err, etcdkit.ErrExists))

	for view := range tr.Updates() {
		if len(view) == 1 {
			fmt.Println(view[0].ID, view[0].Addr, view[0].Meta.Zone)
			break
		}
	}
	if err := reg.Close(); err != nil {
		log.Fatal(err)
	}
	for view := range tr.Updates() {
		if len(view) == 0 {
			fmt.Println("deregistered")
			break
		}
	}
	fmt.Println(svc.Target())
	// Output:
	// true
	// node-1 127.0.0.1:9001 a
	// deregistered
	// etcdkit:///search
}
