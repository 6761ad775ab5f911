package etcdkit_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/metadata"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// serverEventsSent returns how many events the in-process etcd members of
// this test binary have sent to watchers so far
// (etcd_debugging_mvcc_events_total).
func serverEventsSent(t testing.TB) float64 {
	return serverCounter(t, "etcd_debugging_mvcc_events_total")
}

// serverCounter returns the value of the in-process etcd members' counter
// called name.
func serverCounter(t testing.TB, name string) float64 {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("%s not found", name)
	return 0
}

// A Cache reads its prefix once to sync: the shared stream it opens reads
// the values as well, and hands that read to the cache, rather than read
// the keys for itself while the cache reads the values again (which made a
// 50,000-entry sync take twice a raw read's time).
func TestCacheReadsItsPrefixOnce(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "app")
	p := etcdkit.NewPrefix(c, "cfg", etcdkit.String())
	for _, n := range []string{"a", "b", "c"} {
		_, err := p.Key(n).Put(t.Context(), "v-"+n)
		require.NoError(t, err)
	}
	before := serverCounter(t, "etcd_mvcc_range_total")
	ca, err := p.Cache(t.Context())
	require.NoError(t, err)
	t.Cleanup(func() { _ = ca.Close() })
	select {
	case <-ca.Synced():
	case <-time.After(30 * time.Second):
		t.Fatal("cache not synced within 30s")
	}
	require.NoError(t, ca.Err())
	ranges := serverCounter(t, "etcd_mvcc_range_total") - before
	assert.Equal(t, 1.0, ranges, "range requests made to sync a cache of 3 keys")
	got := map[string]string{}
	for _, e := range ca.List() {
		got[e.Name] = e.Value.Data
	}
	assert.Equal(t, map[string]string{"a": "v-a", "b": "v-b", "c": "v-c"}, got)
}

// A subscriber whose buffer holds less than one revision's events on top of
// what it has waiting must not make its catch-up re-read history while its
// reader is idle. Buffer 16: 16 single puts fill it, a 12-key transaction
// does not fit, the reader takes 10 and stops. With 6 waiting the backlog is
// at half, but the transaction still does not fit: resuming then would read
// the 12 events, find no room, pause and start over, in a loop (about 130
// events a second sent by etcd for nothing).
func TestWatchCatchUpWaitsForRoomForTheNextRevision(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "spin")
	wr := newWriter(t, srv.Client(t), "spin")
	ctx := testContext(t, time.Minute)

	w := etcdkit.NewPrefix(c, "p", etcdkit.String()).Watch(ctx, etcdkit.WithBufferSize(16))
	t.Cleanup(func() { _ = w.Close() })
	waitSynced(t, w)
	start := currentRev(t, srv.Client(t))
	for i := range 16 {
		wr.put(fmt.Sprintf("p/a%02d", i), "v")
	}
	var kv []string
	for i := range 12 {
		kv = append(kv, fmt.Sprintf("p/b%02d", i), "v")
	}
	wr.txn(kv...)

	var got []etcdkit.Event[string]
	for range 10 {
		got = append(got, nextEvent(t, w))
	}
	// The reader is idle now. Watch the server for a while: the count of
	// events it sends to watchers must stay flat (one resumed read of the
	// transaction is tolerated).
	before := serverEventsSent(t)
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if sent := serverEventsSent(t) - before; sent > 12 {
			t.Fatalf("etcd sent %v watch events while the reader was idle, want at most 12", sent)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Reading on brings the transaction, whole and in order.
	for len(got) < 28 {
		got = append(got, nextEvent(t, w))
	}
	assert.Equal(t, wr.since(start, "p/"), changesOf(got))
}

// clientv3 picks the gRPC stream of a watch by the outgoing metadata of its
// ctx. A subscriber made with a ctx that carries metadata (a request id put
// there by tracing middleware) and unhooked for being slow must still rejoin
// its shared stream once it has caught up: its own etcd watch must run on
// the stream the engine asks for progress on, or on a quiet key it never
// learns it has caught up and keeps a second etcd watch for life.
func TestWatchCatchUpRejoinsWithCallerMetadata(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "md")
	wr := newWriter(t, srv.Client(t), "md")
	ctx := metadata.AppendToOutgoingContext(testContext(t, time.Minute), "x-request-id", "42")

	p := etcdkit.NewPrefix(c, "p", etcdkit.String())
	// The cache shares the subscriber's stream and shows its position.
	ca, err := p.Cache(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = ca.Close() })
	gate := make(chan struct{})
	w := collectAfter(t, p.Watch(ctx, etcdkit.WithBufferSize(4)), gate)
	waitSynced(t, w.w)
	start := currentRev(t, srv.Client(t))
	var last int64
	for i := range 12 {
		last = wr.put(fmt.Sprintf("p/k%02d", i), "v")
	}
	// A write elsewhere moves the shared stream past the prefix's last
	// change (by a progress notification), so that catching up ends with a
	// progress notification too, not with an event.
	other := wr.put("elsewhere", "v")
	eventually(t, "the shared stream past the last change", func() bool { return ca.Revision() >= other })
	close(gate)
	evs := w.untilRev(t, last)
	assert.Equal(t, wr.since(start, "p/"), changesOf(evs))
	eventually(t, "the subscriber back on its shared stream (one etcd watch)", func() bool {
		return etcdkit.EtcdWatches(c) == 1
	})
}

// A watch from now never delivers a change older than what the caller read
// before calling Watch. The shared stream's link is silenced (proxy
// Blackhole on the stream connection, requests go straight to the member)
// while x is written twice; Get returns the second value; then Watch from
// now, and the link heals. Starting at the shared stream's stale position,
// the watch would hand the caller both writes again, the older one first,
// and a service doing "Get, then Watch from now" would briefly apply a stale
// value.
func TestWatchFromNowStartsAfterWhatTheCallerRead(t *testing.T) {
	s := startSplit(t, "fromnow")
	ctx := testContext(t, time.Minute)
	k := etcdkit.NewKey(s.c, "x", etcdkit.String())

	feed := collect(t, k.Watch(ctx))
	waitSynced(t, feed.w)
	s.cut(t, feed.w)
	s.wr.put("x", "old")
	s.wr.put("x", "current")
	v, err := k.Get(ctx)
	require.NoError(t, err)
	require.Equal(t, "current", v.Data)

	w := collect(t, k.Watch(ctx))
	waitSynced(t, w.w)
	s.srv.Proxy().Unblackhole()
	after := s.wr.put("x", "after")

	evs := w.untilRev(t, after)
	assert.Equal(t, []change{{etcdkit.Put, "x", "after", after, false}}, changesOf(evs))
	require.Greater(t, after, v.Revision)
}
