package etcdkit

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
)

// Cache is a local copy of every key under a prefix, kept up to date by a
// watch: reads are served from memory, without a request, at the revision
// given by Revision. Make one with Prefix.Cache.
//
// The cache lists the prefix at one revision and then applies every change
// after it, through the same engine as Prefix.Watch: it survives broken and
// silent links and member failures, and after a compaction it applies the
// differences with the state re-read at the compaction's revision,
// deletions included. Until Synced is
// closed it is empty.
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
	c      *Client
	sub    *sub
	decode func(*rawEvent) Event[T]
	ctx    context.Context
	cancel context.CancelCauseFunc
	stop   func() bool
	synced chan struct{}
	// syncOnce guards closing synced: on the first sync, or when the cache
	// ends before it.
	syncOnce sync.Once
	done     chan struct{}
	err      error // set before done is closed

	mu      sync.RWMutex
	entries map[string]cacheEntry[T]
	rev     int64
	subs    map[*cacheSub[T]]struct{}
	ending  bool           // no more subscriptions
	subWG   sync.WaitGroup // subscription goroutines
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
	if p.c.closed() {
		return nil, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h := p.c.watchHub()
	ca := &Cache[T]{c: p.c, decode: p.decoder(), synced: make(chan struct{}), done: make(chan struct{}),
		entries: make(map[string]cacheEntry[T]), subs: make(map[*cacheSub[T]]struct{})}
	ca.ctx, ca.cancel = context.WithCancelCause(ctx)
	ca.stop = context.AfterFunc(p.c.life, func() { ca.cancel(ErrClosed) })
	ca.sub = newSub(h, p.target(), watchConfig{after: -1, initial: true, buffer: DefaultWatchBuffer}, ca.ctx)
	if !h.join(ca.sub) {
		ca.sub.cancel()
		ca.finish(ErrClosed)
		return nil, ErrClosed
	}
	if !p.c.spawn(ca.run) {
		ca.sub.close()
		ca.finish(ErrClosed)
		return nil, ErrClosed
	}
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
func (ca *Cache[T]) Err() error {
	select {
	case <-ca.done:
		return ca.err
	default:
		return nil
	}
}

// State reports the state of the watch behind the cache.
func (ca *Cache[T]) State() WatchState {
	select {
	case <-ca.done:
		return WatchClosed
	default:
		return ca.sub.State()
	}
}

// Close stops the cache and its subscriptions and returns once their
// goroutines have finished. It is idempotent and returns nil.
func (ca *Cache[T]) Close() error {
	ca.cancel(ErrClosed)
	<-ca.done
	return nil
}

func (ca *Cache[T]) finish(err error) {
	ca.stop()
	ca.cancel(err)
	ca.err = err
	close(ca.done)
	ca.markSynced()
}

func (ca *Cache[T]) run() {
	var err error
	defer func() {
		ca.sub.close()
		if ca.ctx.Err() != nil {
			err = context.Cause(ca.ctx)
		}
		// Subscriptions end with the same cause, through their contexts.
		ca.cancel(err)
		ca.mu.Lock()
		ca.ending = true
		ca.mu.Unlock()
		ca.subWG.Wait()
		ca.finish(err)
	}()
	if err = ca.sub.start(); err != nil {
		return
	}
	for {
		var b batch
		if b, err = ca.sub.pop(ca.ctx); err != nil {
			return
		}
		ca.apply(b)
		ca.markSynced()
	}
}

// apply applies a batch, then hands its events to the subscriptions, all
// under the write lock, so that a subscriber that receives an event finds
// the cache already reflecting it.
func (ca *Cache[T]) apply(b batch) {
	evs := make([]Event[T], len(b.events))
	for i, re := range b.events {
		evs[i] = ca.decode(re)
	}
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if len(evs) > 0 {
		var before map[string]int64
		for s := range ca.subs {
			if !s.fits(len(evs)) {
				if before == nil {
					before = ca.stateLocked()
				}
				s.unhook(before)
			}
		}
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
	ca.rev = b.next - 1
	if len(evs) > 0 {
		for s := range ca.subs {
			s.push(evs)
		}
	}
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
// its buffer: a subscriber that falls behind by more is unhooked and, once
// it has drained its backlog, receives as Resync events the differences
// between what it had and the cache's contents, then follows again.
// AfterRevision is not supported. The Watch ends when the cache ends (with
// the cache's cause) or when it is closed.
func (ca *Cache[T]) Subscribe(opts ...WatchOption) *Watch[T] {
	cfg := newWatchConfig(opts)
	if err := cfg.err(); err != nil {
		return endedWatch[T](err)
	}
	if cfg.setAfter {
		return endedWatch[T](errors.New("etcdkit: Cache.Subscribe: AfterRevision is not supported"))
	}
	w, ok := newWatch[T](ca.ctx, ca.c, 0)
	if !ok {
		return w
	}
	ready := make(chan struct{})
	close(ready)
	w.ready = ready
	w.state = ca.State
	s := &cacheSub[T]{ca: ca, capacity: cfg.buffer, wake: make(chan struct{}, 1)}
	ca.mu.Lock()
	if ca.ending {
		ca.mu.Unlock()
		w.cancel(ErrClosed)
		w.arm()
		return w
	}
	if cfg.initial {
		var evs []Event[T]
		for _, e := range ca.entriesLocked() {
			evs = append(evs, Event[T]{Type: Put, Name: e.Name, Value: e.v.Data, Revision: e.v.Revision,
				CreateRevision: e.v.CreateRevision, Version: e.v.Version, Lease: e.v.Lease, Initial: true, Err: e.err})
		}
		s.q = evs
	}
	ca.subs[s] = struct{}{}
	ca.subWG.Add(1)
	ca.mu.Unlock()
	var wg sync.WaitGroup
	w.producers = func() {
		wg.Wait()
		s.leave()
		ca.subWG.Done()
	}
	wg.Add(1)
	if !ca.c.spawn(func() {
		defer wg.Done()
		s.run(w)
	}) {
		wg.Done()
		w.cancel(ErrClosed)
	}
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

// cacheSub is one subscription to a Cache: a bounded queue of typed events.
// Lock order: ca.mu, then s.mu.
type cacheSub[T any] struct {
	ca       *Cache[T]
	capacity int

	mu       sync.Mutex
	q        []Event[T]
	unhooked bool
	baseline map[string]int64 // what the subscriber had when unhooked
	wake     chan struct{}
}

// fits reports whether a batch of n events can be queued; an unhooked
// subscriber takes nothing. The caller holds ca.mu.
func (s *cacheSub[T]) fits(n int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unhooked || len(s.q) == 0 || len(s.q)+n <= s.capacity
}

func (s *cacheSub[T]) unhook(before map[string]int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unhooked, s.baseline = true, before
}

func (s *cacheSub[T]) push(evs []Event[T]) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unhooked {
		return
	}
	s.q = append(s.q, evs...)
	signal(s.wake)
}

// rehook queues the differences between what an unhooked subscriber had and
// the cache's contents, as Resync events, and hooks it back. The caller
// holds no lock.
func (s *cacheSub[T]) rehook() {
	ca := s.ca
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	var puts, dels []Event[T]
	for _, e := range ca.entriesLocked() {
		if rev, ok := s.baseline[e.Name]; ok && rev == e.v.Revision {
			continue
		}
		puts = append(puts, Event[T]{Type: Put, Name: e.Name, Value: e.v.Data, Revision: e.v.Revision,
			CreateRevision: e.v.CreateRevision, Version: e.v.Version, Lease: e.v.Lease, Resync: true, Err: e.err})
	}
	for name := range s.baseline {
		if _, ok := ca.entries[name]; !ok {
			dels = append(dels, Event[T]{Type: Delete, Name: name, Revision: ca.rev, Resync: true})
		}
	}
	slices.SortStableFunc(puts, func(a, b Event[T]) int { return cmp.Compare(a.Revision, b.Revision) })
	slices.SortFunc(dels, func(a, b Event[T]) int { return cmp.Compare(a.Name, b.Name) })
	s.q = append(append(s.q, puts...), dels...)
	s.unhooked, s.baseline = false, nil
}

// pop returns the next event, blocking until there is one or ctx ends.
func (s *cacheSub[T]) pop(ctx context.Context) (Event[T], error) {
	for {
		s.mu.Lock()
		if len(s.q) > 0 {
			e := s.q[0]
			s.q[0] = Event[T]{}
			s.q = s.q[1:]
			s.mu.Unlock()
			return e, nil
		}
		unhooked := s.unhooked
		s.mu.Unlock()
		if unhooked {
			s.rehook()
			continue
		}
		select {
		case <-s.wake:
		case <-ctx.Done():
			return Event[T]{}, context.Cause(ctx)
		}
	}
}

// run hands events to the subscription's reader until its context ends.
func (s *cacheSub[T]) run(w *Watch[T]) {
	for {
		e, err := s.pop(w.ctx)
		if err != nil {
			return
		}
		select {
		case w.events <- e:
		case <-w.ctx.Done():
			return
		}
	}
}

func (s *cacheSub[T]) leave() {
	s.ca.mu.Lock()
	delete(s.ca.subs, s)
	s.ca.mu.Unlock()
}
