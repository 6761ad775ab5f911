// Command configwatch is a service that follows its typed runtime
// configuration in etcd with etcdkit.Live: it reads the current value on
// every request without waiting, keeps its last good value when someone
// writes a bad one, survives a silent link, and starts from its snapshot
// while etcd is down.
//
// By default it starts an embedded etcd member on 127.0.0.1 behind a
// fault-injection proxy, plays an operator who writes good and bad
// configuration, cuts the service's link, and restarts the service while
// the member is down:
//
//	go run ./examples/configwatch
//
// With -endpoints it follows an existing cluster (under -namespace) until
// -duration passes, printing every change and rejection; it starts even if
// the cluster is unreachable, from its snapshot (-snapshot).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// Settings is the service's runtime configuration.
type Settings struct {
	RateLimit int    `json:"rate_limit"`
	LogLevel  string `json:"log_level"`
}

// defaults is what the service runs with while the key is absent, and what
// fields a stored value leaves out take (MergeDefault).
var defaults = Settings{RateLimit: 10, LogLevel: "info"}

// validate refuses settings the service cannot run with.
func validate(s Settings) error {
	if s.RateLimit <= 0 {
		return fmt.Errorf("rate_limit %d must be positive", s.RateLimit)
	}
	switch s.LogLevel {
	case "debug", "info", "warn", "error":
		return nil
	}
	return fmt.Errorf("unknown log_level %q", s.LogLevel)
}

// follow is all the service needs: the typed key, a default, a validator
// and a snapshot file for cold starts.
func follow(ctx context.Context, c *etcdkit.Client, snapshot string) *etcdkit.Live[Settings] {
	return etcdkit.NewLive(ctx, etcdkit.NewKey(c, "settings", etcdkit.JSON[Settings]()),
		etcdkit.WithDefault(defaults), etcdkit.MergeDefault[Settings](),
		etcdkit.WithValidator(validate), etcdkit.WithSnapshot[Settings](snapshot))
}

// connect makes a client that does not wait for the cluster, so that the
// service starts (from its snapshot) even while etcd is down.
func connect(endpoints []string, namespace string) (*etcdkit.Client, func(), error) {
	c, err := etcdkit.New(context.Background(), etcdkit.Config{Endpoints: endpoints, Namespace: namespace,
		StallTimeout: time.Second, StartWithoutCluster: true, Logger: zap.NewNop()})
	if err != nil {
		return nil, nil, err
	}
	return c, func() { _ = c.Close() }, nil
}

// probes serves the service's readiness (/readyz) and liveness (/livez)
// on addr. The service serves its settings from its snapshot while etcd is
// down, so etcd's health is reported but does not take it out of
// rotation (ClusterInformational), and a stale value is still a value to
// serve (AllowStale(-1)); a value the cluster refuses to let it read does.
// Liveness never depends on etcd. It returns the address served and a
// function that stops serving.
func probes(c *etcdkit.Client, live *etcdkit.Live[Settings], addr string) (string, func(), error) {
	hm := etcdkit.NewHealthMonitor(c, etcdkit.WithClusterPolicy(etcdkit.ClusterInformational),
		etcdkit.WithReadiness("settings", etcdkit.LiveReadiness(live, etcdkit.AllowStale(-1))))
	mux := http.NewServeMux()
	mux.Handle("/readyz", hm)
	mux.Handle("/livez", hm.Liveness())
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		_ = hm.Close()
		return "", nil, err
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	return ln.Addr().String(), func() { _ = hs.Close(); _ = hm.Close() }, nil
}

// probe returns the status code of GET http://addr/path.
func probe(addr, path string) (int, error) {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return 0, err
	}
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

func main() {
	endpoints := flag.String("endpoints", "", "comma-separated etcd endpoints; empty starts an embedded member and a demo operator")
	namespace := flag.String("namespace", "configwatch", "namespace of the configuration key")
	snapshot := flag.String("snapshot", filepath.Join(os.TempDir(), "configwatch.snapshot"), "snapshot file for cold starts")
	duration := flag.Duration("duration", 20*time.Second, "exit after this long")
	httpAddr := flag.String("http", "", "with -endpoints, serve /readyz and /livez on this address, such as 127.0.0.1:8081")
	flag.Parse()
	var err error
	if *endpoints != "" {
		err = serve(strings.Split(*endpoints, ","), *namespace, *snapshot, *duration, *httpAddr, os.Stdout)
	} else {
		err = demo(*namespace, time.Minute, os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "configwatch:", err)
		os.Exit(1)
	}
}

// serve follows the settings of an existing cluster.
func serve(endpoints []string, namespace, snapshot string, duration time.Duration, httpAddr string, out io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	c, closeClient, err := connect(endpoints, namespace)
	if err != nil {
		return err
	}
	defer closeClient()
	live := follow(ctx, c, snapshot)
	defer live.Close()
	if httpAddr != "" {
		addr, stopProbes, err := probes(c, live, httpAddr)
		if err != nil {
			return err
		}
		defer stopProbes()
		fmt.Fprintf(out, "probes on http://%s/readyz and /livez\n", addr)
	}
	cur := live.Current()
	fmt.Fprintf(out, "serving %+v (from %v, stale %v)\n", cur.Data, cur.Source, live.Stale())
	var lastRejected int64
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case ch, ok := <-live.Events():
			if !ok {
				if errors.Is(live.Err(), context.DeadlineExceeded) {
					return nil
				}
				return live.Err()
			}
			fmt.Fprintf(out, "revision %d: %+v\n", ch.Revision, ch.New)
		case <-tick.C:
			if r, ok := live.Rejected(); ok && r.Revision != lastRejected {
				lastRejected = r.Revision
				fmt.Fprintf(out, "revision %d rejected, keeping %+v: %v\n", r.Revision, live.Get(), r.Err)
			}
		}
	}
}

