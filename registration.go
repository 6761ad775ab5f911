package etcdkit

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdkit/etcdkit/internal/backoff"
)

// Registration is an instance published by Service.Register. It is an
// Ephemeral underneath and shares its shape: State and States say whether
// the instance is known to be published (Live), may be (Suspended) or must
// be presumed withdrawn (Lost); Done and Err say when and why it ended;
// Close withdraws it at once.
//
// Being an Ephemeral, a silent process disappears from its service within
// about the TTL, and an instance whose lease was lost is published again
// once its link comes back. An ID is taken while its key exists: registered
// by another live process, or by a crashed predecessor whose lease has not
// expired yet, which takes at most its TTL.
//
// A Registration is safe for concurrent use.
type Registration[M any] struct {
	e   *Ephemeral[record[M]]
	svc string // the service's name

	update sync.Mutex // orders Updates, so that inst is the last one written
	mu     sync.Mutex
	inst   Instance[M]
}

// Register publishes inst under a new lease of the given TTL and keeps it
// published until the Registration ends: it is an [Ephemeral] (see
// NewEphemeral and Client.NewSession for the TTL's rules, the states and the
// options). ctx bounds the call and the life of the Registration, as for
// NewEphemeral: when it ends the instance is withdrawn.
//
// The ID must be free: if a key with that ID exists, Register fails with a
// *ConflictError[Instance[M]] matching ErrExists that carries the present
// instance (its Key is the ID), and publishes nothing. An invalid ID or
// address fails with ErrInvalidInstance, Meta too large for
// Config.MaxValueSize with ErrTooLarge, before anything is sent.
func (s *Service[M]) Register(ctx context.Context, inst Instance[M], ttl time.Duration, opts ...SessionOption) (*Registration[M], error) {
	if s.err != nil {
		return nil, s.err
	}
	if err := validateID(inst.ID); err != nil {
		return nil, errorf("register in service %q: %w", s.name, err)
	}
	if err := validateAddr(inst.Addr); err != nil {
		return nil, errorf("register %q in service %q: %w", inst.ID, s.name, err)
	}
	rec := record[M]{addr: inst.Addr, meta: inst.Meta}
	// Encoded here too so that a failure names the instance, not the key
	// the library keeps it at.
	if _, err := encodeValue(s.c, inst.ID, s.p.codec, rec); err != nil {
		return nil, errorf("register %q in service %q: %w", inst.ID, s.name, err)
	}
	eopts := []EphemeralOption{WithCreateOnly()}
	for _, o := range opts {
		eopts = append(eopts, o)
	}
	e, err := NewEphemeral(ctx, s.p.Key(inst.ID), rec, ttl, eopts...)
	if err != nil {
		var ce *ConflictError[record[M]]
		if errors.As(err, &ce) {
			return nil, s.taken(inst.ID, ce)
		}
		// The Ephemeral's own context names the internal key.
		return nil, errorf("register %q in service %q: %w", inst.ID, s.name, detail(err))
	}
	return &Registration[M]{e: e, svc: s.name, inst: inst}, nil
}

// Run keeps inst registered until ctx ends, with no loop in the caller,
// in the shape of Election.Run: it registers, again with backoff while
// that fails for a reason that may pass (no member answers, which makes Run
// fit to call while etcd is down, or the ID is still held, by a crashed
// predecessor whose lease has not expired yet), and registers again
// whenever the Registration ends before ctx does. Between those, the
// Registration heals itself across outages and lost leases, as Register's
// does. registered, if not nil, is called with each new Registration
// (for its State, Update or a readiness check) before Run waits on it;
// it must not block.
//
// Run blocks; it returns ctx's cause once ctx ends, after the instance is
// withdrawn, and at once an error no retry can fix: an invalid instance or
// TTL, Meta too large, a closed Client.
func (s *Service[M]) Run(ctx context.Context, inst Instance[M], ttl time.Duration, registered func(*Registration[M]), opts ...SessionOption) error {
	retry := backoff.New(100*time.Millisecond, 2*time.Second)
	for {
		r, err := s.Register(ctx, inst, ttl, opts...)
		switch {
		case err == nil:
			retry.Reset()
			if registered != nil {
				registered(r)
			}
			<-r.Done()
			if ctx.Err() != nil {
				return errorf("service %q: run %q: %w", s.name, inst.ID, context.Cause(ctx))
			}
			err = r.Err()
		case ctx.Err() != nil:
			return errorf("service %q: run %q: %w", s.name, inst.ID, context.Cause(ctx))
		case errors.Is(err, ErrInvalidInstance), !mayPass(err):
			return err
		}
		s.c.log.Info("registration ended or failed, registering again", zap.String("service", s.name),
			zap.String("id", inst.ID), zap.Error(err))
		if !retry.Wait(ctx) {
			return errorf("service %q: run %q: %w", s.name, inst.ID, context.Cause(ctx))
		}
	}
}

