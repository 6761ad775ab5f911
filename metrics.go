package etcdkit

// Metrics receives the library's own counters and gauges. Set
// Config.Metrics to record them; the metrics/prom subpackage adapts them to a
// Prometheus registry. Implementations must be safe for concurrent use and
// must not block.
type Metrics interface {
	// Add adds delta to the counter m.
	Add(m Metric, delta float64)
	// Set sets the gauge m to v.
	Set(m Metric, v float64)
}

// Metric names one of the library's counters or gauges. The names are stable
// and suitable as Prometheus metric names after an "etcdkit_" prefix.
type Metric string

// The library's metrics. Counters end in _total; the others are gauges.
const (
	// MetricWatchReconnects counts re-established etcd watch streams.
	MetricWatchReconnects Metric = "watch_reconnects_total"
	// MetricWatchResyncs counts re-reads after the needed revisions were
	// compacted.
	MetricWatchResyncs Metric = "watch_resyncs_total"
	// MetricWatchStalls counts silent watch or keepalive streams detected.
	MetricWatchStalls Metric = "watch_stalls_total"
	// MetricSubscriberLag is the largest number of events waiting for a slow
	// subscriber, sampled as events are fanned out.
	MetricSubscriberLag Metric = "watch_subscriber_lag_events"
	// MetricSessionStateChanges counts session state transitions.
	MetricSessionStateChanges Metric = "session_state_changes_total"
	// MetricEphemeralRestores counts ephemeral keys put back after they were
	// deleted, overwritten or lost with their lease.
	MetricEphemeralRestores Metric = "ephemeral_restores_total"
	// MetricLeadershipChanges counts leaderships won and lost by this client.
	MetricLeadershipChanges Metric = "leadership_changes_total"
)

type nopMetrics struct{}

func (nopMetrics) Add(Metric, float64) {}
func (nopMetrics) Set(Metric, float64) {}
