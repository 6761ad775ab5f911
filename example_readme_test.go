package etcdkit_test

import (
	"context"
	"errors"
	"log"
	"net/http"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/etcdkit/etcdkit"
)

// The functions in this file hold README code that needs a deployment an
// example cannot start (fixed addresses, a file under /var/lib): they are
// compiled, not run. TestREADMEExamplesCompile checks that the README shows
// them word for word; the runnable examples run the same calls against an
// embedded etcd.
var (
	_ = readmeLive
	_ = readmeDiscovery
	_ = readmeDegraded
)

// readmeLive is the README's Live quick start (ExampleNewLive runs it).
func readmeLive(ctx context.Context) error {
	c, err := etcdkit.New(ctx, etcdkit.Config{
		Endpoints:           []string{"127.0.0.1:2379"},
		Namespace:           "billing",
		StartWithoutCluster: true, // start, and serve the snapshot, while etcd is down
	})
	if err != nil {
		return err
	}
	defer c.Close()

	limits := etcdkit.NewLive(ctx, etcdkit.NewKey(c, "config/limits", etcdkit.JSON[Limits]()),
		etcdkit.WithDefault(DefaultLimits), // while the key is absent
		etcdkit.WithValidator(func(l Limits) error { // a bad value is never served
			if l.MaxConns <= 0 {
				return errors.New("max_conns must be positive")
			}
			return nil
		}),
		etcdkit.WithSnapshot[Limits]("/var/lib/billing/limits.snapshot")) // serve the last good value while etcd is down
	defer limits.Close()

	maxConns := limits.Get().MaxConns // on every request: one atomic load, no I/O
	log.Printf("max_conns: %d", maxConns)
	return nil
}

// readmeDiscovery is the README's discovery example (ExampleService runs
// its calls).
func readmeDiscovery(ctx context.Context, c *etcdkit.Client) error {
	type NodeMeta struct {
		Zone string `json:"zone"`
	}
	svc := etcdkit.NewService(c, "search", etcdkit.JSON[NodeMeta]())

	// An instance publishes itself for as long as it runs.
	reg, err := svc.Register(ctx, etcdkit.Instance[NodeMeta]{ID: "node-1", Addr: "127.0.0.1:9000", Meta: NodeMeta{Zone: "a"}}, 5*time.Second)
	if err != nil {
		return err
	}
	defer reg.Close() // deregisters at once

	// A gRPC client reaches its instances through the resolver...
	conn, err := grpc.NewClient(svc.Target(), // "etcdkit:///search"
		grpc.WithResolvers(c.ResolverBuilder()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()

	// ...and anyone can follow them.
	tr, err := svc.Track(ctx)
	if err != nil {
		return err
	}
	defer tr.Close()
	for view := range tr.Updates() { // the latest view, never a backlog
		log.Printf("search: %d instances", len(view))
	}
	return tr.Err()
}

// readmeDegraded is the README's "When etcd is down" example
// (TestServiceStartsAndRidesOutEtcdOutages runs the same parts).
func readmeDegraded(ctx context.Context, endpoints []string, snapshot, id, addr string,
	reprice func(context.Context, *etcdkit.Lock) error) error {
	c, err := etcdkit.New(ctx, etcdkit.Config{
		Endpoints:           endpoints,
		Namespace:           "pricing",
		StartWithoutCluster: true, // New returns at once; the client reaches the cluster in the background
	})
	if err != nil {
		return err // only a Config it cannot use
	}
	defer c.Close()

	limits := etcdkit.NewLive(ctx, etcdkit.NewKey(c, "limits", etcdkit.JSON[Limits]()),
		etcdkit.WithDefault(DefaultLimits), etcdkit.WithSnapshot[Limits](snapshot))
	defer limits.Close()

	// Ready while it serves a value, even a stale one; etcd's health is reported, not required.
	hm := etcdkit.NewHealthMonitor(c,
		etcdkit.WithClusterPolicy(etcdkit.ClusterInformational),
		etcdkit.WithReadiness("limits", etcdkit.LiveReadiness(limits, etcdkit.AllowStale(-1))))
	defer hm.Close()
	http.Handle("/readyz", hm)
	http.Handle("/livez", hm.Liveness()) // 200 whatever etcd's state

	// Registered once etcd answers, and again after every outage or lost lease.
	svc := etcdkit.NewService(c, "pricing", etcdkit.JSON[string]())
	go svc.Run(ctx, etcdkit.Instance[string]{ID: id, Addr: addr}, 10*time.Second, nil)

	// Run once, under the lock, whenever etcd lets it.
	go etcdkit.NewMutex(c, "reprice", 10*time.Second).Run(ctx, func(ctx context.Context, lk *etcdkit.Lock) error {
		return reprice(ctx, lk) // ctx ends if the lock is lost; GuardedPut(ctx, lk, ...) fences writes
	})
	<-ctx.Done()
	return nil
}
