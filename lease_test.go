package etcdkit_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// Generous bounds for conditions to come true on a loaded two-core machine
// running with -race. Tests wait on conditions, never on fixed sleeps.
const (
	lsWait = 15 * time.Second
	lsTick = 20 * time.Millisecond
)

// lsLogger returns a logger whose output goes to the test's log, which is
// shown for failed tests and with -v.
func lsLogger(t testing.TB) *zap.Logger {
	return zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
}

// lsContext returns a context that ends with the test.
func lsContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return ctx
}

// lsSession starts a session and closes it when the test ends.
func lsSession(t testing.TB, c *etcdkit.Client, ttl time.Duration, opts ...etcdkit.SessionOption) *etcdkit.Session {
	t.Helper()
	s, err := c.NewSession(lsContext(t), ttl, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// lsLeaseTTL returns the lease's remaining TTL in seconds as the server
// reports it: -1 once the lease is gone.
func lsLeaseTTL(t testing.TB, raw *clientv3.Client, id clientv3.LeaseID) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := raw.TimeToLive(ctx, id)
	require.NoError(t, err)
	return resp.TTL
}

func TestSessionKeepsLeaseAlive(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}})
	raw := srv.Client(t)
	s := lsSession(t, c, 2*time.Second)

	assert.Equal(t, etcdkit.SessionLive, s.State())
	assert.Equal(t, 2*time.Second, s.TTL())
	assert.Equal(t, etcdkit.SessionLive, <-s.States(), "first state")
	rem := s.Remaining()
	assert.True(t, rem > 0 && rem <= 2*time.Second, "Remaining %v, want in (0, 2s]", rem)

	// Three TTLs without the lease ever running out on the server.
	id := s.Lease()
	deadline := time.Now().Add(6 * time.Second)
	for time.Now().Before(deadline) {
		ttl := lsLeaseTTL(t, raw, id)
		require.Greater(t, ttl, int64(0), "lease TTL on the server")
		time.Sleep(200 * time.Millisecond) // sampling period, not synchronisation
	}
	assert.Equal(t, id, s.Lease(), "lease changed while Live")
	assert.Equal(t, etcdkit.SessionLive, s.State())
	select {
	case <-s.Done():
		t.Fatalf("session ended: %v", s.Err())
	default:
	}
	assert.NoError(t, s.Err())
}

func TestSessionInvalidTTL(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}})
	for _, ttl := range []time.Duration{0, -time.Second, 500 * time.Millisecond, 1500 * time.Millisecond} {
		_, err := c.NewSession(lsContext(t), ttl)
		assert.ErrorIs(t, err, etcdkit.ErrInvalidTTL, "TTL %v", ttl)
	}
	_, err := c.NewSession(lsContext(t), 2*time.Second, etcdkit.WithLostMargin(time.Second+time.Millisecond))
	assert.Error(t, err, "margin above TTL/2")
	_, err = c.NewSession(lsContext(t), 2*time.Second, etcdkit.WithKeepAliveInterval(2*time.Second))
	assert.Error(t, err, "interval beyond Lost")
}

// TestSessionTTLRaisedByServer: a member with a 1s election timeout raises
// every TTL under 2s to 2s without telling the raw client, whose keys then
// outlive their owner by twice what it asked for.
func TestSessionTTLRaisedByServer(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithTiming(100*time.Millisecond, time.Second))
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}})
	raw := srv.Client(t)

	_, err := c.NewSession(lsContext(t), time.Second)
	require.ErrorIs(t, err, etcdkit.ErrInvalidTTL)
	assert.Contains(t, err.Error(), "minimum of 2s")

	// The refused lease was revoked, not left to expire.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	leases, err := raw.Leases(ctx)
	require.NoError(t, err)
	assert.Empty(t, leases.Leases, "leases left behind")

	s := lsSession(t, c, 2*time.Second)
	assert.Equal(t, etcdkit.SessionLive, s.State())
}

