package robustness

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/etcdkit/etcdkit"
)

// FreshPrefix is the prefix, under a schedule's namespace, that is empty
// when the Fresh workload's subscribers start.
const FreshPrefix = "fresh"

// Fresh is the workload of subscribers that start before the first key
// exists: Prefix watches with the initial state (which is empty), from now,
// and a Cache with its subscriptions, all on FreshPrefix, most with small
// buffers and slow readers, so that a burst of writes unhooks them and they
// catch up on their own, across the schedule's compactions. Once they are
// ready, a writer on its own client creates and deletes a few keys under
// the prefix in bursts, so that keys come and go within the revisions a
// compaction removes. The subscribers are checked like the Watchers' and
// the Caches', against the cluster's history; the writer's calls are not
// recorded (its keys are no register the linearizability check follows).
//
// An empty initial state is a state: a subscriber that took it for
// "unknown" would miss the Delete of a key it received and that was then
// deleted in compacted revisions.
type Fresh struct {
	clients []*etcdkit.Client
	subs    subscribers
	caches  []*cacheRun
	writer  *etcdkit.Client
	keys    []*etcdkit.Key[string]
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	once    sync.Once
}

// Name returns "fresh".
func (f *Fresh) Name() string { return "fresh" }

// Start makes the subscribers on the empty prefix, waits until each is
// ready, then starts the writer.
func (f *Fresh) Start(ctx context.Context, run *Run) error {
	rng := run.Rand("fresh")
	c, err := run.Client(ctx, ClientOptions{Name: "fw", Members: rotate(rng.IntN(3)),
		StallTimeout: rng.Duration(300*time.Millisecond, 2*time.Second)})
	if err != nil {
		return err
	}
	f.clients = append(f.clients, c)
	toKey := func(name string) string { return FreshPrefix + "/" + name }
	opts := func(rec *Subscriber) (opts []etcdkit.WatchOption, slow time.Duration) {
		if rng.Chance(0.7) {
			opts = append(opts, etcdkit.WithBufferSize(4+rng.IntN(5)))
			rec.Name += " small-buffer"
		}
		if rng.Chance(0.5) {
			slow = rng.Duration(2*time.Millisecond, 8*time.Millisecond)
			rec.Name += " slow"
		}
		return opts, slow
	}
	for i := range 1 + rng.IntN(2) {
		rev, err := startRev(ctx, run)
		if err != nil {
			return err
		}
		rec := &Subscriber{Name: fmt.Sprintf("f%d prefix %s/ initial", i, FreshPrefix), Scope: FreshPrefix + "/", Prefix: true,
			Start: StartInitial, After: rev}
		o, slow := opts(rec)
		w := etcdkit.NewPrefix(c, FreshPrefix, etcdkit.String()).Watch(ctx, append(o, etcdkit.WithInitial())...)
		f.subs.add(run, rec, w, toKey, slow)
		if err := f.subs[len(f.subs)-1].waitStarted(ctx); err != nil {
			return err
		}
	}
	cc, err := run.Client(ctx, ClientOptions{Name: "fc", Members: rotate(rng.IntN(3)),
		StallTimeout: rng.Duration(300*time.Millisecond, 2*time.Second)})
	if err != nil {
		return err
	}
	f.clients = append(f.clients, cc)
	var ca *etcdkit.Cache[string]
	if err := run.StartStep(ctx, "fresh cache", func() (err error) {
		ca, err = etcdkit.NewPrefix(cc, FreshPrefix, etcdkit.String()).Cache(ctx)
		return err
	}); err != nil {
		return err
	}
	cr := &cacheRun{rec: &CacheRecord{Name: "fc", Prefix: FreshPrefix + "/"}, ca: ca}
	f.caches = append(f.caches, cr)
	run.Rec.Cache(cr.rec)
	sctx, cancel := run.startContext(ctx)
	defer cancel()
	if !waitFor(sctx, func() bool {
		select {
		case <-ca.Synced():
			return true
		default:
			return false
		}
	}, ca.Done()) {
		return fmt.Errorf("fresh cache not synced within the start budget (state %v)", ca.State())
	}
	for j := range 1 + rng.IntN(2) {
		rec := &Subscriber{Name: fmt.Sprintf("fc.%d cache %s/ initial", j, FreshPrefix), Scope: FreshPrefix + "/", Prefix: true,
			Start: StartInitial, After: ca.Revision()}
		o, slow := opts(rec)
		f.subs.add(run, rec, ca.Subscribe(append(o, etcdkit.WithInitial())...), toKey, slow)
	}

	wc, err := run.Client(ctx, ClientOptions{Name: "fwr", StallTimeout: time.Second})
	if err != nil {
		return err
	}
	f.writer = wc
	for k := range 3 {
		f.keys = append(f.keys, etcdkit.NewKey(wc, fmt.Sprintf("%s/k%d", FreshPrefix, k), etcdkit.String()))
	}
	tctx, cancelWrites := context.WithCancel(ctx)
	f.cancel = cancelWrites
	wrng := run.Rand("fresh writer")
	f.wg.Go(func() { f.write(tctx, wrng) })
	return nil
}

