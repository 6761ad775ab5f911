package etcdkit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdkit/etcdkit/internal/backoff"
)

// SessionState is the state of a Session or an Ephemeral, as sent on their
// States channels. The zero value is not a state.
type SessionState int

const (
	// SessionLive means the lease is being kept alive: the last keepalive succeeded.
	SessionLive SessionState = iota + 1
	// SessionSuspended means keepalives are failing (the member is silent,
	// unreachable or without a leader) but the lease may still live on the
	// server; Remaining says for how long at least. The session retries on the
	// next member, and returns to SessionLive if a keepalive succeeds in time.
	SessionSuspended
	// SessionLost means no keepalive succeeded for the lease's TTL minus the Lost
	// margin, so the server may expire the lease at any moment (or the server
	// said it has). Keys attached to the lease must be presumed gone. A
	// session WithoutRecovery ends; otherwise it keeps trying to grant a new
	// lease.
	SessionLost
	// SessionRecovered is sent when a new lease was granted after Lost; it is
	// followed at once by SessionLive, on the new lease. An Ephemeral sends it once
	// its key is back under the new lease. State never returns Recovered.
	SessionRecovered
	// SessionRestored is sent only by an Ephemeral, when its key was deleted or
	// overwritten by someone else and it put the key back; it is followed by
	// the current state. State never returns Restored.
	SessionRestored
)

// String returns the state's name in lower case ("live", "suspended"...).
func (s SessionState) String() string {
	switch s {
	case SessionLive:
		return "live"
	case SessionSuspended:
		return "suspended"
	case SessionLost:
		return "lost"
	case SessionRecovered:
		return "recovered"
	case SessionRestored:
		return "restored"
	}
	return fmt.Sprintf("SessionState(%d)", int(s))
}

// Session is a lease that etcdkit keeps alive, and the state of that effort.
// Make one with [Client.NewSession]. Attach keys to Lease to make them live
// as long as the session; an [Ephemeral] does that for one key and puts it
// back when it goes missing.
//
// Keepalives. A Session refreshes its lease with one keepalive request
// every third of the TTL (at most every 5s; [WithKeepAliveInterval]), on
// the client's stream connection, each bounded by [Config.StallTimeout] (or
// the interval, if shorter). The sessions of a Client share one keepalive
// stream per connection, so that a keepalive costs no new stream. With etcd
// auth on, every connection and stream of a Client sends its one token (see
// [Config].Username): a new connection or stream costs no login, and a
// stream whose token the member refused (a restarted member has forgotten
// it) is opened again at once with a new one. A keepalive
// that fails or stalls makes the session Suspended at once and moves the
// stream connection (and the watches on it) to the next member, where it
// retries within a fraction of a second; one that ran out of time is
// retried with twice the time, up to what is left before Lost, and stays on
// its member if that member answered anything meanwhile (it is slow, not
// silent), so that members that answer, only more slowly than StallTimeout,
// keep the lease without a new connection per attempt.
//
// Lost. The server expires a lease TTL after the leader last renewed it,
// and it can only have renewed it after the client sent the request, so the
// lease lives at least until TTL after the send time of the last keepalive
// that succeeded (a new leader only extends leases, by its election
// timeout, and a keepalive whose answer was lost can only have extended it
// further). The session declares Lost a margin before that moment, measured
// on the client's monotonic clock from when the request was sent, not when
// its answer came back. The margin, a tenth of the TTL but at least 500ms
// (a quarter of TTLs under 2s; [WithLostMargin]), covers what can make Lost
// reach the owner late: timers firing late on a loaded machine or during a
// garbage collection pause, the owner's own reaction to the state, and
// clock rate differences between client and server (under 0.1% with NTP).
// The server itself deletes expired leases only on its next half-second
// sweep and after a raft round, which adds slack that the margin does not
// rely on.
//
// A Session is safe for concurrent use.
type Session struct {
	// lifetime's ctx is the session's life: the caller's ctx, the client's
	// life and Close. Its cause says why it ended.
	lifetime
	c   *Client
	ttl time.Duration
	o   sessionOptions

	feed  *stateFeed
	poked chan struct{}
	// revokeLate is set by run when it leaves the revoke to the end, after
	// Done (a lease Lost for good).
	revokeLate bool

	mu        sync.Mutex
	lease     clientv3.LeaseID
	lastSent  time.Time // send time of the last successful keepalive or grant
	revokeErr error
	// gone is set when the server said lease no longer exists: revoked by
	// someone else (etcdctl lease revoke), or expired. A new lease clears it.
	gone bool
	// past are the leases the session held before the current one, the
	// most recent last (at most maxPastLeases): a key found under one of
	// them was written by the session's owner (see heldLease).
	past []clientv3.LeaseID
}

