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
// a LiveMap, and a Cache with its subscriptions, all on FreshPrefix, the
// watches most with small buffers and slow readers, so that a burst of
// writes unhooks them and they catch up on their own, across the
// schedule's compactions; and two trackers of FreshService, which has no
// instance yet. The LiveMap is on the watches' client and the second
// tracker on the first's, so that their caches join a feed already open
// and read their (empty) start themselves. Once they are ready, a writer
// on its own client creates and deletes a few keys under the prefix in
// bursts, with values the Lives' validator accepts, and a driver on
// another client registers and withdraws instances of the service in
// bursts, so that keys and instances come and go within the revisions a
// compaction removes. During the fault phase, each time the writer has
// emptied the prefix another LiveMap and another Prefix watch with the
// initial state start on the watches' client, and each time the driver has
// withdrawn every instance another tracker starts (up to freshLater each),
// while the next burst races their first reads. The subscribers are checked like the Watchers' and
// the Caches', against the cluster's history; each LiveMap entry like a
// Live of its key (and it must not serve a key its map has seen deleted);
// the trackers by the tracker rule, ending with no instance. The writer's
// and the driver's calls are not recorded (its keys are no register the
// linearizability check follows; the instances come and go on purpose).
//
// An empty initial state is a state: a subscriber that took it for
// "unknown" would miss the Delete of a key it received and that was then
// deleted in compacted revisions.
type Fresh struct {
	clients []*etcdkit.Client
	subs    subscribers
	caches  []*cacheRun
	maps    []*freshMap // the first on the empty prefix, then those the writer starts
	svc     freshService
	writer  *etcdkit.Client
	keys    []*etcdkit.Key[string]
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	once    sync.Once
}

// Name returns "fresh".
func (f *Fresh) Name() string { return "fresh" }