func TestSessionClose(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}})
	raw := srv.Client(t)
	s, err := c.NewSession(lsContext(t), 2*time.Second)
	require.NoError(t, err)
	states := recordStates(t, s.States())
	id := s.Lease()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = raw.Put(ctx, "owned", "x", clientv3.WithLease(id))
	require.NoError(t, err)

	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "second Close")
	select {
	case <-s.Done():
	default:
		t.Fatal("Done not closed after Close")
	}
	assert.ErrorIs(t, s.Err(), etcdkit.ErrClosed)
	assert.Equal(t, int64(-1), lsLeaseTTL(t, raw, id), "lease TTL after Close")
	resp, err := raw.Get(ctx, "owned")
	require.NoError(t, err)
	assert.Empty(t, resp.Kvs, "key attached to the lease after Close")
	assert.Zero(t, s.Remaining())
	require.Eventually(t, func() bool {
		states.mu.Lock()
		defer states.mu.Unlock()
		return states.closed
	}, lsWait, lsTick, "States not closed")
	assert.Equal(t, []etcdkit.SessionState{etcdkit.SessionLive}, states.list())
}

func TestSessionContextEnds(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}})
	raw := srv.Client(t)

	t.Run("cancelled before", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := c.NewSession(ctx, 2*time.Second)
		assert.ErrorIs(t, err, context.Canceled)
	})

	t.Run("cancelled during", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		s, err := c.NewSession(ctx, 2*time.Second)
		require.NoError(t, err)
		t.Cleanup(func() { _ = s.Close() })
		id := s.Lease()
		cancel()
		select {
		case <-s.Done():
		case <-time.After(lsWait):
			t.Fatal("session still running after its ctx was cancelled")
		}
		assert.ErrorIs(t, s.Err(), context.Canceled)
		assert.NotErrorIs(t, s.Err(), etcdkit.ErrClosed)
		assert.Equal(t, int64(-1), lsLeaseTTL(t, raw, id), "lease TTL after ctx ended")
	})

	t.Run("deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		s, err := c.NewSession(ctx, 2*time.Second)
		require.NoError(t, err)
		t.Cleanup(func() { _ = s.Close() })
		select {
		case <-s.Done():
		case <-time.After(lsWait):
			t.Fatal("session outlived its ctx's deadline")
		}
		assert.ErrorIs(t, s.Err(), context.DeadlineExceeded)
	})
}

func TestSessionClientClosed(t *testing.T) {
	srv := etcdtest.Start(t)
	raw := srv.Client(t)
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}})
	s, err := c.NewSession(lsContext(t), 2*time.Second)
	require.NoError(t, err)
	id := s.Lease()

	require.NoError(t, c.Close())
	select {
	case <-s.Done():
	default:
		t.Fatal("Done not closed after Client.Close returned")
	}
	assert.ErrorIs(t, s.Err(), etcdkit.ErrClosed)
	assert.NoError(t, s.Close())
	assert.Equal(t, int64(-1), lsLeaseTTL(t, raw, id), "lease TTL after Client.Close")

	_, err = c.NewSession(lsContext(t), 2*time.Second)
	assert.ErrorIs(t, err, etcdkit.ErrClosed)
}

// TestSessionLeaseRevokedElsewhere: another client revokes the session's
// lease (through the raw Revoke call). A raw concurrency.Session just ends,
// for good; this one reports Lost, grants a new lease and goes on.
func TestSessionLeaseRevokedElsewhere(t *testing.T) {
	srv := etcdtest.Start(t)
	m := newMetrics()
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, Metrics: m})
	raw := srv.Client(t)

	t.Run("recovers", func(t *testing.T) {
		s := lsSession(t, c, 2*time.Second)
		states := recordStates(t, s.States())
		old := s.Lease()
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := raw.Revoke(ctx, old)
		require.NoError(t, err)

		states.waitFor(t, etcdkit.SessionRecovered, start, lsWait)
		require.Eventually(t, func() bool { return s.State() == etcdkit.SessionLive }, lsWait, lsTick)
		assert.NotEqual(t, old, s.Lease(), "lease after recovery")
		assert.Greater(t, lsLeaseTTL(t, raw, s.Lease()), int64(0))
		got := states.list()
		assert.Equal(t, []etcdkit.SessionState{etcdkit.SessionLive, etcdkit.SessionLost, etcdkit.SessionRecovered, etcdkit.SessionLive}, got)
		assert.GreaterOrEqual(t, m.get(etcdkit.MetricSessionStateChanges), 2.0)
		assert.NoError(t, s.Err())
	})

	t.Run("without recovery", func(t *testing.T) {
		s := lsSession(t, c, 2*time.Second, etcdkit.WithoutRecovery())
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := raw.Revoke(ctx, s.Lease())
		require.NoError(t, err)
		select {
		case <-s.Done():
		case <-time.After(lsWait):
			t.Fatal("session WithoutRecovery still running after its lease was revoked")
		}
		assert.ErrorIs(t, s.Err(), etcdkit.ErrLeaseLost)
		assert.Equal(t, etcdkit.SessionLost, s.State())
		assert.NoError(t, s.Close())
	})
}

