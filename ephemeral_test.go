package etcdkit_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// lsEphemeral puts value at name for the test, closing it at cleanup.
func lsEphemeral(t testing.TB, c *etcdkit.Client, name, value string, ttl time.Duration, opts ...etcdkit.EphemeralOption) *etcdkit.Ephemeral[string] {
	t.Helper()
	e, err := etcdkit.NewEphemeral(lsContext(t), etcdkit.NewKey(c, name, etcdkit.String()), value, ttl, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = e.Close() })
	return e
}

// lsGet reads key directly: its value and lease, or ok false if absent.
func lsGet(t testing.TB, raw *clientv3.Client, key string) (value string, lease clientv3.LeaseID, ok bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := raw.Get(ctx, key)
	require.NoError(t, err)
	if len(resp.Kvs) == 0 {
		return "", 0, false
	}
	return string(resp.Kvs[0].Value), clientv3.LeaseID(resp.Kvs[0].Lease), true
}

// lsHolds waits until key holds value under e's current lease.
func lsHolds(t testing.TB, raw *clientv3.Client, e *etcdkit.Ephemeral[string], key, value string, within time.Duration) {
	t.Helper()
	require.Eventually(t, func() bool {
		v, l, ok := lsGet(t, raw, key)
		return ok && v == value && l == e.Lease()
	}, within, lsTick, "key %q never held %q under lease %x", key, value, int64(e.Lease()))
}

func TestEphemeralPutAndClose(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, Namespace: "app"})
	raw := srv.Client(t)

	// A value left by someone else (a previous run of the owner, say) is
	// replaced, not an error.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := raw.Put(ctx, "app/svc/a", "stale")
	require.NoError(t, err)

	e := lsEphemeral(t, c, "svc/a", "10.0.0.1:80", 2*time.Second)
	v, lease, ok := lsGet(t, raw, "app/svc/a")
	require.True(t, ok, "key absent after NewEphemeral")
	assert.Equal(t, "10.0.0.1:80", v)
	assert.Equal(t, e.Lease(), lease)
	assert.Greater(t, lsLeaseTTL(t, raw, lease), int64(0))
	assert.Equal(t, etcdkit.SessionLive, e.State())
	assert.Equal(t, "svc/a", e.Key().Name())

	require.NoError(t, e.Close())
	require.NoError(t, e.Close(), "second Close")
	_, _, ok = lsGet(t, raw, "app/svc/a")
	assert.False(t, ok, "key present right after Close")
	assert.Equal(t, int64(-1), lsLeaseTTL(t, raw, lease), "lease TTL right after Close")
	select {
	case <-e.Done():
	default:
		t.Fatal("Done not closed after Close")
	}
	assert.ErrorIs(t, e.Err(), etcdkit.ErrClosed)
	assert.ErrorIs(t, e.Update(context.Background(), "x"), etcdkit.ErrClosed)
}

// TestEphemeralRestores: another client deletes the key, then overwrites it
// (raw Delete and Put). A raw-client user's registration stays deleted or
// wrong until the process restarts; the Ephemeral puts its value back under
// its lease and says so on States and in Metrics.
func TestEphemeralRestores(t *testing.T) {
	srv := etcdtest.Start(t)
	m := newMetrics()
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, Metrics: m})
	raw := srv.Client(t)
	e := lsEphemeral(t, c, "svc/b", "mine", 2*time.Second)
	states := recordStates(t, e.States())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	start := time.Now()
	_, err := raw.Delete(ctx, "svc/b")
	require.NoError(t, err)
	lsHolds(t, raw, e, "svc/b", "mine", lsWait)
	states.waitFor(t, etcdkit.SessionRestored, start, lsWait)
	assert.Equal(t, 1.0, m.get(etcdkit.MetricEphemeralRestores), "restores after delete")

	start = time.Now()
	_, err = raw.Put(ctx, "svc/b", "intruder")
	require.NoError(t, err)
	lsHolds(t, raw, e, "svc/b", "mine", lsWait)
	states.waitFor(t, etcdkit.SessionRestored, start, lsWait)
	assert.Equal(t, 2.0, m.get(etcdkit.MetricEphemeralRestores), "restores after overwrite")

	// An overwrite under the owner's own lease is still someone else's.
	start = time.Now()
	_, err = raw.Put(ctx, "svc/b", "intruder", clientv3.WithLease(e.Lease()))
	require.NoError(t, err)
	lsHolds(t, raw, e, "svc/b", "mine", lsWait)
	states.waitFor(t, etcdkit.SessionRestored, start, lsWait)

	assert.Equal(t, etcdkit.SessionLive, e.State())
	got := states.list()
	assert.Equal(t, etcdkit.SessionLive, got[len(got)-1], "last state; all: %v", got)
}

