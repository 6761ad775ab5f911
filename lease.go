package etcdkit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdkit/etcdkit/internal/backoff"
)

// SessionState is the state of a Session or an Ephemeral, as sent on their
// States channels. The zero value is not a state.
type SessionState int

const (
	// Live means the lease is being kept alive: the last keepalive succeeded.
	Live SessionState = iota + 1
	// Suspended means keepalives are failing (the member is silent,
	// unreachable or without a leader) but the lease may still live on the
	// server; Remaining says for how long at least. The session retries on the
	// next member, and returns to Live if a keepalive succeeds in time.
	Suspended
	// Lost means no keepalive succeeded for the lease's TTL minus the Lost
	// margin, so the server may expire the lease at any moment (or the server
	// said it has). Keys attached to the lease must be presumed gone. A
	// session WithoutRecovery ends; otherwise it keeps trying to grant a new
	// lease.
	Lost
	// Recovered is sent when a new lease was granted after Lost; it is
	// followed at once by Live, on the new lease. An Ephemeral sends it once
	// its key is back under the new lease. State never returns Recovered.
	Recovered
	// Restored is sent only by an Ephemeral, when its key was deleted or
	// overwritten by someone else and it put the key back; it is followed by
	// the current state. State never returns Restored.
	Restored
)

// String returns the state's name in lower case ("live", "suspended"...).
func (s SessionState) String() string {
	switch s {
	case Live:
		return "live"
	case Suspended:
		return "suspended"
	case Lost:
		return "lost"
	case Recovered:
		return "recovered"
	case Restored:
		return "restored"
	}
	return fmt.Sprintf("SessionState(%d)", int(s))
}

// stateBuffer is how many states a States channel holds for a slow reader
// before the oldest are dropped.
const stateBuffer = 16

// stateFeed holds a handle's current state and sends its transitions to the
// States channel without ever blocking: when the reader is stateBuffer states
// behind, the oldest waiting state is dropped. Each state lasts one epoch, a
// context cancelled at the next transition, which the engines that follow a
// session wait on or bound their requests with.
type stateFeed struct {
	mu       sync.Mutex
	state    SessionState
	ch       chan SessionState
	epoch    context.Context
	endEpoch context.CancelFunc
	closed   bool
	metrics  Metrics
	// mirror, if set, enters Suspended and Lost together with this feed,
	// so that an Ephemeral reports every one of its session's failures,
	// however briefly they last.
	mirror *stateFeed
}

func newStateFeed(m Metrics) *stateFeed {
	f := &stateFeed{state: Live, ch: make(chan SessionState, stateBuffer), metrics: m}
	f.epoch, f.endEpoch = context.WithCancel(context.Background())
	f.ch <- Live
	return f
}

// enter moves to state st, after sending why (Recovered, Restored) if it is
// not zero. Entering the current state again without a why does nothing.
func (f *stateFeed) enter(st, why SessionState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.enterLocked(st, why)
}

func (f *stateFeed) enterLocked(st, why SessionState) {
	if f.closed || (st == f.state && why == 0) {
		return
	}
	if why != 0 {
		f.sendLocked(why)
	}
	if st != f.state {
		f.metrics.Add(MetricSessionStateChanges, 1)
	}
	f.state = st
	f.sendLocked(st)
	if f.mirror != nil && (st == Suspended || st == Lost) {
		f.mirror.enter(st, 0)
	}
	f.endEpoch()
	f.epoch, f.endEpoch = context.WithCancel(context.Background())
}

// announce sends why, then the current state again, without a transition.
func (f *stateFeed) announce(why SessionState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.closed {
		f.sendLocked(why)
		f.sendLocked(f.state)
	}
}

// relay makes g enter st (after why) if f is still in the given epoch, and
// reports whether it did. It keeps a follower from reporting Live after its
// session has already moved on.
func (f *stateFeed) relay(epoch context.Context, g *stateFeed, st, why SessionState) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.epoch != epoch {
		return false
	}
	g.enter(st, why)
	return true
}

func (f *stateFeed) sendLocked(st SessionState) {
	select {
	case f.ch <- st:
	default:
		// Only this goroutine sends, under f.mu, so once one state is taken
		// out the send cannot block.
		select {
		case <-f.ch:
		default:
		}
		f.ch <- st
	}
}

