package etcdkit_test

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// TestReadinessWhileEtcdIsDown: with the only member unreachable, a
// monitor under ClusterInformational stays ready while its Live value,
// checked with AllowStale(-1), serves its last good value; a monitor under
// ClusterRequired, and a LiveReadiness without AllowStale, are not ready;
// AllowStale(d) turns unready once the value has been stale for d. Liveness
// answers 200 throughout and 503 once the monitor is closed. Healed, all
// are ready again.
func TestReadinessWhileEtcdIsDown(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()}, Namespace: "down", StallTimeout: 200 * time.Millisecond})
	ctx := testContext(t, 2*time.Minute)
	key := etcdkit.NewKey(c, "limit", etcdkit.JSON[int]())
	_, err := key.Put(ctx, 5)
	require.NoError(t, err)
	live := etcdkit.NewLive(ctx, key, etcdkit.WithDefault(1))
	t.Cleanup(func() { _ = live.Close() })
	untilGet(t, live.Get, 5)

	informational := testMonitor(t, c, etcdkit.WithClusterPolicy(etcdkit.ClusterInformational),
		etcdkit.WithReadiness("limit", etcdkit.LiveReadiness(live, etcdkit.AllowStale(-1))))
	required := testMonitor(t, c, etcdkit.WithReadiness("limit", etcdkit.LiveReadiness(live)))
	bounded := etcdkit.LiveReadiness(live, etcdkit.AllowStale(300*time.Millisecond))
	waitHealth(t, informational, "healthy", isStatus(etcdkit.Healthy))
	waitHealth(t, required, "healthy", isStatus(etcdkit.Healthy))
	for _, hm := range []*etcdkit.HealthMonitor{informational, required} {
		code, h := serve(t, hm)
		require.Equal(t, http.StatusOK, code, "%+v", h.Readiness)
		require.Equal(t, http.StatusOK, liveness(hm))
	}
	require.NoError(t, bounded.Readiness())

	srv.Proxy().Stop() // etcd is down for this service
	t.Cleanup(func() { _ = srv.Proxy().Start() })
	waitHealth(t, informational, "unhealthy", isStatus(etcdkit.Unhealthy))
	require.Eventually(t, live.Stale, time.Minute, 5*time.Millisecond)
	require.NoError(t, bounded.Readiness(), "stale for less than its bound")

	code, h := serve(t, informational)
	assert.Equal(t, http.StatusOK, code, "informational: in rotation while the value is served (%+v)", h.Readiness)
	require.Len(t, h.Readiness, 2)
	assert.Equal(t, etcdkit.ClusterCheckName, h.Readiness[0].Name)
	assert.False(t, h.Readiness[0].Ready)
	assert.False(t, h.Readiness[0].Required)
	assert.Contains(t, h.Readiness[0].Reason, "unhealthy")
	assert.True(t, h.Readiness[1].Ready)
	assert.Equal(t, 5, live.Get(), "the last good value is served")

	waitHealth(t, required, "unhealthy", isStatus(etcdkit.Unhealthy))
	code, h = serve(t, required)
	assert.Equal(t, http.StatusServiceUnavailable, code, "required: out of rotation")
	require.Len(t, h.Readiness, 2)
	assert.False(t, h.Readiness[0].Ready)
	assert.True(t, h.Readiness[0].Required)
	assert.Contains(t, h.Readiness[1].Reason, "etcdkit: live value stale for ")
	require.Eventually(t, func() bool { return bounded.Readiness() != nil }, time.Minute, 5*time.Millisecond,
		"stale past its bound: not ready")

	assert.Equal(t, http.StatusOK, liveness(informational), "liveness does not depend on etcd")
	assert.Equal(t, http.StatusOK, liveness(required), "liveness does not depend on etcd")

	require.NoError(t, srv.Proxy().Start())
	for _, hm := range []*etcdkit.HealthMonitor{informational, required} {
		waitHealth(t, hm, "healthy again", isStatus(etcdkit.Healthy))
	}
	require.Eventually(t, func() bool { return !live.Stale() }, time.Minute, 5*time.Millisecond)
	for _, hm := range []*etcdkit.HealthMonitor{informational, required} {
		code, h := serve(t, hm)
		require.Equal(t, http.StatusOK, code, "%+v", h.Readiness)
	}
	require.NoError(t, bounded.Readiness())

	require.NoError(t, required.Close())
	assert.Equal(t, http.StatusServiceUnavailable, liveness(required), "a closed monitor is not alive")
}

// liveness returns the status code of hm's liveness handler.
func liveness(hm *etcdkit.HealthMonitor) int {
	rec := httptest.NewRecorder()
	hm.Liveness().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/livez", nil))
	return rec.Code
}
