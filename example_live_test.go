package etcdkit_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/etcdkit/etcdkit"
)

// followLiveLimits is the Live quick start of the README and the package
// documentation, as written there but for the endpoints and the snapshot
// path: keep the three in step.
func followLiveLimits(ctx context.Context, endpoints []string, snapshot string) (*etcdkit.Live[Limits], func(), error) {
	c, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: endpoints, Namespace: "billing"})
	if err != nil {
		return nil, nil, err
	}

	limits := etcdkit.NewLive(ctx, etcdkit.NewKey(c, "config/limits", etcdkit.JSON[Limits]()),
		etcdkit.WithDefault(DefaultLimits), // while the key is absent
		etcdkit.WithValidator(func(l Limits) error { // a bad value is never served
			if l.MaxConns <= 0 {
				return errors.New("max_conns must be positive")
			}
			return nil
		}),
		etcdkit.WithSnapshot[Limits](snapshot)) // serve the last good value while etcd is down
	return limits, func() { _ = limits.Close(); _ = c.Close() }, nil
}

// ExampleNewLive follows a configuration value while an operator writes a
// good value, one the validator refuses, and deletes it.
func ExampleNewLive() {
	endpoint, stop := exampleEtcd()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "example-live-*")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	limits, closeLive, err := followLiveLimits(ctx, []string{endpoint}, filepath.Join(dir, "limits.snapshot"))
	if err != nil {
		log.Fatal(err)
	}
	defer closeLive()
	<-limits.Synced()
	// On every request: no I/O, no lock.
	fmt.Println("absent:", limits.Get().MaxConns)

	ops, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: []string{endpoint}, Namespace: "billing"})
	if err != nil {
		log.Fatal(err)
	}
	defer ops.Close()
	key := etcdkit.NewKey(ops, "config/limits", etcdkit.JSON[Limits]())
	if _, err := key.Put(ctx, Limits{MaxConns: 200}); err != nil {
		log.Fatal(err)
	}
	ch := <-limits.Events()
	fmt.Println("changed:", ch.Old.MaxConns, "->", ch.New.MaxConns)

	bad, err := key.Put(ctx, Limits{MaxConns: -1})
	if err != nil {
		log.Fatal(err)
	}
	for r, _ := limits.Rejected(); r.Revision != bad; r, _ = limits.Rejected() {
		time.Sleep(time.Millisecond)
	}
	r, _ := limits.Rejected()
	fmt.Println("rejected:", errors.Unwrap(r.Err), "- still", limits.Get().MaxConns)

	if err := key.Delete(ctx); err != nil {
		log.Fatal(err)
	}
	ch = <-limits.Events()
	fmt.Println("deleted:", ch.Deleted, "- back to", limits.Get().MaxConns)
	// Output:
	// absent: 10
	// changed: 10 -> 200
	// rejected: max_conns must be positive - still 200
	// deleted: true - back to 10
}