// maxPastLeases bounds Session.past: a lease that many recoveries old has
// long expired, and so has anything written under it.
const maxPastLeases = 16

// heldLease reports whether id is the session's lease or one it held
// before: a write under it came from the session's owner, even one whose
// answer was lost and which applied after the session had moved on.
func (s *Session) heldLease(id clientv3.LeaseID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return id == s.lease || slices.Contains(s.past, id)
}

// errSessionClosed is the cause of a session ended by its Close.
var errSessionClosed = fmt.Errorf("%w: session closed", ErrClosed)

// NewSession grants a lease of the given TTL and starts keeping it alive. The
// TTL must be a whole number of seconds, at least 1s and at least the
// cluster's minimum (1.5 times its election timeout, rounded up to a second;
// 2s with etcd's defaults), or NewSession fails with ErrInvalidTTL.
//
// ctx bounds both the grant (together with Config.RequestTimeout) and the
// session's life: when ctx ends, the session revokes its lease and ends, and
// Err wraps ctx's error. Pass a context that lasts as long as the session
// should. Closing the client ends the session the same way with ErrClosed.
func (c *Client) NewSession(ctx context.Context, ttl time.Duration, opts ...SessionOption) (*Session, error) {
	if err := validateTTL(ttl); err != nil {
		return nil, err
	}
	o, err := buildSessionOptions(ttl, c.cfg.StallTimeout, opts)
	if err != nil {
		return nil, err
	}
	return c.newSession(ctx, ttl, o)
}

// newSession is NewSession once the options are built.
func (c *Client) newSession(ctx context.Context, ttl time.Duration, o sessionOptions) (*Session, error) {
	s := &Session{c: c, ttl: ttl, o: o}
	gctx, cancel, err := c.opContext(ctx)
	if err != nil {
		return nil, errorf("session: %w", err)
	}
	id, sent, granted, err := s.grant(gctx)
	cancel()
	if err != nil {
		return nil, errorf("session: grant lease: %w", c.cause(err))
	}
	if granted > int64(ttl/time.Second) {
		s.lease = id
		_ = s.revoke()
		return nil, fmt.Errorf("%w: TTL %v is below the cluster's minimum of %ds", ErrInvalidTTL, ttl, granted)
	}

	s.feed = newStateFeed(c.cfg.Metrics)
	s.poked = make(chan struct{}, 1)
	s.lease, s.lastSent = id, sent
	s.explain, s.final = sessionCause, s.afterDone
	if !s.begin(ctx, c, fmt.Errorf("%w: client closed", ErrClosed)) {
		_ = s.revoke()
		return nil, errorf("session: %w", ErrClosed)
	}
	s.spawn(s.run)
	s.arm()
	c.log.Debug("session started", zap.Int64("lease", int64(id)), zap.Duration("ttl", ttl))
	return s, nil
}

// validateTTL checks what can be checked before asking the cluster.
func validateTTL(ttl time.Duration) error {
	switch {
	case ttl < time.Second:
		return fmt.Errorf("%w: TTL %v is below etcd's minimum of 1s", ErrInvalidTTL, ttl)
	case ttl%time.Second != 0:
		return fmt.Errorf("%w: TTL %v is not a whole number of seconds, as etcd leases are", ErrInvalidTTL, ttl)
	}
	return nil
}

// Lease returns the ID of the current lease, to attach keys to with
// clientv3.WithLease; it is a clientv3.LeaseID because that is what the raw
// client takes (compare it with Value.Lease as int64(s.Lease())). It changes
// when the session Recovers from Lost; keys attached to the previous lease
// are gone, or soon will be, and must be written again.
func (s *Session) Lease() clientv3.LeaseID {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lease
}

// TTL returns the TTL of the session's leases.
func (s *Session) TTL() time.Duration { return s.ttl }

