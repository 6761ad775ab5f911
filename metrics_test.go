package etcdkit_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
)

func TestMetricsDeclared(t *testing.T) {
	all := etcdkit.AllMetrics()
	require.Contains(t, all, etcdkit.MetricWatchReconnects)
	require.Contains(t, all, etcdkit.MetricHealthStatus)
	seen := map[etcdkit.Metric]bool{}
	for _, m := range all {
		require.False(t, seen[m], "metric %s listed twice", m)
		seen[m] = true
		require.NotEmpty(t, m.Help(), "metric %s has no help text", m)
		want := etcdkit.KindGauge
		if strings.HasSuffix(string(m), "_total") {
			want = etcdkit.KindCounter
		}
		require.Equal(t, want, m.Kind(), "got kind %v for %s, want %v", m.Kind(), m, want)
	}
	require.Equal(t, etcdkit.KindGauge, etcdkit.MetricSubscriberLag.Kind())
	require.Equal(t, "counter", etcdkit.KindCounter.String())
	require.Empty(t, etcdkit.Metric("not_ours").Help())
}
