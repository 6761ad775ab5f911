// Command election runs a few workers that share one job through a leader
// election: whichever leads does the job, with every write guarded by its
// fencing token, and hands over after a term; the others wait in line. A
// third party observes who leads.
//
// By default it starts an embedded etcd member on 127.0.0.1, so it needs
// nothing installed:
//
//	go run ./examples/election
//
// With -endpoints it runs against an existing cluster, under a fresh
// namespace that it deletes on the way out. It exits after -duration.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// Progress is what the leader records as it works.
type Progress struct {
	Leader string `json:"leader"`
	Token  int64  `json:"token"`
	Step   int    `json:"step"`
}

func main() {
	endpoints := flag.String("endpoints", "", "comma-separated etcd endpoints; empty starts an embedded member")
	workers := flag.Int("workers", 3, "number of workers campaigning")
	duration := flag.Duration("duration", 8*time.Second, "exit after this long")
	ttl := flag.Duration("ttl", 2*time.Second, "TTL of the candidates' leases, whole seconds")
	term := flag.Duration("term", 1500*time.Millisecond, "how long a leader works before handing over")
	flag.Parse()
	if err := run(*endpoints, *workers, *duration, *ttl, *term, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "election:", err)
		os.Exit(1)
	}
}

func run(endpoints string, workers int, duration, ttl, term time.Duration, out io.Writer) error {
	if workers < 1 {
		return errors.New("-workers must be at least 1")
	}
	var eps []string
	if endpoints == "" {
		fmt.Fprintln(out, "Starting an embedded etcd member on 127.0.0.1...")
		srv, err := etcdtest.New()
		if err != nil {
			return fmt.Errorf("embedded etcd: %w", err)
		}
		defer srv.Close()
		eps = []string{srv.Endpoint()}
	} else {
		eps = strings.Split(endpoints, ",")
	}
	ns := fmt.Sprintf("etcdkit-election-%d", time.Now().UnixNano())

	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	dial := func() (*etcdkit.Client, error) {
		dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer dcancel()
		return etcdkit.New(dctx, etcdkit.Config{Endpoints: eps, Namespace: ns})
	}
	admin, err := dial()
	if err != nil {
		return err
	}
	defer admin.Close()
	if endpoints != "" {
		defer func() {
			dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer dcancel()
			_, _ = admin.Raw().Delete(dctx, ns+"/", clientv3.WithPrefix())
		}()
	}

	const name = "report-generator"
	var (
		printMu sync.Mutex
		wg      sync.WaitGroup
	)
	say := func(format string, args ...any) {
		printMu.Lock()
		defer printMu.Unlock()
		fmt.Fprintf(out, format+"\n", args...)
	}

	// The observer: every change of leader, "no leader" included.
	wg.Add(1)
	go func() {
		defer wg.Done()
		obs := etcdkit.NewElection(admin, name, ttl).Observe(ctx)
		defer obs.Close()
		for li := range obs.Updates() {
			say("observer: %v", li)
		}
		if ctx.Err() == nil {
			say("observer: ended: %v", obs.Err())
		}
	}()

	errs := make([]error, workers)
	for i := range workers {
		c, err := dial()
		if err != nil {
			cancel()
			wg.Wait()
			return err
		}
		defer c.Close()
		id := fmt.Sprintf("worker-%d", i+1)
		e := etcdkit.NewElection(c, name, ttl)
		progress := etcdkit.NewKey(c, "report/progress", etcdkit.JSON[Progress]())
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = e.Run(ctx, id, func(lctx context.Context) error {
				return work(lctx, id, progress, term, say)
			})
		}()
	}
	wg.Wait()

	for i, err := range errs {
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("worker-%d: %w", i+1, err)
		}
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer rcancel()
	v, err := etcdkit.NewKey(admin, "report/progress", etcdkit.JSON[Progress]()).Get(rctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "Done after %v: last progress %+v.\n", duration, v.Data)
	return nil
}

// work is one term of leadership: a step every 250ms, each written with
// GuardedPut, until the term is over (then Run hands over) or leadership is
// lost.
func work(ctx context.Context, id string, progress *etcdkit.Key[Progress], term time.Duration, say func(string, ...any)) error {
	l := etcdkit.LeadershipFrom(ctx)
	say("%s: leading with token %d", id, l.Token())
	end := time.NewTimer(term)
	defer end.Stop()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for step := 1; ; step++ {
		select {
		case <-ctx.Done():
			say("%s: no longer leader: %v", id, context.Cause(ctx))
			return ctx.Err()
		case <-end.C:
			say("%s: term over, handing over", id)
			return nil
		case <-tick.C:
		}
		rev, err := etcdkit.GuardedPut(ctx, l, progress, Progress{Leader: id, Token: l.Token(), Step: step})
		if err != nil {
			say("%s: step %d not recorded: %v", id, step, err)
			continue
		}
		say("%s: step %d recorded at revision %d", id, step, rev)
	}
}