func TestEphemeralUpdate(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}})
	raw := srv.Client(t)
	e := lsEphemeral(t, c, "svc/c", "v1", 2*time.Second)
	lease := e.Lease()
	states := recordStates(t, e.States())

	require.NoError(t, e.Update(lsContext(t), "v2"))
	v, l, ok := lsGet(t, raw, "svc/c")
	require.True(t, ok)
	assert.Equal(t, "v2", v)
	assert.Equal(t, lease, l, "lease after Update")
	assert.Equal(t, lease, e.Lease())

	// Someone overwrites, then the owner updates: the owner's value wins and
	// is the one later restores write.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := raw.Put(ctx, "svc/c", "intruder")
	require.NoError(t, err)
	require.NoError(t, e.Update(lsContext(t), "v3"))
	lsHolds(t, raw, e, "svc/c", "v3", lsWait)
	start := time.Now()
	_, err = raw.Delete(ctx, "svc/c")
	require.NoError(t, err)
	lsHolds(t, raw, e, "svc/c", "v3", lsWait)
	states.waitFor(t, etcdkit.SessionRestored, start, lsWait)
}

func TestEphemeralErrors(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}})
	raw := srv.Client(t)
	key := etcdkit.NewKey(c, "svc/d", etcdkit.String())

	_, err := etcdkit.NewEphemeral(lsContext(t), key, "x", 500*time.Millisecond)
	assert.ErrorIs(t, err, etcdkit.ErrInvalidTTL)

	_, err = etcdkit.NewEphemeral(lsContext(t), etcdkit.NewKey(c, "../d", etcdkit.String()), "x", 2*time.Second)
	assert.ErrorIs(t, err, etcdkit.ErrInvalidName)

	small := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, MaxValueSize: 4})
	_, err = etcdkit.NewEphemeral(lsContext(t), etcdkit.NewKey(small, "svc/d", etcdkit.String()), "too long", 2*time.Second)
	assert.ErrorIs(t, err, etcdkit.ErrTooLarge)

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = etcdkit.NewEphemeral(cancelled, key, "x", 2*time.Second)
	assert.ErrorIs(t, err, context.Canceled)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e, err := etcdkit.NewEphemeral(ctx, key, "x", 2*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { _ = e.Close() })
	lease := e.Lease()
	cancel()
	select {
	case <-e.Done():
	case <-time.After(lsWait):
		t.Fatal("Ephemeral still running after its ctx was cancelled")
	}
	assert.ErrorIs(t, e.Err(), context.Canceled)
	_, _, ok := lsGet(t, raw, "svc/d")
	assert.False(t, ok, "key present after ctx ended")
	assert.Equal(t, int64(-1), lsLeaseTTL(t, raw, lease))

	other := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}})
	e2, err := etcdkit.NewEphemeral(lsContext(t), etcdkit.NewKey(other, "svc/e", etcdkit.String()), "x", 2*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { _ = e2.Close() })
	require.NoError(t, other.Close())
	select {
	case <-e2.Done():
	default:
		t.Fatal("Done not closed after Client.Close returned")
	}
	assert.ErrorIs(t, e2.Err(), etcdkit.ErrClosed)
	_, _, ok = lsGet(t, raw, "svc/e")
	assert.False(t, ok, "key present after Client.Close")
	_, err = etcdkit.NewEphemeral(lsContext(t), etcdkit.NewKey(other, "svc/e", etcdkit.String()), "x", 2*time.Second)
	assert.ErrorIs(t, err, etcdkit.ErrClosed)
}

