package prom_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/metrics/prom"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.LeakOptions()...)
}

// gather returns the registry's metric families by name.
func gather(t testing.TB, reg *prometheus.Registry) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	out := make(map[string]*dto.MetricFamily, len(mfs))
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// value returns the value of the single series of metric m.
func value(t testing.TB, reg *prometheus.Registry, m etcdkit.Metric) float64 {
	t.Helper()
	mf := gather(t, reg)[prom.Prefix+string(m)]
	require.NotNil(t, mf, "metric %s not gathered", m)
	require.Len(t, mf.GetMetric(), 1)
	if mf.GetType() == dto.MetricType_COUNTER {
		return mf.GetMetric()[0].GetCounter().GetValue()
	}
	return mf.GetMetric()[0].GetGauge().GetValue()
}

// TestNew feeds the adapter directly and checks what a scrape sees: one
// collector per metric, of the right type, with help text.
func TestNew(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := prom.New(reg)
	require.NoError(t, err)

	mfs := gather(t, reg)
	require.Len(t, mfs, len(etcdkit.AllMetrics()))
	for _, name := range etcdkit.AllMetrics() {
		mf := mfs["etcdkit_"+string(name)]
		require.NotNil(t, mf, "got no etcdkit_%s", name)
		require.NotEmpty(t, mf.GetHelp())
		want := dto.MetricType_GAUGE
		if strings.HasSuffix(string(name), "_total") {
			want = dto.MetricType_COUNTER
		}
		require.Equal(t, want, mf.GetType(), "got type %v for %s, want %v", mf.GetType(), name, want)
	}

	m.Add(etcdkit.MetricWatchReconnects, 1)
	m.Add(etcdkit.MetricWatchReconnects, 2)
	m.Set(etcdkit.MetricSubscriberLag, 7)
	m.Set(etcdkit.MetricSubscriberLag, 3)
	m.Set(etcdkit.MetricHealthStatus, float64(etcdkit.Degraded))
	require.Equal(t, 3.0, value(t, reg, etcdkit.MetricWatchReconnects))
	require.Equal(t, 3.0, value(t, reg, etcdkit.MetricSubscriberLag))
	require.Equal(t, 2.0, value(t, reg, etcdkit.MetricHealthStatus))

	// Misuse is ignored, never a panic: counters only grow.
	m.Add(etcdkit.MetricWatchReconnects, -1)
	m.Set(etcdkit.MetricWatchReconnects, 0)
	m.Add(etcdkit.Metric("no_such_metric_total"), 1)
	m.Set(etcdkit.Metric("no_such_metric"), 1)
	require.Equal(t, 3.0, value(t, reg, etcdkit.MetricWatchReconnects))
}

// TestNewShared makes two adapters on one registry, as two clients in one
// process would: they share the collectors.
func TestNewShared(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, err := prom.New(reg)
	require.NoError(t, err)
	b, err := prom.New(reg)
	require.NoError(t, err)
	a.Add(etcdkit.MetricWatchResyncs, 1)
	b.Add(etcdkit.MetricWatchResyncs, 1)
	require.Equal(t, 2.0, value(t, reg, etcdkit.MetricWatchResyncs))

}

// TestNewLabelled tells two clients apart in one registry by labels.
func TestNewLabelled(t *testing.T) {
	reg := prometheus.NewRegistry()
	for i, name := range []string{"billing", "search"} {
		m, err := prom.New(prometheus.WrapRegistererWith(prometheus.Labels{"client": name}, reg))
		require.NoError(t, err)
		m.Add(etcdkit.MetricWatchResyncs, float64(i+1))
	}
	mf := gather(t, reg)["etcdkit_watch_resyncs_total"]
	require.Len(t, mf.GetMetric(), 2)
	for _, s := range mf.GetMetric() {
		want := map[string]float64{"billing": 1, "search": 2}[s.GetLabel()[0].GetValue()]
		require.Equal(t, want, s.GetCounter().GetValue())
	}
}

// TestNewConflict registers a gauge under a counter's name first: New fails
// and leaves the registry as it was.
func TestNewConflict(t *testing.T) {
	reg := prometheus.NewRegistry()
	name := etcdkit.MetricWatchStalls
	reg.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "etcdkit_" + string(name), Help: name.Help()}))
	_, err := prom.New(reg)
	require.ErrorContains(t, err, "etcdkit_watch_stalls_total")
	require.Len(t, gather(t, reg), 1, "New left collectors behind after failing")
}

// TestWatchMetrics runs a real watch through a proxy with the adapter as
// Config.Metrics and injects the two faults the watch counters report: the
// proxy closes every connection (a reconnect: without the library's watch
// engine, a raw etcd watch would have to be re-created by hand), then cuts
// the client off while the history it needs is compacted (a resync: a raw
// watch would fail with ErrCompacted).
func TestWatchMetrics(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	reg := prometheus.NewRegistry()
	m, err := prom.New(reg)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	c, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()}, Metrics: m})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	direct := srv.Client(t)

	w := etcdkit.NewKey(c, "k", etcdkit.String()).Watch(ctx)
	t.Cleanup(func() { _ = w.Close() })
	<-w.Synced()
	next := func(want func(etcdkit.Event[string]) bool) {
		t.Helper()
		for {
			select {
			case e, ok := <-w.Events():
				require.True(t, ok, "watch ended: %v", w.Err())
				if want(e) {
					return
				}
			case <-ctx.Done():
				t.Fatal("no expected event before the deadline")
			}
		}
	}
	put := func(v string) {
		t.Helper()
		_, err := direct.Put(ctx, "k", v)
		require.NoError(t, err)
	}

	put("1")
	next(func(e etcdkit.Event[string]) bool { return e.Value == "1" })
	require.Zero(t, value(t, reg, etcdkit.MetricWatchReconnects))

	// Fault: FIN on every connection through the proxy (Proxy.CloseConns).
	srv.Proxy().CloseConns()
	require.Eventually(t, func() bool { return value(t, reg, etcdkit.MetricWatchReconnects) >= 1 },
		20*time.Second, 20*time.Millisecond, "no reconnect counted")
	put("2")
	next(func(e etcdkit.Event[string]) bool { return e.Value == "2" })

	// Fault: the proxy stops (Proxy.Stop) while the key changes and the
	// history is compacted; the watch comes back to a compacted revision.
	srv.Proxy().Stop()
	for i := range 5 {
		put(fmt.Sprint("cut-", i))
	}
	srv.Compact(t)
	require.NoError(t, srv.Proxy().Start())
	next(func(e etcdkit.Event[string]) bool { return e.Resync && e.Value == "cut-4" })
	require.GreaterOrEqual(t, value(t, reg, etcdkit.MetricWatchResyncs), 1.0)
	require.GreaterOrEqual(t, value(t, reg, etcdkit.MetricWatchReconnects), 1.0)
}
