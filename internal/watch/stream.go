package watch

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/etcdkit/etcdkit/internal/backoff"
)

// Delays between two attempts to re-establish a broken etcd watch. They are
// short because waiting for the link to come back happens inside the dial,
// not here: a watch request on a connection that is still connecting simply
// waits, so a long delay here would only add to the time between a heal and
// the first delivered event.
const (
	minRewatchDelay = 25 * time.Millisecond
	maxRewatchDelay = 500 * time.Millisecond
)

// action is what a stream handler asks of the stream after a delivery.
type action int

const (
	// proceed keeps the etcd watch running.
	proceed action = iota
	// behind keeps it running and asks the server for a progress
	// notification, so that a subscriber catching up on a quiet key learns
	// that it has caught up.
	behind
	// pause ends the etcd watch and starts a new one from the current
	// position once the handler's ready returns: the handler has no room, and
	// an unread etcd watch would buffer without bound inside clientv3.
	pause
	// stop ends the stream.
	stop
)

// streamHandler receives what a stream reads, in revision order.
type streamHandler interface {
	// ready blocks until the handler can take events, or ctx ends.
	ready(ctx context.Context) error
	// deliver hands on the batches of one watch response.
	deliver(bs []Batch) action
	// resync hands on the whole state, read at rev, after the revisions the
	// stream needed were compacted.
	resync(kvs []*mvccpb.KeyValue, rev int64) action
}

// stream is one logical etcd watch that survives everything short of a
// terminal error: it re-watches on the client's stream connection from the
// revision after the last one it handed on, drops anything at or below it,
// and re-reads the state when that revision has been compacted.
type stream struct {
	h       *Hub
	target  Target
	handler streamHandler
	// next is the first revision not yet handed on. Only run touches it.
	next  int64
	state atomic.Int32 // a State
}

func (s *stream) State() State { return State(s.state.Load()) }

// setBroken records that the link went away, unless it never came up.
func (s *stream) setBroken() {
	s.state.CompareAndSwap(int32(Connected), int32(Suspended))
}

// outcome says how one etcd watch ended.
type outcome struct {
	kind       outcomeKind
	compactRev int64
	err        error
}

type outcomeKind int

const (
	outBroken    outcomeKind = iota // the channel closed or failed: re-watch
	outNoLeader                     // the member lost its leader: move on
	outCompacted                    // the revision needed is gone: resync
	outPaused                       // the handler has no room
	outStopped                      // the handler is done
	outFailed                       // a terminal error
)

