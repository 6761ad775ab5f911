package etcdkit_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// contents returns a cache's entries as a name -> value map.
func contents(ca *etcdkit.Cache[string]) map[string]string {
	m := map[string]string{}
	for _, e := range ca.List() {
		m[e.Name] = e.Data
	}
	return m
}

// listed returns the prefix's entries read from etcd as a name -> value map.
func listed(t testing.TB, p *etcdkit.Prefix[string]) map[string]string {
	t.Helper()
	entries, _, err := p.List(testContext(t, waitTimeout))
	require.NoError(t, err)
	m := map[string]string{}
	for _, e := range entries {
		m[e.Name] = e.Data
	}
	return m
}

func TestCacheServesReadsFromMemory(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "cache")
	wr := newWriter(t, srv.Client(t), "cache")
	for _, n := range []string{"b", "a", "c/d"} {
		wr.put("svc/"+n, "v-"+n)
	}
	seeded := wr.put("svc2/x", "neighbour")
	p := etcdkit.NewPrefix(c, "svc", etcdkit.String())
	ctx := testContext(t, time.Minute)

	ca, err := p.Cache(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = ca.Close() })
	feed := collect(t, ca.Subscribe(etcdkit.WithInitial()))
	waitSynced(t, ca)
	assert.GreaterOrEqual(t, ca.Revision(), seeded)
	assert.Equal(t, []string{"a", "b", "c/d"}, func() (names []string) {
		for _, e := range ca.List() {
			names = append(names, e.Name)
		}
		return names
	}(), "List is sorted by name")
	v, ok := ca.Get("c/d")
	require.True(t, ok)
	assert.Equal(t, "v-c/d", v.Data)
	_, ok = ca.Get("x")
	assert.False(t, ok)
	assert.Equal(t, 3, ca.Len())
	untilState(t, "cache", ca.State, etcdkit.WatchConnected)

	// Every event a subscriber receives is already applied to the cache.
	live := ca.Subscribe()
	liveDone := make(chan []change)
	go func() {
		var got []change
		for e := range live.Events() {
			v, ok := ca.Get(e.Name)
			switch e.Type {
			case etcdkit.Put:
				assert.True(t, ok && v.Revision >= e.Revision, "put %s@%d not yet in the cache", e.Name, e.Revision)
			case etcdkit.Delete:
				assert.True(t, !ok || v.Revision > e.Revision, "delete %s@%d not yet applied", e.Name, e.Revision)
			}
			got = append(got, changesOf([]etcdkit.Event[string]{e})...)
		}
		liveDone <- got
	}()
	start := currentRev(t, srv.Client(t))
	wr.put("svc/a", "v2")
	wr.del("svc/b")
	wr.txn("svc/e", "new", "svc/a", "v3")
	last := wr.put("svc/c/d", "v4")
	eventually(t, "cache at the last write", func() bool { return ca.Revision() >= last })
	assert.Equal(t, listed(t, p), contents(ca))
	_, ok = ca.Get("b")
	assert.False(t, ok, "deleted")

	// The change feed delivers the applied changes in order.
	eventually(t, "feed caught up", func() bool {
		evs := feed.events()
		return len(evs) > 0 && evs[len(evs)-1].Revision >= last
	})
	require.NoError(t, live.Close())
	assert.Equal(t, wr.since(start, "svc/"), <-liveDone)
	evs := feed.events()
	for i, e := range evs {
		assert.Equal(t, i < 3, e.Initial, "the first three are the initial contents")
	}
	assert.Equal(t, contents(ca), model(evs))

	// Progress notifications advance the revision while the prefix is
	// quiet.
	other := wr.put("elsewhere", "x")
	eventually(t, "revision advanced by progress", func() bool { return ca.Revision() >= other })
}

