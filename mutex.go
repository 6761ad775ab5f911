package etcdkit

import (
	"context"
	"errors"
	"time"
)

// mutexRoot is the reserved name, under the client's namespace, below which
// every mutex keeps its holder and waiter keys.
const mutexRoot = "_etcdkit/mutex"

// Mutex is a lock shared by the clients of one namespace. Make one with
// [NewMutex]; it is safe for concurrent use. Its Locks and waiters keep
// their keys under one lease of the Mutex's TTL, granted by the first Lock
// and revoked once no Lock has used it for a TTL (or when its lease is
// lost, or the client closed): keep a Mutex rather than make one per Lock.
// A lease revoked by someone else (another client, etcdctl lease revoke)
// is lost like one that expired: the Locks under it end (see Lock), and the
// next Lock takes a new lease.
//
// A Mutex is an election whose leader holds the lock: Lock puts a key and,
// in the same transaction, reads the oldest; a Lock that holds at once has
// cost that one request. Otherwise it waits until every older key is gone,
// so waiters are served in the order they arrived (by create revision),
// through the library's watch, which survives silent links and compaction. The holder's
// [Lock] gives the election's guarantee: its Context is cancelled before
// the server can expire its lease, so before anyone else can acquire, and
// writes guarded by it ([GuardedPut], [GuardedTxn]...) apply only while its
// key stands. Keys live at "_etcdkit/mutex/<name>/<lease in hex>-<slot>"
// under the namespace; <name> is path-escaped into one segment, as an
// [Election]'s is, and slot is the lowest number free in that lease, so
// names are used again (etcd keeps deleted keys in its index until a
// compaction, and every Lock reads the prefix).
//
// An invalid name, TTL or option does not panic: every method returns the
// error, as Validate does.
type Mutex struct {
	e  *Election
	id string
}

// NewMutex returns the mutex called name among the clients of c's
// namespace, whose holders and waiters hold leases of the given TTL (the
// rules of Client.NewSession apply; see NewElection for what the TTL
// trades).
func NewMutex(c *Client, name string, ttl time.Duration, opts ...HolderOption) *Mutex {
	o, err := buildHolderOptions(mutexKind.name, opts)
	e := newContest(c, mutexKind, name, ttl, 1, o.election)
	if err != nil && e.err == nil {
		e.err = errorf("mutex %q: %w", name, err)
	}
	return &Mutex{e: e, id: o.id}
}

// Name returns the mutex's name.
func (m *Mutex) Name() string { return m.e.name }

// Validate returns the error that makes the mutex unusable (a nil client,
// an invalid name, TTL or option), or nil. Every method returns it too.
func (m *Mutex) Validate() error { return m.e.err }

// Lock blocks until it holds the mutex, ctx ends, or it can no longer
// acquire, and returns the Lock. Waiters are served in arrival order.
//
// ctx bounds the wait only, not the Lock it returns. Lock fails when ctx
// ends (the error wraps ctx's cause), when its own lease is lost while it
// waits (ErrLeaseLost: its link to the cluster is gone; it never holds
// without a live lease), and when the client is closed (ErrClosed). A
// lease the server no longer knows (revoked by someone else, or expired),
// found when Lock puts its key or sees it deleted while waiting, is not a
// failure: Lock retires it, takes a new lease and puts its key again, as
// often as ctx allows, waiting again behind whoever is older. A
// failed Lock leaves no key: it deletes its key, or, when the cluster
// cannot be reached, keeps trying in the background, and the Mutex takes a
// new lease for later Locks while the one holding that key ends (expires
// or is revoked) with its last holding.
func (m *Mutex) Lock(ctx context.Context) (*Lock, error) {
	l, err := m.e.campaign(ctx, m.id, false)
	if err != nil {
		return nil, err
	}
	return &Lock{holder{l}}, nil
}

// TryLock acquires the mutex if it is free, or fails at once with a
// *HeldError matching ErrLocked that names the holder. "At once" means
// after one round of requests: it puts its key, reads who is ahead, and
// takes its key back if someone is. It fails otherwise as Lock does.
func (m *Mutex) TryLock(ctx context.Context) (*Lock, error) {
	l, err := m.e.campaign(ctx, m.id, true)
	if err != nil {
		return nil, unwrapHeld(err)
	}
	return &Lock{holder{l}}, nil
}

// Holder reads who holds the mutex now (a linearizable read). When nobody
// does, it returns a LeaderInfo that is not Present and an error matching
// ErrNoCandidate.
func (m *Mutex) Holder(ctx context.Context) (LeaderInfo, error) {
	return m.e.Leader(ctx)
}

// Lock is a held [Mutex]. It holds until Unlock or Close, or until it may
// have been lost: its Context is then cancelled, with a cause matching
// ErrNotHeld (ErrLeaseLost too when the lease was), before the server can
// expire the lease and so before anyone else can acquire, as a
// Leadership's (see Leadership for the causes and WithStepDownMargin for
// the margin). A lease revoked by someone else (another client, etcdctl
// lease revoke) is a lost lease too, but it frees the lock at once: the
// Lock learns of it when it sees its key go, and asks the server whether
// the lease went with it, so that its cause matches ErrLeaseLost. Work done under the lock should run under Context, and
// writes that must not land after the lock is lost should be guarded by it.
//
// A Lock is safe for concurrent use.
type Lock struct{ holder }

// Unlock releases the lock: it cancels Context, then deletes the lock's
// key, so the next waiter acquires at once. It returns the delete's error, if any: the delete is then retried
// in the background until it lands or the lease ends, which takes the key
// with it, and the Mutex takes a new lease for later Locks. ctx bounds the
// wait for that. Unlocking again, or after the lock was lost, does nothing
// more: the key it deletes is its own, never another holder's, however
// late the call.
func (lk *Lock) Unlock(ctx context.Context) error { return lk.l.Resign(ctx) }

// holder is what a Lock and a Permit share: a holding run by the election
// machinery.
type holder struct{ l *Leadership }

func (lk *Lock) fence() *Leadership {
	if lk == nil {
		return nil
	}
	return lk.l
}

// Token returns the fencing token: the create revision of the holder's
// key. Tokens of successive holdings only grow.
func (h *holder) Token() int64 { return h.l.token }

// ID returns the holder's id (see WithHolderID).
func (h *holder) ID() string { return h.l.id }

// HoldingKey returns the holder's key as a full etcd key, namespace
// included, for conditions of one's own in raw transactions (as
// Leadership.HoldingKey does).
func (h *holder) HoldingKey() string { return h.l.key }

// Context returns a context that is cancelled the moment the holding ends
// or may have ended; context.Cause says why.
func (h *holder) Context() context.Context { return h.l.ctx }

// Done returns a channel that is closed once the holding has ended and been
// cleaned up: Context cancelled, the lease revoked (or no longer kept
// alive) and its goroutine finished. Err then says why.
func (h *holder) Done() <-chan struct{} { return h.l.done }

// Err returns nil until Done is closed, then why the holding ended:
// ErrNotHeld-matching when it was lost (ErrLeaseLost-matching too when the
// lease was, expired or revoked by someone else), ErrClosed after a
// release, Close or Client.Close.
func (h *holder) Err() error { return h.l.Err() }

// Close releases the holding, with no deadline of its own, and waits for
// its goroutine. It is idempotent: later calls return the same error.
func (h *holder) Close() error { return h.l.Close() }

// unwrapHeld returns the *HeldError err wraps, which names the mutex or
// semaphore itself, or err.
func unwrapHeld(err error) error {
	var he *HeldError
	if errors.As(err, &he) {
		return he
	}
	return err
}