// run watches until the handler stops it, ctx ends or a terminal error
// occurs, which it returns (nil for a stop).
func (s *stream) run(ctx context.Context) error {
	c := s.h.cfg
	bo := backoff.New(minRewatchDelay, maxRewatchDelay)
	exact := false
	broken := false
	for {
		if err := s.handler.ready(ctx); err != nil {
			return err
		}
		conn, gen, err := c.Conns.Get(ctx)
		if err != nil {
			if errors.Is(err, c.Closed) || ctx.Err() != nil {
				return ctxOr(ctx, err)
			}
			s.setBroken()
			broken = true
			if !bo.Wait(ctx) {
				return ctx.Err()
			}
			continue
		}
		out := s.watch(ctx, conn, gen, exact, broken, bo)
		exact = false
		switch out.kind {
		case outStopped:
			return nil
		case outFailed:
			return out.err
		case outPaused:
			// The connection is fine; the handler needed room.
			broken = false
			continue
		case outCompacted:
			if out.compactRev <= s.next {
				// Only the revision before next, which the watch starts at
				// (see watch), is gone: start at next itself.
				exact = true
				continue
			}
			c.Log.Debug("watch revisions compacted, resyncing", zap.Stringer("target", s.target),
				zap.Int64("next", s.next), zap.Int64("compacted", out.compactRev))
			act, err := s.resync(ctx, out.compactRev)
			switch {
			case errors.Is(err, rpctypes.ErrCompacted):
				// Compacted again since: the next watch reports how far.
				continue
			case err != nil:
				return err
			case act == stop:
				return nil
			}
			continue
		case outNoLeader:
			c.Log.Debug("watch member has no leader, moving on", zap.Stringer("target", s.target), zap.Uint64("generation", gen))
			c.Conns.Fail(gen)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.setBroken()
		broken = true
		if !bo.Wait(ctx) {
			return ctx.Err()
		}
	}
}

// watch runs one etcd watch on conn and reports how it ended.
//
// It starts at next-1 rather than next. A watch that starts at the store's
// current revision + 1 (next, when nothing changed since) counts on the
// server as a watch from the future, and etcd answers no progress request on
// a gRPC stream holding such a watch until the revision is reached: the stall
// detector would then take a quiet, healthy link for a dead one. Starting one
// revision early costs at most that revision's events, which are dropped as
// already handed on.
func (s *stream) watch(ctx context.Context, conn *clientv3.Client, gen uint64, exact, broken bool, bo *backoff.Backoff) outcome {
	c := s.h.cfg
	start := s.next - 1
	if exact || start < 1 {
		start = s.next
	}
	// clientv3 picks the gRPC stream of a watch by the ctx's outgoing
	// metadata. A subscriber's ctx is the caller's, which may carry some
	// (tracing middleware, request ids): dropping it keeps every etcd watch
	// of the engine on the one gRPC stream the link asks for progress on.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(metadata.NewOutgoingContext(ctx, nil)))
	defer cancel()
	l := s.h.acquireLink(conn, gen)
	defer s.h.releaseLink(l)
	s.h.watches.Add(1)
	defer s.h.watches.Add(-1)

	opts := []clientv3.OpOption{clientv3.WithRev(start), clientv3.WithCreatedNotify()}
	if s.target.Prefix {
		opts = append(opts, clientv3.WithPrefix())
	}
	// Watch returns once the server has created the watch (or failed to).
	wch := conn.Watch(wctx, s.target.Key, opts...)
	for resp := range wch {
		l.touch()
		if resp.Created {
			s.state.Store(int32(Connected))
			bo.Reset()
			if broken {
				call(c.Observe.Reconnected)
				c.Log.Debug("watch re-established", zap.Stringer("target", s.target), zap.Int64("start", start), zap.Uint64("generation", gen))
			}
			continue
		}
		if resp.CompactRevision != 0 {
			return outcome{kind: outCompacted, compactRev: resp.CompactRevision}
		}
		if err := resp.Err(); err != nil || resp.Canceled {
			switch {
			case errors.Is(err, rpctypes.ErrNoLeader):
				return outcome{kind: outNoLeader}
			case isTerminal(err) && ctx.Err() == nil:
				return outcome{kind: outFailed, err: fmt.Errorf("etcdkit: watch %q: %w", s.target.Key, err)}
			}
			return outcome{kind: outBroken}
		}
		var act action
		if resp.IsProgressNotify() {
			if next := resp.Header.Revision + 1; next > s.next {
				s.next = next
				act = s.handler.deliver([]Batch{{Next: next}})
			} else {
				continue
			}
		} else {
			bs := s.batches(resp.Events)
			if len(bs) == 0 {
				continue
			}
			act = s.handler.deliver(bs)
		}
		switch act {
		case stop:
			return outcome{kind: outStopped}
		case pause:
			return outcome{kind: outPaused}
		case behind:
			l.poke()
		}
	}
	return outcome{kind: outBroken}
}

// batches groups events by revision, drops those below next (already handed
// on by an earlier watch) and advances next. etcd never splits a revision
// across watch responses, so a revision at or above next is complete.
func (s *stream) batches(evs []*clientv3.Event) []Batch {
	var out []Batch
	pos := s.next
	for _, ev := range evs {
		kv := ev.Kv
		if kv.ModRevision < pos {
			continue
		}
		re := &Event{Type: Put, Name: s.target.name(kv.Key), Rev: kv.ModRevision}
		if ev.Type == mvccpb.DELETE {
			re.Type = Delete
		} else {
			re.Value, re.Create, re.Version, re.Lease = kv.Value, kv.CreateRevision, kv.Version, kv.Lease
		}
		if n := len(out); n > 0 && out[n-1].Next == kv.ModRevision+1 {
			out[n-1].Events = append(out[n-1].Events, re)
		} else {
			out = append(out, Batch{Events: []*Event{re}, Next: kv.ModRevision + 1})
		}
	}
	if n := len(out); n > 0 {
		s.next = out[n-1].Next
	}
	return out
}

// resync reads the state at rev, the oldest revision the compaction kept,
// and hands it on; the watch then goes on from rev+1. Reading there rather
// than at the current revision sums up only the changes that are gone: the
// later ones are still delivered one by one from history. It fails with
// rpctypes.ErrCompacted if rev was compacted meanwhile.
func (s *stream) resync(ctx context.Context, rev int64) (action, error) {
	kvs, rev, err := s.h.read(ctx, s.target, rev, false)
	if err != nil {
		return stop, err
	}
	call(s.h.cfg.Observe.Resynced)
	act := s.handler.resync(kvs, rev)
	s.next = rev + 1
	return act, nil
}

// isTerminal reports whether err means the watch can never succeed as asked:
// retrying would fail the same way.
func isTerminal(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, rpctypes.ErrPermissionDenied) {
		return true
	}
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.PermissionDenied, codes.InvalidArgument:
			return true
		}
	}
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		switch ee.Code() {
		case codes.PermissionDenied, codes.InvalidArgument:
			return true
		}
	}
	return false
}

// ctxOr returns ctx's error if it ended, err otherwise.
func ctxOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}