// The cache's link is cut (proxy Stop: FIN, refused dials) while keys
// change and the history is compacted. A raw list+watch cache would see its
// watch channel closed with ErrCompacted and have to rebuild from scratch;
// this one applies the differences, deletes included, and tells its
// subscribers with Resync events.
func TestCacheResyncAfterCompaction(t *testing.T) {
	f := startFaulty(t, "cres")
	for _, n := range []string{"a", "b", "c", "d"} {
		f.wr.put("cfg/"+n, "1")
	}
	p := etcdkit.NewPrefix(f.c, "cfg", etcdkit.String())
	ca, err := p.Cache(testContext(t, time.Minute))
	require.NoError(t, err)
	t.Cleanup(func() { _ = ca.Close() })
	waitSynced(t, ca)
	sub := collect(t, ca.Subscribe(etcdkit.WithInitial()))
	untilState(t, "cache", ca.State, etcdkit.WatchConnected)
	sub.until(t, "initial contents", func(evs []etcdkit.Event[string]) bool { return len(evs) == 4 })

	f.srv.Proxy().Stop()
	untilState(t, "cache", ca.State, etcdkit.WatchSuspended)
	f.wr.put("cfg/a", "2")
	f.wr.del("cfg/b")
	f.wr.put("cfg/e", "new")
	f.wr.del("cfg/c")
	f.wr.put("cfg/c", "again")
	compacted := f.srv.Compact(t)
	before := contents(ca)
	require.NoError(t, f.srv.Proxy().Start())

	eventually(t, "cache resynced", func() bool { return ca.Revision() >= compacted })
	want := listed(t, p)
	assert.Equal(t, want, contents(ca))
	assert.NotEqual(t, before, want)
	evs := sub.until(t, "resync events", func(evs []etcdkit.Event[string]) bool {
		return len(evs) > 4 && assert.ObjectsAreEqual(want, model(evs))
	})
	for _, e := range evs[4:] {
		assert.True(t, e.Resync, "event %v is flagged Resync", changesOf([]etcdkit.Event[string]{e}))
	}
	assert.ElementsMatch(t, []string{"a", "b", "c", "e"}, func() (names []string) {
		for _, e := range evs[4:] {
			names = append(names, e.Name)
		}
		return names
	}(), "only what changed")
}

// A subscription that does not read is unhooked when its buffer is full;
// when it reads again it gets its buffer, then every later change from
// etcd's history, one by one, then follows the cache again. Others are not
// held up meanwhile.
func TestCacheSlowSubscriber(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "cslow")
	wr := newWriter(t, srv.Client(t), "cslow")
	p := etcdkit.NewPrefix(c, "q", etcdkit.String())
	ca, err := p.Cache(testContext(t, time.Minute))
	require.NoError(t, err)
	t.Cleanup(func() { _ = ca.Close() })
	waitSynced(t, ca)
	slow := ca.Subscribe(etcdkit.WithBufferSize(4))
	t.Cleanup(func() { _ = slow.Close() })
	fast := collect(t, ca.Subscribe())

	start := currentRev(t, srv.Client(t))
	var last int64
	for i := range 60 {
		last = wr.put(fmt.Sprintf("q/k%d", i%6), fmt.Sprint(i))
		if i%9 == 0 {
			last = wr.del(fmt.Sprintf("q/k%d", (i+2)%6))
		}
	}
	fast.untilRev(t, last)
	assert.Equal(t, wr.since(start, "q/"), changesOf(fast.events()))

	col := collect(t, slow)
	evs := col.untilRev(t, last)
	assert.Equal(t, wr.since(start, "q/"), changesOf(evs), "its buffer, then the rest from history")
	assert.Equal(t, contents(ca), model(evs))
	next := wr.put("q/k0", "after")
	evs = col.untilRev(t, next)
	assert.Equal(t, wr.since(start, "q/"), changesOf(evs), "then it follows again")
}

