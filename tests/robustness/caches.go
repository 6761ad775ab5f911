package robustness

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/etcdkit/etcdkit"
)

// Caches is the workload of Cache subscribers over the data keys: one or
// two caches, each on its own client, with a few subscriptions (Subscribe,
// with or without the initial contents, some with small buffers and slow
// readers). Subscriptions are recorded and checked as subscribers; the
// caches' final contents are compared with the cluster's final state.
type Caches struct {
	clients []*etcdkit.Client
	caches  []*cacheRun
	subs    subscribers
	once    sync.Once
}

type cacheRun struct {
	rec *CacheRecord
	ca  *etcdkit.Cache[string]
}

// Name returns "caches".
func (cs *Caches) Name() string { return "caches" }

// Start makes the caches and their subscriptions and returns once every
// cache is synced.
func (cs *Caches) Start(ctx context.Context, run *Run) error {
	rng := run.Rand("caches")
	n := 1 + rng.IntN(2)
	for i := range n {
		c, err := run.Client(ctx, ClientOptions{Name: fmt.Sprintf("cc%d", i), Members: rotate(rng.IntN(3)),
			StallTimeout: rng.Duration(300*time.Millisecond, 2*time.Second)})
		if err != nil {
			return err
		}
		cs.clients = append(cs.clients, c)
		var ca *etcdkit.Cache[string]
		if err := run.StartStep(ctx, fmt.Sprintf("cache c%d", i), func() (err error) {
			ca, err = etcdkit.NewPrefix(c, DataPrefix, etcdkit.String()).Cache(ctx)
			return err
		}); err != nil {
			return err
		}
		cr := &cacheRun{rec: &CacheRecord{Name: fmt.Sprintf("c%d", i), Prefix: DataPrefix + "/"}, ca: ca}
		cs.caches = append(cs.caches, cr)
		run.Rec.Cache(cr.rec)
		timer := time.NewTimer(SettleTimeout)
		select {
		case <-ca.Synced():
			timer.Stop()
		case <-timer.C:
			return fmt.Errorf("cache %s not synced after %v (state %v)", cr.rec.Name, SettleTimeout, ca.State())
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		}
		for j := range 1 + rng.IntN(2) {
			rec := &Subscriber{Scope: DataPrefix + "/", Prefix: true, Start: StartNow}
			var opts []etcdkit.SubscribeOption
			if rng.Chance(0.5) {
				rec.Start, rec.After = StartInitial, ca.Revision()
				opts = append(opts, etcdkit.WithInitial())
			}
			small := rng.Chance(0.3)
			if small {
				opts = append(opts, etcdkit.WithBufferSize(4+rng.IntN(29)))
			}
			var slow time.Duration
			if rng.Chance(0.25) {
				slow = rng.Duration(time.Millisecond, 8*time.Millisecond)
			}
			rec.Name = fmt.Sprintf("c%d.%d cache %s %v", i, j, rec.Scope, rec.Start)
			if small {
				rec.Name += " small-buffer"
			}
			if slow > 0 {
				rec.Name += " slow"
			}
			cs.subs.add(run, rec, ca.Subscribe(opts...), func(name string) string { return DataPrefix + "/" + name }, slow)
			if rec.Start == StartNow {
				if err := cs.subs[len(cs.subs)-1].waitSynced(ctx, run); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// Quiesce does nothing: caches only read.
func (cs *Caches) Quiesce(*Run) {}

// Settle does nothing.
func (cs *Caches) Settle(context.Context, *Run) error { return nil }

// Converge waits until every cache holds the cluster's state at the settled
// revision and every subscription has caught up, and records the caches'
// contents.
func (cs *Caches) Converge(ctx context.Context, run *Run) {
	hs := scoped(run.Changes(), DataPrefix+"/", true)
	want := stateAt(hs, run.Rec.History().SettledRev)
	for _, cr := range cs.caches {
		ok := waitFor(ctx, func() bool { return maps.Equal(cacheState(cr.ca), want) }, cr.ca.Done())
		cr.rec.Final = cacheState(cr.ca)
		switch {
		case !ok:
			cr.rec.Stuck = fmt.Sprintf("the cache is at revision %d, state %v, err %v", cr.ca.Revision(), cr.ca.State(), cr.ca.Err())
		default:
			run.Rec.Note("caches", "%s holds the final state (revision %d)", cr.rec.Name, cr.ca.Revision())
		}
	}
	cs.subs.converge(ctx, run, "caches")
}

// cacheState returns the contents of a cache on DataPrefix as names
// relative to the namespace.
func cacheState(ca *etcdkit.Cache[string]) map[string]KV { return prefixState(ca, DataPrefix) }

// Close closes the subscriptions, the caches and their clients.
func (cs *Caches) Close() {
	cs.once.Do(func() {
		cs.subs.close()
		for _, cr := range cs.caches {
			_ = cr.ca.Close()
		}
		for _, c := range cs.clients {
			_ = c.Close()
		}
	})
}
