package etcdkit

import (
	"errors"
	"fmt"
	"strings"
	"sync"
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
	cluster  ClusterPolicy
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

// ClusterPolicy says whether the cluster's health counts in a
// HealthMonitor's readiness answer (ServeHTTP).
type ClusterPolicy int

const (
	// ClusterRequired: the process is not ready while the cluster is
	// Unhealthy, nor before the first check completes. The default, for a
	// service that cannot do its work without etcd.
	ClusterRequired ClusterPolicy = iota
	// ClusterInformational: the cluster's health is reported (under
	// ClusterCheckName in ClusterHealth.Readiness) and does not change the
	// answer, for a service that serves from Live values, LiveMaps and
	// their snapshots while etcd is down: an etcd outage then does not
	// take every replica out of rotation at once. Its own checks
	// (LiveReadiness with AllowStale, WatchReadiness...) still count.
	ClusterInformational
)

// String returns "required" or "informational".
func (p ClusterPolicy) String() string {
	switch p {
	case ClusterRequired:
		return "required"
	case ClusterInformational:
		return "informational"
	}
	return fmt.Sprintf("ClusterPolicy(%d)", int(p))
}

// WithClusterPolicy sets whether the cluster's health counts in the
// readiness answer; the default is ClusterRequired.
func WithClusterPolicy(p ClusterPolicy) HealthOption {
	return healthOptionFunc(func(o *healthOptions) {
		if p != ClusterRequired && p != ClusterInformational {
			o.fail(fmt.Errorf("etcdkit: health monitor: WithClusterPolicy(%v): unknown policy", p))
			return
		}
		o.cluster = p
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
// once it is synced (its first complete view: see Synced) and while it is
// connected and has not ended. Not synced yet, suspended (its link broke
// and it is re-establishing it) or still connecting, it is not ready;
// ended, the reason is its Err.
func WatchReadiness(h interface {
	State() WatchState
	Synced() <-chan struct{}
	Done() <-chan struct{}
	Err() error
}) ReadinessCheck {
	return ReadinessFunc(func() error {
		switch st := h.State(); st {
		case WatchConnected:
			select {
			case <-h.Synced():
				return nil
			default:
				return errors.New("etcdkit: watch not synced yet")
			}
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

// LiveReadiness is the ReadinessCheck of a Live or LiveMap: ready while
// it is not Stale. Stale, the reason is its Err once it has ended, the
// cluster's refusal to let it read its key (a Rejection with Revision 0,
// such as a permission denied) while there is one, and otherwise that the
// value may be out of date. With AllowStale, a value that is stale only
// because etcd cannot be reached (not synced yet, or its watch suspended)
// stays ready for a while or for good; an ended handle and a refusal are
// never ready.
func LiveReadiness(h interface {
	Stale() bool
	Err() error
	Rejected() (Rejection, bool)
}, opts ...LiveReadinessOption) ReadinessCheck {
	lr := &liveReadiness{}
	for _, opt := range opts {
		if opt != nil {
			opt(lr)
		}
	}
	return ReadinessFunc(func() error {
		if !h.Stale() {
			lr.fresh()
			return nil
		}
		if err := h.Err(); err != nil {
			return err
		}
		if r, ok := h.Rejected(); ok && r.Revision == 0 {
			return fmt.Errorf("etcdkit: live value stale: %w", r.Err)
		}
		if d, ok := lr.stale(); !ok {
			return fmt.Errorf("etcdkit: live value stale for %v", d.Round(time.Millisecond))
		}
		return nil
	})
}

// A LiveReadinessOption changes what LiveReadiness counts as ready.
type LiveReadinessOption func(*liveReadiness)

// AllowStale makes LiveReadiness report a stale value ready for d,
// counted from the first check that found it stale (so probe at least as
// often as the bound matters); d < 0 keeps it ready for as long as it is
// stale, for a service that serves its snapshot or defaults for as long as
// etcd is down. The default, 0, reports a stale value not ready at once.
func AllowStale(d time.Duration) LiveReadinessOption {
	return func(lr *liveReadiness) { lr.allow = d }
}

// liveReadiness is LiveReadiness's record of how long the value has been
// stale.
type liveReadiness struct {
	allow time.Duration
	mu    sync.Mutex
	since time.Time // when a check first found the value stale; zero while fresh
}

func (lr *liveReadiness) fresh() {
	lr.mu.Lock()
	lr.since = time.Time{}
	lr.mu.Unlock()
}

// stale records a check that found the value stale and returns for how
// long it has been, and whether that is still allowed.
func (lr *liveReadiness) stale() (time.Duration, bool) {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	now := time.Now()
	if lr.since.IsZero() {
		lr.since = now
	}
	d := now.Sub(lr.since)
	return d, lr.allow < 0 || d < lr.allow
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
		case name == ClusterCheckName:
			o.fail(fmt.Errorf("etcdkit: health monitor: WithReadiness(%q): the name of the cluster's own check", name))
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
