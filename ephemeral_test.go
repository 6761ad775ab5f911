package etcdkit_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// lsEphemeral puts value at name for the test, closing it at cleanup.
func lsEphemeral(t testing.TB, c *etcdkit.Client, name, value string, ttl time.Duration, opts ...etcdkit.SessionOption) *etcdkit.Ephemeral[string] {
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
	c := lsClient(t, etcdkit.Config{Namespace: "app"}, srv.Endpoint())
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
	assert.Equal(t, etcdkit.Live, e.State())
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
	m := newCountingMetrics()
	c := lsClient(t, etcdkit.Config{Metrics: m}, srv.Endpoint())
	raw := srv.Client(t)
	e := lsEphemeral(t, c, "svc/b", "mine", 2*time.Second)
	states := recordStates(t, e.States())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	start := time.Now()
	_, err := raw.Delete(ctx, "svc/b")
	require.NoError(t, err)
	lsHolds(t, raw, e, "svc/b", "mine", lsWait)
	states.waitFor(t, etcdkit.Restored, start, lsWait)
	assert.Equal(t, 1.0, m.get(etcdkit.MetricEphemeralRestores), "restores after delete")

	start = time.Now()
	_, err = raw.Put(ctx, "svc/b", "intruder")
	require.NoError(t, err)
	lsHolds(t, raw, e, "svc/b", "mine", lsWait)
	states.waitFor(t, etcdkit.Restored, start, lsWait)
	assert.Equal(t, 2.0, m.get(etcdkit.MetricEphemeralRestores), "restores after overwrite")

	// An overwrite under the owner's own lease is still someone else's.
	start = time.Now()
	_, err = raw.Put(ctx, "svc/b", "intruder", clientv3.WithLease(e.Lease()))
	require.NoError(t, err)
	lsHolds(t, raw, e, "svc/b", "mine", lsWait)
	states.waitFor(t, etcdkit.Restored, start, lsWait)

	assert.Equal(t, etcdkit.Live, e.State())
	got := states.list()
	assert.Equal(t, etcdkit.Live, got[len(got)-1], "last state; all: %v", got)
}

func TestEphemeralUpdate(t *testing.T) {
	srv := etcdtest.Start(t)
	c := lsClient(t, etcdkit.Config{}, srv.Endpoint())
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
	_, err = raw.Delete(ctx, "svc/c")
	require.NoError(t, err)
	lsHolds(t, raw, e, "svc/c", "v3", lsWait)

	// Our own updates are not mistaken for someone else's writes.
	for _, s := range states.list() {
		if s == etcdkit.Restored {
			return
		}
	}
	t.Fatalf("no Restored after the delete; states %v", states.list())
}

func TestEphemeralErrors(t *testing.T) {
	srv := etcdtest.Start(t)
	c := lsClient(t, etcdkit.Config{}, srv.Endpoint())
	raw := srv.Client(t)
	key := etcdkit.NewKey(c, "svc/d", etcdkit.String())

	_, err := etcdkit.NewEphemeral(lsContext(t), key, "x", 500*time.Millisecond)
	assert.ErrorIs(t, err, etcdkit.ErrInvalidTTL)

	_, err = etcdkit.NewEphemeral(lsContext(t), etcdkit.NewKey(c, "../d", etcdkit.String()), "x", 2*time.Second)
	assert.ErrorIs(t, err, etcdkit.ErrInvalidName)

	small := lsClient(t, etcdkit.Config{MaxValueSize: 4}, srv.Endpoint())
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

	other := lsClient(t, etcdkit.Config{}, srv.Endpoint())
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
	m := newCountingMetrics()
	c := lsClient(t, etcdkit.Config{Metrics: m}, srv.Endpoint())
	raw := srv.Client(t)
	e := lsEphemeral(t, c, "svc/f", "mine", 2*time.Second)
	states := recordStates(t, e.States())
	old := e.Lease()

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := raw.Revoke(ctx, old)
	require.NoError(t, err)

	states.waitFor(t, etcdkit.Recovered, start, lsWait)
	assert.NotEqual(t, old, e.Lease())
	lsHolds(t, raw, e, "svc/f", "mine", lsWait)
	assert.GreaterOrEqual(t, m.get(etcdkit.MetricEphemeralRestores), 1.0)
	got := states.list()
	assert.Contains(t, got, etcdkit.Lost)
	assert.Equal(t, etcdkit.Live, got[len(got)-1], "states %v", got)
}
