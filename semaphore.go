package etcdkit

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// semaphoreRoot is the reserved name, under the client's namespace, below
// which every semaphore keeps its holder and waiter keys, and
// semaphoreLimitRoot the one below which it records its limit.
const (
	semaphoreRoot      = "_etcdkit/semaphore"
	semaphoreLimitRoot = "_etcdkit/semaphore-limit"
)

// Semaphore hands out at most limit permits at a time among the clients of
// one namespace. Make one with [NewSemaphore]; it is safe for concurrent
// use. Its Permits and waiters share one lease, as a Mutex's Locks do.
//
// Acquire puts a key; the limit oldest keys (by
// create revision) hold permits, the others wait in arrival order. A key
// that holds keeps holding until it is deleted, since only younger keys
// arrive, so at any revision at most limit keys hold, whatever dies or
// races. A [Permit] gives a Lock's guarantees: its Context is cancelled
// before the server can expire its lease, and writes guarded by it apply
// only while its key stands; a holder that dies frees its permit within
// its TTL.
//
// The limit of a name is recorded in the cluster, at
// "_etcdkit/semaphore-limit/<name>" under the namespace, by the first
// Acquire of that name, and stays: every Acquire puts its key in a
// transaction that applies only if the recorded limit is its own (or
// records it, when there is none), so an Acquire with another limit fails
// with ErrLimitMismatch and puts no key, and holders never count with
// different limits. To change the limit, stop every user of the name,
// delete that key, and start them with the new limit. Holder keys live at
// "_etcdkit/semaphore/<name>/<lease in hex>-<slot>".
//
// An invalid name, limit, TTL or option does not panic: every method
// returns the error, as Validate does.
type Semaphore struct {
	e     *Election
	id    string
	limit int
	// limitPath is the full etcd key of the recorded limit.
	limitPath string
}

// NewSemaphore returns the semaphore called name among the clients of c's
// namespace, with limit permits (at least 1), whose holders and waiters
// hold leases of the given TTL (the rules of Client.NewSession apply).
func NewSemaphore(c *Client, name string, limit int, ttl time.Duration, opts ...HolderOption) *Semaphore {
	o, err := buildHolderOptions(semaphoreKind.name, opts)
	e := newContest(c, semaphoreKind, name, ttl, max(limit, 1), o.election)
	s := &Semaphore{e: e, id: o.id, limit: limit}
	switch {
	case e.err != nil:
	case err != nil:
		e.err = errorf("semaphore %q: %w", name, err)
	case limit < 1:
		e.err = fmt.Errorf("etcdkit: semaphore %q: limit %d, want at least 1", name, limit)
	default:
		s.limitPath = c.path(semaphoreLimitRoot + "/" + url.PathEscape(name))
		e.guard, e.guardValue, e.mismatch = s.limitPath, []byte(strconv.Itoa(limit)), s.mismatch
	}
	return s
}

// Name returns the semaphore's name.
func (s *Semaphore) Name() string { return s.e.name }

// Limit returns the number of permits.
func (s *Semaphore) Limit() int { return s.limit }

// Validate returns the error that makes the semaphore unusable (a nil
// client, an invalid name, limit, TTL or option), or nil. Every method
// returns it too.
func (s *Semaphore) Validate() error { return s.e.err }

// Acquire blocks until it holds a permit, ctx ends, or it can no longer
// acquire, and returns the Permit. Waiters are served in arrival order.
//
// ctx bounds the wait only, not the Permit it returns. Acquire fails as
// Mutex.Lock does (and takes a new lease within the call, as Lock does,
// when it finds the shared one revoked or expired), and with
// ErrLimitMismatch when the name was first used with another limit; a
// failed Acquire leaves no key. The limit check is part of the
// transaction that puts the key: an uncontended Acquire is one request.
func (s *Semaphore) Acquire(ctx context.Context) (*Permit, error) {
	return s.acquire(ctx, false)
}

// TryAcquire acquires a permit if one is free, or fails at once with a
// *HeldError matching ErrNoPermit that names the holders. It fails
// otherwise as Acquire does.
func (s *Semaphore) TryAcquire(ctx context.Context) (*Permit, error) {
	return s.acquire(ctx, true)
}

func (s *Semaphore) acquire(ctx context.Context, try bool) (*Permit, error) {
	if s.e.err != nil {
		return nil, s.e.err
	}
	l, err := s.e.campaign(ctx, s.id, try)
	if err != nil {
		return nil, unwrapHeld(err)
	}
	return &Permit{holder{l}}, nil
}

// mismatch is the error of an Acquire whose put found the name's recorded
// limit, kv, not this Semaphore's.
func (s *Semaphore) mismatch(kv *mvccpb.KeyValue) error {
	return fmt.Errorf("%w: the limit of this name is %q (recorded at revision %d), this Semaphore's is %d",
		ErrLimitMismatch, kv.Value, kv.ModRevision, s.limit)
}

// Holders reads who holds permits now (a linearizable read), oldest first.
func (s *Semaphore) Holders(ctx context.Context) ([]LeaderInfo, error) {
	if s.e.err != nil {
		return nil, s.e.err
	}
	entries, rev, err := s.e.cands.List(ctx)
	if err != nil {
		return nil, s.e.fail("holders", err)
	}
	var out []LeaderInfo
	for _, en := range sortedByCreate(entries)[:min(len(entries), s.limit)] {
		out = append(out, LeaderInfo{Present: true, ID: string(en.Data), Token: en.CreateRevision, Lease: en.Lease, Revision: rev})
	}
	return out, nil
}

// Permit is a permit of a [Semaphore], held until Release or Close, or
// until it may have been lost, exactly as a [Lock] is held.
//
// A Permit is safe for concurrent use.
type Permit struct{ holder }

// Release gives the permit back, as Lock.Unlock releases a lock: it
// deletes the permit's own key and never another's, however late or often
// it is called.
func (p *Permit) Release(ctx context.Context) error { return p.l.Resign(ctx) }

func (p *Permit) fence() *Leadership {
	if p == nil {
		return nil
	}
	return p.l
}
