package etcdkit_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// Subscribers out of step with their shared stream across a compaction.
//
// The shared stream (feed) of a key or prefix resyncs after a compaction by
// diffing the re-read state against its own. That is right only for the
// subscribers in step with it. These tests put a subscriber ahead of, or
// behind, a feed whose link is cut (proxy Blackhole on the stream link),
// delete a key the subscriber holds but the feed never saw, compact, heal,
// and check the subscriber's exact events: without its own baseline it
// would keep the deleted key.

// split is a member behind a proxy and a client whose watch streams go
// through the proxy while its requests (reads, the start of a WithInitial
// watch, a subscriber's baseline) go straight to the member, so that a fault
// on the proxy holds back the feed and nothing else. The writer goes around
// the proxy too.
type split struct {
	srv *etcdtest.Server
	c   *etcdkit.Client
	wr  *writer
}

func startSplit(t testing.TB, ns string) *split {
	t.Helper()
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	raw := newTestRawClient(t, []string{srv.Endpoint()})
	c, err := etcdkit.Wrap(raw, etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()}, Namespace: ns,
		StallTimeout: 500 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return &split{srv: srv, c: c, wr: newWriter(t, srv.Client(t), ns)}
}

// noise writes to the key name, outside the prefixes under test, until the
// returned stop is called or the test ends.
func (s *split) noise(t testing.TB, name string) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			_, _ = s.wr.cli.Put(ctx, s.wr.ns+name, "noise")
		}
	})
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}

// cut silences the stream link once w is connected, and waits until the
// engine has noticed.
func (s *split) cut(t testing.TB, w *etcdkit.Watch[string]) {
	t.Helper()
	untilState(t, "feed", w.State, etcdkit.WatchConnected)
	s.srv.Proxy().Blackhole(proxy.Both)
	untilState(t, "feed", w.State, etcdkit.WatchSuspended)
}

// resynced returns the changes of evs with the revision of Resync deletes,
// which is the revision the state was re-read at, checked to be at or after
// the compaction and then zeroed.
func resynced(t testing.TB, evs []etcdkit.Event[string], compacted int64) []change {
	t.Helper()
	out := changesOf(evs)
	for i := range out {
		if out[i].Resync && out[i].Type == etcdkit.Delete {
			assert.GreaterOrEqual(t, out[i].Rev, compacted, "resync delete %v stamped with the read revision", out[i])
			out[i].Rev = 0
		}
	}
	return out
}

// The robustness reproducer as a package test: a Prefix watch made with
// AfterRevision(rev) while the feed is cut off starts ahead of it. Its key x
// is deleted and the history compacted at the deletion; the feed comes back
// to a compacted history and resyncs from its own state, which never had x.
// The subscriber must not take that resync: it catches up from its own
// position, where etcd still holds the deletion (the compaction revision
// itself is readable), so it gets the Delete from history.
func TestWatchAfterRevisionAheadOfLaggingFeed(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()}, Namespace: "ahead",
		StallTimeout: 500 * time.Millisecond})
	wr := newWriter(t, srv.Client(t), "ahead")
	ctx := testContext(t, time.Minute)
	p := etcdkit.NewPrefix(c, "p", etcdkit.String())

	first := collect(t, p.Watch(ctx))
	waitSynced(t, first.w)
	// Everything the client sends or receives is dropped from here on: the
	// start of the watch below needs no request.
	srv.Proxy().Blackhole(proxy.Both)
	put := wr.put("p/x", "1")
	w := collect(t, p.Watch(ctx, etcdkit.AfterRevision(put)))
	waitSynced(t, w.w)
	del := wr.del("p/x")
	compacted := srv.Compact(t)
	require.Equal(t, del, compacted)
	srv.Proxy().Unblackhole()
	end := wr.put("p/end", "e")

	evs := w.untilRev(t, end)
	assert.Equal(t, []change{{etcdkit.Delete, "x", "", del, false}, {etcdkit.Put, "end", "e", end, false}}, changesOf(evs))
	assert.Equal(t, map[string]string{"end": "e"}, model(first.untilRev(t, end)), "the feed's own subscriber")
	eventually(t, "one etcd watch", func() bool { return etcdkit.EtcdWatches(c) == 1 })
}