// demo plays the whole story on an embedded member.
func demo(namespace string, timeout time.Duration, out io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	dir, err := os.MkdirTemp("", "configwatch-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	snapshot := filepath.Join(dir, "settings.snapshot")

	fmt.Fprintln(out, "Starting an embedded etcd member on 127.0.0.1 behind a fault-injection proxy...")
	srv, err := etcdtest.New(etcdtest.WithProxy())
	if err != nil {
		return err
	}
	defer srv.Close()
	// The operator writes raw bytes, as etcdctl would: nothing checks them
	// on the way in.
	op, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer op.Close()
	key := namespace + "/settings"
	write := func(v string) (int64, error) {
		fmt.Fprintf(out, "operator: writes %s\n", v)
		resp, err := op.Put(ctx, key, v)
		if err != nil {
			return 0, err
		}
		return resp.Header.Revision, nil
	}

	if _, err := write(`{"rate_limit":100,"log_level":"info"}`); err != nil {
		return err
	}
	c, closeClient, err := connect([]string{srv.ProxyEndpoint()}, namespace)
	if err != nil {
		return err
	}
	defer closeClient()
	live := follow(ctx, c, snapshot)
	defer live.Close()
	select {
	case <-live.Synced():
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := nextChange(ctx, out, live); err != nil {
		return err
	}

	for _, bad := range []string{`{"rate_limit":`, `{"rate_limit":-1}`} {
		rev, err := write(bad)
		if err != nil {
			return err
		}
		if err := await(ctx, func() bool { r, _ := live.Rejected(); return r.Revision == rev }); err != nil {
			return err
		}
		r, _ := live.Rejected()
		fmt.Fprintf(out, "service: rejects revision %d and keeps %+v: %v\n", rev, live.Get(), r.Err)
	}
	if _, err := write(`{"rate_limit":300}`); err != nil {
		return err
	}
	if err := nextChange(ctx, out, live); err != nil {
		return err
	}

	fmt.Fprintln(out, "network: the service's link goes silent (blackhole)")
	srv.Proxy().Blackhole(proxy.Both)
	if err := await(ctx, live.Stale); err != nil {
		return err
	}
	fmt.Fprintf(out, "service: notices the silence (Stale) and keeps serving %+v\n", live.Get())
	if _, err := write(`{"rate_limit":400,"log_level":"debug"}`); err != nil {
		return err
	}
	fmt.Fprintln(out, "network: the link heals")
	srv.Proxy().Unblackhole()
	if err := nextChange(ctx, out, live); err != nil {
		return err
	}
	if err := await(ctx, func() bool { return !live.Stale() }); err != nil {
		return err
	}

	fmt.Fprintln(out, "service: stops")
	_ = live.Close()
	closeClient()
	if _, err := write(`{"rate_limit":450,"log_level":"debug"}`); err != nil {
		return err
	}
	fmt.Fprintln(out, "etcd: the member stops")
	srv.Stop()
	c, closeClient, err = connect([]string{srv.ProxyEndpoint()}, namespace)
	if err != nil {
		return err
	}
	defer closeClient()
	start := time.Now()
	live = follow(ctx, c, snapshot)
	defer live.Close()
	cur := live.Current()
	fmt.Fprintf(out, "service: starts while etcd is down and serves %+v from its %v of revision %d (stale %v) after %v\n",
		cur.Data, cur.Source, cur.Revision, live.Stale(), time.Since(start).Round(time.Microsecond))
	addr, stopProbes, err := probes(c, live, "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer stopProbes()
	ready, err := probe(addr, "/readyz")
	if err != nil {
		return err
	}
	alive, err := probe(addr, "/livez")
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "service: stays in rotation while etcd is down: readiness %d, liveness %d\n", ready, alive)
	fmt.Fprintln(out, "etcd: the member starts again")
	if err := srv.Restart(); err != nil {
		return err
	}
	if err := nextChange(ctx, out, live); err != nil {
		return err
	}
	fmt.Fprintln(out, "The service never ran with a bad value, and never waited for etcd to serve a request.")
	return nil
}

// nextChange prints the next change of the served settings.
func nextChange(ctx context.Context, out io.Writer, live *etcdkit.Live[Settings]) error {
	select {
	case ch, ok := <-live.Events():
		if !ok {
			return live.Err()
		}
		fmt.Fprintf(out, "service: applies %+v (revision %d)\n", ch.New, ch.Revision)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// await polls cond, as a health endpoint would, until it holds.
func await(ctx context.Context, cond func() bool) error {
	for !cond() {
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