// taken turns the conflict of a refused registration into one about
// instances.
func (s *Service[M]) taken(id string, ce *ConflictError[record[M]]) error {
	cur := ce.Current
	out := &ConflictError[Instance[M]]{Key: id, Exists: ce.Exists, DecodeErr: ce.DecodeErr, Revision: ce.Revision,
		kind: ErrExists, Current: Value[Instance[M]]{Data: cur.Data.instance(id), Revision: cur.Revision,
			CreateRevision: cur.CreateRevision, Version: cur.Version, Lease: cur.Lease}}
	holder := "an undecodable value"
	if ce.DecodeErr == nil {
		holder = strconv.Quote(cur.Data.addr)
	}
	return errorf("register %q in service %q: the ID is held by %s under lease %x: %w",
		id, s.name, holder, cur.Lease, out)
}

// Instance returns the instance as registered, with the Meta of the last
// successful Update.
func (r *Registration[M]) Instance() Instance[M] {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.inst
}

// Update publishes new metadata for the instance, keeping its ID, address
// and lease; trackers see the change. ctx bounds the call (with
// Config.RequestTimeout). It fails as Ephemeral.Update does: while the
// lease is Lost with ErrLeaseLost, after the Registration ended with its
// cause. As with Ephemeral.Update, the new meta is kept even if Update
// fails and is written by the Registration's later restores; call Update
// again until it succeeds to know it was.
func (r *Registration[M]) Update(ctx context.Context, meta M) error {
	r.update.Lock()
	defer r.update.Unlock()
	inst := r.Instance()
	rec := record[M]{addr: inst.Addr, meta: meta}
	// As in Register: errors name the instance, not the key it is kept at.
	if _, err := encodeValue(r.e.key.c, inst.ID, r.e.key.codec, rec); err != nil {
		return r.fail("update", err)
	}
	if err := r.e.Update(ctx, rec); err != nil {
		return r.fail("update", detail(err))
	}
	r.mu.Lock()
	r.inst.Meta = meta
	r.mu.Unlock()
	return nil
}

// State returns the current state: Live, Suspended or Lost (see
// Ephemeral.State).
func (r *Registration[M]) State() SessionState { return r.e.State() }

// States returns the channel of the Registration's state transitions, as
// Ephemeral.States: it never blocks the Registration, holds the latest 16
// states and is closed after Done.
func (r *Registration[M]) States() <-chan SessionState { return r.e.States() }

// Lease returns the ID of the lease the instance's key is attached to; it
// changes when the Registration recovers from Lost.
func (r *Registration[M]) Lease() clientv3.LeaseID { return r.e.Lease() }

// Remaining returns how long, at least, the instance stays published
// without a successful keepalive; see Session.Remaining.
func (r *Registration[M]) Remaining() time.Duration { return r.e.Remaining() }

// Done returns a channel that is closed when the Registration has ended
// for good: after Close, when the ctx given to Register ended, or when the
// client was closed. The instance is then withdrawn, or expires with its
// lease.
func (r *Registration[M]) Done() <-chan struct{} { return r.e.Done() }

// Err returns nil while the Registration runs and, once Done is closed, why
// it ended: ErrClosed (Close, or the client was closed) or an error wrapping
// the error of the ctx given to Register.
func (r *Registration[M]) Err() error { return r.e.Err() }

// Close withdraws the instance at once (its lease is revoked, which deletes
// its key in the same step, so trackers see it go right away rather than a
// TTL later) and waits for the Registration's goroutines. It returns the
// revoke's error, if any; the instance then expires with its lease. Close
// is idempotent.
func (r *Registration[M]) Close() error {
	if err := r.e.Close(); err != nil {
		return r.fail("deregister", detail(err))
	}
	return nil
}

// fail names the instance and its service in the error of op.
func (r *Registration[M]) fail(op string, err error) error {
	return errorf("%s %q in service %q: %w", op, r.inst.ID, r.svc, err)
}