// As above, but the history is compacted past the subscriber's start, so it
// needs a resync: it must be diffed against the state at its start, read
// when it started ahead of the feed, not against the feed's older state.
// The feed's own subscriber, which never had x, gets the feed's diff.
func TestWatchAheadOfLaggingFeedResync(t *testing.T) {
	s := startSplit(t, "aheadrs")
	ctx := testContext(t, time.Minute)
	p := etcdkit.NewPrefix(s.c, "p", etcdkit.String())
	s.wr.put("p/a", "1")
	s.wr.put("p/b", "1")
	first := collect(t, p.Watch(ctx))
	waitSynced(t, first.w)
	s.cut(t, first.w)

	put := s.wr.put("p/x", "1")
	w := collect(t, p.Watch(ctx, etcdkit.AfterRevision(put)))
	eventually(t, "the subscriber's baseline read", func() bool { return etcdkit.WatchBaselines(s.c) == 1 })
	s.wr.del("p/x")
	s.wr.del("p/a")
	y := s.wr.put("p/y", "1")
	b := s.wr.put("p/b", "2")
	compacted := s.srv.Compact(t)
	s.srv.Proxy().Unblackhole()

	want := []change{
		{etcdkit.Put, "y", "1", y, true},
		{etcdkit.Put, "b", "2", b, true},
		{etcdkit.Delete, "a", "", 0, true},
		{etcdkit.Delete, "x", "", 0, true},
	}
	w.until(t, "resync", func(evs []etcdkit.Event[string]) bool { return len(evs) >= len(want) })
	end := s.wr.put("p/end", "e")
	assert.Equal(t, append(want, change{etcdkit.Put, "end", "e", end, false}), resynced(t, w.untilRev(t, end), compacted))
	assert.Equal(t, []change{want[0], want[1], want[2], {etcdkit.Put, "end", "e", end, false}},
		resynced(t, first.untilRev(t, end), compacted), "the feed's own subscriber")
	eventually(t, "one etcd watch, no baseline left", func() bool {
		return etcdkit.EtcdWatches(s.c) == 1 && etcdkit.WatchBaselines(s.c) == 0
	})
}

// A Key watch made with AfterRevision(rev) ahead of its lagging feed: the
// key, created after the feed was cut off, is deleted and the history
// compacted past rev. The feed never had the key; the subscriber must get
// the Delete, and the feed's own subscriber, which missed the key's put and
// delete, a Resync Delete that says so.
func TestWatchKeyAheadOfLaggingFeedResync(t *testing.T) {
	s := startSplit(t, "aheadkey")
	ctx := testContext(t, time.Minute)
	k := etcdkit.NewKey(s.c, "k", etcdkit.String())
	first := collect(t, k.Watch(ctx))
	waitSynced(t, first.w)
	s.cut(t, first.w)

	put := s.wr.put("k", "1")
	w := collect(t, k.Watch(ctx, etcdkit.AfterRevision(put)))
	eventually(t, "the subscriber's baseline read", func() bool { return etcdkit.WatchBaselines(s.c) == 1 })
	s.wr.del("k")
	s.wr.put("other", "1")
	compacted := s.srv.Compact(t)
	s.srv.Proxy().Unblackhole()

	w.until(t, "resync", func(evs []etcdkit.Event[string]) bool { return len(evs) >= 1 })
	end := s.wr.put("k", "2")
	assert.Equal(t, []change{{etcdkit.Delete, "k", "", 0, true}, {etcdkit.Put, "k", "2", end, false}},
		resynced(t, w.untilRev(t, end), compacted))
	assert.Equal(t, []change{{etcdkit.Delete, "k", "", 0, true}, {etcdkit.Put, "k", "2", end, false}},
		resynced(t, first.untilRev(t, end), compacted),
		"the feed's own subscriber never had the key, and is told it missed its history")
}

