package watch

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.uber.org/zap"
)

// Hub shares etcd watches among the subscribers of one Client: every
// Watch on the same key, or on the same prefix, is served by one feed, which
// runs one etcd watch however many subscribers it has.
type Hub struct {
	cfg   Config
	epoch time.Time

	mu    sync.Mutex
	feeds map[feedKey]*feed
	links map[uint64]*link

	// watches counts the etcd watches open right now, shared or not.
	watches atomic.Int64
}

type feedKey struct {
	key    string
	prefix bool
}

// NewHub returns a hub that runs no etcd watch until a subscriber joins.
func NewHub(cfg Config) *Hub {
	return &Hub{cfg: cfg, epoch: time.Now(), feeds: make(map[feedKey]*feed), links: make(map[uint64]*link)}
}

// now is a monotonic clock in nanoseconds.
func (h *Hub) now() int64 { return int64(time.Since(h.epoch)) }

// Join registers s with the feed of its target, starting the feed if s is
// its first subscriber. The feed lives until its last subscriber leaves.
func (h *Hub) Join(s *Sub) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := feedKey{s.target.Key, s.target.Prefix}
	f := h.feeds[k]
	if f == nil {
		f = &feed{h: h, target: s.target, opened: make(chan struct{})}
		if s.cfg.Initial {
			f.opener = s
		}
		f.stream = &stream{h: h, target: s.target, handler: f}
		f.ctx, f.cancel = context.WithCancel(h.cfg.Life)
		if !h.cfg.Spawn(f.run) {
			f.cancel()
			return false
		}
		h.feeds[k] = f
	}
	f.refs++
	f.mu.Lock()
	f.add(s)
	if f.err != nil {
		s.Fail(f.err)
	} else if f.up {
		s.feedReady(f)
	}
	f.mu.Unlock()
	return true
}

// leave unregisters s; the feed's etcd watch ends with its last subscriber.
func (h *Hub) leave(s *Sub) {
	f := s.feed
	if f.derived {
		f.mu.Lock()
		f.remove(s)
		f.mu.Unlock()
		return
	}
	h.mu.Lock()
	f.refs--
	if f.refs == 0 {
		f.cancel()
		if h.feeds[feedKey{f.target.Key, f.target.Prefix}] == f {
			delete(h.feeds, feedKey{f.target.Key, f.target.Prefix})
		}
	}
	h.mu.Unlock()
	f.mu.Lock()
	f.remove(s)
	f.mu.Unlock()
}

// feed is the shared stream of one key or prefix. It reads the state's
// names and mod revisions once, then follows one etcd watch, and fans every
// batch out to the subscribers hooked to it. It keeps that name -> mod
// revision state up to date, which is what a resync after a compaction is
// diffed against and what a subscriber unhooked for being slow takes with it.
// Only subscribers in step with the feed (at its position) are hooked, so
// that this state is also what each of them has been delivered; see sub.
//
// A derived feed has no etcd watch of its own: its owner (a Cache) hands it
// the batches it has applied, and it fans them out to the owner's
// subscribers with the same slow-subscriber handling: one that falls behind
// catches up on its own from etcd's history, then rejoins the derived feed.
type feed struct {
	h      *Hub
	target Target
	stream *stream
	ctx    context.Context
	cancel context.CancelFunc
	refs   int // guarded by h.mu
	// derived marks a feed driven by its owner rather than by stream, which
	// is then nil; upstream reports the state of what drives it.
	derived  bool
	upstream func() State

	mu    sync.Mutex
	up    bool  // the first read is done and next is known
	next  int64 // every revision below next has been fanned out
	state state // the names and mod revisions at next-1, always known
	// members are the feed's subscribers, hooked or not; each knows its
	// index. A slice rather than a set: the fan-out walks it for every batch.
	members []*Sub
	err     error // terminal failure

	// opener is the subscriber that made the feed, if it asked for the
	// initial state: the feed's first read, which began within that
	// subscriber's own call, then reads values too and is handed to it
	// (first, at firstRev), so that it does not read the state again. Set
	// when the feed is made, never changed.
	opener   *Sub
	first    []*mvccpb.KeyValue
	firstRev int64
	taken    bool          // the opener took first, or will not
	opened   chan struct{} // closed once up is set or the feed failed
}

func (f *feed) run() {
	kvs, rev, err := f.h.read(f.ctx, f.target, 0, f.opener == nil)
	if err != nil {
		f.end(err)
		return
	}
	f.mu.Lock()
	f.state = stateOfRead(kvs)
	f.next = rev + 1
	f.stream.next = rev + 1
	f.up = true
	if f.opener != nil && !f.taken {
		f.first, f.firstRev = kvs, rev
	}
	close(f.opened)
	for _, s := range f.members {
		s.feedReady(f)
	}
	f.mu.Unlock()
	f.end(f.stream.run(f.ctx))
}

