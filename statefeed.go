package etcdkit

import (
	"context"
	"sync"
)

// stateBuffer is how many states a States channel holds for a slow reader
// before the oldest are dropped.
const stateBuffer = 16

// stateFeed holds a handle's current state and sends its transitions to the
// States channel, a lossy channel of stateBuffer states: it never blocks, and
// when the reader is stateBuffer states behind, the oldest waiting state is
// dropped. Each state lasts one epoch, a
// context cancelled at the next transition, which the engines that follow a
// session wait on or bound their requests with.
type stateFeed struct {
	mu       sync.Mutex
	state    SessionState
	ch       lossy[SessionState]
	epoch    context.Context
	endEpoch context.CancelFunc
	closed   bool
	metrics  Metrics
	// mirror, if set, enters Suspended and Lost together with this feed,
	// so that an Ephemeral reports every one of its session's failures,
	// however briefly they last.
	mirror *stateFeed
}

func newStateFeed(m Metrics) *stateFeed {
	f := &stateFeed{state: SessionLive, ch: make(lossy[SessionState], stateBuffer), metrics: m}
	f.epoch, f.endEpoch = context.WithCancel(context.Background())
	f.ch <- SessionLive
	return f
}

// enter moves to state st, after sending why (Recovered, Restored) if it is
// not zero. Entering the current state again without a why does nothing.
func (f *stateFeed) enter(st, why SessionState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.enterLocked(st, why)
}

func (f *stateFeed) enterLocked(st, why SessionState) {
	if f.closed || (st == f.state && why == 0) {
		return
	}
	if why != 0 {
		f.sendLocked(why)
	}
	if st != f.state {
		f.metrics.Add(MetricSessionStateChanges, 1)
	}
	f.state = st
	f.sendLocked(st)
	if f.mirror != nil && (st == SessionSuspended || st == SessionLost) {
		f.mirror.enter(st, 0)
	}
	f.endEpoch()
	f.epoch, f.endEpoch = context.WithCancel(context.Background())
}

// announce sends why, then the current state again, without a transition.
func (f *stateFeed) announce(why SessionState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.closed {
		f.sendLocked(why)
		f.sendLocked(f.state)
	}
}

// relay makes g enter st (after why) if f is still in the given epoch, and
// reports whether it did. It keeps a follower from reporting Live after its
// session has already moved on.
func (f *stateFeed) relay(epoch context.Context, g *stateFeed, st, why SessionState) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.epoch != epoch {
		return false
	}
	g.enter(st, why)
	return true
}

// sendLocked sends st; holding f.mu makes this the channel's one sender.
func (f *stateFeed) sendLocked(st SessionState) { f.ch.send(st) }

func (f *stateFeed) get() (SessionState, context.Context) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state, f.epoch
}

func (f *stateFeed) setMirror(g *stateFeed) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mirror = g
	if f.state == SessionSuspended || f.state == SessionLost {
		g.enter(f.state, 0)
	}
}

// close closes the States channel, whose states stay readable, and ends the
// last epoch.
func (f *stateFeed) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.closed {
		f.closed = true
		close(f.ch)
		f.endEpoch()
	}
}
