package etcdkit

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdkit/etcdkit/internal/backoff"
)

// electionRoot is the reserved name, under the client's namespace, below
// which every election keeps its candidate keys.
const electionRoot = "_etcdkit/election"

// errResigned is the cause of a leadership ended by Resign or Close.
var errResigned = fmt.Errorf("%w: leadership resigned", ErrClosed)

// Election is a leader election among the holders of one name: candidates
// call Campaign, the one whose candidate key is oldest leads, the others
// wait in line. Make one with NewElection; it holds no state besides its
// configuration, is cheap to make and safe for concurrent use. Any number of
// Campaigns may run at once, from one Election or many, in one process or
// many.
//
// # Keys
//
// Each candidate holds one key, attached to a lease of its own:
// <namespace>/_etcdkit/election/<name>/<lease in hex>, where <name> is the
// election's name path-escaped into one segment (so that election "a" never
// sees the candidates of election "a/b") and the key's value is the
// candidate's id. The "_etcdkit/" root of a namespace is reserved to the
// library. The leader is the candidate whose key has the lowest create
// revision, as in etcd's concurrency.Election; that revision is the
// leadership's fencing token.
//
// # Safety
//
// A leader is told it may have lost leadership (Leadership.Context is
// cancelled) before any other candidate can win, unless someone else deletes
// its key or revokes its lease. Whatever the timing, a guarded write
// (Leadership.Txn, GuardedPut, GuardedDelete) applies only while its key
// still exists, in the same etcd transaction, so a deposed leader's late
// writes are refused by the cluster itself. See Leadership for the rule.
//
// An invalid name, TTL or option does not panic: every method returns the
// error, as Err does.
type Election struct {
	c     *Client
	name  string
	ttl   time.Duration
	o     electionOptions
	cands *Prefix[[]byte] // candidate keys, named by their lease in hex
	err   error
}

// NewElection returns the election called name among the clients of c's
// namespace, whose candidates hold leases of the given TTL. The TTL follows
// the rules of Client.NewSession (a whole number of seconds, at least the
// cluster's minimum); a leader whose link goes silent steps down within
// about the TTL, and another candidate takes over a little after it (see
// Leadership). Short TTLs make failover fast and leaders jumpy: with a TTL of
// a few seconds one keepalive stalled for a third of it is enough to step
// down.
func NewElection(c *Client, name string, ttl time.Duration, opts ...ElectionOption) *Election {
	e := &Election{c: c, name: name, ttl: ttl}
	if c == nil {
		e.err = errors.New("etcdkit: NewElection: nil client")
		return e
	}
	if err := validateName(name); err != nil {
		e.err = errorf("election: %w", err)
		return e
	}
	if err := validateTTL(ttl); err != nil {
		e.err = errorf("election %q: %w", name, err)
		return e
	}
	o, err := buildElectionOptions(ttl, c.cfg.StallTimeout, opts)
	if err != nil {
		e.err = errorf("election %q: %w", name, err)
		return e
	}
	e.o = o
	e.cands = NewPrefix(c, electionRoot+"/"+url.PathEscape(name), Bytes())
	e.err = e.cands.Err()
	return e
}

// Name returns the election's name.
func (e *Election) Name() string { return e.name }

// TTL returns the TTL of the candidates' leases.
func (e *Election) TTL() time.Duration { return e.ttl }

// Err returns the error that makes the election unusable (a nil client, an
// invalid name, TTL or option), or nil.
func (e *Election) Err() error { return e.err }

// LeaderInfo describes who holds an election at a revision. Present tells
// whether anyone does; when it is false the other fields but Revision are
// zero.
type LeaderInfo struct {
	// Present is true when a candidate leads, false when there is no
	// candidate at all.
	Present bool
	// ID is the id the leader gave to Campaign.
	ID string
	// Token is the create revision of the leader's key: the fencing token
	// of its Leadership. Successive leaders have growing tokens.
	Token int64
	// Lease is the ID of the leader's lease.
	Lease int64
	// Revision is the cluster revision at which this was true.
	Revision int64
}