// State returns the current state: Live, Suspended or Lost. It keeps its last
// value after the session ended.
func (s *Session) State() SessionState {
	st, _ := s.feed.get()
	return st
}

// States returns the channel of the session's state transitions, starting
// with Live. Sending never blocks the session: the channel holds the latest
// 16 states, and when a reader falls further behind the oldest are dropped,
// so the last value received is always the current state. The channel is
// closed after Done, once the session has ended. There is one channel per
// session: concurrent readers share the states.
func (s *Session) States() <-chan SessionState { return s.feed.ch }

// Remaining returns how long, at least, the session stays out of Lost without
// a successful keepalive: the time until it would declare Lost. The lease
// itself lives on the server for at least the Lost margin longer. It is 0
// once Lost or ended. It is the number to check before acting on the
// strength of the lease while Suspended.
func (s *Session) Remaining() time.Duration {
	if st, _ := s.feed.get(); st == SessionLost {
		return 0
	}
	select {
	case <-s.done:
		return 0
	default:
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return max(0, time.Until(s.lostAtLocked()))
}

// Done returns a channel that is closed when the session has ended for good:
// after Close, when the ctx given to NewSession ended, when the client was
// closed, or when the lease was Lost and the session was made
// WithoutRecovery. It is not closed by Lost otherwise; watch States for that.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err returns nil while the session runs, and once Done is closed the reason
// it ended: ErrClosed (Close, or the client was closed), ErrLeaseLost, or an
// error wrapping the error of the ctx given to NewSession.
func (s *Session) Err() error { return s.cause() }

// sessionCause is the Err of a session whose life ended with cause.
func sessionCause(cause error) error {
	if cause == ErrLeaseLost || errors.Is(cause, ErrClosed) {
		return cause
	}
	return errorf("session: %w", cause)
}

// Close ends the session and revokes its lease, which deletes the keys
// attached to it at once. It waits for the session's goroutine and for the
// revoke (bounded by Config.RequestTimeout and the TTL), and returns the
// revoke's error, if any (the lease then expires after its TTL). Close is
// idempotent; later calls return the same error.
func (s *Session) Close() error {
	_ = s.closeWith(errSessionClosed)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.revokeErr
}

// snapshot returns what the engines that follow the session need: its state,
// its lease and the state's epoch, which ends at the next transition.
func (s *Session) snapshot() (SessionState, clientv3.LeaseID, context.Context) {
	st, epoch := s.feed.get()
	return st, s.Lease(), epoch
}

// poke asks for a keepalive now, when a request found the lease gone.
func (s *Session) poke() {
	select {
	case s.poked <- struct{}{}:
	default:
	}
}

// leaseNotFound records that a request under lease id was refused because
// the server no longer knows the lease, and asks for a keepalive now, which
// finds the same and declares the session Lost without waiting for the
// next keepalive. A lease other than the current one (an answer about a
// lease the session has already replaced) changes nothing.
func (s *Session) leaseNotFound(id clientv3.LeaseID) {
	s.mu.Lock()
	cur := s.lease == id
	s.gone = s.gone || cur
	s.mu.Unlock()
	if cur {
		s.poke()
	}
}

// goneLease reports whether the server said lease id, the current one, no
// longer exists.
func (s *Session) goneLease(id clientv3.LeaseID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gone && s.lease == id
}

// leaseGone asks the server whether lease id still exists (a TimeToLive
// on the stream connection, bounded by ctx and StallTimeout), for a holder
// that saw its key deleted and must say whether the lease went with it.
// When the server says it does not, it records that as leaseNotFound does
// and reports true; when the server cannot say in time, false.
func (s *Session) leaseGone(ctx context.Context, id clientv3.LeaseID) bool {
	if s.goneLease(id) {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, s.c.cfg.StallTimeout)
	defer cancel()
	var ttl int64
	err := s.c.onStreams(ctx, s.c.cfg.StallTimeout, func(ctx context.Context, cli *clientv3.Client) error {
		resp, err := cli.TimeToLive(ctx, id)
		if err != nil {
			return err
		}
		ttl = resp.TTL
		return nil
	})
	if errors.Is(err, rpctypes.ErrLeaseNotFound) || err == nil && ttl < 0 {
		s.leaseNotFound(id)
		return true
	}
	return false
}

func (s *Session) lostAtLocked() time.Time {
	return s.lastSent.Add(s.ttl - s.o.margin)
}

// run is the keepalive engine. It revokes the lease before it returns
// when the session's life ends, so that Done means the keys are gone.
func (s *Session) run() {
	retry := backoff.New(50*time.Millisecond, 500*time.Millisecond)
	// slow is how many times the attempt's time has been doubled: once for
	// each attempt that ran out of time, undone one step at a time by
	// attempts that took under half of theirs (see keepAliveDeadline).
	slow := 0
	for {
		st, _ := s.feed.get()
		if st == SessionLost {
			if s.o.noRecovery {
				// The lease may outlive our verdict by the margin: it is
				// revoked after Done, so that the keys go when the owner was
				// told they are gone, not later.
				s.revokeLate = true
				s.cancel(ErrLeaseLost)
				return
			}
			if !s.recover() {
				s.revokeAtEnd()
				return
			}
			retry.Reset()
			slow = 0
			continue
		}

		s.mu.Lock()
		id, lostAt, next := s.lease, s.lostAtLocked(), s.lastSent.Add(s.o.interval)
		s.mu.Unlock()
		if st == SessionSuspended {
			next = time.Now().Add(retry.Next())
		}
		if next.After(lostAt) {
			next = lostAt
		}
		if !s.sleepUntil(next) {
			s.revokeAtEnd()
			return
		}
		if !time.Now().Before(lostAt) {
			s.lose(fmt.Sprintf("no keepalive succeeded within the TTL minus a %v margin", s.o.margin))
			continue
		}

		start := time.Now()
		deadline := keepAliveDeadline(start, s.o.attempt, slow, lostAt)
		sent, err := s.keepAlive(id, deadline)
		switch {
		case err == nil:
			s.mu.Lock()
			s.lastSent = sent
			s.mu.Unlock()
			retry.Reset()
			if slow > 0 && time.Since(start) < deadline.Sub(start)/2 {
				slow--
			}
			s.feed.enter(SessionLive, 0)
		case s.ctx.Err() != nil:
			s.revokeAtEnd()
			return
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			s.mu.Lock()
			s.gone = true
			s.mu.Unlock()
			s.lose("the server no longer knows the lease: it was revoked (by another client, or etcdctl lease revoke) or expired")
		default:
			if errors.Is(err, context.DeadlineExceeded) {
				slow++
			}
			if st == SessionLive {
				s.c.log.Info("session suspended", zap.Int64("lease", int64(id)), zap.Error(err))
			}
			s.feed.enter(SessionSuspended, 0)
		}
	}
}

// keepAliveDeadline is the deadline of a keepalive attempt started at now,
// after slow attempts in a row ran out of time: attempt, doubled for each,
// and never past lostAt. StallTimeout (attempt) is how long a member may be
// silent before the session moves to the next one; but when the members
// answer, only more slowly than that (a loaded machine, a long link), an
// attempt cut at StallTimeout every time would never get through while the
// lease still lives, so the session would lose a lease the cluster would
// have kept. The doubling gives a slow member the time it needs, up to the
// whole of what is left before Lost, while a silent one is still left after
// StallTimeout the first time; the session keeps the longer time while
// answers stay slow, so that it does not turn Suspended at every keepalive,
// and gives it back as they speed up.
func keepAliveDeadline(now time.Time, attempt time.Duration, slow int, lostAt time.Time) time.Time {
	d := attempt << min(slow, 16)
	if deadline := now.Add(d); deadline.Before(lostAt) {
		return deadline
	}
	return lostAt
}

// sleepUntil waits until t, a poke or the end of the session's life, and
// reports whether the session is still to run.
func (s *Session) sleepUntil(t time.Time) bool {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-s.poked:
	case <-s.ctx.Done():
		return false
	}
	return true
}