// takeFirst hands the feed's first read to its opener s, waiting for it;
// it reports false for any other subscriber, or if the read failed or
// either ended first: s then reads the state itself.
func (f *feed) takeFirst(s *Sub) ([]*mvccpb.KeyValue, int64, bool) {
	if f.opener != s {
		return nil, 0, false
	}
	select {
	case <-f.opened:
	case <-s.ctx.Done():
	case <-f.ctx.Done():
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	ok := f.up && !f.taken
	kvs, rev := f.first, f.firstRev
	f.first, f.taken = nil, true
	return kvs, rev, ok
}

// end fails every subscriber with err, unless the feed was just stopped.
func (f *feed) end(err error) {
	if f.ctx.Err() != nil || err == nil {
		return
	}
	f.h.cfg.Log.Debug("watch feed failed", zap.Stringer("target", f.target), zap.Error(err))
	// Later subscribers get a feed of their own, which tries again.
	f.h.mu.Lock()
	if k := (feedKey{f.target.Key, f.target.Prefix}); f.h.feeds[k] == f {
		delete(f.h.feeds, k)
	}
	f.h.mu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
	if !f.up {
		close(f.opened)
	}
	for _, s := range f.members {
		s.Fail(err)
	}
}

func (f *feed) ready(context.Context) error { return nil }

func (f *feed) deliver(bs []Batch) action {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range bs {
		f.advance(b)
	}
	return proceed
}

// advance fans b out and moves the feed's state and position past it. The
// caller holds f.mu.
func (f *feed) advance(b Batch) {
	f.fanOut(b)
	f.state.apply(f.target, b)
	f.next = b.Next
}

// passResync moves the subscribers that a resync to next passes off the
// feed's path; see aheadOf. The caller holds f.mu.
func (f *feed) passResync(next int64) {
	for _, s := range f.members {
		s.aheadOf(next)
	}
}

// limit is the position a catching-up subscriber of the feed may not
// deliver changes beyond: a derived feed's own, since its owner must have
// applied a change before its subscribers see it; none for a shared
// stream.
func (f *feed) limit() int64 {
	if !f.derived {
		return math.MaxInt64
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.next
}

// State reports the state of what feeds the feed.
func (f *feed) State() State {
	if f.derived {
		return f.upstream()
	}
	return f.stream.State()
}

func (f *feed) resync(kvs []*mvccpb.KeyValue, rev int64) action {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, st := diffState(f.target, f.state, kvs, rev, 0)
	f.passResync(b.Next)
	f.fanOut(b)
	f.state = st
	f.next = b.Next
	return proceed
}

// fanOut offers b to every hooked subscriber. It never blocks: a subscriber
// without room is unhooked and catches up on its own. The caller holds f.mu.
func (f *feed) fanOut(b Batch) {
	lag := 0
	for _, s := range f.members {
		if n := s.offer(f, b); n > lag {
			lag = n
		}
	}
	if len(b.Events) > 0 {
		if o := f.h.cfg.Observe.Lag; o != nil {
			o(lag)
		}
	}
}

// add makes s a member. The caller holds f.mu.
func (f *feed) add(s *Sub) {
	s.feed = f
	s.slot = len(f.members)
	f.members = append(f.members, s)
}

// remove takes s out of the members, moving the last one to its place. The
// caller holds f.mu.
func (f *feed) remove(s *Sub) {
	i := s.slot
	if i < 0 || i >= len(f.members) || f.members[i] != s {
		return
	}
	last := len(f.members) - 1
	f.members[i] = f.members[last]
	f.members[i].slot = i
	f.members[last] = nil
	f.members = f.members[:last]
	s.slot = -1
}

// snapshot copies the feed's state, for a subscriber leaving it at f.next.
// The caller holds f.mu.
func (f *feed) snapshot() state { return f.state.clone(f.target) }

// Watches returns the number of etcd watches open right now, shared or not.
func (h *Hub) Watches() int64 { return h.watches.Load() }

// Feeds returns the number of shared feeds (one per watched key or prefix)
// running right now.
func (h *Hub) Feeds() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.feeds)
}

// MaxQueued returns the largest number of events any subscriber of a shared
// feed has waiting in its buffer right now.
func (h *Hub) MaxQueued() int {
	n := 0
	h.eachSub(func(s *Sub) { n = max(n, s.queued) })
	return n
}

// Baselines returns the number of subscribers of shared feeds that hold a
// baseline of their own: those out of step with their feed whose state at
// their position is known.
func (h *Hub) Baselines() int {
	n := 0
	h.eachSub(func(s *Sub) {
		if s.baseline.known && (s.mode == subCatching || s.mode == subAhead) {
			n++
		}
	})
	return n
}

// eachSub calls f with every subscriber of the shared feeds, each under its
// own lock.
func (h *Hub) eachSub(f func(s *Sub)) {
	h.mu.Lock()
	feeds := make([]*feed, 0, len(h.feeds))
	for _, fd := range h.feeds {
		feeds = append(feeds, fd)
	}
	h.mu.Unlock()
	for _, fd := range feeds {
		fd.mu.Lock()
		for _, s := range fd.members {
			s.mu.Lock()
			f(s)
			s.mu.Unlock()
		}
		fd.mu.Unlock()
	}
}
