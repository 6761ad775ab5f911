package etcdkit

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/etcdkit/etcdkit/internal/backoff"
)

// observeBacklog bounds the leader changes an Observation holds for a slow
// reader.
const observeBacklog = 64

// Observation follows who leads an election; make one with
// Election.Observe. Its Updates channel first receives the current state,
// once known, then every change of leader: another candidate (a new Token),
// or no candidate at all, reported as a LeaderInfo that is not Present. It
// follows a Cache of the candidate keys, so it survives broken and silent
// links, member failures and compactions; while the cluster cannot be
// reached it reports nothing new.
//
// An Observation ends when the ctx given to Observe ends, when Close or
// Client.Close is called, or when it cannot start following the election
// (an invalid Election gives one that has already ended); never because of
// the network or a failed watch, which it retries. Then Err is set, Updates
// is closed, and Done is closed, in that order.
//
// Sending never blocks the observation: a reader more than 64 changes
// behind loses the oldest undelivered ones, so the last value received is
// always the latest state known. An Observation is safe for concurrent use.
type Observation struct {
	lifetime
	events chan LeaderInfo // closed after Err is set, before Done
}

// Observe starts an Observation of the election and returns at once. ctx
// bounds the life of the Observation, not the call. An invalid Election, or
// a closed Client, gives an Observation that has already ended with the
// error (the Election's Err, or ErrClosed).
func (e *Election) Observe(ctx context.Context) *Observation {
	o := &Observation{}
	if e.err != nil {
		endedEvents(&o.lifetime, &o.events, e.err)
		return o
	}
	if !beginEvents(&o.lifetime, &o.events, ctx, e.c, observeBacklog) {
		endedEvents(&o.lifetime, &o.events, ErrClosed)
		return o
	}
	// Events reads as closed as soon as the Observation ends: the changes
	// still waiting for a reader go.
	o.producers = func() { lossy[LeaderInfo](o.events).drain() }
	o.spawn(func() { o.cancel(e.observe(o.ctx, o.events)) })
	o.arm()
	return o
}

// Updates returns the channel of the election's leader states: the current
// one first, then each change. It holds the newest states a slow reader
// has not taken, so the last state received is always the latest known.
// It is closed when the Observation ends, after Err has been set.
func (o *Observation) Updates() <-chan LeaderInfo { return o.events }

// Done is closed when the Observation has ended, after Err is set and
// Events is closed.
func (o *Observation) Done() <-chan struct{} { return o.done }

// Err returns why the Observation ended once Done is closed, nil before:
// the ctx's cause (context.Canceled or context.DeadlineExceeded) when its
// ctx ended, ErrClosed after Close or Client.Close, the Election's Err for
// an invalid Election, or the error that kept it from following the
// election.
func (o *Observation) Err() error { return o.cause() }

// Close ends the Observation (Err then reports ErrClosed unless it had
// already ended) and returns once its goroutines have finished. It is
// idempotent and returns nil.
func (o *Observation) Close() error { return o.close() }

// observe feeds ch until ctx ends, following a Cache of the candidates and
// starting a new one if a cache fails. It returns the error that stopped it
// when that is not the end of ctx.
func (e *Election) observe(ctx context.Context, ch lossy[LeaderInfo]) error {
	var (
		last   LeaderInfo
		known  bool
		ca     *Cache[[]byte]
		w      *Watch[[]byte]
		synced <-chan struct{}
		events <-chan Event[[]byte]
	)
	retry := backoff.New(100*time.Millisecond, 2*time.Second)
	restart := time.NewTimer(0)
	defer restart.Stop()
	stop := func() {
		if ca != nil {
			_ = w.Close()
			_ = ca.Close()
			ca, w, synced, events = nil, nil, nil, nil
		}
	}
	defer stop()
	for {
		// A cache that ended before it synced may close Synced too, with
		// Revision still 0: that is no state to report.
		if ca != nil && synced == nil && ca.Revision() > 0 {
			li := leaderOf(ca.List(), ca.Revision())
			if !known || !li.same(last) {
				ch.send(li)
				last, known = li, true
			}
		}
		var restartC <-chan time.Time
		if ca == nil {
			restartC = restart.C
		}
		select {
		case <-restartC:
			var err error
			if ca, err = e.cands.Cache(ctx); err != nil {
				return e.fail("observe", err) // the client is closed or ctx ended
			}
			w = ca.Subscribe()
			synced, events = ca.Synced(), w.Events()
		case <-synced:
			synced = nil
			retry.Reset()
		case _, ok := <-events:
			if ok {
				continue
			}
			err := w.Err()
			stop()
			if ctx.Err() != nil {
				return nil
			}
			if e.c.closed() {
				// Client.Close's own cancellation may not have run yet.
				return ErrClosed
			}
			e.c.log.Warn("election observer restarts its cache", zap.String("election", e.name), zap.Error(err))
			restart.Reset(retry.Next())
		case <-ctx.Done():
			return nil
		}
	}
}