func (s *Session) lose(why string) {
	s.c.log.Warn("session lost its lease", zap.Int64("lease", int64(s.Lease())), zap.String("reason", why))
	s.feed.enter(SessionLost, 0)
}

// keepAlive sends one keepalive, bounded by deadline, and returns when it
// was sent.
func (s *Session) keepAlive(id clientv3.LeaseID, deadline time.Time) (time.Time, error) {
	ctx, cancel := context.WithDeadline(s.ctx, deadline)
	defer cancel()
	cli, gen, err := s.c.streams.Get(ctx)
	if err != nil {
		return time.Time{}, err
	}
	sent := time.Now()
	if err := s.c.keepAliveOnce(ctx, cli, gen, id); err != nil {
		// A member that answered anything meanwhile (a late answer to an
		// earlier keepalive included) is slow, not silent: moving to
		// another member would cost a new connection and new streams for
		// nothing. The next attempt has more time instead.
		if !errors.Is(err, context.DeadlineExceeded) || !s.c.streams.AnsweredSince(gen, sent) {
			s.c.streams.Failed(s.ctx, gen, err)
		}
		return sent, err
	}
	s.c.streams.Alive(gen)
	return sent, nil
}

// recover grants a new lease after Lost, retrying until it succeeds or the
// session's life ends, and reports whether it succeeded. The old lease is
// left to expire on its own: revoking it could delete keys an Ephemeral is
// about to move to the new lease.
func (s *Session) recover() bool {
	for {
		id, sent, _, err := s.grant(s.ctx)
		if err == nil {
			s.mu.Lock()
			old := s.lease
			s.past = append(s.past, old)
			if len(s.past) > maxPastLeases {
				s.past = slices.Delete(s.past, 0, len(s.past)-maxPastLeases)
			}
			s.lease, s.lastSent = id, sent
			s.gone = false
			s.mu.Unlock()
			s.c.log.Info("session recovered with a new lease", zap.Int64("lease", int64(id)), zap.Int64("lost", int64(old)))
			s.feed.enter(SessionLive, SessionRecovered)
			return true
		}
		if s.ctx.Err() != nil {
			return false
		}
		// grant retries transient failures itself; anything else (auth,
		// quota) is retried more slowly, as the session has nothing better
		// to do.
		s.c.log.Warn("session cannot grant a new lease", zap.Error(err))
		if !backoff.Sleep(s.ctx, time.Second) {
			return false
		}
	}
}