func (f *stateFeed) get() (SessionState, context.Context) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state, f.epoch
}

func (f *stateFeed) setMirror(g *stateFeed) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mirror = g
	if f.state == Suspended || f.state == Lost {
		g.enter(f.state, 0)
	}
}

// close closes the States channel, whose states stay readable, and ends the
// last epoch.
func (f *stateFeed) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.closed {
		f.closed = true
		close(f.ch)
		f.endEpoch()
	}
}

// Session is a lease that etcdkit keeps alive, and the state of that effort.
// Make one with Client.NewSession. Attach keys to Lease to make them live as
// long as the session; an Ephemeral does that for one key and puts it back
// when it goes missing.
//
// # Keepalives
//
// The session refreshes its lease with one keepalive request every third of
// the TTL (at most every 5s; WithKeepAliveInterval), on the client's stream
// connection, each bounded by Config.StallTimeout (or the interval, if
// shorter). A keepalive that fails or stalls makes the session Suspended at
// once and moves the stream connection (and the watches on it) to the next
// member, where it retries within a fraction of a second.
//
// # When Lost is declared
//
// The server expires a lease TTL after the leader last renewed it, and it can
// only have renewed it after the client sent the request, so the lease lives
// at least until TTL after the send time of the last keepalive that
// succeeded (a new leader only extends leases, by its election timeout, and
// a keepalive whose answer was lost can only have extended it further). The
// session declares Lost a margin before that moment, measured on the
// client's monotonic clock from when the request was sent, not when its
// answer came back. The margin, a tenth of the TTL but at least 500ms (a
// quarter of TTLs under 2s; WithLostMargin), covers what can make Lost reach
// the owner late: timers firing late on a loaded machine or during a garbage
// collection pause, the owner's own reaction to the state, and clock rate
// differences between client and server (under 0.1% with NTP). The server
// itself deletes expired leases only on its next half-second sweep and after
// a raft round, which adds slack that the margin does not rely on.
//
// A Session is safe for concurrent use.
type Session struct {
	c   *Client
	ttl time.Duration
	o   sessionOptions

	// ctx is the session's life: the caller's ctx, the client's life and
	// Close. Its cause says why it ended.
	ctx      context.Context
	cancel   context.CancelCauseFunc
	stopLife func() bool

	feed   *stateFeed
	poked  chan struct{}
	done   chan struct{}
	exited chan struct{}

	mu        sync.Mutex
	lease     clientv3.LeaseID
	lastSent  time.Time // send time of the last successful keepalive or grant
	err       error
	revokeErr error

	closeOnce sync.Once
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

	s.ctx, s.cancel = context.WithCancelCause(ctx)
	s.stopLife = context.AfterFunc(c.life, func() { s.cancel(fmt.Errorf("%w: client closed", ErrClosed)) })
	s.feed = newStateFeed(c.cfg.Metrics)
	s.poked = make(chan struct{}, 1)
	s.done = make(chan struct{})
	s.exited = make(chan struct{})
	s.lease, s.lastSent = id, sent
	if !c.spawn(s.run) {
		s.stopLife()
		s.cancel(nil)
		_ = s.revoke()
		return nil, errorf("session: %w", ErrClosed)
	}
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
	if st, _ := s.feed.get(); st == Lost {
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
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close ends the session and revokes its lease, which deletes the keys
// attached to it at once. It waits for the session's goroutine and for the
// revoke (bounded by Config.RequestTimeout and the TTL), and returns the
// revoke's error, if any (the lease then expires after its TTL). Close is
// idempotent; later calls return the same error.
func (s *Session) Close() error {
	s.closeOnce.Do(func() {
		s.cancel(errSessionClosed)
		<-s.exited
	})
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

func (s *Session) lostAtLocked() time.Time {
	return s.lastSent.Add(s.ttl - s.o.margin)
}

// run is the keepalive engine.
func (s *Session) run() {
	defer close(s.exited)
	defer s.stopLife()
	retry := backoff.New(50*time.Millisecond, 500*time.Millisecond)
	for {
		st, _ := s.feed.get()
		if st == Lost {
			if s.o.noRecovery {
				s.end(ErrLeaseLost)
				// The lease may outlive our verdict by the margin; revoking it
				// makes the keys go when the owner was told they are gone.
				_ = s.revoke()
				return
			}
			if !s.recover() {
				s.finish()
				return
			}
			retry.Reset()
			continue
		}

		s.mu.Lock()
		id, lostAt, next := s.lease, s.lostAtLocked(), s.lastSent.Add(s.o.interval)
		s.mu.Unlock()
		if st == Suspended {
			next = time.Now().Add(retry.Next())
		}
		if next.After(lostAt) {
			next = lostAt
		}
		if !s.sleepUntil(next) {
			s.finish()
			return
		}
		if !time.Now().Before(lostAt) {
			s.lose(fmt.Sprintf("no keepalive succeeded within the TTL minus a %v margin", s.o.margin))
			continue
		}

		deadline := time.Now().Add(s.o.attempt)
		if deadline.After(lostAt) {
			deadline = lostAt
		}
		sent, err := s.keepAlive(id, deadline)
		switch {
		case err == nil:
			s.mu.Lock()
			s.lastSent = sent
			s.mu.Unlock()
			retry.Reset()
			s.feed.enter(Live, 0)
		case s.ctx.Err() != nil:
			s.finish()
			return
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			s.lose("the server no longer knows the lease")
		default:
			if st == Live {
				s.c.log.Info("session suspended", zap.Int64("lease", int64(id)), zap.Error(err))
			}
			s.feed.enter(Suspended, 0)
		}
	}
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
	s.feed.enter(Lost, 0)
}

// keepAlive sends one keepalive, bounded by deadline, and returns when it
// was sent.
func (s *Session) keepAlive(id clientv3.LeaseID, deadline time.Time) (time.Time, error) {
	ctx, cancel := context.WithDeadline(s.ctx, deadline)
	defer cancel()
	cli, gen, err := s.c.streams.get(ctx)
	if err != nil {
		return time.Time{}, err
	}
	sent := time.Now()
	if _, err := cli.KeepAliveOnce(ctx, id); err != nil {
		s.c.streamFailed(s.ctx, gen, err)
		return sent, err
	}
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
			s.lease, s.lastSent = id, sent
			s.mu.Unlock()
			s.c.log.Info("session recovered with a new lease", zap.Int64("lease", int64(id)), zap.Int64("lost", int64(old)))
			s.feed.enter(Live, Recovered)
			return true
		}
		if s.ctx.Err() != nil {
			return false
		}
		// grant retries transient failures itself; anything else (auth,
		// quota) is retried more slowly, as the session has nothing better
		// to do.
		s.c.log.Warn("session cannot grant a new lease", zap.Error(err))
		if !sleepCtx(s.ctx, time.Second) {
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

// finish ends a session whose life ended: it revokes the lease, then reports
// why.
func (s *Session) finish() {
	err := s.revoke()
	s.mu.Lock()
	s.revokeErr = err
	s.mu.Unlock()
	cause := context.Cause(s.ctx)
	if !errors.Is(cause, ErrClosed) {
		cause = errorf("session: %w", cause)
	}
	s.end(cause)
}

// end records err, closes Done and then States.
func (s *Session) end(err error) {
	s.mu.Lock()
	s.err = err
	s.mu.Unlock()
	close(s.done)
	s.feed.close()
	s.c.log.Debug("session ended", zap.Error(err))
}

// onStreams runs op on the stream connection, one attempt at a time, each
// bounded by attempt, until it succeeds, fails in a way retrying cannot fix,
// or ctx ends. An attempt that stalls or finds its member unavailable moves
// the stream connection to the next member before the next attempt; one
// whose connection is replaced meanwhile (by another request or the watch
// engine) stops at once. Either way the next attempt goes to the live
// connection, after a backoff. It logs nothing: the caller reports the
// outcome.
func (c *Client) onStreams(ctx context.Context, attempt time.Duration, op func(context.Context, *clientv3.Client) error) error {
	retry := backoff.New(50*time.Millisecond, 500*time.Millisecond)
	for {
		err := c.streamAttempt(ctx, attempt, op)
		if err == nil || !IsRetryable(err) && !errors.Is(err, errStreamReplaced) {
			return err
		}
		if ctx.Err() != nil || !retry.Wait(ctx) {
			return fmt.Errorf("%w (last attempt: %v)", context.Cause(ctx), err)
		}
	}
}

// errStreamReplaced is the cause of an attempt stopped because its stream
// connection was dropped while it ran.
var errStreamReplaced = errors.New("etcdkit: the stream connection was replaced during the request")

func (c *Client) streamAttempt(ctx context.Context, attempt time.Duration, op func(context.Context, *clientv3.Client) error) error {
	tctx, cancel := context.WithTimeout(ctx, attempt)
	defer cancel()
	cli, gen, err := c.streams.get(tctx)
	if err != nil {
		return err
	}
	// A request on a connection that is closing fails with Canceled, which
	// clientv3's interceptor retries every 25ms until the deadline: end it as
	// soon as its connection is dropped.
	actx, abandon := context.WithCancelCause(tctx)
	defer abandon(nil)
	stop := context.AfterFunc(c.streams.life(gen), func() { abandon(errStreamReplaced) })
	defer stop()
	if err := op(actx, cli); err != nil {
		if ctx.Err() == nil && errors.Is(context.Cause(actx), errStreamReplaced) {
			return fmt.Errorf("%w: %w", errStreamReplaced, err)
		}
		c.streamFailed(ctx, gen, err)
		return err
	}
	return nil
}

// streamFailed moves the stream connection of generation gen to the next
// member if err, from a request on it, says the member is silent,
// unreachable or without a leader, unless ctx (the caller's, not the
// attempt's) ended.
func (c *Client) streamFailed(ctx context.Context, gen uint64, err error) {
	if ctx.Err() != nil || !IsRetryable(err) {
		return
	}
	if errors.Is(err, context.DeadlineExceeded) {
		c.cfg.Metrics.Add(MetricWatchStalls, 1)
	}
	c.streams.fail(gen)
}

// Ephemeral is a key that exists as long as its owner: it holds the owner's
// value under a lease of its own Session and goes away when the owner stops
// refreshing it. While the owner is alive, the Ephemeral keeps the key in
// place: if someone deletes or overwrites it, it is put back (sending
// Restored and counting MetricEphemeralRestores), and after the lease was
// Lost and a new one granted, the key is put again under the new lease
// (sending Recovered). It follows its key through the client's watch engine,
// as Key.Watch does: a broken, silent or leaderless link is noticed and
// survived as for any Watch, by the one stall detector every watch of the
// client shares.
//
// Two Ephemerals on one key fight over it, each putting its value back; the
// restores are paced (a restore within 5s of the previous one waits, longer
// each time, up to 5s) so the fight stays cheap, but give each owner its own
// key.
//
// An Ephemeral is safe for concurrent use.
type Ephemeral[T any] struct {
	key *Key[T]
	s   *Session

	feed   *stateFeed
	done   chan struct{}
	exited chan struct{}

	// mu serialises writes, so that a write under an older lease never
	// lands after one under a newer lease, and guards the fields below.
	mu    sync.Mutex
	value []byte
	rev   int64            // mod revision of our last write, 0 if none is known
	lease clientv3.LeaseID // lease of our last write
	seen  int64            // revision at which the key was last found ours
	err   error

	// Owned by the run goroutine.
	restorePace *backoff.Backoff
	lastRestore time.Time

	closeOnce sync.Once
	closeErr  error
}

// NewEphemeral puts value at key under a new lease of the given TTL (see
// Client.NewSession for the rules and the options) and keeps it there as
// described for Ephemeral. A value already at key, from anyone, is replaced,
// unless WithCreateOnly is given. It returns once the key is written.
//
// ctx bounds the first write and the Ephemeral's life: when ctx ends, the
// lease is revoked, which deletes the key, and the Ephemeral ends with Err
// wrapping ctx's error.
func NewEphemeral[T any](ctx context.Context, key *Key[T], value T, ttl time.Duration, opts ...SessionOption) (*Ephemeral[T], error) {
	if key == nil {
		return nil, errors.New("etcdkit: NewEphemeral: nil key")
	}
	data, err := key.encode(value)
	if err != nil {
		return nil, err
	}
	s, err := key.c.NewSession(ctx, ttl, opts...)
	if err != nil {
		return nil, errorf("ephemeral %q: %w", key.name, err)
	}
	e := &Ephemeral[T]{
		key: key,
		s:   s,
		// MetricSessionStateChanges counts the session's transitions only.
		feed:   newStateFeed(nopMetrics{}),
		done:   make(chan struct{}),
		exited: make(chan struct{}),
		value:  data,

		restorePace: backoff.New(100*time.Millisecond, restoreQuiet),
	}
	s.feed.setMirror(e.feed)
	op := "put"
	wctx, cancel, err := key.c.opContext(ctx)
	if err == nil {
		e.mu.Lock()
		if s.o.createOnly {
			op = "create"
			err = e.createLocked(wctx, s.Lease())
		} else {
			_, err = e.writeLocked(wctx, s.Lease(), 0)
		}
		e.mu.Unlock()
		cancel()
	}
	if err != nil {
		_ = s.Close()
		return nil, e.fail(op, err)
	}
	if !key.c.spawn(e.run) {
		_ = s.Close()
		return nil, errorf("ephemeral %q: %w", key.name, ErrClosed)
	}
	return e, nil
}

// Key returns the key the Ephemeral holds.
func (e *Ephemeral[T]) Key() *Key[T] { return e.key }

// Lease returns the ID of the lease the key is meant to be attached to; it
// changes on Recovered.
func (e *Ephemeral[T]) Lease() clientv3.LeaseID { return e.s.Lease() }

// State returns the current state: Live (the key is in place under the
// current lease, as far as the Ephemeral knows), Suspended or Lost.
func (e *Ephemeral[T]) State() SessionState {
	st, _ := e.feed.get()
	return st
}

// States returns the channel of the Ephemeral's state transitions, starting
// with Live: Suspended and Lost as its session's, Recovered (followed by
// Live) once the key is back under a new lease, Restored (followed by the
// current state) when the key was put back after someone deleted or
// overwrote it. It never blocks the Ephemeral: it holds the latest 16
// states, dropping the oldest when the reader is further behind. It is
// closed after Done.
func (e *Ephemeral[T]) States() <-chan SessionState { return e.feed.ch }

// Remaining returns how long, at least, the key's lease stays out of Lost
// without a successful keepalive; see Session.Remaining.
func (e *Ephemeral[T]) Remaining() time.Duration { return e.s.Remaining() }

// Done returns a channel that is closed when the Ephemeral has ended for
// good, for the reasons a Session ends; its key is then deleted or left to
// expire.
func (e *Ephemeral[T]) Done() <-chan struct{} { return e.done }

// Err returns nil while the Ephemeral runs and, once Done is closed, why it
// ended, as Session.Err.
func (e *Ephemeral[T]) Err() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.err
}

// Update replaces the key's value, keeping the lease. The write applies only
// if the key is still as the Ephemeral last wrote it; if someone else changed
// it meanwhile, their change is overwritten as a restore would. ctx bounds
// the call (with Config.RequestTimeout). The new value is kept even if Update
// fails: every later restore writes it. While the lease is Lost, Update fails
// with ErrLeaseLost and the value is written once the session recovers.
func (e *Ephemeral[T]) Update(ctx context.Context, v T) error {
	data, err := e.key.encode(v)
	if err != nil {
		return err
	}
	ctx, cancel, err := e.key.c.opContext(ctx)
	if err != nil {
		return e.fail("update", err)
	}
	defer cancel()
	// The write must also stop when the Ephemeral ends.
	stop := context.AfterFunc(e.s.ctx, cancel)
	defer stop()

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err != nil {
		return e.fail("update", e.err)
	}
	e.value = data
	st, lease, _ := e.s.snapshot()
	if st == Lost {
		return e.fail("update", fmt.Errorf("%w; the value is written when a new lease is granted", ErrLeaseLost))
	}
	if _, err := e.writeLocked(ctx, lease, e.rev); err != nil {
		if e.s.ctx.Err() != nil {
			err = fmt.Errorf("%w: %w", context.Cause(e.s.ctx), err)
		}
		return e.fail("update", err)
	}
	return nil
}

// Close deletes the key and revokes the lease at once (the revoke deletes
// the key with it in one step), stops the Ephemeral and waits for its
// goroutines. It returns the revoke's error, if any; the key then expires
// with its lease. Close is idempotent.
func (e *Ephemeral[T]) Close() error {
	e.closeOnce.Do(func() {
		e.closeErr = e.s.Close()
		<-e.exited
		if e.closeErr != nil {
			e.closeErr = e.fail("close", e.closeErr)
		}
	})
	return e.closeErr
}

func (e *Ephemeral[T]) fail(op string, err error) error {
	return errorf("ephemeral %s %q: %w", op, e.key.name, mapServerError(err))
}

// run keeps the key in place until the session ends.
func (e *Ephemeral[T]) run() {
	defer close(e.exited)
	defer e.finish()
	retry := backoff.New(50*time.Millisecond, time.Second)
	rewatch := backoff.New(50*time.Millisecond, time.Second)
	liveOn := e.s.Lease() // the lease the key was last written under
	checked := true       // the key was just written: no need to read it
	var why SessionState  // Recovered or Restored, not yet reported
	for {
		st, lease, epoch := e.s.snapshot()
		if st == Lost || st == Suspended {
			// Suspended: the cluster is out of reach, the key most likely
			// still in place; Lost: nothing can be written until a new lease.
			e.feed.enter(st, 0)
			if !e.waitEpoch(time.Duration(1<<62), epoch) {
				return
			}
			continue
		}
		if !checked || lease != liveOn {
			if lease != liveOn {
				// The session may have recovered before this goroutine saw
				// it Lost; the key's lease was lost all the same.
				e.feed.enter(Lost, 0)
			}
			restored, err := e.reconcile(epoch, lease)
			if errors.Is(err, ErrExists) {
				// Ending the session revokes our lease and ends the
				// Ephemeral with this cause.
				e.s.cancel(fmt.Errorf("key %q was taken by another owner: %w", e.key.name, err))
				return
			}
			if err != nil {
				if errors.Is(err, rpctypes.ErrLeaseNotFound) {
					e.s.poke()
				}
				e.key.c.log.Debug("ephemeral cannot put its key back yet", zap.String("key", e.key.name), zap.Error(err))
				if !e.waitEpoch(retry.Next(), epoch) {
					return
				}
				continue
			}
			retry.Reset()
			switch {
			case lease != liveOn:
				e.key.c.cfg.Metrics.Add(MetricEphemeralRestores, 1)
				why, liveOn = Recovered, lease
			case restored:
				e.key.c.cfg.Metrics.Add(MetricEphemeralRestores, 1)
				if why == 0 {
					why = Restored
				}
			}
			checked = true
		}
		if !e.s.feed.relay(epoch, e.feed, Live, why) {
			continue // the session moved on meanwhile: look again
		}
		why, checked = 0, false
		start := time.Now()
		e.watch(epoch, lease)
		// A watch that ends at once for a lasting reason (a permission
		// denied, a restore that keeps failing) must not spin.
		delay := time.Duration(0)
		if time.Since(start) < time.Second {
			delay = rewatch.Next()
		} else {
			rewatch.Reset()
		}
		if !e.waitEpoch(delay, nil) {
			return
		}
	}
}

// waitEpoch waits for d or the end of epoch (if not nil), and reports false
// if the session ended first.
func (e *Ephemeral[T]) waitEpoch(d time.Duration, epoch context.Context) bool {
	var ended <-chan struct{}
	if epoch != nil {
		ended = epoch.Done()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-ended:
	case <-e.s.done:
		return false
	}
	return true
}

// opContext bounds one of the engine's writes: by RequestTimeout, the
// session's life and the session state's epoch, so that a write under a
// lease the session has since given up on does not linger.
func (e *Ephemeral[T]) opContext(epoch context.Context) (context.Context, func()) {
	ctx, cancel := context.WithTimeout(e.s.ctx, e.key.c.cfg.RequestTimeout)
	stop := context.AfterFunc(epoch, cancel)
	return ctx, func() { stop(); cancel() }
}

// reconcile makes the key hold our value under lease, reading it first, and
// reports whether it had to write.
func (e *Ephemeral[T]) reconcile(epoch context.Context, lease clientv3.LeaseID) (bool, error) {
	ctx, cancel := e.opContext(epoch)
	defer cancel()
	e.mu.Lock()
	defer e.mu.Unlock()
	var resp *clientv3.TxnResponse
	err := e.key.c.onStreams(ctx, e.key.c.cfg.StallTimeout, func(ctx context.Context, cli *clientv3.Client) error {
		var err error
		resp, err = cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(e.key.path), "=", e.rev),
				clientv3.Compare(clientv3.LeaseValue(e.key.path), "=", lease)).
			Else(clientv3.OpGet(e.key.path)).
			Commit()
		return err
	})
	if err != nil {
		return false, err
	}
	e.seen = resp.Header.Revision
	if resp.Succeeded {
		return false, nil
	}
	var kv *mvccpb.KeyValue
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
		kv = kvs[0]
	}
	if e.oursLocked(kv, lease) {
		e.rev, e.lease = kv.ModRevision, lease
		return false, nil
	}
	if e.s.o.createOnly && kv != nil && kv.Lease != 0 && kv.Lease != int64(lease) && kv.Lease != int64(e.lease) {
		// Another owner created the key under a lease of its own while ours
		// was lost: a create-only key is theirs now, never taken back.
		ce := &ConflictError[T]{Key: e.key.name, Exists: true, Revision: resp.Header.Revision, kind: ErrExists}
		ce.Current, ce.DecodeErr = decodeKV(e.key.name, e.key.codec, kv)
		return false, ce
	}
	expect := int64(0)
	if kv != nil {
		expect = kv.ModRevision
	}
	return e.writeLocked(ctx, lease, expect)
}

