package etcdkit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/etcdkit/etcdkit/internal/backoff"
)

// Run waits for the mutex, runs fn once while holding it, and unlocks it,
// with no loop in the caller: a Lock that fails for a reason that may pass
// (no member answers, the lease was lost while waiting) is tried again,
// with backoff, until ctx ends, so Run may be called while etcd is down.
// fn's ctx is the Lock's Context, which ends the moment the lock is lost
// or Run's ctx ends; fn must return soon after. The Lock is passed for
// guarded writes (GuardedPut, GuardedTxn) and its fencing Token.
//
// Run returns fn's error when fn returned while holding (nil if fn
// succeeded); an error matching ErrNotHeld when the lock was lost while fn
// ran (it wraps fn's error too, if any: the work may be half done, and
// running it again is the caller's choice); ctx's cause once ctx ends; and
// at once, without waiting, an error that no retry can fix (a closed
// Client, an invalid Mutex, a TTL the cluster refuses).
func (m *Mutex) Run(ctx context.Context, fn func(ctx context.Context, lk *Lock) error) error {
	return runHeld(ctx, m.e, func(ctx context.Context) (*Lock, error) { return m.Lock(ctx) },
		func(lk *Lock) *Leadership { return lk.l }, fn)
}

// Run waits for a permit, runs fn once while holding it, and releases it,
// exactly as Mutex.Run does with a lock; ErrLimitMismatch is among the
// errors it returns at once.
func (s *Semaphore) Run(ctx context.Context, fn func(ctx context.Context, p *Permit) error) error {
	return runHeld(ctx, s.e, s.Acquire, func(p *Permit) *Leadership { return p.l }, fn)
}

// runHeld is Mutex.Run and Semaphore.Run: take a holding of e, again with
// backoff while that fails for a reason that may pass, run fn under it
// once, and give it back.
func runHeld[H any](ctx context.Context, e *Election, take func(context.Context) (H, error), held func(H) *Leadership,
	fn func(context.Context, H) error) error {
	if e.err != nil {
		return e.err
	}
	if fn == nil {
		return fmt.Errorf("etcdkit: %s %q: Run: nil function", e.kind.name, e.name)
	}
	h, err := retryTake(ctx, e, take)
	if err != nil {
		return err
	}
	l := held(h)
	stop := context.AfterFunc(ctx, func() { l.end(fmt.Errorf("%w: Run's context ended", e.kind.resigned)) })
	ferr := fn(l.Context(), h)
	lost := context.Cause(l.Context())
	stop()
	_ = l.Close()
	switch {
	case ctx.Err() != nil:
		return e.fail("run", context.Cause(ctx))
	case lost != nil && ferr != nil:
		return e.fail("run", fmt.Errorf("%w (the function returned: %w)", lost, ferr))
	case lost != nil:
		return e.fail("run", lost)
	}
	return ferr
}

// retryTake takes a holding of e with take, again and again with backoff
// while it fails for a reason that may pass, until ctx ends.
func retryTake[H any](ctx context.Context, e *Election, take func(context.Context) (H, error)) (H, error) {
	retry := backoff.New(100*time.Millisecond, 2*time.Second)
	for {
		h, err := take(ctx)
		switch {
		case err == nil:
			return h, nil
		case ctx.Err() != nil:
			return h, e.fail("run", context.Cause(ctx))
		case !mayPass(err):
			return h, err
		}
		e.c.log.Info(e.kind.verb+" failed, retrying", zap.String(e.kind.name, e.name), zap.Error(err))
		if !retry.Wait(ctx) {
			return h, e.fail("run", context.Cause(ctx))
		}
	}
}

// mayPass reports whether a failed campaign, lock or acquire may succeed
// if tried again: not with a closed Client, a TTL or value the cluster
// refuses, or a semaphore limit that differs from the name's.
func mayPass(err error) bool {
	for _, never := range []error{ErrClosed, ErrInvalidTTL, ErrTooLarge, ErrLimitMismatch, ErrInvalidName} {
		if errors.Is(err, never) {
			return false
		}
	}
	return true
}
