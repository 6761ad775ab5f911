// Command tour walks through etcdkit's capabilities, one chapter at a time,
// injecting a fault wherever a capability is about surviving one.
//
// By default it starts an embedded three-member etcd cluster on 127.0.0.1,
// each member behind a fault-injection proxy, so it needs nothing installed:
//
//	go run ./examples/tour
//
// With -endpoints it runs against an existing cluster instead, under a fresh
// namespace, and narrates the fault chapters without injecting faults.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// chapter is one section of the tour. Chapters register themselves from
// their own files with register, and run in order.
type chapter struct {
	order int
	title string
	run   func(ctx context.Context, tr *tour) error
}

var chapters []chapter

// register adds a chapter to the tour.
func register(order int, title string, run func(ctx context.Context, tr *tour) error) {
	chapters = append(chapters, chapter{order: order, title: title, run: run})
}

// tour is what every chapter gets: where the cluster is, how to reach it
// through the faulty path and directly, and how to narrate.
type tour struct {
	out io.Writer
	// ns is a namespace unique to this run, so a run against a real cluster
	// never touches anyone's keys.
	ns string
	// cluster is the embedded cluster, with a proxy in front of each member;
	// nil when running against -endpoints (then no faults are injected).
	cluster *etcdtest.Cluster
	// endpoints are what the tour's clients use: the proxies when embedded.
	endpoints []string
	// direct are endpoints that bypass the proxies, for "another client
	// elsewhere" whose link is never cut.
	direct []string

	mu      sync.Mutex
	clients []*etcdkit.Client
}

// say narrates one sentence.
func (tr *tour) say(format string, args ...any) {
	fmt.Fprintf(tr.out, "  "+format+"\n", args...)
}

// client returns a new client on the faulty path (through the proxies),
// under the tour's namespace. It is closed when the tour ends.
func (tr *tour) client(ctx context.Context) (*etcdkit.Client, error) {
	return tr.dial(ctx, tr.endpoints)
}

// directClient returns a new client that bypasses the proxies.
func (tr *tour) directClient(ctx context.Context) (*etcdkit.Client, error) {
	return tr.dial(ctx, tr.direct)
}

func (tr *tour) dial(ctx context.Context, endpoints []string) (*etcdkit.Client, error) {
	c, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: endpoints, Namespace: tr.ns})
	if err != nil {
		return nil, err
	}
	tr.mu.Lock()
	tr.clients = append(tr.clients, c)
	tr.mu.Unlock()
	return c, nil
}

// faults reports whether the tour can inject faults (embedded cluster).
func (tr *tour) faults() bool { return tr.cluster != nil }

func (tr *tour) close() {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, c := range tr.clients {
		_ = c.Close()
	}
	tr.clients = nil
}

func main() {
	endpoints := flag.String("endpoints", "", "comma-separated etcd endpoints; empty starts an embedded 3-member cluster")
	timeout := flag.Duration("timeout", 2*time.Minute, "give up after this long")
	flag.Parse()
	if err := run(*endpoints, *timeout, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "tour:", err)
		os.Exit(1)
	}
}

func run(endpoints string, timeout time.Duration, out io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()

	tr := &tour{out: out, ns: fmt.Sprintf("etcdkit-tour-%d", time.Now().UnixNano())}
	defer tr.close()
	if endpoints == "" {
		fmt.Fprintln(out, "Starting an embedded 3-member etcd cluster on 127.0.0.1, each member behind a fault-injection proxy...")
		cl, err := etcdtest.NewCluster(3, etcdtest.WithProxy())
		if err != nil {
			return fmt.Errorf("embedded cluster: %w", err)
		}
		defer cl.Close()
		tr.cluster = cl
		tr.endpoints = cl.Endpoints()
		tr.direct = cl.DirectEndpoints()
	} else {
		tr.endpoints = strings.Split(endpoints, ",")
		tr.direct = tr.endpoints
		fmt.Fprintf(out, "Using the cluster at %s under namespace %q; faults are narrated, not injected.\n", endpoints, tr.ns)
	}

	slices.SortFunc(chapters, func(a, b chapter) int { return a.order - b.order })
	for i, ch := range chapters {
		fmt.Fprintf(out, "\n%d. %s\n", i+1, ch.title)
		if err := ch.run(ctx, tr); err != nil {
			return fmt.Errorf("chapter %q: %w", ch.title, err)
		}
	}
	if endpoints != "" {
		// Leave a real cluster as we found it.
		if c, err := tr.directClient(ctx); err == nil {
			_, _ = c.Raw().Delete(ctx, tr.ns+"/", clientv3.WithPrefix())
		}
	}
	fmt.Fprintf(out, "\nTour finished in %.1fs.\n", time.Since(start).Seconds())
	return nil
}