// oursLocked reports whether kv is our value under lease.
func (e *Ephemeral[T]) oursLocked(kv *mvccpb.KeyValue, lease clientv3.LeaseID) bool {
	return kv != nil && e.holdsLocked(kv.Value, kv.Lease, lease)
}

// holdsLocked reports whether a key holding value under kvLease holds our
// value under lease.
func (e *Ephemeral[T]) holdsLocked(value []byte, kvLease int64, lease clientv3.LeaseID) bool {
	return kvLease == int64(lease) && bytes.Equal(value, e.value)
}

// writeLocked puts our value under lease if the key's mod revision is
// expect (0: absent). When the key changed meanwhile, it tries again against
// what the key now holds, so the put never overwrites a change it has not
// seen, and it stops if the key already holds our value under lease (a
// write whose answer was lost). It reports whether it wrote.
func (e *Ephemeral[T]) writeLocked(ctx context.Context, lease clientv3.LeaseID, expect int64) (bool, error) {
	for attempt := 1; ; attempt++ {
		var resp *clientv3.TxnResponse
		err := e.key.c.onStreams(ctx, e.key.c.cfg.StallTimeout, func(ctx context.Context, cli *clientv3.Client) error {
			var err error
			resp, err = cli.Txn(ctx).
				If(clientv3.Compare(clientv3.ModRevision(e.key.path), "=", expect)).
				Then(clientv3.OpPut(e.key.path, string(e.value), clientv3.WithLease(lease))).
				Else(clientv3.OpGet(e.key.path)).
				Commit()
			return err
		})
		if err != nil {
			return false, err
		}
		if resp.Succeeded {
			e.rev, e.lease = resp.Header.Revision, lease
			return true, nil
		}
		var kv *mvccpb.KeyValue
		if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
			kv = kvs[0]
		}
		if e.oursLocked(kv, lease) {
			e.rev, e.lease = kv.ModRevision, lease
			return false, nil
		}
		if attempt == maxUpdateAttempts {
			return false, fmt.Errorf("gave up after %d attempts: the key keeps changing", attempt)
		}
		expect = 0
		if kv != nil {
			expect = kv.ModRevision
		}
	}
}

