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
	"github.com/etcdkit/etcdkit/internal/watch"
)

// Ephemeral is a key that exists as long as its owner: it holds the owner's
// value under a lease of its own [Session] and goes away when the owner stops
// refreshing it. While the owner is alive, the Ephemeral keeps the key in
// place: if someone deletes or overwrites it, it is put back (sending
// Restored and counting MetricEphemeralRestores), and after the lease was
// Lost and a new one granted, the key is put again under the new lease
// (sending Recovered).
//
// An Ephemeral follows its key through the client's watch engine, as
// [Key.Watch] does: a broken, silent or leaderless link is noticed and
// survived as for any [Watch], by the one stall detector every watch of the
// client shares. Give each owner its own key: two Ephemerals on one key
// fight over it, each putting its value back; the restores are paced (a
// restore within 5s of the previous one waits, longer each time, up to 5s)
// so that the fight stays cheap.
//
// An Ephemeral is safe for concurrent use.
type Ephemeral[T any] struct {
	// lifetime ends with the session's: Err is the session's.
	lifetime
	key *Key[T]
	s   *Session

	feed *stateFeed

	// mu serialises writes, so that a write under an older lease never
	// lands after one under a newer lease, and guards the fields below.
	mu    sync.Mutex
	value []byte
	rev   int64 // mod revision of our last write, 0 if none is known
	seen  int64 // revision at which the key was last found ours

	// Owned by the run goroutine.
	restorePace *backoff.Backoff
	lastRestore time.Time
}

// NewEphemeral puts value at key under a new lease of the given TTL (see
// Client.NewSession for the rules and the options) and keeps it there as
// described for Ephemeral. A value already at key, from anyone, is replaced,
// unless WithCreateOnly is given. It returns once the key is written.
//
// ctx bounds the first write and the Ephemeral's life: when ctx ends, the
// lease is revoked, which deletes the key, and the Ephemeral ends with Err
// wrapping ctx's error.
func NewEphemeral[T any](ctx context.Context, key *Key[T], value T, ttl time.Duration, opts ...EphemeralOption) (*Ephemeral[T], error) {
	if key == nil {
		return nil, errors.New("etcdkit: NewEphemeral: nil key")
	}
	data, err := key.encode(value)
	if err != nil {
		return nil, err
	}
	if err := validateTTL(ttl); err != nil {
		return nil, errorf("ephemeral %q: %w", key.name, err)
	}
	o, err := buildSessionOptions(ttl, key.c.cfg.StallTimeout, opts)
	if err != nil {
		return nil, errorf("ephemeral %q: %w", key.name, err)
	}
	s, err := key.c.newSession(ctx, ttl, o)
	if err != nil {
		return nil, errorf("ephemeral %q: %w", key.name, err)
	}
	e := &Ephemeral[T]{
		key: key,
		s:   s,
		// MetricSessionStateChanges counts the session's transitions only.
		feed:  newStateFeed(nopMetrics{}),
		value: data,

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
	e.explain = func(error) error { return s.Err() }
	e.final = e.feed.close
	if !e.begin(s.ctx, key.c, ErrClosed) {
		_ = s.Close()
		return nil, errorf("ephemeral %q: %w", key.name, ErrClosed)
	}
	e.spawn(e.run)
	e.arm()
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
func (e *Ephemeral[T]) Err() error { return e.cause() }

// Update replaces the key's value, keeping the lease. The write applies only
// if the key is still as the Ephemeral last wrote it; if someone else changed
// it meanwhile, their change is overwritten as a restore would. ctx bounds
// the call (with Config.RequestTimeout). The new value is kept even if Update
// fails: every later restore writes it. While the lease is Lost, or when
// Update finds it gone at the server (revoked by someone else, or expired,
// before the session noticed), Update fails with ErrLeaseLost and the value
// is written once the session has a new lease (Update's finding sets the
// session to get one at once).
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
	if err := e.cause(); err != nil {
		return e.fail("update", err)
	}
	e.value = data
	st, lease, _ := e.s.snapshot()
	if st == SessionLost {
		return e.fail("update", fmt.Errorf("%w; the value is written when a new lease is granted", ErrLeaseLost))
	}
	if _, err := e.writeLocked(ctx, lease, e.rev); err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			// Revoked by someone else, or expired: the session learns it
			// now rather than at its next keepalive.
			e.s.leaseNotFound(lease)
			return e.fail("update", fmt.Errorf("%w: the lease was revoked or expired; the value is written when a new lease is granted (%w)", ErrLeaseLost, err))
		}
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
	// The session's Close is idempotent and returns the same error.
	err := e.s.Close()
	<-e.over
	if err != nil {
		return e.fail("close", err)
	}
	return nil
}

func (e *Ephemeral[T]) fail(op string, err error) error {
	return errorf("ephemeral %s %q: %w", op, e.key.name, mapServerError(err))
}