// A WithInitial watch that starts while the feed is cut off reads a state
// the feed has not reached, so it starts ahead of it, with the state it read
// as its baseline. A key of that state the feed never saw is deleted, and
// the history compacted: the Delete must come.
func TestWatchWithInitialAheadOfLaggingFeedResync(t *testing.T) {
	s := startSplit(t, "aheadinit")
	ctx := testContext(t, time.Minute)
	p := etcdkit.NewPrefix(s.c, "p", etcdkit.String())
	a := s.wr.put("p/a", "1")
	first := collect(t, p.Watch(ctx))
	waitSynced(t, first.w)
	s.cut(t, first.w)

	x := s.wr.put("p/x", "1")
	w := collect(t, p.Watch(ctx, etcdkit.WithInitial()))
	w.until(t, "initial state", func(evs []etcdkit.Event[string]) bool { return len(evs) == 2 })
	s.wr.del("p/x")
	y := s.wr.put("p/y", "1")
	compacted := s.srv.Compact(t)
	s.srv.Proxy().Unblackhole()

	w.until(t, "resync", func(evs []etcdkit.Event[string]) bool { return len(evs) >= 4 })
	end := s.wr.put("p/end", "e")
	evs := w.untilRev(t, end)
	assert.Equal(t, []change{
		{etcdkit.Put, "a", "1", a, false},
		{etcdkit.Put, "x", "1", x, false},
		{etcdkit.Put, "y", "1", y, true},
		{etcdkit.Delete, "x", "", 0, true},
		{etcdkit.Put, "end", "e", end, false},
	}, resynced(t, evs, compacted))
	assert.True(t, evs[0].Initial && evs[1].Initial, "the state read first is flagged Initial")
}

// A Cache made while the feed of its prefix is cut off lists a state the
// feed has not reached. After a compaction the cache must drop the key the
// feed never saw, and tell its subscribers.
func TestCacheAheadOfLaggingFeedResync(t *testing.T) {
	s := startSplit(t, "aheadcache")
	ctx := testContext(t, time.Minute)
	p := etcdkit.NewPrefix(s.c, "p", etcdkit.String())
	a := s.wr.put("p/a", "1")
	first := collect(t, p.Watch(ctx))
	waitSynced(t, first.w)
	s.cut(t, first.w)

	x := s.wr.put("p/x", "1")
	ca, err := p.Cache(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = ca.Close() })
	waitSynced(t, ca)
	assert.Equal(t, map[string]string{"a": "1", "x": "1"}, contents(ca))
	sub := collect(t, ca.Subscribe(etcdkit.WithInitial()))
	sub.until(t, "initial contents", func(evs []etcdkit.Event[string]) bool { return len(evs) == 2 })
	s.wr.del("p/x")
	y := s.wr.put("p/y", "1")
	compacted := s.srv.Compact(t)
	s.srv.Proxy().Unblackhole()

	sub.until(t, "resync", func(evs []etcdkit.Event[string]) bool { return len(evs) >= 4 })
	assert.Equal(t, map[string]string{"a": "1", "y": "1"}, contents(ca))
	end := s.wr.put("p/end", "e")
	assert.Equal(t, []change{
		{etcdkit.Put, "a", "1", a, false},
		{etcdkit.Put, "x", "1", x, false},
		{etcdkit.Put, "y", "1", y, true},
		{etcdkit.Delete, "x", "", 0, true},
		{etcdkit.Put, "end", "e", end, false},
	}, resynced(t, sub.untilRev(t, end), compacted))
	assert.Equal(t, listed(t, p), contents(ca))
}

// A watch made with AfterRevision(rev) behind the feed catches up on its own
// while the link is cut, and both it and the feed find the history
// compacted when the link heals. Whichever resyncs first, the subscriber
// gets one diff from its own baseline: if its own resync lands ahead of the
// feed, it must not take the feed's later resync too (that would repeat
// changes, with revisions going back, and miss the deletes of keys the feed
// never saw).
func TestWatchBehindFeedAcrossCompaction(t *testing.T) {
	s := startSplit(t, "behind")
	ctx := testContext(t, time.Minute)
	p := etcdkit.NewPrefix(s.c, "p", etcdkit.String())
	first := collect(t, p.Watch(ctx))
	waitSynced(t, first.w)
	start := s.wr.put("p/a", "1")
	b := s.wr.put("p/b", "1")
	first.untilRev(t, b)
	s.cut(t, first.w)

	w := collect(t, p.Watch(ctx, etcdkit.AfterRevision(start)))
	eventually(t, "the subscriber's baseline read", func() bool { return etcdkit.WatchBaselines(s.c) == 1 })
	s.wr.del("p/a")
	s.wr.put("p/x", "1")
	s.wr.del("p/x")
	y := s.wr.put("p/y", "1")
	compacted := s.srv.Compact(t)
	// Writes outside the prefix move the revision on while the two resyncs
	// read, so that they read at different revisions.
	stopNoise := s.noise(t, "q")
	s.srv.Proxy().Unblackhole()

	w.until(t, "resync", func(evs []etcdkit.Event[string]) bool { return len(evs) >= 3 })
	stopNoise()
	end := s.wr.put("p/end", "e")
	evs := w.untilRev(t, end)
	assert.Equal(t, []change{
		{etcdkit.Put, "b", "1", b, true},
		{etcdkit.Put, "y", "1", y, true},
		{etcdkit.Delete, "a", "", 0, true},
		{etcdkit.Put, "end", "e", end, false},
	}, resynced(t, evs, compacted))
	for i := 1; i < len(evs); i++ {
		assert.GreaterOrEqual(t, evs[i].Revision, evs[i-1].Revision, "revisions never decrease")
	}
	eventually(t, "one etcd watch, no baseline left", func() bool {
		return etcdkit.EtcdWatches(s.c) == 1 && etcdkit.WatchBaselines(s.c) == 0
	})
}

