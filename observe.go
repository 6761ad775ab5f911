package etcdkit

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/etcdkit/etcdkit/internal/backoff"
)

// observeBacklog bounds the leader changes an Observe channel holds for a
// slow reader.
const observeBacklog = 64

// Observe follows who leads the election. The returned channel first
// receives the current state, once known, then every change of leader:
// another candidate (a new Token), or no candidate at all, reported as a
// LeaderInfo that is not Present. It follows a Cache of the candidate keys,
// so it survives broken and silent links, member failures and compactions;
// while the cluster cannot be reached it reports nothing new.
//
// Observe does not block; ctx bounds the life of the channel. The channel
// is closed only when ctx ends or the client is closed (if ctx.Err() is nil,
// the client was), never because of the network or a failed watch, which
// it retries; an invalid Election yields a closed channel (see Err).
// Sending never blocks the observer: a reader more than 64 changes behind
// loses the oldest undelivered ones, so the last value received is always
// the latest state known.
func (e *Election) Observe(ctx context.Context) <-chan LeaderInfo {
	ch := make(chan LeaderInfo)
	if e.err != nil {
		close(ch)
		return ch
	}
	octx, cancel := e.c.handleContext(ctx)
	if !e.c.spawn(func() {
		defer close(ch)
		defer cancel()
		e.observe(octx, ch)
	}) {
		cancel()
		close(ch)
	}
	return ch
}

// observe feeds ch until ctx ends, following a Cache of the candidates and
// starting a new one if a cache fails.
func (e *Election) observe(ctx context.Context, ch chan<- LeaderInfo) {
	var (
		queue  []LeaderInfo
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
				if len(queue) == observeBacklog {
					queue = queue[1:]
				}
				queue = append(queue, li)
				last, known = li, true
			}
		}
		var out chan<- LeaderInfo
		var head LeaderInfo
		if len(queue) > 0 {
			out, head = ch, queue[0]
		}
		var restartC <-chan time.Time
		if ca == nil {
			restartC = restart.C
		}
		select {
		case out <- head:
			queue = queue[1:]
		case <-restartC:
			var err error
			if ca, err = e.cands.Cache(ctx); err != nil {
				return // the client is closed or ctx ended
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
			if ctx.Err() != nil || e.c.closed() {
				return
			}
			e.c.log.Warn("election observer restarts its cache", zap.String("election", e.name), zap.Error(err))
			restart.Reset(retry.Next())
		case <-ctx.Done():
			return
		}
	}
}