// TestEphemeralLeaseRevokedElsewhere: another client revokes the owner's
// lease (raw Revoke), which deletes the key. A raw-client owner would keep
// running without its key and without knowing; the Ephemeral reports Lost,
// gets a new lease and puts the key back (Recovered).
func TestEphemeralLeaseRevokedElsewhere(t *testing.T) {
	srv := etcdtest.Start(t)
	m := newMetrics()
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, Metrics: m})
	raw := srv.Client(t)
	e := lsEphemeral(t, c, "svc/f", "mine", 2*time.Second)
	states := recordStates(t, e.States())
	old := e.Lease()

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := raw.Revoke(ctx, old)
	require.NoError(t, err)

	states.waitFor(t, etcdkit.SessionRecovered, start, lsWait)
	assert.NotEqual(t, old, e.Lease())
	lsHolds(t, raw, e, "svc/f", "mine", lsWait)
	assert.GreaterOrEqual(t, m.get(etcdkit.MetricEphemeralRestores), 1.0)
	got := states.list()
	assert.Contains(t, got, etcdkit.SessionLost)
	assert.Equal(t, etcdkit.SessionLive, got[len(got)-1], "states %v", got)
}

// keyEvents records the events of a direct watch on one key, with the time
// each was received.
type keyEvents struct {
	mu     sync.Mutex
	events []stampedEvent
}

type stampedEvent struct {
	typ   mvccpb.Event_EventType
	value string
	lease int64
	at    time.Time
}

