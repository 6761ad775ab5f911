package etcdkit

import "strings"

// Metrics receives the library's own counters and gauges. Set
// Config.Metrics to record them; the metrics/prom subpackage adapts them to a
// Prometheus registry. Implementations must be safe for concurrent use and
// must not block: they are called from the engines' goroutines, often while
// those hold locks.
type Metrics interface {
	// Add adds delta to the counter m. The library calls it only for metrics
	// of KindCounter, with delta >= 0.
	Add(m Metric, delta float64)
	// Set sets the gauge m to v. The library calls it only for metrics of
	// KindGauge.
	Set(m Metric, v float64)
}

// Metric names one of the library's counters or gauges. The names are stable
// and suitable as Prometheus metric names after an "etcdkit_" prefix.
type Metric string

// The library's metrics. Counters end in _total and only grow; the others are
// gauges. AllMetrics lists them.
const (
	// MetricWatchReconnects counts re-established etcd watch streams.
	// Counter.
	MetricWatchReconnects Metric = "watch_reconnects_total"
	// MetricWatchResyncs counts re-reads after the needed revisions were
	// compacted. Counter.
	MetricWatchResyncs Metric = "watch_resyncs_total"
	// MetricWatchStalls counts silent watch or keepalive streams detected.
	// Counter.
	MetricWatchStalls Metric = "watch_stalls_total"
	// MetricSubscriberLag is the largest number of events waiting for a slow
	// subscriber, sampled as events are fanned out. Gauge.
	MetricSubscriberLag Metric = "watch_subscriber_lag_events"
	// MetricSessionStateChanges counts session state transitions. Counter.
	MetricSessionStateChanges Metric = "session_state_changes_total"
	// MetricEphemeralRestores counts ephemeral keys put back after they were
	// deleted, overwritten or lost with their lease. Counter.
	MetricEphemeralRestores Metric = "ephemeral_restores_total"
	// MetricLeadershipChanges counts leaderships won and lost by this client:
	// a win when Campaign returns it, a loss (or resignation) when
	// Leadership.Context is cancelled, before the lease is revoked. Counter.
	MetricLeadershipChanges Metric = "leadership_changes_total"
	// MetricHealthStatus is the cluster status found by the latest check of a
	// HealthMonitor, as the HealthStatus number: 0 unknown, 1 healthy,
	// 2 degraded, 3 unhealthy. Gauge.
	MetricHealthStatus Metric = "health_status"
	// MetricLiveUpdates counts the changes of value applied by the Live
	// and LiveMap handles: good values and deletions. Counter.
	MetricLiveUpdates Metric = "live_updates_total"
	// MetricLiveRejections counts the values a Live or LiveMap refused to
	// serve: values that did not decode, failed validation, or were older
	// than the snapshot. Counter.
	MetricLiveRejections Metric = "live_rejections_total"
	// MetricLiveSnapshotErrors counts snapshot files of a Live or LiveMap
	// that could not be used (corrupt, truncated, foreign, unreadable) or
	// could not be written. Counter.
	MetricLiveSnapshotErrors Metric = "live_snapshot_errors_total"
)

// MetricKind says whether a Metric is a counter or a gauge.
type MetricKind int

const (
	// KindCounter is a count that only grows, fed through Metrics.Add.
	KindCounter MetricKind = iota + 1
	// KindGauge is a value that goes up and down, fed through Metrics.Set.
	KindGauge
)

// String returns "counter" or "gauge".
func (k MetricKind) String() string {
	switch k {
	case KindCounter:
		return "counter"
	case KindGauge:
		return "gauge"
	}
	return "unknown"
}

var metricHelp = map[Metric]string{
	MetricWatchReconnects:     "Etcd watch streams re-established after a broken, stalled or leaderless link.",
	MetricWatchResyncs:        "Watch re-reads after the revisions a watch needed were compacted.",
	MetricWatchStalls:         "Silent watch or lease keepalive streams detected.",
	MetricSubscriberLag:       "Largest number of events waiting for a slow watch subscriber.",
	MetricSessionStateChanges: "Session state transitions (live, suspended, lost, recovered).",
	MetricEphemeralRestores:   "Ephemeral keys put back after they were deleted, overwritten or lost with their lease.",
	MetricLeadershipChanges:   "Leaderships won and lost by this client.",
	MetricHealthStatus:        "Cluster status from the latest health check: 0 unknown, 1 healthy, 2 degraded, 3 unhealthy.",
	MetricLiveUpdates:         "Changes of value applied by Live and LiveMap handles.",
	MetricLiveRejections:      "Values refused by Live and LiveMap handles: undecodable, invalid, or older than the snapshot.",
	MetricLiveSnapshotErrors:  "Live snapshot files refused (corrupt, truncated, foreign, unreadable) or not written.",
}

// AllMetrics returns every Metric the library records, in a fresh slice, so
// that an adapter can declare them all up front.
func AllMetrics() []Metric {
	return []Metric{
		MetricWatchReconnects,
		MetricWatchResyncs,
		MetricWatchStalls,
		MetricSubscriberLag,
		MetricSessionStateChanges,
		MetricEphemeralRestores,
		MetricLeadershipChanges,
		MetricHealthStatus,
		MetricLiveUpdates,
		MetricLiveRejections,
		MetricLiveSnapshotErrors,
	}
}

// Kind returns KindCounter for names ending in "_total" and KindGauge for the
// others.
func (m Metric) Kind() MetricKind {
	if strings.HasSuffix(string(m), "_total") {
		return KindCounter
	}
	return KindGauge
}

// Help returns a one-line description of m for exposition formats, or "" for
// a Metric the library does not record.
func (m Metric) Help() string { return metricHelp[m] }

type nopMetrics struct{}

func (nopMetrics) Add(Metric, float64) {}
func (nopMetrics) Set(Metric, float64) {}
