package watch

import (
	"context"
	"sync"
)

// subMode is where a subscriber's events come from.
type subMode int

const (
	// subWaiting: the start revision is not fixed yet (the feed's first read
	// or the subscriber's initial read is under way).
	subWaiting subMode = iota
	// subHooked: the feed fans its batches out to the subscriber. A hooked
	// subscriber is in step with the feed: its position is the feed's, so
	// what it has been delivered is the feed's state, and a resync diffed
	// against the feed's state is right for it too.
	subHooked
	// subCatching: the subscriber is behind the feed (it started behind it,
	// was unhooked for being slow, or was ahead when the feed resynced) and
	// follows its own etcd watch until it reaches the feed's position, then
	// hooks itself back.
	subCatching
	// subAhead: the subscriber is ahead of the feed (it starts at a revision
	// the feed has not reached, or caught up past it) and takes nothing from
	// it until the feed's history reaches its position, where it hooks. Its
	// delivered state is not the feed's: if the feed resyncs past its
	// position, it catches up on its own from there instead, diffing against
	// its own baseline.
	subAhead
	// subEnded: the subscriber left.
	subEnded
)

// Sub is one subscriber of the hub: a bounded buffer of events between the
// stream that feeds it and its reader.
//
// Slow subscribers: the buffer (the reader's channel and the queue behind
// it) holds up to capacity events, or one whole batch if it is larger. When
// the feed finds no room for a batch it unhooks the subscriber, which keeps
// what it has queued and the feed's name -> mod revision state at that
// point. Once the user has read half of the backlog (and enough of it for
// the batch that did not fit), the subscriber's own
// catch-up stream re-watches from the first revision it is missing, with the
// same flow control (it stops its etcd watch whenever the queue is full,
// rather than let clientv3 buffer), and resyncs from that state if the
// revisions were compacted meanwhile. When its position reaches the feed's,
// it hooks itself back. Nothing is dropped, nothing waits for it.
//
// Baselines: a subscriber is on the feed only while in step with it. One
// that is not (ahead of it or behind it) keeps its own baseline, the name ->
// mod revision state at its position, so that a resync brings it from what
// it was delivered, not from what the feed had, to the current state.
type Sub struct {
	h        *Hub
	target   Target
	cfg      Options
	capacity int
	feed     *feed
	// slot is the subscriber's index in feed.members, guarded by the
	// feed's mu; -1 once it left.
	slot   int
	ctx    context.Context
	cancel context.CancelFunc
	ready  chan struct{}
	// readyOnce guards closing ready.
	readyOnce sync.Once
	// wg tracks the catch-up goroutine.
	wg sync.WaitGroup

	mu         sync.Mutex
	mode       subMode
	armed      bool // the start is decided: the feed may position and hook it
	positioned bool // enq and from are set
	// floor is where a watch from now starts at the earliest: after the
	// revision of a linearizable read made when Watch was called.
	floor  int64
	q      []Batch
	queued int   // events in q
	enq    int64 // position after the last batch queued
	from   int64 // the start: no resync put below it is queued
	// baseline is the state at enq-1, kept while the subscriber is not
	// hooked so that a resync can be diffed against it. A WithInitial
	// subscriber starts with the state it read (kept as the read until it
	// is needed: it rarely is); it is unknown when the state at the
	// subscriber's position could not be read, and while hooked.
	baseline state
	// needBase says the baseline is still to be read (AfterRevision); it is
	// read once, as soon as the subscriber is found out of step with the
	// feed, while the state at its start may still be readable.
	needBase bool
	// baseRead is the baseline read under way, if any.
	baseRead *baseRead
	catch    *stream
	err      error
	wake     chan struct{} // a batch was queued, or err was set (queue mode)
	space    chan struct{} // the backlog went down far enough to resume
	// need is the size of the batch a catch-up left out for want of room
	// (0 if none): the catch-up resumes only once that batch fits, so that
	// a revision larger than half the buffer does not make it re-read
	// history in a loop while the reader is idle.
	need int
	// sink, when set, is the reader's channel: batches go straight into it
	// when it has room and nothing is queued, otherwise into q, which a pump
	// goroutine drains into it. Without a sink the reader pops batches.
	sink    Sink
	pumping bool
	// onFail is called when the subscriber fails.
	onFail func(error)
}

