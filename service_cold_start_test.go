package etcdkit_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// pricing is the service of TestServiceStartsAndRidesOutEtcdOutages, built
// from the parts as a user would, with no retry loop of its own: a Live
// value and a LiveMap with snapshots, a registration, a job under a
// Mutex, and readiness that keeps it in rotation while it serves its
// snapshots.
type pricing struct {
	c      *etcdkit.Client
	limit  *etcdkit.Live[int]
	prices *etcdkit.LiveMap[float64]
	hm     *etcdkit.HealthMonitor
	jobs   atomic.Int64 // jobs run under the mutex
	regs   chan *etcdkit.Registration[string]
	done   []<-chan error
}

func startPricing(t *testing.T, ctx context.Context, endpoint, dir string) *pricing {
	t.Helper()
	c, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: []string{endpoint}, Namespace: "pricing",
		StartWithoutCluster: true, StallTimeout: 500 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	p := &pricing{c: c, regs: make(chan *etcdkit.Registration[string], 16)}
	p.limit = etcdkit.NewLive(ctx, etcdkit.NewKey(c, "limit", etcdkit.JSON[int]()),
		etcdkit.WithDefault(1), etcdkit.WithSnapshot[int](filepath.Join(dir, "limit.snapshot")))
	p.prices = etcdkit.NewLiveMap(ctx, etcdkit.NewPrefix(c, "prices", etcdkit.JSON[float64]()),
		etcdkit.WithSnapshot[float64](filepath.Join(dir, "prices.snapshot")))
	p.hm = etcdkit.NewHealthMonitor(c, etcdkit.WithInterval(100*time.Millisecond), etcdkit.WithProbeTimeout(time.Second),
		etcdkit.WithClusterPolicy(etcdkit.ClusterInformational),
		etcdkit.WithReadiness("limit", etcdkit.LiveReadiness(p.limit, etcdkit.AllowStale(-1))),
		etcdkit.WithReadiness("prices", etcdkit.LiveReadiness(p.prices, etcdkit.AllowStale(-1))))
	t.Cleanup(func() { _ = p.hm.Close() })
	svc := etcdkit.NewService(c, "pricing", etcdkit.JSON[string]())
	inst := etcdkit.Instance[string]{ID: "p1", Addr: "127.0.0.1:8080", Meta: "v1"}
	p.done = append(p.done, runResult(func() error {
		return svc.Run(ctx, inst, 2*time.Second, func(r *etcdkit.Registration[string]) { p.regs <- r })
	}))
	m := etcdkit.NewMutex(c, "reprice", 2*time.Second)
	p.done = append(p.done, runResult(func() error {
		return m.Run(ctx, func(context.Context, *etcdkit.Lock) error { p.jobs.Add(1); return nil })
	}))
	return p
}

// stop ends the service and waits for its Run calls.
func (p *pricing) stop(t *testing.T, cancel context.CancelFunc) {
	t.Helper()
	cancel()
	for _, d := range p.done {
		_ = waitRun(t, d)
	}
	_ = p.limit.Close()
	_ = p.prices.Close()
	_ = p.hm.Close()
	_ = p.c.Close()
}

// upToDate reports whether the service serves the cluster's values (limit
// among them), is registered (seen by tr), has run jobs jobs, and is
// ready.
func (p *pricing) upToDate(tr *etcdkit.Tracker[string], limit int, jobs int64) bool {
	return !p.limit.Stale() && p.limit.Get() == limit && !p.prices.Stale() &&
		len(tr.Instances()) == 1 && p.jobs.Load() >= jobs && ready(p.hm) == http.StatusOK
}

// ready returns the status code of hm's readiness answer.
func ready(hm *etcdkit.HealthMonitor) int {
	rec := httptest.NewRecorder()
	hm.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	return rec.Code
}

// TestServiceStartsAndRidesOutEtcdOutages: a service started while its only
// member is down serves its snapshots, answers liveness 200 and readiness
// 200 (its policy: etcd informational, stale values allowed), and once the
// member comes up it is registered, synced, has run its locked job and is
// ready, with no retry loop of its own. The member then goes down and
// comes back while it runs: it keeps serving and stays in rotation, and
// is registered and synced again after.
func TestServiceStartsAndRidesOutEtcdOutages(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	dir := t.TempDir()
	tracker, err := etcdkit.NewService(testClient(t, []string{srv.Endpoint()}, "pricing"), "pricing", etcdkit.JSON[string]()).
		Track(testContext(t, 3*time.Minute))
	require.NoError(t, err)
	t.Cleanup(func() { _ = tracker.Close() })
	writer := testClient(t, []string{srv.Endpoint()}, "pricing")
	limit := etcdkit.NewKey(writer, "limit", etcdkit.JSON[int]())
	prices := etcdkit.NewPrefix(writer, "prices", etcdkit.JSON[float64]())
	ctx := testContext(t, 3*time.Minute)
	_, err = limit.Put(ctx, 10)
	require.NoError(t, err)
	_, err = prices.Key("apple").Put(ctx, 1.5)
	require.NoError(t, err)

	// A first run, with the cluster up, leaves the snapshots.
	runCtx, cancel := context.WithCancel(ctx)
	p := startPricing(t, runCtx, srv.ProxyEndpoint(), dir)
	require.Eventually(t, func() bool { return p.upToDate(tracker, 10, 1) }, runWait, 5*time.Millisecond)
	p.stop(t, cancel)
	require.Eventually(t, func() bool { return len(tracker.Instances()) == 0 }, runWait, 5*time.Millisecond)

	// Cold start with the member down.
	srv.Proxy().Stop()
	t.Cleanup(func() { _ = srv.Proxy().Start() })
	_, err = limit.Put(ctx, 20) // written while the service cannot see it
	require.NoError(t, err)
	runCtx, cancel = context.WithCancel(ctx)
	t.Cleanup(cancel)
	p = startPricing(t, runCtx, srv.ProxyEndpoint(), dir)
	cur := p.limit.Current()
	assert.Equal(t, 10, cur.Data, "the snapshot's value")
	assert.Equal(t, etcdkit.SourceSnapshot, cur.Source)
	assert.Equal(t, 1.5, p.prices.Get("apple"))
	assert.Equal(t, http.StatusOK, liveness(p.hm))
	assert.Equal(t, http.StatusOK, ready(p.hm), "in rotation while serving its snapshots")
	assert.Empty(t, tracker.Instances())

	require.NoError(t, srv.Proxy().Start())
	up := time.Now()
	require.Eventually(t, func() bool { return p.upToDate(tracker, 20, 1) }, runWait, 5*time.Millisecond)
	t.Logf("registered, synced, job run and ready %v after the member came up", time.Since(up).Round(time.Millisecond))

	// Down and back while it runs.
	srv.Proxy().Stop()
	require.Eventually(t, p.limit.Stale, runWait, 5*time.Millisecond)
	_, err = limit.Put(ctx, 30)
	require.NoError(t, err)
	assert.Equal(t, 20, p.limit.Get(), "the last good value is served")
	assert.Equal(t, http.StatusOK, ready(p.hm))
	assert.Equal(t, http.StatusOK, liveness(p.hm))
	require.NoError(t, srv.Proxy().Start())
	up = time.Now()
	require.Eventually(t, func() bool { return p.upToDate(tracker, 30, 1) }, runWait, 5*time.Millisecond)
	t.Logf("up to date again %v after the member came back", time.Since(up).Round(time.Millisecond))
	p.stop(t, cancel)
}