// String describes the leader, or says there is none.
func (li LeaderInfo) String() string {
	if !li.Present {
		return fmt.Sprintf("no leader (revision %d)", li.Revision)
	}
	return fmt.Sprintf("leader %q (token %d, revision %d)", li.ID, li.Token, li.Revision)
}

// same reports whether li and o name the same leader, or both none.
func (li LeaderInfo) same(o LeaderInfo) bool {
	return li.Present == o.Present && li.ID == o.ID && li.Token == o.Token && li.Lease == o.Lease
}

// leaderOf returns the candidate with the lowest create revision.
func leaderOf(entries []Entry[[]byte], rev int64) LeaderInfo {
	li := LeaderInfo{Revision: rev}
	for _, en := range entries {
		if !li.Present || en.CreateRevision < li.Token {
			li = LeaderInfo{Present: true, ID: string(en.Data), Token: en.CreateRevision, Lease: en.Lease, Revision: rev}
		}
	}
	return li
}

// Leader reads who leads the election now (a linearizable read). With no
// candidate it returns a LeaderInfo that is not Present, with the read's
// revision, and an error matching ErrNoLeader. ctx bounds the call, with
// Config.RequestTimeout when it has no deadline.
func (e *Election) Leader(ctx context.Context) (LeaderInfo, error) {
	if e.err != nil {
		return LeaderInfo{}, e.err
	}
	rctx, cancel, err := e.c.opContext(ctx)
	if err != nil {
		return LeaderInfo{}, e.fail("leader", err)
	}
	defer cancel()
	resp, err := e.c.raw.Get(rctx, e.cands.path, clientv3.WithFirstCreate()...)
	if err != nil {
		return LeaderInfo{}, e.fail("leader", e.c.cause(err))
	}
	if len(resp.Kvs) == 0 {
		return LeaderInfo{Revision: resp.Header.Revision}, e.fail("leader", ErrNoLeader)
	}
	kv := resp.Kvs[0]
	return LeaderInfo{Present: true, ID: string(kv.Value), Token: kv.CreateRevision, Lease: kv.Lease,
		Revision: resp.Header.Revision}, nil
}

func (e *Election) fail(op string, err error) error {
	return errorf("election %q: %s: %w", e.name, op, err)
}

// Campaign enters the election as candidate id and blocks until it leads,
// ctx ends, or it can no longer win. It puts the candidate's key under a new
// lease of the election's TTL, then waits until every older candidate key is
// gone. It returns the Leadership once this candidate leads and its lease is
// safely alive (see Leadership for the rule).
//
// ctx bounds the campaign only, not the Leadership it returns. Campaign fails
// when ctx ends (the error wraps ctx's cause), when the candidate's lease is
// lost (ErrLeaseLost) or its key deleted by someone else (ErrNotLeader), and
// when the client is closed (ErrClosed). A failed Campaign removes its
// candidate key by revoking its lease: before it returns when ctx ended,
// in the background when the lease was lost (the cluster is then most likely
// out of reach). If the revoke cannot reach the cluster, the key expires
// with the lease, which nothing keeps alive any more. An id larger than
// Config.MaxValueSize fails with ErrTooLarge.
func (e *Election) Campaign(ctx context.Context, id string) (*Leadership, error) {
	if e.err != nil {
		return nil, e.err
	}
	if len(id) > e.c.cfg.MaxValueSize {
		return nil, e.fail("campaign", fmt.Errorf("%w: id of %d bytes, limit %d", ErrTooLarge, len(id), e.c.cfg.MaxValueSize))
	}
	if e.c.closed() {
		return nil, e.fail("campaign", ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, e.fail("campaign", context.Cause(ctx))
	}

	// The session outlives this call if it wins, so its life is its own;
	// until then, ctx ending ends it, which revokes the lease and with it
	// the candidate key.
	life, endLife := context.WithCancelCause(context.Background())
	unhook := context.AfterFunc(ctx, func() { endLife(context.Cause(ctx)) })
	s, err := e.c.NewSession(life, e.ttl, e.o.session...)
	if err != nil {
		unhook()
		endLife(nil)
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
		}
		return nil, e.fail("campaign", err)
	}
	cd := &candidate{e: e, id: id, s: s, lease: s.Lease(), life: life, endLife: endLife}
	cd.name = fmt.Sprintf("%x", int64(cd.lease))
	cd.key = e.cands.path + cd.name

	l, err := cd.campaign(ctx)
	if err == nil && !unhook() {
		// ctx ended just as the campaign was won.
		l, err = nil, context.Cause(ctx)
	}
	if err != nil {
		unhook()
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
		}
		// A session that lost its lease or ended with the client revokes
		// its lease on its own, which a silent link can make take a while:
		// do not make the caller wait for it.
		if st, _ := s.feed.get(); st != Lost || !e.c.spawn(func() { _ = cd.abandon() }) {
			_ = cd.abandon()
		}
		return nil, e.fail("campaign", err)
	}
	if !e.c.spawn(l.run) {
		_ = cd.abandon()
		return nil, e.fail("campaign", ErrClosed)
	}
	e.c.cfg.Metrics.Add(MetricLeadershipChanges, 1)
	e.c.log.Info("leadership won", zap.String("election", e.name), zap.String("id", id), zap.Int64("token", l.token))
	return l, nil
}

