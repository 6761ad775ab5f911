package etcdkit

import (
	"fmt"
	"time"
)

// Defaults of a HealthMonitor, changed with the HealthOptions below.
const (
	// DefaultHealthInterval is the time between two background checks.
	DefaultHealthInterval = 5 * time.Second
	// DefaultProbeTimeout bounds each request a check sends to a member.
	DefaultProbeTimeout = 2 * time.Second
	// DefaultMaxAppliedLag is how many raft entries a member may have applied
	// fewer than the leader before it counts as lagging.
	DefaultMaxAppliedLag = 1000
)

// A HealthOption changes how a HealthMonitor checks the cluster. Pass options
// to NewHealthMonitor. The interface is sealed: only this package provides
// options. A nil option is an error, as is an invalid one: the monitor
// returned has already ended with it (see HealthMonitor.Err).
type HealthOption interface {
	applyHealth(*healthOptions)
}

type healthOptions struct {
	interval time.Duration
	timeout  time.Duration
	maxLag   uint64
	err      error
}

type healthOptionFunc func(*healthOptions)

func (f healthOptionFunc) applyHealth(o *healthOptions) { f(o) }

func buildHealthOptions(opts []HealthOption) healthOptions {
	o := healthOptions{interval: DefaultHealthInterval, timeout: DefaultProbeTimeout, maxLag: DefaultMaxAppliedLag}
	for _, opt := range opts {
		if opt == nil {
			o.fail(fmt.Errorf("etcdkit: health monitor: nil option"))
			continue
		}
		opt.applyHealth(&o)
	}
	return o
}

// fail records the first invalid option.
func (o *healthOptions) fail(err error) {
	if o.err == nil {
		o.err = err
	}
}

// WithInterval sets the time between two background checks, counted from the
// end of one to the start of the next. It must be positive. The default is
// DefaultHealthInterval.
func WithInterval(d time.Duration) HealthOption {
	return healthOptionFunc(func(o *healthOptions) {
		if d <= 0 {
			o.fail(fmt.Errorf("etcdkit: health monitor: WithInterval(%v): not positive", d))
			return
		}
		o.interval = d
	})
}

// WithProbeTimeout bounds each request a check sends to a member (status,
// linearizable read, member and alarm lists). A member that does not answer
// within it counts as unreachable or failing. A check lasts at most about
// twice this long. It must be positive. The default is DefaultProbeTimeout.
func WithProbeTimeout(d time.Duration) HealthOption {
	return healthOptionFunc(func(o *healthOptions) {
		if d <= 0 {
			o.fail(fmt.Errorf("etcdkit: health monitor: WithProbeTimeout(%v): not positive", d))
			return
		}
		o.timeout = d
	})
}

// WithMaxAppliedLag sets how many raft entries a member may have applied
// fewer than the leader before the cluster counts as Degraded. Zero means any
// lag at all; followers of a busy cluster normally trail by a few entries.
// The default is DefaultMaxAppliedLag.
func WithMaxAppliedLag(entries uint64) HealthOption {
	return healthOptionFunc(func(o *healthOptions) { o.maxLag = entries })
}