// TestSessionSlowReader: nobody reads States while the lease is revoked
// (raw Revoke) again and again, many more transitions than the channel
// holds. The session must not block, and the reader finds the latest states
// with the current one last.
func TestSessionSlowReader(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}})
	raw := srv.Client(t)
	s := lsSession(t, c, 2*time.Second, etcdkit.WithKeepAliveInterval(100*time.Millisecond))

	const rounds = 8 // 3 states each, plus the first SessionLive: more than the buffer
	for range rounds {
		old := s.Lease()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := raw.Revoke(ctx, old)
		cancel()
		require.NoError(t, err)
		require.Eventually(t, func() bool { return s.Lease() != old && s.State() == etcdkit.SessionLive }, lsWait, lsTick)
	}
	var got []etcdkit.SessionState
	for len(s.States()) > 0 {
		got = append(got, <-s.States())
	}
	require.Len(t, got, 16, "states kept")
	assert.Equal(t, etcdkit.SessionLive, got[len(got)-1], "last state")
	assert.Equal(t, []etcdkit.SessionState{etcdkit.SessionLost, etcdkit.SessionRecovered, etcdkit.SessionLive}, got[len(got)-3:])
}

func TestSessionStateString(t *testing.T) {
	for st, want := range map[etcdkit.SessionState]string{
		etcdkit.SessionLive: "live", etcdkit.SessionSuspended: "suspended", etcdkit.SessionLost: "lost",
		etcdkit.SessionRecovered: "recovered", etcdkit.SessionRestored: "restored", 0: "SessionState(0)",
	} {
		assert.Equal(t, want, st.String())
	}
}

// TestSessionSuspendedOnSilentLink blackholes the owner's link (proxy
// Blackhole(Both)) for less than the TTL, then heals it (Unblackhole). A raw
// client notices nothing for gRPC's keepalive time and timeout (15s by
// default); here the session is Suspended within a keepalive interval and an
// attempt, tells how long the lease has left, and is Live again on the same
// lease after the heal.
func TestSessionSuspendedOnSilentLink(t *testing.T) {
	const ttl = 3 * time.Second
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	m := newMetrics()
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()}, Logger: lsLogger(t), Metrics: m})
	raw := srv.Client(t)
	s := lsSession(t, c, ttl, etcdkit.WithKeepAliveInterval(300*time.Millisecond))
	states := recordStates(t, s.States())
	id := s.Lease()

	cut := time.Now()
	srv.Proxy().Blackhole(proxy.Both)
	suspended := states.waitFor(t, etcdkit.SessionSuspended, cut, lsWait)
	rem := s.Remaining()
	t.Logf("Suspended %v after the cut, Remaining %v", suspended.Sub(cut), rem)
	assert.Less(t, suspended.Sub(cut), time.Second+500*time.Millisecond, "Suspended after the cut")
	assert.True(t, rem > 0 && rem < ttl, "Remaining while SessionSuspended: %v", rem)

	heal := time.Now()
	srv.Proxy().Unblackhole()
	live := states.waitFor(t, etcdkit.SessionLive, heal, lsWait)
	t.Logf("Live %v after the heal", live.Sub(heal))
	assert.Equal(t, id, s.Lease(), "lease after the heal")
	assert.Greater(t, lsLeaseTTL(t, raw, id), int64(0))
	assert.NotContains(t, states.list(), etcdkit.SessionLost)
	assert.Greater(t, m.get(etcdkit.MetricWatchStalls), 0.0, "stalls counted")
}
