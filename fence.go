package etcdkit

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Fence is a holding that guards writes: a [Leadership], a [Lock] or a
// [Permit]. The interface is sealed: only those three satisfy it.
//
// Token grows with every new holding of the same election, mutex or
// semaphore (it is the create revision of the holder's key), so a resource
// that remembers the highest token it has seen can refuse an older holder.
// Context is cancelled as soon as the holding may be lost, before anyone
// else can take it. Guarded writes ([GuardedPut], [GuardedDelete],
// [GuardedTxn], [GuardedUpdateKeys], [Leadership.Txn]) apply only while the
// holder's key still exists with that token: in one etcd transaction that
// compares the key's create revision.
type Fence interface {
	// Token returns the holding's fencing token.
	Token() int64
	// Context returns a context cancelled once the holding has ended or may
	// have.
	Context() context.Context

	// fence returns the holding that does the work, nil for a nil holder.
	fence() *Leadership
}

func (l *Leadership) fence() *Leadership { return l }

// fenceOf returns the holding behind f, or an error for a nil one.
func fenceOf(f Fence) (*Leadership, error) {
	if f == nil {
		return nil, errors.New("etcdkit: guarded write: nil fence")
	}
	l := f.fence()
	if l == nil {
		return nil, errors.New("etcdkit: guarded write: nil fence")
	}
	return l, nil
}

// Txn runs ops in one etcd transaction that applies only if the leader key
// still exists with this leadership's token, and returns its response. Ops
// are raw clientv3 operations and take full etcd keys: prefix them with
// Client.KeyPrefix (Key and Prefix do this for you; see GuardedPut,
// GuardedDelete and GuardedTxn). With no ops, Txn checks in the cluster that
// this is still the leader.
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

// notHeld is the error of a guarded write refused because the holding has
// ended.
func (l *Leadership) notHeld(op string) error {
	cause := context.Cause(l.ctx)
	if errors.Is(cause, l.e.kind.lost) {
		return errorf("%s %q: %s: %w", l.e.kind.name, l.e.name, op, cause)
	}
	return errorf("%s %q: %s: %w: %w", l.e.kind.name, l.e.name, op, l.e.kind.lost, cause)
}

// txn is the one guarded transaction: ops apply only if the holder's key
// still exists with the holding's token. Every guarded write of every kind
// of holding goes through it, so they fail alike (see Leadership.Txn).
func (l *Leadership) txn(ctx context.Context, op string, ops []clientv3.Op) (*clientv3.TxnResponse, error) {
	if l.ctx.Err() == nil {
		// Refuse now rather than when the watchdog's timer fires: it may be
		// late on a busy machine.
		if cause := l.lostCause(); cause != nil {
			l.end(cause)
		}
	}
	if l.ctx.Err() != nil {
		return nil, l.notHeld(op)
	}
	c := l.e.c
	rctx, cancel, err := c.opContext(ctx)
	if err != nil {
		if l.ctx.Err() != nil && !c.closed() {
			// ctx may derive from Context, which just ended: nothing was sent.
			return nil, l.notHeld(op)
		}
		return nil, errorf("%s %q: %s: %w", l.e.kind.name, l.e.name, op, err)
	}
	defer cancel()
	rctx, abort := context.WithCancel(rctx)
	defer abort()
	stop := context.AfterFunc(l.ctx, abort)
	defer stop()
	resp, err := c.txn(rctx, []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(l.key), "=", l.token)}, ops, nil)
	if err != nil {
		// Whether or not ctx ended too (it may be Context itself, or derive
		// from it), the end of the holding is what the caller must learn.
		if l.ctx.Err() != nil && !c.closed() {
			return nil, errorf("%s %q: %s: %w: the %s ended while the write was in flight, and it may have applied before (%w)",
				l.e.kind.name, l.e.name, op, l.e.kind.lost, l.e.kind.noun, err)
		}
		return nil, errorf("%s %q: %s: %w", l.e.kind.name, l.e.name, op, c.cause(mapServerError(err)))
	}
	if !resp.Succeeded {
		l.end(l.deleted(fmt.Sprintf("a guarded write found the %s key gone at revision %d", l.e.kind.keyWord, resp.Header.Revision)))
		return nil, l.notHeld(op)
	}
	return resp, nil
}

// GuardedPut stores v at k only while f holds: in one transaction that
// applies only if f's key still exists with f's token. It returns the
// revision of the write. It fails as Leadership.Txn does (with the
// sentinel of f's kind: ErrNotLeader, or ErrNotHeld for a Lock or a
// Permit), and as Key.Put does for values it refuses (ErrTooLarge, an
// invalid key). k must belong to the Client that f was obtained with.
func GuardedPut[T any](ctx context.Context, f Fence, k *Key[T], v T) (int64, error) {
	l, err := guardedKey(f, k)
	if err != nil {
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

// GuardedDelete deletes k only while f holds, as GuardedPut writes, and
// returns the revision of the transaction. Deleting an absent key is not an
// error.
func GuardedDelete[T any](ctx context.Context, f Fence, k *Key[T]) (int64, error) {
	l, err := guardedKey(f, k)
	if err != nil {
		return 0, err
	}
	resp, err := l.txn(ctx, fmt.Sprintf("guarded delete %q", k.name), []clientv3.Op{clientv3.OpDelete(k.path)})
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

func guardedKey[T any](f Fence, k *Key[T]) (*Leadership, error) {
	l, err := fenceOf(f)
	switch {
	case err != nil:
		return nil, err
	case k == nil:
		return nil, errors.New("etcdkit: guarded write: nil key")
	case k.err != nil:
		return nil, k.err
	case k.c != l.e.c:
		return nil, fmt.Errorf("etcdkit: guarded write %q: the key belongs to another Client than the %s", k.name, l.e.kind.name)
	}
	return l, nil
}

// sortedByCreate sorts entries oldest first: the order in which holders of
// an election, a mutex or a semaphore are served.
func sortedByCreate(entries []Entry[[]byte]) []Entry[[]byte] {
	slices.SortFunc(entries, func(a, b Entry[[]byte]) int { return cmp.Compare(a.CreateRevision, b.CreateRevision) })
	return entries
}