// The common case of a subscriber ahead of the feed: a watch from the
// revision of a write the feed has not received yet. Once the feed's
// history reaches that revision, the subscriber joins it in step: nothing
// twice, nothing missed, and no etcd watch of its own.
func TestWatchAheadJoinsFeedFromHistory(t *testing.T) {
	s := startSplit(t, "aheadhist")
	ctx := testContext(t, time.Minute)
	p := etcdkit.NewPrefix(s.c, "p", etcdkit.String())
	first := collect(t, p.Watch(ctx))
	waitSynced(t, first.w)
	s.cut(t, first.w)

	x := s.wr.put("p/x", "1")
	w := collect(t, p.Watch(ctx, etcdkit.AfterRevision(x)))
	waitSynced(t, w.w)
	s.wr.put("p/y", "1")
	s.wr.del("p/x")
	s.srv.Proxy().Unblackhole()
	end := s.wr.put("p/end", "e")

	assert.Equal(t, s.wr.since(x, "p/"), changesOf(w.untilRev(t, end)))
	assert.Equal(t, s.wr.since(0, "p/"), changesOf(first.untilRev(t, end)))
	eventually(t, "one etcd watch, no baseline left", func() bool {
		return etcdkit.EtcdWatches(s.c) == 1 && etcdkit.WatchBaselines(s.c) == 0
	})
}

// TestWatchResyncAtCompactionRevision: after a compaction a watch re-reads
// the state at the compaction's revision, the oldest etcd kept, and then
// takes every later change from history. Read at the current revision
// instead, a change made after the compaction and undone before the read (a
// put and a delete of a key the subscriber knows as deleted) was summed up
// to nothing and lost, and a later value replaced the history of a key.
func TestWatchResyncAtCompactionRevision(t *testing.T) {
	f := startFaulty(t, "resyncrev")
	ctx := testContext(t, time.Minute)
	key := collect(t, etcdkit.NewKey(f.c, "k", etcdkit.String()).Watch(ctx))
	prefix := collect(t, etcdkit.NewPrefix(f.c, "p", etcdkit.String()).Watch(ctx))
	for _, col := range []*collector{key, prefix} {
		waitSynced(t, col.w)
		untilState(t, "watch", col.w.State, etcdkit.WatchConnected)
	}
	f.wr.put("k", "1")
	key.untilRev(t, f.wr.del("k"))
	f.wr.put("p/a", "1")
	f.wr.put("p/b", "1")
	prefix.untilRev(t, f.wr.del("p/a"))
	seenKey, seenPrefix := len(key.events()), len(prefix.events())

	f.srv.Proxy().Stop()
	for _, col := range []*collector{key, prefix} {
		untilState(t, "watch", col.w.State, etcdkit.WatchSuspended)
	}
	gone := f.wr.put("p/b", "2")
	f.wr.put("elsewhere", "1") // so that the compaction removes gone's revision
	compacted := f.srv.Compact(t)
	require.Greater(t, compacted, gone)
	k1, k2 := f.wr.put("k", "2"), f.wr.del("k")
	a1, a2 := f.wr.put("p/a", "x"), f.wr.del("p/a")
	b3 := f.wr.put("p/b", "3")
	require.NoError(t, f.srv.Proxy().Start())

	got := resynced(t, key.untilRev(t, k2)[seenKey:], compacted)
	assert.Equal(t, []change{
		{etcdkit.Delete, "k", "", 0, true},
		{etcdkit.Put, "k", "2", k1, false},
		{etcdkit.Delete, "k", "", k2, false},
	}, got, "a resync (the key, absent, may have come and gone in the compacted history), then the changes after the compaction one by one")
	got = changesOf(prefix.untilRev(t, b3)[seenPrefix:])
	assert.Equal(t, []change{
		{etcdkit.Put, "b", "2", gone, true},
		{etcdkit.Put, "a", "x", a1, false},
		{etcdkit.Delete, "a", "", a2, false},
		{etcdkit.Put, "b", "3", b3, false},
	}, got, "a resync to the state at the compaction, then history")
}