// Start makes the subscribers on the empty prefix and the trackers of the
// empty service, waits until each is ready, then starts the writer and the
// instances' driver.
func (f *Fresh) Start(ctx context.Context, run *Run) error {
	rng := run.Rand("fresh")
	c, err := run.Client(ctx, ClientOptions{Name: "fw", Members: rotate(rng.IntN(3)),
		StallTimeout: rng.Duration(300*time.Millisecond, 2*time.Second)})
	if err != nil {
		return err
	}
	f.clients = append(f.clients, c)
	toKey := func(name string) string { return FreshPrefix + "/" + name }
	opts := func(rec *Subscriber) (opts []etcdkit.SubscribeOption, slow time.Duration) {
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
		wo := []etcdkit.WatchOption{etcdkit.WithInitial()}
		for _, x := range o {
			wo = append(wo, x)
		}
		w := etcdkit.NewPrefix(c, FreshPrefix, etcdkit.String()).Watch(ctx, wo...)
		f.subs.add(run, rec, w, toKey, slow)
		if err := f.subs[len(f.subs)-1].waitStarted(ctx); err != nil {
			return err
		}
	}
	// On the watches' client, the LiveMap's cache joins the feed they
	// opened and reads its start itself.
	f.maps = append(f.maps, newMap(ctx, run, c, "fl0", freshNames))
	if err := f.maps[0].waitSynced(ctx, run); err != nil {
		return err
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

	if err := f.svc.startTrackers(ctx, run, run.Rand("fresh trackers")); err != nil {
		return err
	}

	wc, err := run.Client(ctx, ClientOptions{Name: "fwr", StallTimeout: time.Second})
	if err != nil {
		return err
	}
	f.writer = wc
	for _, n := range freshNames {
		f.keys = append(f.keys, etcdkit.NewKey(wc, FreshPrefix+"/"+n, etcdkit.String()))
	}
	tctx, cancelWrites := context.WithCancel(ctx)
	f.cancel = cancelWrites
	wrng := run.Rand("fresh writer")
	lrng := run.Rand("fresh later")
	later := func() {
		if len(f.maps) >= 1+freshLater {
			return
		}
		g := len(f.maps)
		f.maps = append(f.maps, newMap(ctx, run, c, fmt.Sprintf("fl%d", g), freshNames))
		// Its start is known only as a state the prefix had (After 0).
		rec := &Subscriber{Name: fmt.Sprintf("fl%d.w prefix %s/ initial small-buffer slow", g, FreshPrefix), Scope: FreshPrefix + "/",
			Prefix: true, Start: StartInitial}
		w := etcdkit.NewPrefix(c, FreshPrefix, etcdkit.String()).Watch(ctx,
			etcdkit.WithInitial(), etcdkit.WithBufferSize(4+lrng.IntN(5)))
		f.subs.add(run, rec, w, toKey, lrng.Duration(2*time.Millisecond, 8*time.Millisecond))
	}
	f.wg.Go(func() { f.write(tctx, wrng, later) })
	return f.svc.startInstances(ctx, run, run.Rand("fresh instances"))
}

// freshLater is how many LiveMaps (each with a Prefix watch with the
// initial state, a small buffer and a slow reader), and how many trackers,
// the Fresh workload starts during the fault phase, each right after the
// prefix (the service) has been emptied, as the writer (the driver) goes on
// with its next burst at once.
const freshLater = 3

// freshNames are the names of the keys the Fresh writer uses, relative to
// FreshPrefix.
var freshNames = []string{"k0", "k1", "k2"}

// startRev reads the current revision within the start budget.
func startRev(ctx context.Context, run *Run) (int64, error) {
	var rev int64
	err := run.StartStep(ctx, "read the revision", func() (err error) {
		rev, err = run.Rev(ctx)
		return err
	})
	return rev, err
}

// waitStarted waits until the watch has read its start (its Synced is
// closed), within the start budget.
func (sw *watcher) waitStarted(ctx context.Context) error {
	timer := time.NewTimer(SettleTimeout)
	defer timer.Stop()
	select {
	case <-sw.w.Synced():
		return nil
	case <-timer.C:
		return fmt.Errorf("%s: Synced not closed after %v (watch state %v)", sw.rec.Name, SettleTimeout, sw.w.State())
	case <-ctx.Done():
		return ctx.Err()
	}
}

// write creates and deletes the keys in bursts until ctx ends: a burst of
// puts and deletes back to back, then a pause; or, for some bursts, every
// key deleted, a call of emptied, and the next burst at once. A subscriber
// that emptied starts (on the client of the feed it joins) reads its start
// while that burst races to the feed: when the prefix was still empty for
// its read and the feed is already past it, it starts behind the feed
// from an empty state, and catches up through the burst on its own.
func (f *Fresh) write(ctx context.Context, rng *RandSource, emptied func()) {
	for ctx.Err() == nil {
		for range 2 + rng.IntN(10) {
			k := f.keys[rng.IntN(len(f.keys))]
			wctx, cancel := context.WithTimeout(ctx, time.Second)
			if rng.Chance(0.4) {
				_ = k.Delete(wctx)
			} else {
				_, _ = k.Put(wctx, freshValue(rng.IntN(1000)))
			}
			cancel()
		}
		if rng.Chance(0.3) {
			for _, k := range f.keys {
				wctx, cancel := context.WithTimeout(ctx, time.Second)
				_ = k.Delete(wctx)
				cancel()
			}
			emptied()
			continue
		}
		// The pace of the bursts, part of the workload's definition.
		time.Sleep(rng.Duration(20*time.Millisecond, 120*time.Millisecond))
	}
}

// freshValue returns the writer's value number n: one the Lives'
// validator accepts (none ends in "3"), so that every value written is one
// the LiveMap must serve.
func freshValue(n int) string {
	if n%10 == 3 {
		n++
	}
	return fmt.Sprintf("f.%d", n)
}

// Quiesce stops the writer and the instances' driver, which withdraws
// the instances.
func (f *Fresh) Quiesce(*Run) {
	if f.cancel != nil {
		f.cancel()
	}
	f.wg.Wait()
	f.svc.quiesce()
}

// Settle puts a sentinel in every key, so that the last change in scope is
// a put every subscriber must receive, and waits until the service has no
// instance left.
func (f *Fresh) Settle(ctx context.Context, run *Run) error {
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
	return f.svc.settle(ctx, run)
}

// Converge waits until the cache and the LiveMap hold the settled state,
// every subscriber has caught up, and every tracker's view is empty.
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
	for _, m := range f.maps {
		m.converge(ctx, run)
	}
	f.subs.converge(ctx, run, "fresh")
	convergeTrackers(ctx, run, f.svc.trackers, FreshService, "fresh")
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

// Close closes the subscribers, the cache, the LiveMap, the trackers, the
// instances, the writer and the clients.
func (f *Fresh) Close() {
	f.once.Do(func() {
		f.Quiesce(nil)
		f.subs.close()
		for _, cr := range f.caches {
			_ = cr.ca.Close()
		}
		for _, m := range f.maps {
			m.close()
		}
		f.svc.close()
		if f.writer != nil {
			_ = f.writer.Close()
		}
		for _, c := range f.clients {
			_ = c.Close()
		}
	})
}
