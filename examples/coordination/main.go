// Command coordination shows etcdkit's coordination recipes at work. First
// three instances of a service start at once and each wants to run the
// schema migration: a Mutex lets one run it, and the result and a history
// entry are written in one transaction guarded by the lock, so that a
// holder cut off mid-way could not write them late. Then five reindexers
// share a Semaphore of two permits, so at most two run at any moment.
//
// By default it starts an embedded etcd member on 127.0.0.1, so it needs
// nothing installed:
//
//	go run ./examples/coordination
//
// With -endpoints it runs against an existing cluster, under a fresh
// namespace that it deletes on the way out.
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
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// Migration is the result the migration records.
type Migration struct {
	Version int    `json:"version"`
	By      string `json:"by"`
	Token   int64  `json:"token"`
}

// Entry is one line of the migration history.
type Entry struct {
	Version int    `json:"version"`
	By      string `json:"by"`
	At      string `json:"at"`
}

func main() {
	endpoints := flag.String("endpoints", "", "comma-separated etcd endpoints; empty starts an embedded member")
	instances := flag.Int("instances", 3, "instances that want to run the migration")
	reindexers := flag.Int("reindexers", 5, "reindexers sharing the semaphore")
	flag.Parse()
	if err := run(*endpoints, *instances, *reindexers, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "coordination:", err)
		os.Exit(1)
	}
}

func run(endpoints string, instances, reindexers int, out io.Writer) error {
	if instances < 1 || reindexers < 1 {
		return errors.New("-instances and -reindexers must be at least 1")
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
	ns := fmt.Sprintf("etcdkit-coordination-%d", time.Now().UnixNano())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: eps, Namespace: ns})
	if err != nil {
		return err
	}
	defer c.Close()
	if endpoints != "" {
		defer func() {
			dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer dcancel()
			_, _ = c.Raw().Delete(dctx, ns+"/", clientv3.WithPrefix())
		}()
	}
	var printMu sync.Mutex
	say := func(format string, args ...any) {
		printMu.Lock()
		defer printMu.Unlock()
		fmt.Fprintf(out, format+"\n", args...)
	}
	if err := migrate(ctx, c, instances, say); err != nil {
		return err
	}
	return reindex(ctx, c, reindexers, say)
}

// migrate starts instances that each want the migration done, once.
func migrate(ctx context.Context, c *etcdkit.Client, instances int, say func(string, ...any)) error {
	result := etcdkit.NewKey(c, "migration/result", etcdkit.JSON[Migration]())
	var wg sync.WaitGroup
	errs := make([]error, instances)
	for i := range instances {
		id := fmt.Sprintf("instance-%d", i+1)
		m := etcdkit.NewMutex(c, "schema-migration", 2*time.Second, etcdkit.WithHolderID(id))
		wg.Go(func() { errs[i] = migrateOnce(ctx, c, m, result, id, say) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	v, err := result.Get(ctx)
	if err != nil {
		return err
	}
	say("migration: version %d, run once, by %s", v.Data.Version, v.Data.By)
	return nil
}

func migrateOnce(ctx context.Context, c *etcdkit.Client, m *etcdkit.Mutex, result *etcdkit.Key[Migration], id string, say func(string, ...any)) error {
	lk, err := m.Lock(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = lk.Unlock(context.Background()) }()
	if _, err := result.Get(ctx); err == nil {
		say("%s: the migration is already done", id)
		return nil
	} else if !errors.Is(err, etcdkit.ErrNotFound) {
		return err
	}
	say("%s: holds the lock (token %d), migrating", id, lk.Token())
	// The work itself runs under the lock's Context: it stops if the lock
	// may be lost.
	select {
	case <-time.After(300 * time.Millisecond):
	case <-lk.Context().Done():
		return context.Cause(lk.Context())
	}
	history := etcdkit.NewKey(c, fmt.Sprintf("migration/history/%d", lk.Token()), etcdkit.JSON[Entry]())
	_, err = etcdkit.GuardedTxn(lk).
		If(result.IfAbsent()).
		Then(result.OpPut(Migration{Version: 2, By: id, Token: lk.Token()}),
			history.OpPut(Entry{Version: 2, By: id, At: time.Now().UTC().Format(time.RFC3339)})).
		Commit(ctx)
	return err
}

// reindex runs reindexers that share two permits.
func reindex(ctx context.Context, c *etcdkit.Client, reindexers int, say func(string, ...any)) error {
	done := etcdkit.NewKey(c, "reindex/done", etcdkit.JSON[int]())
	var running, most atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, reindexers)
	for i := range reindexers {
		id := fmt.Sprintf("reindexer-%d", i+1)
		s := etcdkit.NewSemaphore(c, "reindex", 2, 2*time.Second, etcdkit.WithHolderID(id))
		wg.Go(func() {
			p, err := s.Acquire(ctx)
			if err != nil {
				errs[i] = err
				return
			}
			defer func() { _ = p.Release(context.Background()) }()
			n := running.Add(1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			select {
			case <-time.After(200 * time.Millisecond):
			case <-p.Context().Done():
			}
			running.Add(-1)
			// The count is updated only while the permit holds.
			_, errs[i] = etcdkit.GuardedUpdateKeys(ctx, p, func(ctx context.Context, tx *etcdkit.Tx) error {
				v, _, err := done.GetIn(ctx, tx)
				tx.Write(done.OpPut(v.Data + 1))
				return err
			})
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	v, err := done.Get(ctx)
	if err != nil {
		return err
	}
	say("reindex: %d shards done, at most %d reindexers at once", v.Data, most.Load())
	return nil
}