// grant asks for a lease of the session's TTL on the stream connection,
// retrying transient failures until ctx ends. It returns the lease, when the
// successful request was sent and the TTL the server granted.
func (s *Session) grant(ctx context.Context) (clientv3.LeaseID, time.Time, int64, error) {
	var (
		id      clientv3.LeaseID
		sent    time.Time
		granted int64
	)
	// A grant goes through raft, unlike a keepalive: give each attempt the
	// full StallTimeout, so that a slow disk does not leave a trail of
	// granted leases whose answers came too late.
	err := s.c.onStreams(ctx, s.c.cfg.StallTimeout, func(ctx context.Context, cli *clientv3.Client) error {
		t := time.Now()
		resp, err := cli.Grant(ctx, int64(s.ttl/time.Second))
		if err != nil {
			return err
		}
		id, sent, granted = resp.ID, t, resp.TTL
		return nil
	})
	if errors.Is(err, rpctypes.ErrLeaseTTLTooLarge) {
		err = fmt.Errorf("%w: %w", ErrInvalidTTL, err)
	}
	return id, sent, granted, err
}

// revoke revokes the current lease, bounded by RequestTimeout and the TTL
// (past which the lease has expired anyway). A lease already gone is not an
// error.
func (s *Session) revoke() error {
	ctx, cancel := context.WithTimeout(context.Background(), min(s.c.cfg.RequestTimeout, s.ttl))
	defer cancel()
	id := s.Lease()
	err := s.c.onStreams(ctx, min(s.c.cfg.StallTimeout, s.ttl), func(ctx context.Context, cli *clientv3.Client) error {
		_, err := cli.Revoke(ctx, id)
		return err
	})
	if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return errorf("session: revoke lease %x: %w", int64(id), err)
	}
	return nil
}

// revokeAtEnd revokes the lease of a session whose life ended.
func (s *Session) revokeAtEnd() {
	err := s.revoke()
	s.mu.Lock()
	s.revokeErr = err
	s.mu.Unlock()
}

// afterDone runs after Done is closed: it closes States, then revokes a
// lease Lost for good.
func (s *Session) afterDone() {
	s.feed.close()
	if s.revokeLate {
		_ = s.revoke()
	}
	s.c.log.Debug("session ended", zap.Error(s.err))
}
