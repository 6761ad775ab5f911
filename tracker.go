package etcdkit

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"

	"go.uber.org/zap"
)

// Tracker is a live, local view of a service's instances, kept by a [Cache]
// of the service's keys: it survives broken and silent links, member
// failures and compactions as a Cache does. Make one with [Service.Track].
// Instances returns the current view; Updates delivers each new view as a
// snapshot. Both are empty until Synced is closed. An instance whose stored
// value does not decode is left out of the view and reported by Invalid; it
// never hides the others.
//
// The view can only be as fresh as the link to the cluster: while that link
// is down, State is not WatchConnected and Stale reports true, and
// instances that went away meanwhile are still listed. They are removed as
// soon as the link is back.
//
// A Tracker ends when the ctx given to Track ends, when Close or
// Client.Close is called, or on a failure that retrying cannot cure (a
// permission denied); then Err is set, Updates is closed, and Done is
// closed. Its view stays readable. A Tracker is safe for concurrent use;
// the Meta values it returns are shared between readers and must not be
// modified.
type Tracker[M any] struct {
	lifetime
	s       *Service[M]
	ca      *Cache[record[M]]
	w       *Watch[record[M]]
	updates lossy[[]Instance[M]]
	synced  chan struct{}

	mu  sync.Mutex
	cur []Instance[M]
	raw [][]byte                // the stored bytes of cur's instances
	bad map[string]*DecodeError // by entry name
}

// Track starts a Tracker of the service and returns at once; Synced says
// when its view holds the service's instances. ctx bounds the life of the
// Tracker, not the call. It fails only for an invalid service, a closed
// Client or an ended ctx.
func (s *Service[M]) Track(ctx context.Context) (*Tracker[M], error) {
	if s.err != nil {
		return nil, s.err
	}
	t := &Tracker[M]{s: s, updates: make(lossy[[]Instance[M]], 1), synced: make(chan struct{}),
		bad: make(map[string]*DecodeError)}
	if !t.begin(ctx, s.c, ErrClosed) {
		return nil, errorf("track service %q: %w", s.name, ErrClosed)
	}
	// Updates closes once the goroutine that sends on it has returned, and
	// Synced, if the tracker never synced, after Done.
	t.closing = func() { close(t.updates) }
	t.final = t.unblockSynced
	ca, err := s.p.Cache(t.ctx)
	if err != nil {
		t.arm()
		_ = t.closeWith(err)
		return nil, errorf("track service %q: %w", s.name, err)
	}
	t.ca = ca
	t.w = ca.Subscribe(WithInitial())
	t.spawn(t.run)
	t.arm()
	return t, nil
}

// Instances returns the current view, sorted by ID. The slice is the
// caller's.
func (t *Tracker[M]) Instances() []Instance[M] {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.cur)
}

// Updates returns the channel of the tracker's views: the first once the
// tracker is synced (even if the service is empty), then one each time an
// instance appears, goes, or changes its address or metadata. A slow reader
// never holds the tracker up and never gets a backlog: the channel holds one
// view, and a newer one replaces it, so what the reader receives is always
// the latest. It is closed after Err is set, when the tracker ends. There
// is one channel per tracker: concurrent readers share the views.
func (t *Tracker[M]) Updates() <-chan []Instance[M] { return t.updates }

// Synced is closed once the view holds the service's instances, or, like
// Watch.Synced, when the tracker ends before that: a caller waiting on it is
// never left hanging. In that case Done is closed first and Err says why the
// tracker ended; the view stays empty and Stale reports true.
func (t *Tracker[M]) Synced() <-chan struct{} { return t.synced }

// Invalid returns the keys under the service whose values do not decode
// (or whose name is not a valid instance ID), one *DecodeError each, sorted
// by key. They are not in the view.
func (t *Tracker[M]) Invalid() []*DecodeError {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*DecodeError, 0, len(t.bad))
	for _, e := range t.bad {
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b *DecodeError) int { return cmp.Compare(a.Key, b.Key) })
	return out
}

// Revision returns the revision the view reflects; see Cache.Revision.
func (t *Tracker[M]) Revision() int64 { return t.ca.Revision() }

// State reports the state of the watch behind the view: WatchConnected
// while changes flow, WatchConnecting before the first contact,
// WatchSuspended while the link is being re-established, WatchClosed once
// the tracker ended.
func (t *Tracker[M]) State() WatchState {
	select {
	case <-t.done:
		return WatchClosed
	default:
		return t.ca.State()
	}
}