func TestCacheEndings(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "cend")
	p := etcdkit.NewPrefix(c, "p", etcdkit.String())

	check := func(t *testing.T, ca *etcdkit.Cache[string], sub *etcdkit.Watch[string], want error) {
		t.Helper()
		waitDone(t, ca.Done(), "cache")
		require.ErrorIs(t, ca.Err(), want)
		assert.Equal(t, etcdkit.WatchClosed, ca.State())
		waitDone(t, sub.Done(), "subscription")
		require.ErrorIs(t, sub.Err(), want)
		require.NoError(t, ca.Close())
		require.ErrorIs(t, ca.Err(), want)
		ended := ca.Subscribe()
		waitDone(t, ended.Done(), "subscription after the end")
		require.ErrorIs(t, ended.Err(), want)
	}
	t.Run("ctx cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		ca, err := p.Cache(ctx)
		require.NoError(t, err)
		sub := ca.Subscribe()
		waitSynced(t, ca)
		require.NoError(t, ca.Err())
		cancel()
		check(t, ca, sub, context.Canceled)
	})
	t.Run("Close", func(t *testing.T) {
		ca, err := p.Cache(context.Background())
		require.NoError(t, err)
		sub := ca.Subscribe()
		require.NoError(t, ca.Close())
		check(t, ca, sub, etcdkit.ErrClosed)
	})
	t.Run("Client.Close", func(t *testing.T) {
		c2 := testClient(t, []string{srv.Endpoint()}, "cend")
		ca, err := etcdkit.NewPrefix(c2, "p", etcdkit.String()).Cache(context.Background())
		require.NoError(t, err)
		sub := ca.Subscribe()
		waitSynced(t, ca)
		require.NoError(t, c2.Close())
		check(t, ca, sub, etcdkit.ErrClosed)
		_, err = etcdkit.NewPrefix(c2, "p", etcdkit.String()).Cache(context.Background())
		require.ErrorIs(t, err, etcdkit.ErrClosed)
	})
	t.Run("invalid", func(t *testing.T) {
		_, err := etcdkit.NewPrefix(c, "a//b", etcdkit.String()).Cache(context.Background())
		require.ErrorIs(t, err, etcdkit.ErrInvalidName)
		ca, err := p.Cache(testContext(t, time.Minute))
		require.NoError(t, err)
		t.Cleanup(func() { _ = ca.Close() })
		w := ca.Subscribe(etcdkit.WithBufferSize(0))
		waitDone(t, w.Done(), "subscription")
		require.ErrorContains(t, w.Err(), "size must be positive")
	})
}

// A value that does not decode is left out of the cache but its change is
// still delivered, with Event.Err set.
func TestCacheDecodeError(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "cdec")
	wr := newWriter(t, srv.Client(t), "cdec")
	wr.put("n/good", "1")
	wr.put("n/bad", "not a number")
	ca, err := etcdkit.NewPrefix(c, "n", etcdkit.JSON[int]()).Cache(testContext(t, time.Minute))
	require.NoError(t, err)
	t.Cleanup(func() { _ = ca.Close() })
	sub := ca.Subscribe(etcdkit.WithInitial())
	t.Cleanup(func() { _ = sub.Close() })
	waitSynced(t, ca)
	_, ok := ca.Get("bad")
	assert.False(t, ok)
	v, ok := ca.Get("good")
	require.True(t, ok)
	assert.Equal(t, 1, v.Data)
	assert.Len(t, ca.List(), 1)
	var errs int
	for range 2 {
		select {
		case e := <-sub.Events():
			var de *etcdkit.DecodeError
			if e.Name == "bad" {
				require.ErrorAs(t, e.Err, &de)
				assert.Equal(t, "n/bad", de.Key)
				errs++
			}
		case <-time.After(waitTimeout):
			t.Fatal("no initial event")
		}
	}
	assert.Equal(t, 1, errs)
	wr.put("n/bad", "2")
	eventually(t, "fixed value cached", func() bool { v, ok := ca.Get("bad"); return ok && v.Data == 2 })
}

// Reads run concurrently with updates (go test -race checks the locking).
func TestCacheConcurrentReads(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "cconc")
	wr := newWriter(t, srv.Client(t), "cconc")
	ca, err := etcdkit.NewPrefix(c, "q", etcdkit.String()).Cache(testContext(t, time.Minute))
	require.NoError(t, err)
	t.Cleanup(func() { _ = ca.Close() })
	waitSynced(t, ca)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				list := ca.List()
				for i := 1; i < len(list); i++ {
					if list[i-1].Name >= list[i].Name {
						t.Errorf("List not sorted: %q before %q", list[i-1].Name, list[i].Name)
						return
					}
				}
				ca.Get("k1")
				ca.Revision()
			}
		})
	}
	var last int64
	for i := range 50 {
		last = wr.put(fmt.Sprintf("q/k%d", i%7), fmt.Sprint(i))
	}
	eventually(t, "cache at the last write", func() bool { return ca.Revision() >= last })
	close(stop)
	wg.Wait()
	assert.Equal(t, 7, len(ca.List()))
}

