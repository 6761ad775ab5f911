package etcdkit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// errResigned is the cause of a leadership ended by Resign or Close;
// holdKind.resigned gives a Lock's and a Permit's.
var errResigned = fmt.Errorf("%w: leadership resigned", ErrClosed)

// Leadership is won by [Election.Campaign] and lasts until it is resigned or
// may have been lost. Its Context is the leader's authority: work done as
// leader should run under it, and guarded writes check it, then the leader
// key, in the cluster.
//
// Context is cancelled, with a cause matching [ErrNotLeader], as soon as the
// session would declare the lease Lost within the step-down margin
// ([WithStepDownMargin]), which is before any other candidate can win; when
// the session is Lost or ended; and when the leader key is seen deleted or
// replaced, or a guarded write found it gone. A key found deleted with its
// lease, which the leader then asks the server (one request), means the
// lease was revoked by someone else (another client, etcdctl lease revoke)
// or expired: the cause then matches [ErrLeaseLost] too. A candidate that had to wait
// sees its key change at once, through the election's keys it waited on;
// one that led at once watches its own key from a second after it won
// (most Locks are shorter than that), from the key's creation on, so a
// change is still seen, at most that second late. Resign, Close and
// Client.Close cancel it with a cause matching [ErrClosed]. Then the
// Leadership stops keeping its lease alive and revokes it, which deletes
// its key, so the next candidate takes over at once; if the cluster cannot
// be reached, the key expires with the lease. (A Lock or a Permit deletes
// its key instead, as Unlock says.)
//
// When leadership ends. Context is cancelled once no keepalive of the lease
// has succeeded for so long that the session would declare the lease Lost
// within the step-down margin, whether the session is Suspended or a
// keepalive is still in flight. This rule is what makes the leader know
// before anyone else can win. Another candidate wins only once the leader
// key is deleted. If nobody deletes it and nobody revokes the lease, that
// takes the lease expiring, which the server does no earlier than the TTL
// after the leader sent its last successful keepalive (see [Session]). The
// session declares Lost the Lost margin before that moment, on the client's
// monotonic clock, and the leadership ends the step-down margin before
// Lost: at least the two margins together (1s with a 5s TTL and the
// defaults) before the earliest moment another candidate can win, which
// leaves room for late timers and for the leader to stop what it is doing.
//
// What the margins cannot cover, a pause longer than them, a key deleted or
// a lease revoked by someone else, the guarded writes do: [Leadership.Txn],
// [GuardedPut] and [GuardedDelete] apply only while the leader key still
// exists with the leadership's token, a condition the cluster checks in the
// same etcd transaction as the write. Whatever the timing, a deposed
// leader's late writes are refused by the cluster itself.
//
// A Leadership is safe for concurrent use.
type Leadership struct {
	// lifetime's ctx is Context: it carries the Leadership, for
	// LeadershipFrom.
	lifetime
	e  *Election
	id string
	keyHold
	// What the watchdog follows: the election's keys (ca, and w subscribed
	// to it) when the candidate had to wait, or, when it held at once, its
	// own key alone (w, from keyWatchDelay on; nil before).
	ca      *Cache[[]byte]
	w       *Watch[[]byte]
	life    context.Context
	endLife context.CancelCauseFunc

	// released is closed once the key was given up (see release).
	released  chan struct{}
	mu        sync.Mutex
	releasing bool
	revokeErr error
}

func newLeadership(cd *candidate) *Leadership {
	return &Leadership{e: cd.e, id: cd.id, keyHold: cd.keyHold, ca: cd.ca, w: cd.w, life: cd.life, endLife: cd.endLife,
		released: make(chan struct{})}
}

