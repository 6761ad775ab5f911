package etcdkit

import (
	"errors"
	"fmt"
	"time"
)

// maxKeepAliveInterval caps the default keepalive interval, so that a silent
// link is noticed within a few seconds even under a long TTL.
const maxKeepAliveInterval = 5 * time.Second

// maxLostMargin is the floor of the default Lost margin, for TTLs of 2s and
// more; shorter TTLs get a quarter of the TTL.
const maxLostMargin = 500 * time.Millisecond

// A SessionOption configures a Session's lease and keepalives. Every handle
// that holds a session takes it too: Client.NewSession, NewEphemeral,
// Service.Register, NewElection, NewMutex and NewSemaphore. Options are made
// by the With... functions of this package; the interface is sealed. A nil
// option is an error, as is an invalid one: the call fails with it before
// anything is sent (an Election, Mutex or Semaphore reports it from
// Validate and every method).
type SessionOption interface {
	EphemeralOption
	ElectionOption
	applySession(*sessionOptions)
}

// An EphemeralOption configures NewEphemeral: every SessionOption is one,
// and WithCreateOnly is one only.
type EphemeralOption interface {
	applyEphemeral(*sessionOptions)
}

// sessionOption is an option of a session, wherever the session is.
type sessionOption func(*sessionOptions)

func (f sessionOption) applySession(o *sessionOptions)   { f(o) }
func (f sessionOption) applyEphemeral(o *sessionOptions) { f(o) }
func (f sessionOption) applyElection(o *electionOptions) { o.session = append(o.session, f) }
func (f sessionOption) applyHolder(o *holderOptions)     { o.election = append(o.election, f) }

// ephemeralOption is an option of an Ephemeral's own.
type ephemeralOption func(*sessionOptions)

func (f ephemeralOption) applyEphemeral(o *sessionOptions) { f(o) }

type sessionOptions struct {
	noRecovery bool
	createOnly bool          // NewEphemeral only
	interval   time.Duration // between keepalives while SessionLive
	margin     time.Duration // SessionLost is declared this long before the earliest expiry
	attempt    time.Duration // deadline of one keepalive attempt

	intervalSet, marginSet bool
}

// WithoutRecovery makes a session end for good when its lease is Lost: Done
// is closed and Err returns ErrLeaseLost, instead of granting a new lease
// once the cluster is reachable again. Use it when whatever the lease
// protected cannot be re-established by the owner (a lock whose holder must
// restart its work from scratch).
func WithoutRecovery() SessionOption {
	return sessionOption(func(o *sessionOptions) { o.noRecovery = true })
}

// WithCreateOnly makes NewEphemeral's first write create the key only if it
// is absent: if the key holds a value, from anyone, NewEphemeral writes
// nothing, revokes its new lease and fails with a *ConflictError[T] matching
// ErrExists that carries the present value. Once the Ephemeral is running it
// keeps its key as usual: a deleted key, or one overwritten without a lease,
// is put back. But if, after its lease was lost, it finds the key held under
// another owner's lease, it does not take it back: it ends, revoking its own
// lease, with Err matching ErrExists. NewSession ignores the option.
func WithCreateOnly() EphemeralOption {
	return ephemeralOption(func(o *sessionOptions) { o.createOnly = true })
}

// WithKeepAliveInterval sets how often the session refreshes its lease while
// Live. The default is a third of the TTL, at most 5s. It must be positive
// and leave time for a retry before Lost (below TTL minus the Lost margin).
func WithKeepAliveInterval(d time.Duration) SessionOption {
	return sessionOption(func(o *sessionOptions) { o.interval, o.intervalSet = d, true })
}

// WithLostMargin sets how long before the earliest moment the server may
// expire the lease the session declares it Lost. The default is a tenth of
// the TTL, and at least 500ms (a quarter of the TTL for TTLs under 2s);
// [Session] says why. It must be at least 0 and at most half the TTL.
func WithLostMargin(d time.Duration) SessionOption {
	return sessionOption(func(o *sessionOptions) { o.margin, o.marginSet = d, true })
}

// buildSessionOptions applies opts (SessionOptions or EphemeralOptions) and
// fills in the defaults derived from ttl and the client's StallTimeout.
func buildSessionOptions[O EphemeralOption](ttl, stall time.Duration, opts []O) (sessionOptions, error) {
	var o sessionOptions
	for _, opt := range opts {
		if any(opt) == nil {
			return o, errors.New("etcdkit: session: nil option")
		}
		opt.applyEphemeral(&o)
	}
	if !o.marginSet {
		o.margin = max(ttl/10, min(maxLostMargin, ttl/4))
	}
	if o.margin < 0 || o.margin > ttl/2 {
		return o, fmt.Errorf("etcdkit: session: SessionLost margin %v outside [0, TTL/2] for TTL %v", o.margin, ttl)
	}
	if !o.intervalSet {
		o.interval = min(ttl/3, maxKeepAliveInterval)
	}
	if o.interval <= 0 || o.interval >= ttl-o.margin {
		return o, fmt.Errorf("etcdkit: session: keepalive interval %v outside (0, %v) for TTL %v and SessionLost margin %v",
			o.interval, ttl-o.margin, ttl, o.margin)
	}
	o.attempt = min(stall, o.interval)
	return o, nil
}
