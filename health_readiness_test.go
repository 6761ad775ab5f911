package etcdkit_test

import (
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// TestHealthSharedView partitions the member the client's requests and
// watch use while a monitor runs. The monitor's probe finds it without a
// leader and records that in the client's one view of its endpoints: the
// watch moves off it, and requests skip it without ever being sent there,
// so no write's outcome is left unknown. ClusterHealth.Endpoints reports
// the same view.
func TestHealthSharedView(t *testing.T) {
	_, victim, eps := pinnedCluster(t)
	c := testClientConfig(t, etcdkit.Config{Endpoints: eps, Namespace: "view", StallTimeout: requestStall})
	k := etcdkit.NewKey(c, "x", etcdkit.String())
	ctx := testContext(t, 60*time.Second)
	w := k.Watch(ctx)
	t.Cleanup(func() { _ = w.Close() })
	<-w.Synced()
	_, err := k.Put(ctx, "before")
	require.NoError(t, err)
	ev := <-w.Events()
	require.Equal(t, "before", ev.Value)

	hm := testMonitor(t, c)
	h := waitHealth(t, hm, "the view of every endpoint healthy, streams on the first", func(h etcdkit.ClusterHealth) bool {
		return len(h.Endpoints) == 3 && h.Endpoints[0].Healthy && h.Endpoints[0].Streams &&
			h.Endpoints[1].Healthy && h.Endpoints[2].Healthy
	})
	require.Equal(t, victim.Name(), h.Endpoints[0].Member)
	require.Equal(t, victim.ProxyEndpoint(), h.Endpoints[0].Endpoint)

	victim.Partition()
	t.Cleanup(victim.Heal)
	h = waitHealth(t, hm, "the partitioned member sick in the view", func(h etcdkit.ClusterHealth) bool {
		return !h.Endpoints[0].Healthy
	})
	t.Log(h.Endpoints[0].Cause)
	require.False(t, h.Endpoints[0].Streams, "the watch left the sick member")

	for i := range 5 {
		_, err := k.Put(ctx, "after"+string(rune('0'+i)))
		require.NoError(t, err, "a request skips the member the monitor found sick")
		ev := <-w.Events()
		require.Equal(t, "after"+string(rune('0'+i)), ev.Value)
	}
	h = hm.Current()
	require.False(t, h.Endpoints[0].Healthy)
	healthy := 0
	for _, e := range h.Endpoints[1:] {
		if e.Healthy {
			healthy++
		}
	}
	require.Equal(t, 2, healthy, "got %+v", h.Endpoints)
}

// TestHealthReadinessChecks adds the process's own handles to the
// readiness answer: a watch, a session and a function. Blackholing the only
// member's proxy (both directions) suspends the watch and the session, and
// the answer turns 503 naming them; healing brings it back to 200. A
// closed handle reports its Err.
func TestHealthReadinessChecks(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()}, Namespace: "ready", StallTimeout: 200 * time.Millisecond})
	ctx := testContext(t, 60*time.Second)
	w := etcdkit.NewKey(c, "x", etcdkit.String()).Watch(ctx)
	t.Cleanup(func() { _ = w.Close() })
	s, err := c.NewSession(ctx, 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	var migrated atomic.Bool
	hm := testMonitor(t, c,
		etcdkit.WithReadiness("watch", etcdkit.WatchReadiness(w)),
		etcdkit.WithReadiness("session", etcdkit.SessionReadiness(s)),
		etcdkit.WithReadiness("migrations", etcdkit.ReadinessFunc(func() error {
			if !migrated.Load() {
				return errors.New("schema migration pending")
			}
			return nil
		})))
	waitHealth(t, hm, "healthy", isStatus(etcdkit.Healthy))
	<-w.Synced()

	code, h := serve(t, hm)
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, []etcdkit.ReadinessResult{
		{Name: etcdkit.ClusterCheckName, Ready: true, Required: true},
		{Name: "watch", Ready: true, Required: true},
		{Name: "session", Ready: true, Required: true},
		{Name: "migrations", Ready: false, Required: true, Reason: "schema migration pending"},
	}, h.Readiness)
	migrated.Store(true)
	code, _ = serve(t, hm)
	require.Equal(t, http.StatusOK, code)

	srv.Proxy().Blackhole(proxy.Both)
	unblackholed := false
	t.Cleanup(func() {
		if !unblackholed {
			srv.Proxy().Unblackhole()
		}
	})
	h = waitHealth(t, hm, "watch and session suspended", func(h etcdkit.ClusterHealth) bool {
		return len(h.Readiness) == 4 && !h.Readiness[1].Ready && !h.Readiness[2].Ready
	})
	require.Equal(t, "etcdkit: watch suspended", h.Readiness[1].Reason)
	require.Equal(t, "etcdkit: session suspended", h.Readiness[2].Reason)
	code, _ = serve(t, hm)
	require.Equal(t, http.StatusServiceUnavailable, code)

	srv.Proxy().Unblackhole()
	unblackholed = true
	waitHealth(t, hm, "ready again", func(h etcdkit.ClusterHealth) bool {
		return h.Status == etcdkit.Healthy && h.Readiness[1].Ready && h.Readiness[2].Ready
	})
	code, _ = serve(t, hm)
	require.Equal(t, http.StatusOK, code)

	require.NoError(t, w.Close())
	code, h = serve(t, hm)
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.False(t, h.Readiness[1].Ready)
	require.Equal(t, w.Err().Error(), h.Readiness[1].Reason)
}

// TestWithReadinessRefusesBadInput: a nil check, a nil function, an empty
// or repeated name end the monitor at once with a clear error.
func TestWithReadinessRefusesBadInput(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "ready")
	ok := etcdkit.ReadinessFunc(func() error { return nil })
	for _, tc := range []struct {
		name string
		opts []etcdkit.HealthOption
		want string
	}{
		{"nil check", []etcdkit.HealthOption{etcdkit.WithReadiness("a", nil)}, `WithReadiness("a"): nil check`},
		{"nil func", []etcdkit.HealthOption{etcdkit.WithReadiness("a", etcdkit.ReadinessFunc(nil))}, `WithReadiness("a"): nil check`},
		{"empty name", []etcdkit.HealthOption{etcdkit.WithReadiness("", ok)}, "WithReadiness: empty name"},
		{"twice", []etcdkit.HealthOption{etcdkit.WithReadiness("a", ok), etcdkit.WithReadiness("a", ok)}, `WithReadiness("a"): name used twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hm := etcdkit.NewHealthMonitor(c, tc.opts...)
			<-hm.Done()
			require.ErrorContains(t, hm.Err(), tc.want)
		})
	}
}