// watchKey watches key on raw from the current revision until the test
// ends.
func watchKey(t testing.TB, raw *clientv3.Client, key string) *keyEvents {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	wch := raw.Watch(clientv3.WithRequireLeader(ctx), key)
	k := &keyEvents{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for wr := range wch {
			now := time.Now()
			k.mu.Lock()
			for _, ev := range wr.Events {
				k.events = append(k.events, stampedEvent{ev.Type, string(ev.Kv.Value), ev.Kv.Lease, now})
			}
			k.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	// Make sure the watch is registered before the test acts.
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	require.NoError(t, raw.RequestProgress(clientv3.WithRequireLeader(wctx)))
	return k
}

// first returns the first event of type typ received at or after from.
func (k *keyEvents) first(typ mvccpb.Event_EventType, from time.Time) (stampedEvent, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, ev := range k.events {
		if ev.typ == typ && !ev.at.Before(from) {
			return ev, true
		}
	}
	return stampedEvent{}, false
}

func (k *keyEvents) count(typ mvccpb.Event_EventType) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	n := 0
	for _, ev := range k.events {
		if ev.typ == typ {
			n++
		}
	}
	return n
}

func (k *keyEvents) waitFirst(t testing.TB, typ mvccpb.Event_EventType, from time.Time, within time.Duration) stampedEvent {
	t.Helper()
	var ev stampedEvent
	require.Eventually(t, func() bool {
		var ok bool
		ev, ok = k.first(typ, from)
		return ok
	}, within, lsTick, "no %v event on the key", typ)
	return ev
}

// TestEphemeralOwnerCutOff blackholes the owner's link in both directions
// (proxy Blackhole(Both)) for longer than the TTL, then heals it
// (Unblackhole). With the raw client, the owner would learn nothing for the
// ~15s gRPC keepalive takes to give up (its concurrency.Session's Done comes
// after the server has already deleted the key, if at all), and its key
// would stay gone after the link returns. Here the owner is told Suspended,
// then Lost before the server deletes the key, and the key is back right
// after the heal.
func TestEphemeralOwnerCutOff(t *testing.T) {
	const ttl = 2 * time.Second
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()}, Logger: lsLogger(t)})
	raw := srv.Client(t)
	events := watchKey(t, raw, "svc/cut")
	e := lsEphemeral(t, c, "svc/cut", "mine", ttl)
	states := recordStates(t, e.States())

	cut := time.Now()
	srv.Proxy().Blackhole(proxy.Both)

	del := events.waitFirst(t, mvccpb.DELETE, cut, ttl+lsWait)
	suspended := states.waitFor(t, etcdkit.SessionSuspended, cut, lsWait)
	lost := states.waitFor(t, etcdkit.SessionLost, cut, lsWait)
	t.Logf("after the cut: SessionSuspended %v, SessionLost %v, deleted %v; SessionLost came %v before the deletion",
		suspended.Sub(cut), lost.Sub(cut), del.at.Sub(cut), del.at.Sub(lost))
	// The server renewed the lease last before the cut, and sweeps expired
	// leases every 500ms; allow 1s more for a loaded machine.
	assert.Less(t, del.at.Sub(cut), ttl+etcdtest.DefaultElection+time.Second, "deletion after the cut")
	assert.True(t, suspended.Before(lost), "Suspended %v after SessionLost %v", suspended.Sub(cut), lost.Sub(cut))
	assert.True(t, lost.Before(del.at), "Lost %v after the deletion %v", lost.Sub(cut), del.at.Sub(cut))

	heal := time.Now()
	srv.Proxy().Unblackhole()
	back := events.waitFirst(t, mvccpb.PUT, heal, lsWait)
	t.Logf("key back %v after the heal", back.at.Sub(heal))
	assert.Less(t, back.at.Sub(heal), 2*time.Second, "key back after the heal")
	assert.Equal(t, "mine", back.value)
	states.waitFor(t, etcdkit.SessionRecovered, heal, lsWait)
	lsHolds(t, raw, e, "svc/cut", "mine", lsWait)
	require.Eventually(t, func() bool { return e.State() == etcdkit.SessionLive }, lsWait, lsTick)
}

// TestEphemeralServerRestart restarts the only member: at once (etcdtest
// Restart), and after an outage longer than the TTL (Stop, then Restart once
// the owner has declared its lease Lost). A raw KeepAlive retries quietly;
// after the long outage its concurrency.Session has ended for good and the
// key, revived with its old lease by the restart, expires a TTL later. Here
// the session survives the short restart and recovers from the long one, and
// the key is present afterwards, under a live lease.
func TestEphemeralServerRestart(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, Logger: lsLogger(t)})
	raw := srv.Client(t)

	check := func(t *testing.T, e *etcdkit.Ephemeral[string], key string, old clientv3.LeaseID) {
		lsHolds(t, raw, e, key, "mine", lsWait)
		require.Eventually(t, func() bool { return e.State() == etcdkit.SessionLive }, lsWait, lsTick)
		// If the session had to move to a new lease, the old one expires
		// on its own; the key must not go with it.
		if e.Lease() != old {
			require.Eventually(t, func() bool { return lsLeaseTTL(t, raw, old) == -1 }, lsWait, lsTick)
		}
		lsHolds(t, raw, e, key, "mine", lsWait)
		assert.Greater(t, lsLeaseTTL(t, raw, e.Lease()), int64(0))
	}

	t.Run("restart", func(t *testing.T) {
		e := lsEphemeral(t, c, "svc/restart", "mine", 2*time.Second)
		states := recordStates(t, e.States())
		old := e.Lease()
		require.NoError(t, srv.Restart())
		check(t, e, "svc/restart", old)
		t.Logf("states: %v; lease changed: %v", states.list(), e.Lease() != old)
	})

	t.Run("outage", func(t *testing.T) {
		e := lsEphemeral(t, c, "svc/outage", "mine", 2*time.Second)
		states := recordStates(t, e.States())
		old := e.Lease()
		stop := time.Now()
		srv.Stop()
		states.waitFor(t, etcdkit.SessionLost, stop, lsWait)
		restart := time.Now()
		require.NoError(t, srv.Restart())
		states.waitFor(t, etcdkit.SessionRecovered, restart, lsWait)
		assert.NotEqual(t, old, e.Lease())
		check(t, e, "svc/outage", old)
		t.Logf("states: %v", states.list())
	})
}

