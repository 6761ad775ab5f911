// Command health serves an etcd cluster's readiness on 127.0.0.1 and prints
// every change of its health.
//
// By default it starts an embedded three-member cluster, each member behind
// a fault-injection proxy, and stops one member a third of the way through
// the run and restarts it at two thirds, so that the status goes from
// healthy to degraded and back:
//
//	go run ./examples/health
//
// With -endpoints it watches an existing cluster and injects nothing. The
// readiness endpoint is /readyz (200 when healthy or degraded, 503 when
// unhealthy, with the JSON of the latest check) and the library's metrics,
// health_status among them, are on /metrics. It exits after -duration, or
// on interrupt with -duration 0.
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
	"os/signal"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/metrics/prom"
)

func main() {
	endpoints := flag.String("endpoints", "", "comma-separated etcd endpoints; empty starts an embedded 3-member cluster")
	port := flag.Int("port", 0, "port on 127.0.0.1 to serve /readyz and /metrics on; 0 picks a free one")
	duration := flag.Duration("duration", 10*time.Second, "exit after this long; 0 runs until interrupted")
	interval := flag.Duration("interval", 500*time.Millisecond, "time between two health checks")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	if err := run(ctx, *endpoints, *port, *duration, *interval, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "health:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, endpoints string, port int, duration, interval time.Duration, out io.Writer) error {
	var cluster *etcdtest.Cluster
	var eps []string
	if endpoints == "" {
		fmt.Fprintln(out, "Starting an embedded 3-member etcd cluster on 127.0.0.1...")
		cl, err := etcdtest.NewCluster(3, etcdtest.WithProxy())
		if err != nil {
			return fmt.Errorf("embedded cluster: %w", err)
		}
		defer cl.Close()
		cluster, eps = cl, cl.Endpoints()
	} else {
		eps = strings.Split(endpoints, ",")
	}

	reg := prometheus.NewRegistry()
	metrics, err := prom.New(reg)
	if err != nil {
		return err
	}
	c, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: eps, Metrics: metrics})
	if err != nil {
		return err
	}
	defer c.Close()
	hm := etcdkit.NewHealthMonitor(c, etcdkit.WithInterval(interval))
	defer hm.Close()

	mux := http.NewServeMux()
	mux.Handle("/readyz", hm)
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
		<-served
	}()
	base := "http://" + ln.Addr().String()
	fmt.Fprintf(out, "Serving %s/readyz and %s/metrics\n", base, base)

	if cluster != nil && duration > 0 {
		injected := make(chan struct{})
		go func() {
			defer close(injected)
			injectFault(ctx, cluster, duration, out)
		}()
		// The cluster must outlive a restart in progress.
		defer func() { <-injected }()
	}

	start := time.Now()
	for {
		select {
		case h, ok := <-hm.Updates():
			if !ok {
				return hm.Err()
			}
			code := readiness(ctx, base+"/readyz")
			fmt.Fprintf(out, "%6.1fs  %-9v readyz %d  leader %s", time.Since(start).Seconds(), h.Status, code, h.LeaderName)
			if len(h.Reasons) > 0 {
				fmt.Fprintf(out, "  %s", strings.Join(h.Reasons, "; "))
			}
			fmt.Fprintln(out)
		case <-ctx.Done():
			fmt.Fprintln(out, "Done.")
			return nil
		}
	}
}

// injectFault stops a member that does not lead a third of the way through
// the run and restarts it at two thirds.
func injectFault(ctx context.Context, cl *etcdtest.Cluster, duration time.Duration, out io.Writer) {
	lead := cl.Leader()
	victim := cl.Members()[0]
	for _, m := range cl.Members() {
		if m != lead {
			victim = m
			break
		}
	}
	select {
	case <-time.After(duration / 3):
	case <-ctx.Done():
		return
	}
	fmt.Fprintf(out, "        stopping member %s\n", victim.Name())
	victim.Stop()
	select {
	case <-time.After(duration / 3):
	case <-ctx.Done():
		return
	}
	fmt.Fprintf(out, "        restarting member %s\n", victim.Name())
	if err := victim.Restart(); err != nil && !errors.Is(err, etcdtest.ErrClosed) {
		fmt.Fprintf(out, "        restart failed: %v\n", err)
	}
}

// readiness GETs url as a readiness probe would and returns the status code,
// or 0 if the request failed.
func readiness(ctx context.Context, url string) int {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}