// Sink is the typed end of a subscriber: its reader's channel.
type Sink interface {
	// Room is how many events fit without blocking; waiting how many wait.
	Room() int
	Waiting() int
	// Put hands over events that fit; send blocks until they are handed
	// over, and reports false if ctx ended first.
	Put(evs []*Event)
	Send(ctx context.Context, evs []*Event) bool
}

// NewSub returns a subscriber of t bounded by ctx. Give it a sink
// (SetSink) or pop its batches (Pop); Join the hub, then Start or Go.
func (h *Hub) NewSub(ctx context.Context, t Target, cfg Options) *Sub {
	s := &Sub{h: h, target: t, cfg: cfg, capacity: cfg.Buffer,
		ready: make(chan struct{}), wake: make(chan struct{}, 1), space: make(chan struct{}, 1)}
	s.ctx, s.cancel = context.WithCancel(ctx)
	return s
}

// fromNow reports whether the subscriber starts from now: neither
// WithInitial nor AfterRevision.
func (s *Sub) fromNow() bool { return !s.cfg.Initial && s.cfg.After < 0 }

func (s *Sub) markReady() { s.readyOnce.Do(func() { close(s.ready) }) }

// Start fixes the Start of a subscriber and hands it to the feed. It runs on
// the subscriber's goroutine.
//
// A watch from now starts after the revision of a linearizable read made
// here, or at the feed's position if that is later. The feed's position
// alone is not enough: the feed's member may lag behind the cluster (cut
// off from its peers, or just applying more slowly), and a caller that read
// a value before calling Watch must never be handed an older change of it.
func (s *Sub) Start() error {
	switch {
	case s.fromNow():
		rev, err := s.h.revision(s.ctx, s.target)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.floor = rev + 1
		s.mu.Unlock()
	case s.cfg.Initial:
		kvs, rev, ok := s.feed.takeFirst(s)
		if !ok {
			var err error
			if kvs, rev, err = s.h.read(s.ctx, s.target, 0, false); err != nil {
				return err
			}
		}
		evs := make([]*Event, len(kvs))
		for i, kv := range kvs {
			evs[i] = &Event{Type: Put, Name: s.target.name(kv.Key), Value: kv.Value, Rev: kv.ModRevision,
				Create: kv.CreateRevision, Version: kv.Version, Lease: kv.Lease, Initial: true}
		}
		s.mu.Lock()
		s.baseline = stateOfRead(kvs)
		s.push(Batch{Events: evs, Next: rev + 1})
		s.from = rev + 1
		s.mu.Unlock()
	default:
		s.mu.Lock()
		s.enq, s.from, s.needBase = s.cfg.After+1, s.cfg.After+1, true
		s.mu.Unlock()
	}
	f := s.feed
	f.mu.Lock()
	defer f.mu.Unlock()
	s.mu.Lock()
	s.armed = true
	s.positioned = !s.fromNow()
	s.mu.Unlock()
	if s.positioned {
		s.markReady()
	}
	if f.err != nil {
		s.Fail(f.err)
	} else if f.up {
		s.feedReady(f)
	}
	return nil
}

// feedReady positions and hooks an armed subscriber once the feed knows its
// position, or starts its catch-up if it starts behind. The caller holds
// f.mu.
func (s *Sub) feedReady(f *feed) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.armed || s.mode != subWaiting {
		return
	}
	if !s.positioned {
		// From now: at the feed's position, unless the feed lags behind
		// the revision read when the watch was made.
		s.positioned = true
		s.markReady()
		if f.next >= s.floor {
			s.enq, s.from = f.next, f.next
			s.mode = subHooked
			return
		}
		s.enq, s.from, s.needBase = s.floor, s.floor, true
	}
	switch {
	case s.enq == f.next:
		s.hook()
	case s.enq > f.next:
		s.mode = subAhead
		if s.needBase && !s.baseline.known {
			s.readBase()
		}
	default:
		s.startCatchUp()
	}
}