// createLocked puts our value under lease if the key is absent. If the key
// holds anything but our value under lease (which a retried attempt whose
// answer was lost would have left), it fails with a *ConflictError[T]
// matching ErrExists.
func (e *Ephemeral[T]) createLocked(ctx context.Context, lease clientv3.LeaseID) error {
	var resp *clientv3.TxnResponse
	err := e.key.c.onStreams(ctx, e.key.c.cfg.StallTimeout, func(ctx context.Context, cli *clientv3.Client) error {
		var err error
		resp, err = cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(e.key.path), "=", 0)).
			Then(clientv3.OpPut(e.key.path, string(e.value), clientv3.WithLease(lease))).
			Else(clientv3.OpGet(e.key.path)).
			Commit()
		return err
	})
	if err != nil {
		return err
	}
	if resp.Succeeded {
		e.rev, e.lease = resp.Header.Revision, lease
		return nil
	}
	ce := &ConflictError[T]{Key: e.key.name, Revision: resp.Header.Revision, kind: ErrExists}
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
		if e.oursLocked(kvs[0], lease) {
			e.rev, e.lease = kvs[0].ModRevision, lease
			return nil
		}
		ce.Exists = true
		ce.Current, ce.DecodeErr = decodeKV(e.key.name, e.key.codec, kvs[0])
	}
	return ce
}

