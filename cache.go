package etcdkit

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/etcdkit/etcdkit/internal/watch"
)

// Cache is a local copy of every key under a prefix, kept up to date by a
// watch: reads are served from memory, without a request, at the revision
// given by Revision. Make one with [Prefix.Cache]. It is empty until Synced
// is closed, then follows every change as [Prefix.Watch] does: it lists the
// prefix at one revision and applies every change after it, through the same
// engine, so it survives broken and silent links and member failures, and
// after a compaction it applies the differences with the state re-read at
// the compaction's revision, deletions included.
//
// A value that does not decode is not in the cache (Get reports false, List
// leaves it out) but its change is still delivered to subscribers with
// Event.Err set. Values are shared between readers: do not modify a value
// returned by Get, List or a subscription.
//
// The cache ends when the ctx given to Prefix.Cache ends, when Close or
// Client.Close is called, or on a failure that retrying cannot cure; then Err
// is set and Done is closed. Its contents stay readable after it ended but
// are no longer updated. A Cache is safe for concurrent use.
type Cache[T any] struct {
	lifetime
	c      *Client
	sub    *watch.Sub
	target watch.Target
	decode func(*watch.Event) Event[T]
	synced chan struct{}
	// syncOnce guards closing synced: on the first sync, or when the cache
	// ends before it.
	syncOnce sync.Once

	mu      sync.RWMutex
	entries map[string]cacheEntry[T]
	rev     int64
	// fan hands what the cache applied to its subscriptions: a feed driven
	// by the cache rather than by an etcd watch, so that a subscription
	// that falls behind catches up from etcd's history as any Watch does.
	// Every call to it is made under mu.
	fan    *watch.Fan
	subs   map[*Watch[T]]struct{} // the subscriptions' watches
	ending bool                   // no more subscriptions
	// sorted caches List's result until the next change; it is built under
	// the read lock and cleared under the write lock, so it is never stale.
	sorted atomic.Pointer[[]Entry[T]]
}

type cacheEntry[T any] struct {
	v   Value[T]
	err error // a *DecodeError: the entry is not served
}