// A key created and deleted while a key watch was cut off, in revisions
// compacted before it came back, left no trace: the key was absent before
// and after, so the resync found nothing to say and the watch went on from
// the compaction with no Resync event at all (the robustness soak, seed
// 650095413810: "lost event: the cluster made Put data/k1 @353614, but the
// subscriber's next event after revision 353568 was Put @353864"). The
// resync of a single key must be explicit: an absent key is reported
// deleted.
func TestWatchKeyResyncOfAKeyThatCameAndWent(t *testing.T) {
	f := startFaulty(t, "cameandwent")
	ctx := testContext(t, time.Minute)
	k := etcdkit.NewKey(f.c, "cfg/x", etcdkit.String())
	col := collect(t, k.Watch(ctx))
	waitSynced(t, col.w)
	untilState(t, "watch", col.w.State, etcdkit.WatchConnected)
	f.wr.put("cfg/x", "1")
	rev := f.wr.del("cfg/x")
	col.untilRev(t, rev)
	seen := len(col.events())

	f.srv.Proxy().Stop()
	untilState(t, "watch", col.w.State, etcdkit.WatchSuspended)
	f.wr.put("cfg/x", "2")
	f.wr.del("cfg/x")
	f.wr.put("cfg/other", "1")
	compacted := f.srv.Compact(t)
	require.NoError(t, f.srv.Proxy().Start())

	evs := col.until(t, "resync event", func(evs []etcdkit.Event[string]) bool { return len(evs) > seen })
	got := evs[seen]
	assert.Equal(t, etcdkit.Delete, got.Type)
	assert.True(t, got.Resync, "the gap is reported as a resync")
	assert.GreaterOrEqual(t, got.Revision, compacted)

	last := f.wr.put("cfg/x", "3")
	evs = col.untilRev(t, last)
	assert.Equal(t, change{etcdkit.Put, "cfg/x", "3", last, false}, changesOf(evs)[len(evs)-1], "then normal events")
}

// A Prefix watch after a revision whose state was compacted before the
// watch could read it cannot tell which keys vanished since: it must end
// with ErrCompacted, not resync with a gap (it once went on, with a
// deleted key left to its reader). A Key watch in the same place resyncs,
// deletion included.
func TestWatchAfterCompactedRevisionEndsExplicitly(t *testing.T) {
	s := startSplit(t, "aftercompacted")
	ctx := testContext(t, time.Minute)
	start := s.wr.put("p/a", "1")
	b := s.wr.put("p/b", "1")
	s.wr.del("p/a")
	s.srv.Compact(t)

	p := etcdkit.NewPrefix(s.c, "p", etcdkit.String())
	w := collect(t, p.Watch(ctx, etcdkit.AfterRevision(start)))
	waitDone(t, w.w.Done(), "the prefix watch")
	require.ErrorIs(t, w.w.Err(), etcdkit.ErrCompacted)
	assert.Contains(t, w.w.Err().Error(), "list again")
	assert.Empty(t, w.events(), "nothing delivered: a resync without the deletion of a would have said a still exists")

	k := collect(t, etcdkit.NewKey(s.c, "p/a", etcdkit.String()).Watch(ctx, etcdkit.AfterRevision(start)))
	end := s.wr.put("p/a", "2")
	evs := k.untilRev(t, end)
	assert.Equal(t, []change{{etcdkit.Delete, "p/a", "", 0, true}, {etcdkit.Put, "p/a", "2", end, false}},
		resynced(t, evs, b))
}