// candidate is one Campaign under way.
type candidate struct {
	e       *Election
	id      string
	s       *Session
	lease   clientv3.LeaseID
	name    string // the key's name under the election's prefix
	key     string // the key's full etcd key
	token   int64  // the key's create revision, once put
	life    context.Context
	endLife context.CancelCauseFunc
	ca      *Cache[[]byte]
	w       *Watch[[]byte]
}

// campaign puts the candidate key and waits until it leads.
func (cd *candidate) campaign(ctx context.Context) (*Leadership, error) {
	e := cd.e
	if err := cd.put(ctx); err != nil {
		return nil, fmt.Errorf("put candidate key: %w", err)
	}
	ca, err := e.cands.Cache(cd.life)
	if err != nil {
		return nil, err
	}
	cd.ca = ca
	// Subscribed before the cache is synced, so that no change after the
	// state it is judged on goes unnoticed.
	cd.w = ca.Subscribe()

	synced := ca.Synced()
	poll := time.NewTimer(time.Hour)
	defer poll.Stop()
	for {
		st, epoch := cd.s.feed.get()
		if st == Lost {
			return nil, fmt.Errorf("%w before this candidate could lead", ErrLeaseLost)
		}
		if synced == nil {
			leads, err := cd.standing()
			if err != nil {
				return nil, err
			}
			if leads {
				// Winning with a lease about to be given up would hand the
				// caller a leadership that ends at once: wait for a
				// keepalive to succeed, or for the lease to be lost.
				if cd.s.Remaining() > e.o.stepDown {
					return newLeadership(cd), nil
				}
				poll.Reset(20 * time.Millisecond)
			}
		}
		select {
		case <-synced:
			synced = nil
		case _, ok := <-cd.w.Events():
			if !ok {
				return nil, fmt.Errorf("election watch ended: %w", cd.w.Err())
			}
		case <-epoch.Done():
		case <-cd.s.Done():
			return nil, fmt.Errorf("session ended: %w", cd.s.Err())
		case <-poll.C:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

// put creates the candidate key under the candidate's lease and records its
// create revision. A retry whose first attempt applied finds the key ours.
func (cd *candidate) put(ctx context.Context) error {
	c := cd.e.c
	ctx, cancel, err := c.opContext(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	// A put stuck on a silent link must end when the session does (its
	// lease lost), with the session's cause, not at the request timeout.
	ctx, endPut := context.WithCancelCause(ctx)
	stop, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		select {
		case <-cd.s.Done():
			endPut(cd.s.Err())
		case <-stop:
		}
	}()
	defer func() {
		close(stop)
		<-exited
		endPut(nil)
	}()
	return c.onStreams(ctx, c.cfg.StallTimeout, func(ctx context.Context, cli *clientv3.Client) error {
		resp, err := cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(cd.key), "=", 0)).
			Then(clientv3.OpPut(cd.key, cd.id, clientv3.WithLease(cd.lease))).
			Else(clientv3.OpGet(cd.key)).
			Commit()
		if err != nil {
			return mapServerError(err)
		}
		if resp.Succeeded {
			cd.token = resp.Header.Revision
			return nil
		}
		kvs := resp.Responses[0].GetResponseRange().GetKvs()
		if len(kvs) == 0 || kvs[0].Lease != int64(cd.lease) {
			return fmt.Errorf("candidate key %q taken by someone else", cd.key)
		}
		cd.token = kvs[0].CreateRevision
		return nil
	})
}

// standing judges the cache's state: whether the candidate leads, or an
// error if its key is gone. A state older than the key says nothing.
func (cd *candidate) standing() (bool, error) {
	rev := cd.ca.Revision()
	if rev < cd.token {
		return false, nil
	}
	entries := cd.ca.List()
	mine := false
	for _, en := range entries {
		if en.Name == cd.name {
			if en.CreateRevision != cd.token || en.Lease != int64(cd.lease) {
				return false, fmt.Errorf("%w: candidate key %q was replaced by someone else by revision %d", ErrNotLeader, cd.key, rev)
			}
			mine = true
		}
	}
	if !mine {
		return false, fmt.Errorf("%w: candidate key %q was deleted by revision %d", ErrNotLeader, cd.key, rev)
	}
	li := leaderOf(entries, rev)
	return li.Token == cd.token, nil
}

// abandon stops following the election and ends the session, which revokes
// the lease and so deletes the candidate key. It returns the revoke's error.
func (cd *candidate) abandon() error {
	if cd.w != nil {
		_ = cd.w.Close()
	}
	if cd.ca != nil {
		_ = cd.ca.Close()
	}
	err := cd.s.Close()
	cd.endLife(nil)
	return err
}

// Leadership is won by Campaign and lasts until it is resigned or may have
// been lost. Its Context is the leader's authority: work done as leader
// should run under it, and guarded writes check it, then the leader key,
// in the cluster.
//
// # When leadership ends
//
// Context is cancelled, with a cause matching ErrNotLeader (or ErrClosed
// after Resign, Close or Client.Close), as soon as one of these happens:
//
//   - no keepalive of the leader's lease has succeeded for so long that the
//     session would declare the lease Lost within the step-down margin (see
//     WithStepDownMargin), whether the session is Suspended or a keepalive
//     is still in flight;
//   - the session is Lost or ended;
//   - the leader key is seen deleted or replaced;
//   - a guarded write found the leader key gone;
//   - Resign or Close was called, or the client was closed.
//
// The first rule is what makes the leader know before anyone else can win.
// Another candidate wins only once the leader key is deleted. If nobody
// deletes it and nobody revokes the lease, that takes the lease expiring,
// which the server does no earlier than the TTL after the leader sent its
// last successful keepalive (see Session on why). The session declares Lost
// the Lost margin before that moment, on the client's monotonic clock, and
// the leadership ends the step-down margin before Lost: at least the two
// margins together (1s with a 5s TTL and the defaults) before the earliest
// moment another candidate can win, which leaves room for late timers and
// for the leader to stop what it is doing. What the margins cannot cover,
// a pause longer than them, a key deleted or a lease revoked by someone
// else, the guarded writes do: their condition is checked by the cluster in
// the same transaction as the write.
//
// Once its Context is cancelled, the Leadership gives up its key: it stops
// keeping the lease alive and revokes it, which deletes the key, so the next
// candidate takes over at once; if the cluster cannot be reached, the key
// expires with the lease.
//
// A Leadership is safe for concurrent use.
type Leadership struct {
	e     *Election
	id    string
	name  string
	key   string
	token int64
	lease clientv3.LeaseID

	s       *Session
	ca      *Cache[[]byte]
	w       *Watch[[]byte]
	endLife context.CancelCauseFunc

	ctx     context.Context
	cancel  context.CancelCauseFunc
	endOnce sync.Once
	done    chan struct{}

	mu        sync.Mutex
	err       error
	revokeErr error
}

func newLeadership(cd *candidate) *Leadership {
	l := &Leadership{e: cd.e, id: cd.id, name: cd.name, key: cd.key, token: cd.token, lease: cd.lease,
		s: cd.s, ca: cd.ca, w: cd.w, endLife: cd.endLife, done: make(chan struct{})}
	l.ctx, l.cancel = context.WithCancelCause(context.WithValue(context.Background(), leadershipKey{}, l))
	return l
}

type leadershipKey struct{}

// LeadershipFrom returns the Leadership whose Context ctx is or derives
// from, or nil. It lets code run by Election.Run, which receives only the
// context, make guarded writes.
func LeadershipFrom(ctx context.Context) *Leadership {
	l, _ := ctx.Value(leadershipKey{}).(*Leadership)
	return l
}

// ID returns the id the leader campaigned with.
func (l *Leadership) ID() string { return l.id }

// Token returns the fencing token: the create revision of the leader key.
// Tokens of successive leaderships of an election only grow, so a resource
// that remembers the highest token it has seen can refuse a deposed leader.
func (l *Leadership) Token() int64 { return l.token }

// Lease returns the ID of the leader's lease.
func (l *Leadership) Lease() int64 { return int64(l.lease) }

// Key returns the leader key as a full etcd key, namespace included, for
// conditions of one's own in raw transactions.
func (l *Leadership) Key() string { return l.key }

// Context returns a context that is cancelled the moment leadership ends or
// may have ended (see Leadership); context.Cause says why. It is never
// cancelled by the ctx given to Campaign.
func (l *Leadership) Context() context.Context { return l.ctx }

// Done returns a channel that is closed once the leadership has ended and
// been cleaned up: its Context cancelled, the lease revoked (or, when the
// cluster could not be reached, no longer kept alive) and its goroutine
// finished. It closes shortly after Context is cancelled; Err then says why.
func (l *Leadership) Done() <-chan struct{} { return l.done }

// Err returns nil until Done is closed, then why the leadership ended:
// context.Cause of Context. It matches ErrNotLeader when leadership was lost
// (with ErrLeaseLost when the lease was), ErrClosed after Resign, Close or
// Client.Close.
func (l *Leadership) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Resign gives up leadership at once: it cancels Context, then revokes the
// lease, which deletes the leader key in the same step, so the next
// candidate takes over without waiting for the TTL. It blocks until that is
// done (within Config.RequestTimeout and the TTL) or ctx ends, and returns
// the revoke's error, if any (the key then expires with its lease, which is
// no longer kept alive). Resigning a leadership that has already ended does
// nothing more and returns the same error.
func (l *Leadership) Resign(ctx context.Context) error {
	l.end(errResigned)
	select {
	case <-l.done:
	case <-ctx.Done():
		return errorf("election %q: resign: %w", l.e.name, context.Cause(ctx))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.revokeErr != nil {
		return errorf("election %q: resign: %w", l.e.name, l.revokeErr)
	}
	return nil
}

// Close resigns, as Resign with no deadline of its own, and waits for the
// leadership's goroutine. It is idempotent: later calls return the same
// error.
func (l *Leadership) Close() error {
	return l.Resign(context.Background())
}

// end cancels Context with cause, unless it was already cancelled. It counts
// the change first, so that whoever sees Context cancelled finds it counted:
// the revoke that follows can take as long as the TTL when the cluster is
// out of reach.
func (l *Leadership) end(cause error) {
	l.endOnce.Do(func() {
		l.e.c.cfg.Metrics.Add(MetricLeadershipChanges, 1)
		l.cancel(cause)
	})
}

// lostCause returns why leadership must end now, from what the session says,
// or nil.
func (l *Leadership) lostCause() error {
	select {
	case <-l.s.Done():
		if err := l.s.Err(); errors.Is(err, ErrClosed) {
			return err
		}
		return errorf("%w: %w", ErrNotLeader, l.s.Err())
	default:
	}
	if st, _ := l.s.feed.get(); st == Lost {
		return errorf("%w: %w", ErrNotLeader, ErrLeaseLost)
	}
	if rem := l.s.Remaining(); rem <= l.e.o.stepDown {
		return fmt.Errorf("%w: stepped down: keepalives are failing and the lease may expire in %v",
			ErrNotLeader, (rem + l.s.o.margin).Round(time.Millisecond))
	}
	return nil
}

// keyCause returns why leadership must end, from what the cache shows of
// the leader key, or nil.
func (l *Leadership) keyCause() error {
	rev := l.ca.Revision()
	if rev < l.token {
		return nil
	}
	v, ok := l.ca.Get(l.name)
	switch {
	case !ok:
		return fmt.Errorf("%w: the leader key was deleted by revision %d", ErrNotLeader, rev)
	case v.CreateRevision != l.token || v.Lease != int64(l.lease):
		return fmt.Errorf("%w: the leader key was replaced by revision %d", ErrNotLeader, rev)
	}
	return nil
}

// run watches over the leadership until it ends, then cleans up.
func (l *Leadership) run() {
	defer l.finish()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if cause := l.lostCause(); cause != nil {
			l.end(cause)
			return
		}
		if cause := l.keyCause(); cause != nil {
			l.end(cause)
			return
		}
		_, epoch := l.s.feed.get()
		// Keepalives that succeed push the step-down point back without a
		// state change: look again when it comes.
		timer.Reset(l.s.Remaining() - l.e.o.stepDown)
		select {
		case <-l.ctx.Done():
			return
		case <-l.e.c.life.Done():
			l.end(fmt.Errorf("%w: client closed", ErrClosed))
			return
		case <-epoch.Done():
		case <-l.s.Done():
		case <-timer.C:
		case _, ok := <-l.w.Events():
			if !ok {
				l.end(errorf("%w: the election watch ended: %w", ErrNotLeader, l.w.Err()))
				return
			}
		}
	}
}

// finish gives up the key and records why the leadership ended.
func (l *Leadership) finish() {
	// The revoke hands over: first.
	revokeErr := l.s.Close()
	_ = l.w.Close()
	_ = l.ca.Close()
	l.endLife(nil)
	cause := context.Cause(l.ctx)
	l.mu.Lock()
	l.err, l.revokeErr = cause, revokeErr
	l.mu.Unlock()
	log := l.e.c.log.Warn
	if errors.Is(cause, ErrClosed) {
		log = l.e.c.log.Info
	}
	log("leadership ended", zap.String("election", l.e.name), zap.String("id", l.id),
		zap.Int64("token", l.token), zap.NamedError("cause", cause), zap.NamedError("revoke", revokeErr))
	close(l.done)
}

// notLeader is the error of a guarded write refused because leadership has
// ended.
func (l *Leadership) notLeader(op string) error {
	cause := context.Cause(l.ctx)
	if errors.Is(cause, ErrNotLeader) {
		return errorf("election %q: %s: %w", l.e.name, op, cause)
	}
	return errorf("election %q: %s: %w: %w", l.e.name, op, ErrNotLeader, cause)
}

// Txn runs ops in one etcd transaction that applies only if the leader key
// still exists with this leadership's token, and returns its response. Ops
// are raw clientv3 operations and take full etcd keys: prefix them with
// Client.KeyPrefix (Key and Prefix do this for you; see GuardedPut
// and GuardedDelete). With no ops, Txn checks in the cluster that this is
// still the leader.
//
// It fails with ErrNotLeader, without sending anything, once Context is
// cancelled or the lease is about to be given up, and with ErrNotLeader when
// the cluster found the leader key gone (nothing was applied; the leadership
// then ends). ctx bounds the call, with Config.RequestTimeout when it has no
// deadline; the end of leadership also interrupts it, with an error matching
// ErrNotLeader that says the write may have applied before, whatever ctx is
// (Context itself, or a context derived from it, included). Any other error
// (a timeout, an unreachable cluster) also leaves the outcome unknown.
func (l *Leadership) Txn(ctx context.Context, ops ...clientv3.Op) (*clientv3.TxnResponse, error) {
	return l.txn(ctx, "guarded txn", ops)
}

func (l *Leadership) txn(ctx context.Context, op string, ops []clientv3.Op) (*clientv3.TxnResponse, error) {
	if l.ctx.Err() == nil {
		// Refuse now rather than when the watchdog's timer fires: it may be
		// late on a busy machine.
		if cause := l.lostCause(); cause != nil {
			l.end(cause)
		}
	}
	if l.ctx.Err() != nil {
		return nil, l.notLeader(op)
	}
	c := l.e.c
	rctx, cancel, err := c.opContext(ctx)
	if err != nil {
		if l.ctx.Err() != nil && !c.closed() {
			// ctx may derive from Context, which just ended: nothing was sent.
			return nil, l.notLeader(op)
		}
		return nil, errorf("election %q: %s: %w", l.e.name, op, err)
	}
	defer cancel()
	rctx, abort := context.WithCancel(rctx)
	defer abort()
	stop := context.AfterFunc(l.ctx, abort)
	defer stop()
	resp, err := c.raw.Txn(rctx).
		If(clientv3.Compare(clientv3.CreateRevision(l.key), "=", l.token)).
		Then(ops...).
		Commit()
	if err != nil {
		// Whether or not ctx ended too (it may be Context itself, or derive
		// from it), the end of leadership is what the caller must learn.
		if l.ctx.Err() != nil && !c.closed() {
			return nil, errorf("election %q: %s: %w: leadership ended while the write was in flight, and it may have applied before (%w)",
				l.e.name, op, ErrNotLeader, err)
		}
		return nil, errorf("election %q: %s: %w", l.e.name, op, c.cause(mapServerError(err)))
	}
	if !resp.Succeeded {
		l.end(fmt.Errorf("%w: a guarded write found the leader key gone at revision %d", ErrNotLeader, resp.Header.Revision))
		return nil, l.notLeader(op)
	}
	return resp, nil
}

// GuardedPut stores v at k only while l leads: in one transaction that
// applies only if l's leader key still exists with l's token. It returns the
// revision of the write. It fails as Leadership.Txn does, and as Key.Put does
// for values it refuses (ErrTooLarge, an invalid key). k must belong to the
// Client that l's election was made with.
func GuardedPut[T any](ctx context.Context, l *Leadership, k *Key[T], v T) (int64, error) {
	if err := guardedKey(l, k); err != nil {
		return 0, err
	}
	data, err := k.encode(v)
	if err != nil {
		return 0, err
	}
	resp, err := l.txn(ctx, fmt.Sprintf("guarded put %q", k.name), []clientv3.Op{clientv3.OpPut(k.path, string(data))})
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// GuardedDelete deletes k only while l leads, as GuardedPut writes, and
// returns the revision of the transaction. Deleting an absent key is not an
// error.
func GuardedDelete[T any](ctx context.Context, l *Leadership, k *Key[T]) (int64, error) {
	if err := guardedKey(l, k); err != nil {
		return 0, err
	}
	resp, err := l.txn(ctx, fmt.Sprintf("guarded delete %q", k.name), []clientv3.Op{clientv3.OpDelete(k.path)})
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

func guardedKey[T any](l *Leadership, k *Key[T]) error {
	switch {
	case l == nil:
		return errors.New("etcdkit: guarded write: nil leadership")
	case k == nil:
		return errors.New("etcdkit: guarded write: nil key")
	case k.err != nil:
		return k.err
	case k.c != l.e.c:
		return fmt.Errorf("etcdkit: guarded write %q: the key belongs to another Client than the election", k.name)
	}
	return nil
}

// observeBacklog bounds the leader changes an Observe channel holds for a
// slow reader.
const observeBacklog = 64

// Observe follows who leads the election. The returned channel first
// receives the current state, once known, then every change of leader:
// another candidate (a new Token), or no candidate at all, reported as a
// LeaderInfo that is not Present. It follows a Cache of the candidate keys,
// so it survives broken and silent links, member failures and compactions;
// while the cluster cannot be reached it reports nothing new.
//
// Observe does not block; ctx bounds the life of the channel. The channel
// is closed only when ctx ends or the client is closed (if ctx.Err() is nil,
// the client was), never because of the network or a failed watch, which
// it retries; an invalid Election yields a closed channel (see Err).
// Sending never blocks the observer: a reader more than 64 changes behind
// loses the oldest undelivered ones, so the last value received is always
// the latest state known.
func (e *Election) Observe(ctx context.Context) <-chan LeaderInfo {
	ch := make(chan LeaderInfo)
	if e.err != nil {
		close(ch)
		return ch
	}
	octx, cancel := e.c.handleContext(ctx)
	if !e.c.spawn(func() {
		defer close(ch)
		defer cancel()
		e.observe(octx, ch)
	}) {
		cancel()
		close(ch)
	}
	return ch
}

// observe feeds ch until ctx ends, following a Cache of the candidates and
// starting a new one if a cache fails.
func (e *Election) observe(ctx context.Context, ch chan<- LeaderInfo) {
	var (
		queue  []LeaderInfo
		last   LeaderInfo
		known  bool
		ca     *Cache[[]byte]
		w      *Watch[[]byte]
		synced <-chan struct{}
		events <-chan Event[[]byte]
	)
	retry := backoff.New(100*time.Millisecond, 2*time.Second)
	restart := time.NewTimer(0)
	defer restart.Stop()
	stop := func() {
		if ca != nil {
			_ = w.Close()
			_ = ca.Close()
			ca, w, synced, events = nil, nil, nil, nil
		}
	}
	defer stop()
	for {
		// A cache that ended before it synced may close Synced too, with
		// Revision still 0: that is no state to report.
		if ca != nil && synced == nil && ca.Revision() > 0 {
			li := leaderOf(ca.List(), ca.Revision())
			if !known || !li.same(last) {
				if len(queue) == observeBacklog {
					queue = queue[1:]
				}
				queue = append(queue, li)
				last, known = li, true
			}
		}
		var out chan<- LeaderInfo
		var head LeaderInfo
		if len(queue) > 0 {
			out, head = ch, queue[0]
		}
		var restartC <-chan time.Time
		if ca == nil {
			restartC = restart.C
		}
		select {
		case out <- head:
			queue = queue[1:]
		case <-restartC:
			var err error
			if ca, err = e.cands.Cache(ctx); err != nil {
				return // the client is closed or ctx ended
			}
			w = ca.Subscribe()
			synced, events = ca.Synced(), w.Events()
		case <-synced:
			synced = nil
			retry.Reset()
		case _, ok := <-events:
			if ok {
				continue
			}
			err := w.Err()
			stop()
			if ctx.Err() != nil || e.c.closed() {
				return
			}
			e.c.log.Warn("election observer restarts its cache", zap.String("election", e.name), zap.Error(err))
			restart.Reset(retry.Next())
		case <-ctx.Done():
			return
		}
	}
}

// Run campaigns as id and runs fn while it leads, again and again, until
// ctx ends or fn fails. fn's ctx is Leadership.Context (LeadershipFrom
// returns the Leadership, for guarded writes): fn must return soon after it
// is cancelled. When fn returns nil, or returns after its ctx was
// cancelled (whatever it returns then: leadership was lost), Run gives up
// the leadership and campaigns again. When fn returns an error while still
// leading, Run resigns and returns that error. Failed campaigns are retried
// with backoff, except those that cannot succeed (an invalid election or id,
// a closed client).
//
// Run blocks; it returns ctx's cause once ctx ends (resigning first if it
// leads), ErrClosed-matching errors once the client is closed.
func (e *Election) Run(ctx context.Context, id string, fn func(ctx context.Context) error) error {
	if e.err != nil {
		return e.err
	}
	if fn == nil {
		return fmt.Errorf("etcdkit: election %q: Run: nil function", e.name)
	}
	retry := backoff.New(100*time.Millisecond, 2*time.Second)
	for {
		l, err := e.Campaign(ctx, id)
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return e.fail("run", context.Cause(ctx))
			case errors.Is(err, ErrClosed), errors.Is(err, ErrInvalidTTL), errors.Is(err, ErrTooLarge):
				return err
			}
			e.c.log.Info("campaign failed, retrying", zap.String("election", e.name), zap.String("id", id), zap.Error(err))
			if !retry.Wait(ctx) {
				return e.fail("run", context.Cause(ctx))
			}
			continue
		}
		retry.Reset()
		stop := context.AfterFunc(ctx, func() { l.end(fmt.Errorf("%w: Run's context ended", errResigned)) })
		ferr := fn(l.Context())
		lost := l.Context().Err() != nil
		stop()
		_ = l.Close()
		if ctx.Err() != nil {
			return e.fail("run", context.Cause(ctx))
		}
		if ferr != nil && !lost {
			return ferr
		}
	}
}