// hook puts the subscriber on the feed, in step with it. The caller holds
// f.mu and s.mu.
func (s *Sub) hook() {
	s.mode = subHooked
	s.catch = nil
	s.baseline = unknownState()
	s.needBase = false
	s.need = 0
	if r := s.baseRead; r != nil {
		r.cancel()
		s.baseRead = nil
	}
}

// offer queues b if the subscriber is hooked and has room, unhooks it if it
// has none, and returns the number of events it has waiting. A subscriber
// ahead of the feed is hooked by the first batch that reaches its position:
// the feed's history is contiguous, so no change happened between the feed's
// position and the batch's revision, and the feed's state is then the one at
// the subscriber's position. (A resync that passes it moves it off the feed
// first; see aheadOf.) The caller holds f.mu.
func (s *Sub) offer(f *feed, b Batch) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	waiting := s.waiting()
	if s.mode != subHooked {
		if s.mode != subAhead || b.Next < s.enq {
			return waiting
		}
		s.hook()
	}
	if b.Next <= s.enq {
		return waiting
	}
	evs := s.filter(b.Events)
	if len(evs) > 0 && waiting > 0 && waiting+len(evs) > s.capacity {
		s.baseline = f.snapshot()
		s.need = len(evs)
		s.startCatchUp()
		return waiting
	}
	s.push(Batch{Events: evs, Next: b.Next, Resync: b.Resync})
	return waiting + len(evs)
}

// waiting is the number of events in the buffer. The caller holds s.mu.
func (s *Sub) waiting() int {
	if s.sink != nil {
		return s.queued + s.sink.Waiting()
	}
	return s.queued
}

// filter drops resync puts below the subscriber's start: the value they
// carry was already current before the start. The caller holds s.mu.
func (s *Sub) filter(evs []*Event) []*Event {
	if len(evs) == 0 || !evs[0].Resync && !evs[len(evs)-1].Resync {
		return evs
	}
	out := make([]*Event, 0, len(evs))
	for _, e := range evs {
		if e.Resync && e.Type == Put && e.Rev < s.from {
			continue
		}
		out = append(out, e)
	}
	return out
}

// push hands b on whatever its size: straight to the sink if nothing is
// queued and it fits, else to the queue. A batch without events only moves
// the position (a queue merges it with a trailing one, so that progress
// never fills it). The caller holds s.mu.
func (s *Sub) push(b Batch) {
	if s.mode == subEnded {
		return
	}
	s.enq = b.Next
	switch {
	case len(b.Events) == 0 && s.sink != nil:
		return
	case len(b.Events) == 0:
		if n := len(s.q); n > 0 && len(s.q[n-1].Events) == 0 {
			s.q[n-1].Next = b.Next
			s.q[n-1].Resync = s.q[n-1].Resync || b.Resync
		} else {
			s.q = append(s.q, b)
		}
		signal(s.wake)
		return
	case s.sink != nil && !s.pumping && len(s.q) == 0 && s.sink.Room() >= len(b.Events):
		// The only path most events take: no goroutine hand-off.
		s.sink.Put(b.Events)
		return
	}
	s.q = append(s.q, b)
	s.queued += len(b.Events)
	if s.sink == nil {
		signal(s.wake)
		return
	}
	if !s.pumping {
		s.pumping = true
		s.wg.Add(1)
		if !s.h.cfg.Spawn(s.pump) {
			s.wg.Done()
			s.pumping = false
			s.failLocked(s.h.cfg.Closed)
		}
	}
}

// pump drains the queue into the sink, blocking on the reader, and ends
// when the queue is empty.
func (s *Sub) pump() {
	defer s.wg.Done()
	for {
		s.mu.Lock()
		if len(s.q) == 0 || s.ctx.Err() != nil {
			s.pumping = false
			s.mu.Unlock()
			return
		}
		b := s.popLocked()
		s.mu.Unlock()
		if !s.sink.Send(s.ctx, b.Events) {
			s.mu.Lock()
			s.pumping = false
			s.mu.Unlock()
			return
		}
	}
}