// startRev reads the current revision within the start budget.
func startRev(ctx context.Context, run *Run) (int64, error) {
	var rev int64
	err := run.StartStep(ctx, "read the revision", func() (err error) {
		rev, err = run.Rev(ctx)
		return err
	})
	return rev, err
}

// waitStarted waits until the watch has read its start (its Ready is
// closed), within the start budget.
func (sw *watcher) waitStarted(ctx context.Context) error {
	timer := time.NewTimer(SettleTimeout)
	defer timer.Stop()
	select {
	case <-sw.w.Ready():
		return nil
	case <-timer.C:
		return fmt.Errorf("%s: Ready not closed after %v (watch state %v)", sw.rec.Name, SettleTimeout, sw.w.State())
	case <-ctx.Done():
		return ctx.Err()
	}
}

// write creates and deletes the keys in bursts until ctx ends: a burst of
// puts and deletes back to back, then a pause.
func (f *Fresh) write(ctx context.Context, rng *RandSource) {
	for ctx.Err() == nil {
		for range 2 + rng.IntN(10) {
			k := f.keys[rng.IntN(len(f.keys))]
			wctx, cancel := context.WithTimeout(ctx, time.Second)
			if rng.Chance(0.4) {
				_ = k.Delete(wctx)
			} else {
				_, _ = k.Put(wctx, fmt.Sprintf("f.%d", rng.IntN(1000)))
			}
			cancel()
		}
		// The pace of the bursts, part of the workload's definition.
		time.Sleep(rng.Duration(20*time.Millisecond, 120*time.Millisecond))
	}
}

// Quiesce stops the writer.
func (f *Fresh) Quiesce(*Run) {
	if f.cancel != nil {
		f.cancel()
	}
	f.wg.Wait()
}

// Settle puts a sentinel in every key, so that the last change in scope is
// a put every subscriber must receive.
func (f *Fresh) Settle(ctx context.Context, _ *Run) error {
	for _, k := range f.keys {
		for {
			wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := k.Put(wctx, "end")
			cancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("sentinel write of %s: %w", k.Name(), err)
			}
		}
	}
	return nil
}

// Converge waits until the cache holds the settled state and every
// subscriber has caught up.
func (f *Fresh) Converge(ctx context.Context, run *Run) {
	hs := scoped(run.Changes(), FreshPrefix+"/", true)
	want := stateAt(hs, run.Rec.History().SettledRev)
	for _, cr := range f.caches {
		got := func() map[string]KV { return prefixState(cr.ca, FreshPrefix) }
		ok := waitFor(ctx, func() bool { return maps.Equal(got(), want) }, cr.ca.Done())
		cr.rec.Final = got()
		if !ok {
			cr.rec.Stuck = fmt.Sprintf("the cache is at revision %d, state %v, err %v", cr.ca.Revision(), cr.ca.State(), cr.ca.Err())
		}
	}
	f.subs.converge(ctx, run, "fresh")
}

// prefixState returns a cache's contents as names relative to the
// namespace, the cache being on prefix.
func prefixState(ca *etcdkit.Cache[string], prefix string) map[string]KV {
	st := map[string]KV{}
	for _, e := range ca.List() {
		st[prefix+"/"+e.Name] = KV{Value: e.Data, Rev: e.Revision}
	}
	return st
}

// Close closes the subscribers, the cache, the writer and the clients.
func (f *Fresh) Close() {
	f.once.Do(func() {
		f.Quiesce(nil)
		f.subs.close()
		for _, cr := range f.caches {
			_ = cr.ca.Close()
		}
		if f.writer != nil {
			_ = f.writer.Close()
		}
		for _, c := range f.clients {
			_ = c.Close()
		}
	})
}
