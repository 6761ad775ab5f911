// Command configwatch is a service that follows its typed runtime
// configuration in etcd: it applies the current value at start, then every
// change once, in order, even while its link to etcd is cut and the history
// it missed is compacted away.
//
// By default it starts an embedded etcd member on 127.0.0.1 behind a
// fault-injection proxy, plays an operator who changes the configuration,
// and cuts the service's link for a while:
//
//	go run ./examples/configwatch
//
// With -endpoints it watches an existing cluster (under -namespace) until
// -duration passes, printing every change; no faults are injected.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// Settings is the service's runtime configuration.
type Settings struct {
	RateLimit int    `json:"rate_limit"`
	LogLevel  string `json:"log_level"`
}

func main() {
	endpoints := flag.String("endpoints", "", "comma-separated etcd endpoints; empty starts an embedded member and a demo operator")
	namespace := flag.String("namespace", "configwatch", "namespace of the configuration key")
	duration := flag.Duration("duration", 20*time.Second, "exit after this long")
	flag.Parse()
	if err := run(*endpoints, *namespace, *duration, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "configwatch:", err)
		os.Exit(1)
	}
}

func run(endpoints, namespace string, duration time.Duration, out io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()

	if endpoints != "" {
		c, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: strings.Split(endpoints, ","), Namespace: namespace})
		if err != nil {
			return err
		}
		defer c.Close()
		w := etcdkit.NewKey(c, "settings", etcdkit.JSON[Settings]()).Watch(ctx, etcdkit.WithInitial())
		defer w.Close()
		for ev := range w.Events() {
			report(out, ev)
		}
		if errors.Is(w.Err(), context.DeadlineExceeded) {
			return nil
		}
		return w.Err()
	}

	fmt.Fprintln(out, "Starting an embedded etcd member on 127.0.0.1 behind a fault-injection proxy...")
	srv, err := etcdtest.New(etcdtest.WithProxy())
	if err != nil {
		return err
	}
	defer srv.Close()

	// The service reaches etcd through the proxy; the operator directly.
	svc, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()}, Namespace: namespace})
	if err != nil {
		return err
	}
	defer svc.Close()
	ops, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, Namespace: namespace})
	if err != nil {
		return err
	}
	defer ops.Close()
	settings := etcdkit.NewKey(ops, "settings", etcdkit.JSON[Settings]())
	if _, err := settings.Put(ctx, Settings{RateLimit: 100, LogLevel: "info"}); err != nil {
		return err
	}

	w := etcdkit.NewKey(svc, "settings", etcdkit.JSON[Settings]()).Watch(ctx, etcdkit.WithInitial())
	defer w.Close()
	next := func() error {
		ev, ok := <-w.Events()
		if !ok {
			return w.Err()
		}
		report(out, ev)
		return nil
	}
	if err := next(); err != nil {
		return err
	}

	fmt.Fprintln(out, "operator: rate_limit 200")
	if _, err := settings.Put(ctx, Settings{RateLimit: 200, LogLevel: "info"}); err != nil {
		return err
	}
	if err := next(); err != nil {
		return err
	}

	fmt.Fprintln(out, "network: the service's link goes silent (blackhole)")
	srv.Proxy().Blackhole(proxy.Both)
	for _, s := range []Settings{{RateLimit: 300, LogLevel: "info"}, {RateLimit: 300, LogLevel: "debug"}} {
		fmt.Fprintf(out, "operator: %+v\n", s)
		if _, err := settings.Put(ctx, s); err != nil {
			return err
		}
	}
	fmt.Fprintln(out, "network: the link heals")
	srv.Proxy().Unblackhole()
	for range 2 {
		if err := next(); err != nil {
			return err
		}
	}

	fmt.Fprintln(out, "network: the link is cut again, and etcd compacts the history the service has not seen")
	srv.Proxy().Stop()
	if _, err := settings.Put(ctx, Settings{RateLimit: 50, LogLevel: "warn"}); err != nil {
		return err
	}
	rev, err := settings.Put(ctx, Settings{RateLimit: 75, LogLevel: "warn"})
	if err != nil {
		return err
	}
	if _, err := ops.Raw().Compact(ctx, rev); err != nil {
		return err
	}
	if err := srv.Proxy().Start(); err != nil {
		return err
	}
	fmt.Fprintln(out, "network: the link is back")
	if err := next(); err != nil {
		return err
	}
	fmt.Fprintln(out, "The service saw every change once, in order, and skipped only what was compacted, as a Resync to the current value.")
	return nil
}

func report(out io.Writer, ev etcdkit.Event[Settings]) {
	switch {
	case ev.Err != nil:
		fmt.Fprintf(out, "service: revision %d does not decode, keeping the old settings: %v\n", ev.Revision, ev.Err)
	case ev.Type == etcdkit.Delete:
		fmt.Fprintf(out, "service: settings deleted at revision %d, keeping defaults\n", ev.Revision)
	default:
		how := "change"
		if ev.Initial {
			how = "initial value"
		} else if ev.Resync {
			how = "resync after compaction"
		}
		fmt.Fprintf(out, "service: applies %+v (%s, revision %d)\n", ev.Value, how, ev.Revision)
	}
}