// popLocked takes the first queued batch. The caller holds s.mu.
func (s *Sub) popLocked() Batch {
	b := s.q[0]
	s.q[0] = Batch{}
	s.q = s.q[1:]
	s.queued -= len(b.Events)
	if s.mode == subCatching && s.resumable() {
		signal(s.space)
	}
	return b
}

// resumable reports whether a paused catch-up may read on: the reader has
// drained the buffer to half, and the batch left out last time, if any,
// now fits (a batch larger than the whole buffer fits an empty one). The
// caller holds s.mu.
func (s *Sub) resumable() bool {
	w := s.waiting()
	return w <= s.capacity/2 && (w == 0 || w+s.need <= s.capacity)
}

// aheadOf moves the subscriber off the feed's path if it is ahead of it and
// a resync of the feed, read at next-1, passes its position: the resync is
// diffed against the feed's state, not against what the subscriber was
// delivered, so it catches up on its own from its position instead. The
// caller holds f.mu.
func (s *Sub) aheadOf(next int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mode == subAhead && s.enq < next {
		s.startCatchUp()
	}
}

// Pop returns the next batch of a subscriber without sink, blocking until
// there is one, the subscriber failed (its error) or ctx ends (its cause).
func (s *Sub) Pop(ctx context.Context) (Batch, error) {
	for {
		s.mu.Lock()
		if len(s.q) > 0 {
			b := s.popLocked()
			s.mu.Unlock()
			return b, nil
		}
		err := s.err
		s.mu.Unlock()
		if err != nil {
			return Batch{}, err
		}
		select {
		case <-s.wake:
		case <-ctx.Done():
			return Batch{}, context.Cause(ctx)
		}
	}
}

func (s *Sub) Fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failLocked(err)
}

func (s *Sub) failLocked(err error) {
	if s.err == nil {
		s.err = err
		if s.onFail != nil {
			s.onFail(err)
		}
	}
	signal(s.wake)
}

// Close leaves the feed and waits for the subscriber's goroutines (start,
// pump, catch-up), after which nothing is sent to the sink any more.
func (s *Sub) Close() {
	s.cancel()
	if s.feed != nil {
		s.h.leave(s)
	}
	s.mu.Lock()
	s.mode = subEnded
	s.mu.Unlock()
	s.wg.Wait()
	s.markReady()
}

// State reports the state of the stream the subscriber follows.
func (s *Sub) State() State {
	s.mu.Lock()
	mode, catch := s.mode, s.catch
	s.mu.Unlock()
	switch mode {
	case subHooked, subAhead:
		return s.feed.State()
	case subCatching:
		return catch.State()
	case subEnded:
		return Closed
	}
	return Connecting
}

// signal wakes the goroutine waiting on ch, if any, without blocking.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// SetSink makes k the subscriber's reader's channel and onFail the function
// called once if it fails. Call it before Join; without a sink the reader
// pops batches (Pop).
func (s *Sub) SetSink(k Sink, onFail func(error)) { s.sink, s.onFail = k, onFail }

// Ready is closed once the subscriber's start is fixed: what it delivers
// from then on follows the start its options asked for.
func (s *Sub) Ready() <-chan struct{} { return s.ready }

// Cancel ends the subscriber's context, for a subscriber that never joined.
func (s *Sub) Cancel() { s.cancel() }

// Go fixes the subscriber's start on a goroutine of its own (Start needs a
// read, or the feed's position), failing the subscriber if that fails. It
// reports false if the client is closing.
func (s *Sub) Go() bool {
	s.wg.Add(1)
	if !s.h.cfg.Spawn(func() {
		defer s.wg.Done()
		if err := s.Start(); err != nil {
			s.Fail(err)
		}
	}) {
		s.wg.Done()
		return false
	}
	return true
}