// run keeps the key in place until the session ends.
func (e *Ephemeral[T]) run() {
	// The Ephemeral ends once its session has.
	defer func() { <-e.s.done }()
	retry := backoff.New(50*time.Millisecond, time.Second)
	rewatch := backoff.New(50*time.Millisecond, time.Second)
	liveOn := e.s.Lease() // the lease the key was last written under
	checked := true       // the key was just written: no need to read it
	var why SessionState  // SessionRecovered or SessionRestored, not yet reported
	for {
		st, lease, epoch := e.s.snapshot()
		if st == SessionLost || st == SessionSuspended {
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
				e.feed.enter(SessionLost, 0)
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
					e.s.leaseNotFound(lease)
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
				why, liveOn = SessionRecovered, lease
			case restored:
				e.key.c.cfg.Metrics.Add(MetricEphemeralRestores, 1)
				if why == 0 {
					why = SessionRestored
				}
			}
			checked = true
		}
		if !e.s.feed.relay(epoch, e.feed, SessionLive, why) {
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
	res, err := e.key.c.casStreams(ctx, casOp{key: e.key.path, expect: e.rev, lease: lease, check: true,
		also: []clientv3.Cmp{clientv3.Compare(clientv3.LeaseValue(e.key.path), "=", lease)}})
	if err != nil {
		return false, err
	}
	e.seen = res.rev
	if res.ok {
		return false, nil
	}
	kv := res.cur
	if e.oursLocked(kv, lease) {
		e.rev = kv.ModRevision
		return false, nil
	}
	if e.s.o.createOnly && kv != nil && kv.Lease != 0 && !e.s.heldLease(clientv3.LeaseID(kv.Lease)) {
		// Another owner created the key under a lease of its own while ours
		// was lost: a create-only key is theirs now, never taken back. A
		// lease our session held before is ours: a write of ours under it,
		// whose answer was lost, applied after the session had moved on.
		return false, e.key.conflict(ErrExists, 0, res)
	}
	return e.writeLocked(ctx, lease, modRevision(kv))
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
		res, ours, err := e.putLocked(ctx, lease, expect)
		if err != nil || ours {
			return res.ok, err
		}
		if attempt == maxUpdateAttempts {
			return false, fmt.Errorf("gave up after %d attempts: the key keeps changing", attempt)
		}
		expect = modRevision(res.cur)
	}
}

// createLocked puts our value under lease if the key is absent. If the key
// holds anything but our value under lease (which a retried attempt whose
// answer was lost would have left), it fails with a *ConflictError[T]
// matching ErrExists.
func (e *Ephemeral[T]) createLocked(ctx context.Context, lease clientv3.LeaseID) error {
	res, ours, err := e.putLocked(ctx, lease, 0)
	if err != nil || ours {
		return err
	}
	return e.key.conflict(ErrExists, 0, res)
}

// putLocked puts our value under lease if the key's mod revision is expect,
// and reports whether the key now holds our value: written now, or by an
// earlier attempt whose answer was lost. Either way it records the write.
func (e *Ephemeral[T]) putLocked(ctx context.Context, lease clientv3.LeaseID, expect int64) (casResult, bool, error) {
	res, err := e.key.c.casStreams(ctx, casOp{key: e.key.path, expect: expect, value: e.value, lease: lease})
	switch {
	case err != nil:
		return res, false, err
	case res.ok:
		e.rev = res.rev
	case e.oursLocked(res.cur, lease):
		e.rev = res.cur.ModRevision
	default:
		return res, false, nil
	}
	return res, true, nil
}

// modRevision returns kv's mod revision, 0 for an absent key.
func modRevision(kv *mvccpb.KeyValue) int64 {
	if kv == nil {
		return 0
	}
	return kv.ModRevision
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
	s := c.hub.NewSub(ctx, watch.Target{Key: e.key.path, Strip: len(c.ns)}, watch.Options{After: from, Buffer: DefaultWatchBuffer})
	if !c.hub.Join(s) {
		s.Cancel()
		return
	}
	defer s.Close()
	if err := s.Start(); err != nil {
		return
	}
	for {
		b, err := s.Pop(ctx)
		if err != nil {
			if ctx.Err() == nil {
				c.log.Debug("ephemeral key watch failed", zap.String("key", e.key.name), zap.Error(err))
			}
			return
		}
		for _, ev := range b.Events {
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
func (e *Ephemeral[T]) foreign(ev *watch.Event, lease clientv3.LeaseID) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return ev.Rev > e.rev && !(ev.Type == watch.Put && e.holdsLocked(ev.Value, ev.Lease, lease))
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
func (e *Ephemeral[T]) restore(epoch context.Context, lease clientv3.LeaseID, ev *watch.Event) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if ev.Rev <= e.rev {
		return nil
	}
	expect := ev.Rev
	if ev.Type == watch.Delete {
		expect = 0
	} else if e.holdsLocked(ev.Value, ev.Lease, lease) {
		e.rev = ev.Rev
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
		e.key.c.log.Info("ephemeral key put back", zap.String("key", e.key.name), zap.Stringer("after", EventType(ev.Type)))
		e.key.c.cfg.Metrics.Add(MetricEphemeralRestores, 1)
		e.feed.announce(SessionRestored)
	}
	return nil
}