// watch follows the key through the client's watch engine, as a Key.Watch
// does, from the last revision known to hold our value, and puts the key
// back whenever someone else changes it. The engine notices a silent link,
// resumes after a broken one and turns a compacted gap into Resync events,
// so nothing here watches over the link. It returns at the end of the
// session state's epoch (the lease or the state changed: the key must be
// checked again), when a restore fails, when the watch fails for good (a
// permission denied), or when the session ends.
func (e *Ephemeral[T]) watch(epoch context.Context, lease clientv3.LeaseID) {
	c := e.key.c
	ctx, cancel := context.WithCancel(e.s.ctx)
	defer cancel()
	stop := context.AfterFunc(epoch, cancel)
	defer stop()
	e.mu.Lock()
	// Everything up to seen was checked, and the change at our last write's
	// revision is our own, so a start after both misses nothing, even if our
	// last write was compacted away.
	from := max(e.rev, e.seen)
	e.mu.Unlock()
	h := c.watchHub()
	cfg := watchConfig{after: from, setAfter: true, buffer: DefaultWatchBuffer}
	s := newSub(h, watchTarget{key: e.key.path, strip: len(c.ns)}, cfg, ctx)
	if !h.join(s) {
		s.cancel()
		return
	}
	defer s.close()
	if err := s.start(); err != nil {
		return
	}
	for {
		b, err := s.pop(ctx)
		if err != nil {
			if ctx.Err() == nil {
				c.log.Debug("ephemeral key watch failed", zap.String("key", e.key.name), zap.Error(err))
			}
			return
		}
		for _, ev := range b.events {
			if e.foreign(ev, lease) && !e.paceRestore(epoch) {
				return
			}
			if err := e.restore(epoch, lease, ev); err != nil {
				c.log.Debug("ephemeral cannot restore its key", zap.String("key", e.key.name), zap.Error(err))
				return
			}
		}
	}
}