// TestEphemeralMemberStopped stops the member (etcdtest Stop) that the
// owner's keepalives go to, in a three-member cluster. A raw client keeps
// its keepalive stream on the dead member until gRPC notices, and its key
// can expire meanwhile; here the session moves to another member at once,
// keeps its lease, and the key never disappears.
func TestEphemeralMemberStopped(t *testing.T) {
	const ttl = 3 * time.Second
	cl := etcdtest.StartCluster(t, 3, etcdtest.WithProxy())
	cl.WaitLeader(t)
	m := newMetrics()
	c := testClientConfig(t, etcdkit.Config{Endpoints: cl.Endpoints(), Logger: lsLogger(t), Metrics: m})
	e := lsEphemeral(t, c, "svc/moved", "mine", ttl)
	states := recordStates(t, e.States())
	lease := e.Lease()

	// The owner's member is the one its keepalives reach: the proxy with the
	// most upstream traffic over a few keepalive intervals.
	members := cl.Members()
	before := make([]int64, len(members))
	for i, m := range members {
		before[i] = m.Proxy().Stats().BytesUp
	}
	time.Sleep(ttl) // a measurement window, not synchronisation
	owner := members[0]
	var most int64 = -1
	for i, m := range members {
		if d := m.Proxy().Stats().BytesUp - before[i]; d > most {
			owner, most = m, d
		}
	}
	assert.Zero(t, m.get(etcdkit.MetricWatchStalls), "stalls on a quiet, healthy cluster")
	var watcher *etcdtest.Server
	for _, m := range members {
		if m != owner {
			watcher = m
			break
		}
	}
	raw := watcher.Client(t)
	events := watchKey(t, raw, "svc/moved")

	stop := time.Now()
	owner.Stop()
	cl.WaitLeader(t)
	// Two TTLs later the key must still be there, under the same lease.
	require.Eventually(t, func() bool { return time.Since(stop) > 2*ttl }, lsWait, lsTick)
	lsHolds(t, raw, e, "svc/moved", "mine", lsWait)
	assert.Equal(t, lease, e.Lease(), "lease after the member stopped")
	assert.Zero(t, events.count(mvccpb.DELETE), "the key disappeared")
	assert.NotContains(t, states.list(), etcdkit.SessionLost)
	assert.Equal(t, etcdkit.SessionLive, e.State())
	t.Logf("stopped %s; states %v", owner.Name(), states.list())
}

// TestEphemeralFightIsPaced gives two owners the same key, a mistake a raw
// client would turn into a write loop at network speed between two
// "restore on delete or overwrite" handlers. Each Ephemeral keeps putting
// its value back, but paced, so over three seconds they write a handful of
// times, not thousands.
func TestEphemeralFightIsPaced(t *testing.T) {
	srv := etcdtest.Start(t)
	m1, m2 := newMetrics(), newMetrics()
	c1 := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, Metrics: m1})
	c2 := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, Metrics: m2})
	lsEphemeral(t, c1, "svc/shared", "one", 2*time.Second)
	lsEphemeral(t, c2, "svc/shared", "two", 2*time.Second)

	require.Eventually(t, func() bool {
		return m1.get(etcdkit.MetricEphemeralRestores) > 0 && m2.get(etcdkit.MetricEphemeralRestores) > 0
	}, lsWait, lsTick, "the owners do not fight")
	start := m1.get(etcdkit.MetricEphemeralRestores) + m2.get(etcdkit.MetricEphemeralRestores)
	time.Sleep(3 * time.Second) // a measurement window, not synchronisation
	n := m1.get(etcdkit.MetricEphemeralRestores) + m2.get(etcdkit.MetricEphemeralRestores) - start
	t.Logf("%v restores in 3s", n)
	assert.Less(t, n, 40.0, "restores in 3s")
}