// Stale reports whether the view may be out of date: the tracker is not
// synced yet, its watch is not connected, or it ended.
func (t *Tracker[M]) Stale() bool {
	select {
	case <-t.synced:
	default:
		return true
	}
	return t.State() != WatchConnected
}

// Done is closed when the tracker has stopped following the service, after
// Err is set and Updates is closed.
func (t *Tracker[M]) Done() <-chan struct{} { return t.done }

// Err returns why the tracker ended once Done is closed, nil before: the
// ctx's cause, ErrClosed after Close or Client.Close, or the failure that
// ended it.
func (t *Tracker[M]) Err() error { return t.cause() }

// Close stops the tracker and returns once its goroutines have finished.
// It is idempotent and returns nil.
func (t *Tracker[M]) Close() error { return t.close() }

// run keeps the view until the cache ends, then ends the tracker with the
// cache's cause.
func (t *Tracker[M]) run() {
	defer func() {
		// Closing the cache waits for its end, so that Err is its cause.
		_ = t.w.Close()
		_ = t.ca.Close()
		err := t.ca.Err()
		if err == nil {
			err = ErrClosed
		}
		t.cancel(err)
	}()
	synced := t.ca.Synced()
	for {
		select {
		case <-synced:
			synced = nil
			if t.ca.Revision() == 0 {
				// A cache that ended before it synced may close Synced
				// too; its Revision stays 0. The tracker ends with it.
				return
			}
			t.publish()
			close(t.synced)
		case ev, ok := <-t.w.Events():
			if !ok || !t.noteWaiting(ev) {
				return
			}
			if synced == nil {
				t.publish()
			}
		}
	}
}

// noteWaiting notes ev and whatever other changes are waiting, so that they
// make one view. It reports false once the watch has ended.
func (t *Tracker[M]) noteWaiting(ev Event[record[M]]) bool {
	t.note(ev)
	for {
		select {
		case ev, ok := <-t.w.Events():
			if !ok {
				return false
			}
			t.note(ev)
		default:
			return true
		}
	}
}

// note keeps the set of undecodable keys up to date with one change.
func (t *Tracker[M]) note(ev Event[record[M]]) {
	var bad *DecodeError
	if ev.Type == Put {
		if ev.Err != nil {
			if !errors.As(ev.Err, &bad) {
				bad = &DecodeError{Key: joinName(t.s.p.name, ev.Name), Revision: ev.Revision, Err: ev.Err}
			}
		} else if err := validateID(ev.Name); err != nil {
			bad = &DecodeError{Key: joinName(t.s.p.name, ev.Name), Revision: ev.Revision, Err: err}
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if bad == nil {
		delete(t.bad, ev.Name)
		return
	}
	if old, ok := t.bad[ev.Name]; !ok || old.Revision != bad.Revision {
		t.s.c.log.Warn("service instance ignored", zap.String("service", t.s.name), zap.Error(bad))
	}
	t.bad[ev.Name] = bad
}

// publish makes the cache's contents the view and offers it on Updates if
// it differs from the previous one.
func (t *Tracker[M]) publish() {
	entries := t.ca.List()
	list := make([]Instance[M], 0, len(entries))
	raw := make([][]byte, 0, len(entries))
	for _, e := range entries {
		if validateID(e.Name) != nil {
			continue
		}
		list = append(list, e.Data.instance(e.Name))
		raw = append(raw, e.Data.raw)
	}
	t.mu.Lock()
	first := t.cur == nil
	same := !first && slices.EqualFunc(t.cur, list, func(a, b Instance[M]) bool { return a.ID == b.ID }) &&
		slices.EqualFunc(t.raw, raw, bytes.Equal)
	if same {
		t.mu.Unlock()
		return
	}
	t.cur, t.raw = list, raw
	t.mu.Unlock()
	// Only this goroutine sends.
	t.updates.send(slices.Clone(list))
}

// unblockSynced closes Synced if the tracker never synced, so that a caller
// waiting on it is not left hanging. Only run, which has returned by then,
// closes it otherwise.
func (t *Tracker[M]) unblockSynced() {
	select {
	case <-t.synced:
	default:
		close(t.synced)
	}
}