// A cache that ends before its first sync closes Synced too, with Err set,
// as Watch.Synced does: a caller waiting on Synced must not hang. The member
// is out of reach (proxy Blackhole on the client's only link) so the
// initial list never completes; then the cache's ctx is cancelled.
func TestCacheSyncedClosesWhenItEndsFirst(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()}, Namespace: "unsynced"})
	srv.Proxy().Blackhole(proxy.Both)
	t.Cleanup(srv.Proxy().Unblackhole)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ca, err := etcdkit.NewPrefix(c, "p", etcdkit.String()).Cache(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = ca.Close() })
	select {
	case <-ca.Synced():
		t.Fatal("Synced closed while the member is out of reach")
	case <-time.After(200 * time.Millisecond):
	}
	cancel()
	waitDone(t, ca.Synced(), "Synced of a cache that ended before syncing")
	assert.ErrorIs(t, ca.Err(), context.Canceled)
	assert.Zero(t, ca.Revision())
}

// A Cache subscriber that falls behind must not lose changes that history
// still has. Buffer 2: two puts fill it; while its reader is idle a new key
// is created and deleted. Summing up "what it had" against the cache's
// contents finds the key absent both times and says nothing: the create and
// the delete would be lost without a Resync, as the robustness soak saw
// (seed 1465191355: a Cache.Subscribe feed with a small buffer skipped a put
// and a delete of one key).
func TestCacheSubscriberBehindGetsChangesFromHistory(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "cachelag")
	wr := newWriter(t, srv.Client(t), "cachelag")
	ctx := testContext(t, time.Minute)
	ca, err := etcdkit.NewPrefix(c, "p", etcdkit.String()).Cache(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = ca.Close() })
	waitSynced(t, ca)

	gate := make(chan struct{})
	col := collectAfter(t, ca.Subscribe(etcdkit.WithBufferSize(2)), gate)
	start := ca.Revision()
	wr.put("p/a", "1")
	wr.put("p/b", "2")
	wr.put("p/k", "3")
	last := wr.del("p/k")
	eventually(t, "the cache at the last change", func() bool { return ca.Revision() >= last })
	close(gate)

	evs := col.untilRev(t, last)
	assert.Equal(t, wr.since(start, "p/"), changesOf(evs))
}

// A Cache subscription never runs ahead of the cache, also while it catches
// up from history after falling behind: when an event arrives, the cache
// already reflects it. Buffer 2: a and b fill it, c unhooks it. The cache
// is then held (as a cache goroutine slow to run would be) while d and e
// are written, and the reader drains: catching up from history, the
// subscription finds d and e, which the cache has not applied, and must
// leave them to the cache.
func TestCacheSubscriberNeverAheadOfTheCache(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "cahead")
	wr := newWriter(t, srv.Client(t), "cahead")
	ctx := testContext(t, time.Minute)
	ca, err := etcdkit.NewPrefix(c, "p", etcdkit.String()).Cache(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = ca.Close() })
	waitSynced(t, ca)
	w := ca.Subscribe(etcdkit.WithBufferSize(2))
	t.Cleanup(func() { _ = w.Close() })
	start := ca.Revision()

	wr.put("p/a", "1")
	wr.put("p/b", "2")
	applied := wr.put("p/c", "3")
	eventually(t, "the cache at c", func() bool { return ca.Revision() >= applied })
	release := etcdkit.HoldCache(ca)
	held := true
	defer func() {
		if held {
			release()
		}
	}()
	wr.put("p/d", "4")
	last := wr.put("p/e", "5")

	var got []etcdkit.Event[string]
	for len(got) < 3 {
		got = append(got, nextEvent(t, w))
	}
	select {
	case e := <-w.Events():
		t.Fatalf("event %s@%d arrived while the cache, held, was at revision %d", e.Name, e.Revision, applied)
	case <-time.After(300 * time.Millisecond):
	}
	release()
	held = false
	for len(got) < 5 {
		e := nextEvent(t, w)
		if rev := ca.Revision(); rev < e.Revision {
			t.Fatalf("event %s@%d arrived while the cache was at revision %d", e.Name, e.Revision, rev)
		}
		got = append(got, e)
	}
	assert.Equal(t, wr.since(start, "p/"), changesOf(got))
	assert.Equal(t, last, got[4].Revision)
}
