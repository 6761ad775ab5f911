package etcdkit

import (
	"errors"
	"fmt"
	"strings"
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
	checks   []namedCheck
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

// ReadinessCheck is one of the process's own conditions for being ready,
// beside the cluster's health: a watch or cache that is not suspended, a
// session or registration that is live, a runtime value that is not stale.
// Add one to a HealthMonitor with WithReadiness; ServeHTTP answers 503 while
// any of them is not ready, and says why.
type ReadinessCheck interface {
	// Readiness returns nil when the condition holds, else why it does not.
	// It is called on every ServeHTTP and Current, so it must not block.
	Readiness() error
}

// ReadinessFunc is a function used as a ReadinessCheck.
type ReadinessFunc func() error

// Readiness calls f.
func (f ReadinessFunc) Readiness() error { return f() }

// WatchReadiness is the ReadinessCheck of a Watch, Cache or Tracker: ready
// while it is connected and has not ended. Suspended (its link broke and it
// is re-establishing it) or still connecting, it is not ready; ended, the
// reason is its Err.
func WatchReadiness(h interface {
	State() WatchState
	Done() <-chan struct{}
	Err() error
}) ReadinessCheck {
	return ReadinessFunc(func() error {
		switch st := h.State(); st {
		case WatchConnected:
			return nil
		case WatchClosed:
			return h.Err()
		default:
			return fmt.Errorf("etcdkit: watch %s", strings.ToLower(st.String()))
		}
	})
}

// SessionReadiness is the ReadinessCheck of a Session, Ephemeral or
// Registration: ready while its lease is live. Suspended or lost, it is not
// ready; ended, the reason is its Err.
func SessionReadiness(h interface {
	State() SessionState
	Done() <-chan struct{}
	Err() error
}) ReadinessCheck {
	return ReadinessFunc(func() error {
		select {
		case <-h.Done():
			if err := h.Err(); err != nil {
				return err
			}
			return ErrClosed
		default:
		}
		if st := h.State(); st != SessionLive {
			return fmt.Errorf("etcdkit: session %s", strings.ToLower(st.String()))
		}
		return nil
	})
}

// LiveReadiness is the ReadinessCheck of a Live: ready while it is not
// Stale. Stale, the reason is its Err once it has ended, the cluster's
// refusal to let it read its key (a Rejection with Revision 0, such as a
// permission denied) while there is one, and otherwise that the value may
// be out of date.
func LiveReadiness(h interface {
	Stale() bool
	Err() error
	Rejected() (Rejection, bool)
}) ReadinessCheck {
	return ReadinessFunc(func() error {
		if !h.Stale() {
			return nil
		}
		if err := h.Err(); err != nil {
			return err
		}
		if r, ok := h.Rejected(); ok && r.Revision == 0 {
			return fmt.Errorf("etcdkit: live value stale: %w", r.Err)
		}
		return errors.New("etcdkit: live value stale")
	})
}

// namedCheck is a ReadinessCheck with the name it is reported under.
type namedCheck struct {
	name  string
	check ReadinessCheck
}

// WithReadiness adds check, reported under name, to the monitor's
// readiness answer: ServeHTTP answers 503 while the check returns an error,
// whatever the cluster's health, and lists every check with its reason in
// ClusterHealth.Readiness. A handle plugs in with one line:
//
//	hm := etcdkit.NewHealthMonitor(c,
//		etcdkit.WithReadiness("orders-cache", etcdkit.WatchReadiness(cache)),
//		etcdkit.WithReadiness("registration", etcdkit.SessionReadiness(reg)))
//
// The name must be non-empty and unique within the monitor; check must not
// be nil.
func WithReadiness(name string, check ReadinessCheck) HealthOption {
	return healthOptionFunc(func(o *healthOptions) {
		switch {
		case name == "":
			o.fail(errors.New("etcdkit: health monitor: WithReadiness: empty name"))
			return
		case check == nil, isNilFunc(check):
			o.fail(fmt.Errorf("etcdkit: health monitor: WithReadiness(%q): nil check", name))
			return
		}
		for _, c := range o.checks {
			if c.name == name {
				o.fail(fmt.Errorf("etcdkit: health monitor: WithReadiness(%q): name used twice", name))
				return
			}
		}
		o.checks = append(o.checks, namedCheck{name, check})
	})
}

func isNilFunc(c ReadinessCheck) bool {
	f, ok := c.(ReadinessFunc)
	return ok && f == nil
}