// restoreQuiet is how long after a restore another one counts as part of a
// fight over the key, and is delayed.
const restoreQuiet = 5 * time.Second

// foreign reports whether ev is a change by someone else after our last
// write.
func (e *Ephemeral[T]) foreign(ev *rawEvent, lease clientv3.LeaseID) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return ev.rev > e.rev && !(ev.typ == Put && e.holdsLocked(ev.value, ev.lease, lease))
}

// paceRestore delays a restore that follows another within restoreQuiet,
// longer each time, so that two owners of one key, or a script that keeps
// deleting it, do not get a write loop at network speed. It reports false if
// the epoch or the session ended meanwhile.
func (e *Ephemeral[T]) paceRestore(epoch context.Context) bool {
	if time.Since(e.lastRestore) >= restoreQuiet {
		e.restorePace.Reset()
		return true
	}
	return e.waitEpoch(e.restorePace.Next(), epoch) && epoch.Err() == nil
}

// restore puts the key back after ev, unless ev is ours or older than our
// last write.
func (e *Ephemeral[T]) restore(epoch context.Context, lease clientv3.LeaseID, ev *rawEvent) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if ev.rev <= e.rev {
		return nil
	}
	expect := ev.rev
	if ev.typ == Delete {
		expect = 0
	} else if e.holdsLocked(ev.value, ev.lease, lease) {
		e.rev = ev.rev
		return nil
	}
	ctx, cancel := e.opContext(epoch)
	defer cancel()
	wrote, err := e.writeLocked(ctx, lease, expect)
	if err != nil {
		return err
	}
	if wrote {
		e.lastRestore = time.Now()
		e.key.c.log.Info("ephemeral key put back", zap.String("key", e.key.name), zap.Stringer("after", ev.typ))
		e.key.c.cfg.Metrics.Add(MetricEphemeralRestores, 1)
		e.feed.announce(Restored)
	}
	return nil
}

// finish waits for the session to end, which revokes the lease, and reports
// its reason.
func (e *Ephemeral[T]) finish() {
	<-e.s.done
	err := e.s.Err()
	e.mu.Lock()
	e.err = err
	e.mu.Unlock()
	close(e.done)
	e.feed.close()
}