// Cache starts a Cache of the prefix and returns at once; Synced says when
// it holds the prefix's contents. ctx bounds the life of the Cache, not the
// call. It fails only for an invalid prefix or a closed Client.
func (p *Prefix[T]) Cache(ctx context.Context) (*Cache[T], error) {
	if p.err != nil {
		return nil, p.err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h := p.c.hub
	ca := &Cache[T]{c: p.c, target: p.target(), decode: p.decoder(), synced: make(chan struct{}),
		entries: make(map[string]cacheEntry[T]), subs: make(map[*Watch[T]]struct{})}
	if !ca.begin(ctx, p.c, ErrClosed) {
		return nil, ErrClosed
	}
	ca.final = ca.markSynced
	ca.sub = h.NewSub(ca.ctx, ca.target, watch.Options{After: -1, Initial: true, Buffer: DefaultWatchBuffer})
	ca.fan = h.NewFan(ca.target, ca.sub.State)
	if !h.Join(ca.sub) {
		ca.sub.Cancel()
		ca.cancel(ErrClosed)
		ca.arm()
		return nil, ErrClosed
	}
	ca.spawn(ca.run)
	ca.arm()
	return ca, nil
}

// Get returns the value of the key name (relative to the prefix) as of
// Revision, from memory.
func (ca *Cache[T]) Get(name string) (Value[T], bool) {
	ca.mu.RLock()
	e, ok := ca.entries[name]
	ca.mu.RUnlock()
	if !ok || e.err != nil {
		return Value[T]{}, false
	}
	return e.v, true
}

// List returns every entry as of Revision, sorted by name, from memory. The
// slice is the caller's.
func (ca *Cache[T]) List() []Entry[T] {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	if p := ca.sorted.Load(); p != nil {
		return slices.Clone(*p)
	}
	list := make([]Entry[T], 0, len(ca.entries))
	for name, e := range ca.entries {
		if e.err == nil {
			list = append(list, Entry[T]{Name: name, Value: e.v})
		}
	}
	slices.SortFunc(list, func(a, b Entry[T]) int { return cmp.Compare(a.Name, b.Name) })
	ca.sorted.Store(&list)
	return slices.Clone(list)
}

// Len returns the number of entries List would return.
func (ca *Cache[T]) Len() int {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	n := 0
	for _, e := range ca.entries {
		if e.err == nil {
			n++
		}
	}
	return n
}

// Revision returns the revision the cache reflects: every change up to it
// has been applied. It advances with progress notifications too, while
// nothing changes under the prefix. It is 0 until Synced is closed.
func (ca *Cache[T]) Revision() int64 {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	return ca.rev
}

// Synced is closed once the initial list has been applied, or when the
// cache ends before that, after Done (Err then says why): a caller waiting
// for it never hangs.
func (ca *Cache[T]) Synced() <-chan struct{} { return ca.synced }

func (ca *Cache[T]) markSynced() { ca.syncOnce.Do(func() { close(ca.synced) }) }

// Done is closed when the cache has stopped following changes, after Err is
// set.
func (ca *Cache[T]) Done() <-chan struct{} { return ca.done }

// Err returns why the cache ended once Done is closed, nil before: the ctx's
// cause, ErrClosed after Close or Client.Close, or the failure that ended
// it.
func (ca *Cache[T]) Err() error { return ca.cause() }

// State reports the state of the watch behind the cache.
func (ca *Cache[T]) State() WatchState {
	select {
	case <-ca.done:
		return WatchClosed
	default:
		return WatchState(ca.sub.State())
	}
}

// Close stops the cache and its subscriptions and returns once their
// goroutines have finished. It is idempotent and returns nil.
func (ca *Cache[T]) Close() error { return ca.close() }

// run follows the prefix until the cache ends, then ends it with the
// failure that stopped it and waits for its subscriptions to end: they end
// with the same cause, through their contexts.
func (ca *Cache[T]) run() {
	err := ca.follow()
	ca.sub.Close()
	ca.cancel(err)
	ca.mu.Lock()
	ca.ending = true
	subs := make([]*Watch[T], 0, len(ca.subs))
	for w := range ca.subs {
		subs = append(subs, w)
	}
	ca.mu.Unlock()
	for _, w := range subs {
		<-w.done
	}
}

// follow applies the subscriber's batches until it fails or the cache's
// context ends, and returns why.
func (ca *Cache[T]) follow() error {
	if err := ca.sub.Start(); err != nil {
		return err
	}
	for {
		b, err := ca.sub.Pop(ca.ctx)
		if err != nil {
			return err
		}
		ca.apply(b)
		ca.markSynced()
	}
}

// apply applies a batch, then hands it to the subscriptions, all under the
// write lock, so that a subscriber that receives an event finds the cache
// already reflecting it. The first batch is the initial list: it positions
// the subscriptions made before it, and is not a change.
func (ca *Cache[T]) apply(b watch.Batch) {
	evs := make([]Event[T], len(b.Events))
	for i, re := range b.Events {
		evs[i] = ca.decode(re)
	}
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if len(evs) > 0 {
		for _, e := range evs {
			if e.Type == Delete {
				delete(ca.entries, e.Name)
				continue
			}
			ca.entries[e.Name] = cacheEntry[T]{v: Value[T]{Data: e.Value, Revision: e.Revision,
				CreateRevision: e.CreateRevision, Version: e.Version, Lease: e.Lease}, err: e.Err}
		}
		ca.sorted.Store(nil)
	}
	ca.rev = b.Next - 1
	ca.fan.Apply(b, ca.stateLocked, ca.initialLocked)
}

// initialLocked returns the cache's contents as Initial events, for a
// subscription that asked for them. The caller holds ca.mu.
func (ca *Cache[T]) initialLocked() []*watch.Event {
	entries := ca.entriesLocked()
	evs := make([]*watch.Event, len(entries))
	for i, e := range entries {
		ev := &Event[T]{Type: Put, Name: e.Name, Value: e.v.Data, Revision: e.v.Revision,
			CreateRevision: e.v.CreateRevision, Version: e.v.Version, Lease: e.v.Lease, Initial: true, Err: e.err}
		evs[i] = &watch.Event{Type: watch.Put, Name: e.Name, Rev: e.v.Revision, Initial: true, Typed: ev}
	}
	return evs
}

// stateLocked returns the name -> mod revision state of the cache. The
// caller holds ca.mu.
func (ca *Cache[T]) stateLocked() map[string]int64 {
	st := make(map[string]int64, len(ca.entries))
	for name, e := range ca.entries {
		st[name] = e.v.Revision
	}
	return st
}

// Subscribe returns a Watch of the changes applied to the cache, each
// delivered after the cache reflects it, with Resync events flagged as the
// cache applied them. With WithInitial the watch starts with the cache's
// contents (as Initial events; nothing before Synced, whose list then comes
// as Initial events); without, with the next change. WithBufferSize bounds
// its buffer: a subscription that falls behind by more is unhooked and,
// once its reader has drained half of it, catches up from etcd's history
// (as Resync events only if that history was compacted meanwhile), then
// follows the cache again, as a Watch does. Catching up, it never delivers
// a change the cache has not applied yet; only the Resync events of a
// compaction met while catching up may precede the cache's own.
// The Watch ends when the cache ends (with
// the cache's cause) or when it is closed.
func (ca *Cache[T]) Subscribe(opts ...SubscribeOption) *Watch[T] {
	cfg := newWatchConfig(opts)
	if err := cfg.err(); err != nil {
		return endedWatch[T](err)
	}
	w, ok := newWatch[T](ca.ctx, ca.c, min(cfg.buffer, eventsBuffer))
	if !ok {
		return w
	}
	s := ca.c.hub.NewSub(w.ctx, ca.target, cfg.options())
	decode := ca.decode
	s.SetSink(&chanSink[T]{ch: w.events, decode: func(re *watch.Event) Event[T] {
		if e, ok := re.Typed.(*Event[T]); ok {
			return *e
		}
		return decode(re)
	}}, func(err error) { w.cancel(err) })
	w.ready, w.state = s.Ready(), subState(s)
	w.producers = func() {
		s.Close()
		ca.mu.Lock()
		delete(ca.subs, w)
		ca.mu.Unlock()
	}
	ca.mu.Lock()
	if ca.ending {
		ca.mu.Unlock()
		w.producers = nil
		w.cancel(ErrClosed)
		w.arm()
		return w
	}
	ca.subs[w] = struct{}{}
	ca.fan.Add(s, ca.initialLocked)
	ca.mu.Unlock()
	w.arm()
	return w
}

type namedEntry[T any] struct {
	Name string
	cacheEntry[T]
}

// entriesLocked returns every entry, undecodable ones included, sorted by
// name. The caller holds ca.mu.
func (ca *Cache[T]) entriesLocked() []namedEntry[T] {
	out := make([]namedEntry[T], 0, len(ca.entries))
	for name, e := range ca.entries {
		out = append(out, namedEntry[T]{name, e})
	}
	slices.SortFunc(out, func(a, b namedEntry[T]) int { return cmp.Compare(a.Name, b.Name) })
	return out
}
