package watch

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// A subscriber out of step with its feed catches up on its own: it reads
// its baseline when it needs one, follows its own etcd watch from the first
// revision it is missing, with the flow control and resync of any stream,
// and hooks itself back once it reaches the feed's position (see sub).

// baseRead is a read of a subscriber's baseline at rev, whose result is
// taken only while it is still the subscriber's baseRead.
type baseRead struct {
	rev    int64
	cancel context.CancelFunc
	done   chan struct{} // closed once the result is taken or dropped
}

// readBase starts reading the baseline at enq-1. The caller holds s.mu.
func (s *Sub) readBase() {
	s.needBase = false
	ctx, cancel := context.WithCancel(s.ctx)
	r := &baseRead{rev: s.enq - 1, cancel: cancel, done: make(chan struct{})}
	s.baseRead = r
	s.wg.Add(1)
	if !s.h.cfg.Spawn(func() {
		defer s.wg.Done()
		defer close(r.done)
		defer cancel()
		base, err := s.readState(ctx, r.rev)
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.baseRead != r {
			return // in step with the feed meanwhile: not needed
		}
		s.baseRead = nil
		switch {
		case err == nil:
			s.baseline = base
		case ctx.Err() == nil:
			s.failLocked(err)
		}
	}) {
		s.wg.Done()
		cancel()
		close(r.done)
		s.baseRead = nil
		s.failLocked(s.h.cfg.Closed)
	}
}

// readState reads the state at rev: the unknown state, without error, when
// rev has been compacted (resyncs then report changes only).
func (s *Sub) readState(ctx context.Context, rev int64) (state, error) {
	if rev <= 0 {
		return stateOfNames(nil), nil
	}
	kvs, _, err := s.h.read(ctx, s.target, rev, true)
	switch {
	case err == nil:
		return stateOfRead(kvs), nil
	case errors.Is(err, rpctypes.ErrCompacted):
		return unknownState(), nil
	}
	return unknownState(), err
}

// startCatchUp unhooks the subscriber and starts its own stream from enq,
// once its baseline, if it must be read, is known. The caller holds s.mu
// (and f.mu when called by the feed).
func (s *Sub) startCatchUp() {
	s.mode = subCatching
	st := &stream{h: s.h, target: s.target, next: s.enq}
	st.handler = catchUp{s, st}
	s.catch = st
	if s.needBase && !s.baseline.known {
		s.readBase()
	}
	base := s.baseRead
	s.wg.Add(1)
	if !s.h.cfg.Spawn(func() {
		defer s.wg.Done()
		s.runCatchUp(st, base)
	}) {
		s.wg.Done()
		s.failLocked(s.h.cfg.Closed)
	}
}

func (s *Sub) runCatchUp(st *stream, base *baseRead) {
	if base != nil {
		select {
		case <-base.done:
		case <-s.ctx.Done():
			return
		}
	}
	if err := st.run(s.ctx); err != nil && s.ctx.Err() == nil {
		s.Fail(err)
	}
}

// catchUp is the handler of a subscriber's own stream.
type catchUp struct {
	s  *Sub
	st *stream
}

// ready waits until the reader has drained the buffer far enough (see
// resumable). The pump signals as it pops; what drains from the channel
// itself is looked at every few milliseconds.
func (h catchUp) ready(ctx context.Context) error {
	s := h.s
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		s.mu.Lock()
		ok := s.resumable()
		s.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-s.space:
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// deliver queues what fits of a response. A response read from history can
// hold up to a thousand revisions; what does not fit is left out and read
// again from history later: the stream is rewound to the position after the
// last batch queued and paused. A subscription of a Cache never runs ahead
// of the cache: the first change the cache has not applied yet is left to
// the cache (see tryHook).
func (h catchUp) deliver(bs []Batch) action {
	s := h.s
	limit := s.feed.limit()
	s.mu.Lock()
	full := false
	var beyond int64 // next of the first batch the cache has not applied
	for _, b := range bs {
		if b.Next <= s.enq {
			continue
		}
		if len(b.Events) > 0 && b.Next > limit {
			beyond = b.Next
			break
		}
		if waiting := s.waiting(); len(b.Events) > 0 && waiting > 0 && waiting+len(b.Events) > s.capacity {
			full = true
			s.need = len(b.Events)
			break
		}
		s.baseline.apply(s.target, b)
		s.need = 0
		s.push(b)
	}
	full = full || s.waiting() >= s.capacity
	if full || beyond != 0 {
		h.st.next = s.enq
	}
	s.mu.Unlock()
	if s.tryHook(beyond) {
		return stop
	}
	if full || beyond != 0 {
		return pause
	}
	return behind
}

func (h catchUp) resync(kvs []*mvccpb.KeyValue, rev int64) action {
	s := h.s
	s.mu.Lock()
	if s.target.Prefix && !s.baseline.known {
		// The keys that vanished in the compacted revisions cannot be
		// known: a resync would leave them with the subscriber. End it
		// instead, explicitly.
		s.failLocked(fmt.Errorf("%w: watch %s: the revisions after %d were compacted and the state at %d could not be read in time, so deletions since cannot be reported; list again and watch after the list's revision",
			s.h.cfg.Compacted, s.target, s.enq-1, s.enq-1))
		s.mu.Unlock()
		return stop
	}
	b, st := diffState(s.target, s.baseline, kvs, rev, s.from)
	b.Events = s.filter(b.Events)
	s.baseline = st
	s.push(b)
	full := s.waiting() >= s.capacity
	s.mu.Unlock()
	if s.tryHook(0) {
		return stop
	}
	if full {
		return pause
	}
	return behind
}

// tryHook hooks a catching-up subscriber back to the feed once its position
// has reached the feed's, and reports whether its own stream is no longer
// needed. If it went past the feed's position, it waits ahead of the feed,
// with its baseline, for the feed to reach it.
//
// With gap > 0 the catch-up has come to a change a Cache has not applied
// yet, the first one before gap: no change lies between the subscriber's
// position and gap-1, so a feed position in that range counts as reached,
// and the subscriber moves to it and takes the rest from the cache. If the
// cache has applied that change meanwhile, the catch-up reads it again.
func (s *Sub) tryHook(gap int64) bool {
	f := s.feed
	f.mu.Lock()
	defer f.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.mode != subCatching:
		return true
	case f.err != nil:
		s.failLocked(f.err)
		return true
	case !f.up:
		return false
	case s.enq > f.next:
		s.mode = subAhead
		s.catch = nil
		return true
	case s.enq < f.next && f.next >= gap:
		return false
	}
	if s.enq < f.next {
		s.push(Batch{Next: f.next})
	}
	s.hook()
	return true
}
