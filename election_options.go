package etcdkit

import (
	"errors"
	"fmt"
	"time"
)

// minStepDownMargin is the floor of the default step-down margin.
const minStepDownMargin = 250 * time.Millisecond

// An ElectionOption configures NewElection; every one configures NewMutex
// and NewSemaphore too (they are elections of their own kinds), and every
// SessionOption is one. Options are made by the With... functions of this
// package; the interface is sealed. A nil option is an error, as is an
// invalid one: the Election is unusable and Validate returns it.
type ElectionOption interface {
	HolderOption
	applyElection(*electionOptions)
}

type electionOption func(*electionOptions)

func (f electionOption) applyElection(o *electionOptions) { f(o) }
func (f electionOption) applyHolder(o *holderOptions)     { o.election = append(o.election, f) }

type electionOptions struct {
	stepDown    time.Duration
	stepDownSet bool
	session     []SessionOption
}

// WithStepDownMargin sets how long before its session would declare the
// lease Lost a leader whose keepalives are failing gives up leadership
// (cancels Leadership.Context). Since the session declares Lost its own
// margin before the earliest moment the server may expire the lease, a
// leader steps down at least this margin plus the Lost margin before any
// other candidate can win. The default is a tenth of the TTL, at least
// 250ms, and at most half the room left between two keepalives (TTL minus
// the Lost margin minus the keepalive interval). It must be at least 0 and
// below that room, or a leader would step down between two healthy
// keepalives.
func WithStepDownMargin(d time.Duration) ElectionOption {
	return electionOption(func(o *electionOptions) { o.stepDown, o.stepDownSet = d, true })
}

// buildElectionOptions applies opts and fills in the defaults derived from
// the TTL and the session's timing.
func buildElectionOptions(ttl, stall time.Duration, opts []ElectionOption) (electionOptions, error) {
	var o electionOptions
	for _, opt := range opts {
		if opt == nil {
			return o, errors.New("etcdkit: election: nil option")
		}
		opt.applyElection(&o)
	}
	o.session = append(o.session, WithoutRecovery())
	so, err := buildSessionOptions(ttl, stall, o.session)
	if err != nil {
		return o, err
	}
	room := ttl - so.margin - so.interval
	if !o.stepDownSet {
		o.stepDown = min(max(ttl/10, minStepDownMargin), room/2)
	}
	if o.stepDown < 0 || o.stepDown >= room {
		return o, fmt.Errorf("etcdkit: election: step-down margin %v outside [0, %v) for TTL %v, Lost margin %v and keepalive interval %v",
			o.stepDown, room, ttl, so.margin, so.interval)
	}
	return o, nil
}