// start begins the Leadership's life and its watchdog. It reports false,
// starting nothing, if the client is closed.
func (l *Leadership) start() bool {
	// The change is counted before Context is cancelled, so that whoever
	// sees it cancelled finds it counted: the revoke that follows can take
	// as long as the TTL when the cluster is out of reach.
	l.ending = l.e.countChange
	ctx := context.WithValue(context.Background(), leadershipKey{}, l)
	if !l.begin(ctx, l.e.c, fmt.Errorf("%w: client closed", ErrClosed)) {
		return false
	}
	l.spawn(l.run)
	l.arm()
	return true
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

// Lease returns the ID of the leader's lease, as Session.Lease does.
func (l *Leadership) Lease() clientv3.LeaseID { return l.lease }

// HoldingKey returns the leader key as a full etcd key, namespace
// included, for conditions of one's own in raw transactions (as
// Lock.HoldingKey and Permit.HoldingKey do).
func (l *Leadership) HoldingKey() string { return l.key }

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
// (with ErrLeaseLost when the lease was, revoked by someone else included),
// ErrClosed after Resign, Close or Client.Close.
func (l *Leadership) Err() error { return l.cause() }

// Resign gives up leadership at once: it cancels Context, then revokes the
// lease, which deletes the leader key in the same step, so the next
// candidate takes over without waiting for the TTL. It blocks until that is
// done (within Config.RequestTimeout and the TTL) or ctx ends, and returns
// the revoke's error, if any (the key then expires with its lease, which is
// no longer kept alive). Resigning a leadership that has already ended does
// nothing more and returns the same error.
func (l *Leadership) Resign(ctx context.Context) error {
	l.end(l.e.kind.resigned)
	if l.ss != nil {
		// The watchdog, woken by end, gives up the key too: whichever
		// comes first does. Here ctx bounds the delete, and the call
		// returns once the key is gone, not waiting for the watchdog's
		// hand-off. (An election's revoke ignores ctx: the watchdog does
		// it.)
		l.release(ctx)
	}
	wait := l.done
	if l.ss != nil {
		wait = l.released
	}
	select {
	case <-wait:
	case <-ctx.Done():
		return errorf("%s %q: resign: %w", l.e.kind.name, l.e.name, context.Cause(ctx))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.revokeErr != nil {
		return errorf("%s %q: resign: %w", l.e.kind.name, l.e.name, l.revokeErr)
	}
	return nil
}

// Close resigns, as Resign with no deadline of its own, and waits for the
// leadership's goroutine. It is idempotent: later calls return the same
// error.
func (l *Leadership) Close() error {
	err := l.Resign(context.Background())
	<-l.done
	return err
}

// end cancels Context with cause, unless it was already cancelled, and
// counts the change (see start).
func (l *Leadership) end(cause error) { l.cancel(cause) }

// lostCause returns why leadership must end now, from what the session says,
// or nil.
func (l *Leadership) lostCause() error {
	select {
	case <-l.s.Done():
		if err := l.s.Err(); errors.Is(err, ErrClosed) {
			return err
		}
		return errorf("%w: %w", l.e.kind.lost, l.s.Err())
	default:
	}
	if st, _ := l.s.feed.get(); st == SessionLost {
		return errorf("%w: %w", l.e.kind.lost, ErrLeaseLost)
	}
	if rem := l.s.Remaining(); rem <= l.e.o.stepDown {
		return fmt.Errorf("%w: stepped down: keepalives are failing and the lease may expire in %v",
			l.e.kind.lost, (rem + l.s.o.margin).Round(time.Millisecond))
	}
	return nil
}

// keyCause returns why leadership must end, from what the cache shows of
// the leader key, or nil. Without a cache it returns nil: eventCause judges
// the key's events.
func (l *Leadership) keyCause() error {
	if l.ca == nil {
		return nil
	}
	rev := l.ca.Revision()
	if rev < l.token {
		return nil
	}
	v, ok := l.ca.Get(l.name)
	return l.keyGone(rev, ok, v.CreateRevision, v.Lease)
}

// eventCause returns why leadership must end, from a change of the leader
// key seen by a watch of that key alone, or nil.
func (l *Leadership) eventCause(ev Event[[]byte]) error {
	if l.ca != nil {
		return nil
	}
	return l.keyGone(ev.Revision, ev.Type == Put, ev.CreateRevision, ev.Lease)
}

// keyGone says why leadership must end when the leader key, at rev, exists
// or not with the given create revision and lease, or returns nil.
func (l *Leadership) keyGone(rev int64, exists bool, create, lease int64) error {
	switch {
	case !exists:
		return l.deleted(fmt.Sprintf("the %s key was deleted by revision %d", l.e.kind.keyWord, rev))
	case create != l.token || lease != int64(l.lease):
		return fmt.Errorf("%w: the %s key was replaced by revision %d", l.e.kind.lost, l.e.kind.keyWord, rev)
	}
	return nil
}

// deleted says why the holding must end when its key was found deleted
// (what says how): the key went with the lease when the server no longer
// knows the lease (revoked by another client, etcdctl lease revoke, or
// expired), and the cause then matches ErrLeaseLost too. A shared lease
// found gone is retired at once, so that the next Lock or Acquire takes a
// new one. Asking the server delays the end by one request at most
// (bounded by StallTimeout): the key is gone already.
func (l *Leadership) deleted(what string) error {
	if !l.s.leaseGone(l.ctx, l.lease) {
		return fmt.Errorf("%w: %s", l.e.kind.lost, what)
	}
	if l.ss != nil {
		l.ss.retire()
	}
	return errorf("%w: %w: %s, with its lease %x (revoked by another client, or expired)", l.e.kind.lost, ErrLeaseLost, what, int64(l.lease))
}

// keyWatchDelay is how long a holding that held at once goes before it
// watches its own key: most Locks are shorter, and the watch starts after
// the key's create revision, so a change made meanwhile is still seen, at
// most that much later.
const keyWatchDelay = time.Second

// run watches over the leadership until it ends, then cleans up.
func (l *Leadership) run() {
	defer l.giveUp()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var follow <-chan time.Time
	if l.w == nil {
		t := time.NewTimer(keyWatchDelay)
		defer t.Stop()
		follow = t.C
	}
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
		var events <-chan Event[[]byte]
		if l.w != nil {
			events = l.w.Events()
		}
		select {
		case <-l.ctx.Done():
			return
		case <-epoch.Done():
		case <-l.s.Done():
		case <-timer.C:
		case <-follow:
			follow = nil
			l.w = l.e.cands.Key(l.name).Watch(l.life, AfterRevision(l.token))
		case ev, ok := <-events:
			if !ok {
				l.end(errorf("%w: the %s watch ended: %w", l.e.kind.lost, l.e.kind.name, l.w.Err()))
				return
			}
			if cause := l.eventCause(ev); cause != nil {
				l.end(cause)
				return
			}
		}
	}
}

// release gives up the key, once, for whoever asks first: Resign, or the
// watchdog once the leadership has ended; released is closed when it is
// done. ctx bounds a delete (see keyHold.letGo).
func (l *Leadership) release(ctx context.Context) {
	l.mu.Lock()
	first := !l.releasing
	l.releasing = true
	l.mu.Unlock()
	if !first {
		return
	}
	err := l.letGo(ctx, l.e)
	l.mu.Lock()
	l.revokeErr = err
	l.mu.Unlock()
	close(l.released)
}

// giveUp gives up the key once the leadership has ended, before Done.
func (l *Leadership) giveUp() {
	// Giving up the key hands over: first.
	l.release(context.Background())
	<-l.released
	if l.w != nil {
		_ = l.w.Close()
	}
	if l.ca != nil {
		_ = l.ca.Close()
	}
	l.endLife(nil)
	cause := context.Cause(l.ctx)
	l.mu.Lock()
	revokeErr := l.revokeErr
	l.mu.Unlock()
	log := l.e.c.log.Warn
	if errors.Is(cause, ErrClosed) {
		log = l.e.c.log.Info
	}
	log(l.e.kind.noun+" ended", zap.String(l.e.kind.name, l.e.name), zap.String("id", l.id),
		zap.Int64("token", l.token), zap.NamedError("cause", cause), zap.NamedError("revoke", revokeErr))
}