// TestEphemeralQuietCluster leaves an Ephemeral alone on a cluster where
// nothing is written. Its watch asks for progress notifications to detect a
// silent link; etcd answers them only for watches that have caught up with
// the current revision, so a watch started past it would look stalled and
// bounce the client's stream connection over and over.
func TestEphemeralQuietCluster(t *testing.T) {
	srv := etcdtest.Start(t)
	m := newMetrics()
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, StallTimeout: 300 * time.Millisecond, Metrics: m})
	e := lsEphemeral(t, c, "svc/quiet", "mine", 2*time.Second)
	time.Sleep(2 * time.Second) // an observation window, not synchronisation
	assert.Zero(t, m.get(etcdkit.MetricWatchStalls), "stalls")
	assert.Equal(t, etcdkit.SessionLive, e.State())
}

// TestEphemeralNoFalseStall runs an Ephemeral beside other watches of the
// same client on a healthy loopback link (no fault is injected): watches of
// new keys started every 40ms, or a slow reader whose buffer keeps filling.
// etcd ignores a progress request on a gRPC stream while any watch on it is
// not synced, which both loads keep true most of the time. A stall detector
// that trusts progress notifications alone would declare the healthy link
// silent and drop the client's stream connection, moving every watch and
// session of the client for nothing; the library must count no stall.
func TestEphemeralNoFalseStall(t *testing.T) {
	const window = 8 * time.Second
	for _, tc := range []struct {
		name string
		load func(ctx context.Context, t *testing.T, c *etcdkit.Client, raw *clientv3.Client)
	}{
		{"watch churn", func(ctx context.Context, t *testing.T, c *etcdkit.Client, _ *clientv3.Client) {
			var open []*etcdkit.Watch[string]
			defer func() {
				for _, w := range open {
					_ = w.Close()
				}
			}()
			tick := time.NewTicker(40 * time.Millisecond)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				open = append(open, etcdkit.NewKey(c, fmt.Sprintf("churn/%d", i), etcdkit.String()).Watch(ctx))
				if len(open) > 10 {
					_ = open[0].Close()
					open = open[1:]
				}
			}
		}},
		{"slow reader", func(ctx context.Context, t *testing.T, c *etcdkit.Client, raw *clientv3.Client) {
			w := etcdkit.NewKey(c, "slow", etcdkit.String()).Watch(ctx, etcdkit.WithBufferSize(4))
			defer func() { _ = w.Close() }()
			writerDone := make(chan struct{})
			go func() {
				defer close(writerDone)
				for i := 0; ctx.Err() == nil; i++ {
					_, _ = raw.Put(ctx, "slow", strconv.Itoa(i))
				}
			}()
			defer func() { <-writerDone }()
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				select {
				case <-w.Events():
				case <-ctx.Done():
					return
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := etcdtest.Start(t)
			m := newMetrics()
			c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, Metrics: m, Logger: lsLogger(t)})
			raw := srv.Client(t)
			e := lsEphemeral(t, c, "svc/busy", "mine", 3*time.Second)
			states := recordStates(t, e.States())

			ctx, cancel := context.WithTimeout(context.Background(), window)
			defer cancel()
			tc.load(ctx, t, c, raw)

			assert.Zero(t, m.get(etcdkit.MetricWatchStalls), "stalls declared on a healthy link")
			assert.NotContains(t, states.list(), etcdkit.SessionSuspended)
			assert.Equal(t, etcdkit.SessionLive, e.State())
		})
	}
}
