package etcdkit

import (
	"cmp"
	"context"
	"errors"
	"slices"
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

// rawEvent is one change as the untyped core moves it: bytes, not values.
// Events are shared by every subscriber of a stream and never modified once
// made.
type rawEvent struct {
	typ  EventType
	name string // relative to the watched key's namespace or prefix
	// value is nil for a delete.
	value []byte
	// rev is the mod revision of a put, the revision of a delete, and the
	// read revision for a delete found by a resync.
	rev                    int64
	create, version, lease int64
	resync, initial        bool
	// typed is the decoded event, set only on the initial events a Cache
	// subscription takes from the cache's contents, which keep values
	// decoded rather than their bytes.
	typed any
}

// batch is the unit the engine hands on atomically: the events of one
// revision (a transaction's events are never split), the diff of a resync,
// the initial state, or, for a progress notification, no event at all. After
// it the receiver's position is next: every change with a lower revision has
// been handed on.
type batch struct {
	events []*rawEvent
	next   int64
	// resync marks the diff of a resync, even an empty one: what happened
	// between the receiver's position and next is summed up, not replayed.
	resync bool
}

// watchTarget is what an etcd watch covers: one key, or every key under a
// prefix that ends in "/".
type watchTarget struct {
	key    string
	prefix bool
	// strip is the length of the part of etcd keys left out of event names:
	// the namespace for a key, the prefix for a prefix.
	strip int
}

func (t watchTarget) name(key []byte) string { return string(key[t.strip:]) }

func (t watchTarget) String() string {
	if t.prefix {
		return t.key + "*"
	}
	return t.key
}

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
	deliver(bs []batch) action
	// resync hands on the whole state, read at rev, after the revisions the
	// stream needed were compacted.
	resync(kvs []*mvccpb.KeyValue, rev int64) action
}

// stream is one logical etcd watch that survives everything short of a
// terminal error: it re-watches on the client's stream connection from the
// revision after the last one it handed on, drops anything at or below it,
// and re-reads the state when that revision has been compacted.
type stream struct {
	h       *watchHub
	target  watchTarget
	handler streamHandler
	// next is the first revision not yet handed on. Only run touches it.
	next  int64
	state atomic.Int32 // a WatchState
}

func (s *stream) State() WatchState { return WatchState(s.state.Load()) }

// setBroken records that the link went away, unless it never came up.
func (s *stream) setBroken() {
	s.state.CompareAndSwap(int32(WatchConnected), int32(WatchSuspended))
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
	c := s.h.c
	bo := backoff.New(minRewatchDelay, maxRewatchDelay)
	exact := false
	broken := false
	for {
		if err := s.handler.ready(ctx); err != nil {
			return err
		}
		conn, gen, err := c.streams.get(ctx)
		if err != nil {
			if errors.Is(err, ErrClosed) || ctx.Err() != nil {
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
			c.log.Debug("watch revisions compacted, resyncing", zap.Stringer("target", s.target),
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
			c.log.Debug("watch member has no leader, moving on", zap.Stringer("target", s.target), zap.Uint64("generation", gen))
			c.streams.fail(gen)
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
	c := s.h.c
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
	if s.target.prefix {
		opts = append(opts, clientv3.WithPrefix())
	}
	// Watch returns once the server has created the watch (or failed to).
	wch := conn.Watch(wctx, s.target.key, opts...)
	for resp := range wch {
		l.touch()
		if resp.Created {
			s.state.Store(int32(WatchConnected))
			bo.Reset()
			if broken {
				c.cfg.Metrics.Add(MetricWatchReconnects, 1)
				c.log.Debug("watch re-established", zap.Stringer("target", s.target), zap.Int64("start", start), zap.Uint64("generation", gen))
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
				return outcome{kind: outFailed, err: errorf("watch %q: %w", s.target.key, err)}
			}
			return outcome{kind: outBroken}
		}
		var act action
		if resp.IsProgressNotify() {
			if next := resp.Header.Revision + 1; next > s.next {
				s.next = next
				act = s.handler.deliver([]batch{{next: next}})
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
func (s *stream) batches(evs []*clientv3.Event) []batch {
	var out []batch
	pos := s.next
	for _, ev := range evs {
		kv := ev.Kv
		if kv.ModRevision < pos {
			continue
		}
		re := &rawEvent{typ: Put, name: s.target.name(kv.Key), rev: kv.ModRevision}
		if ev.Type == mvccpb.DELETE {
			re.typ = Delete
		} else {
			re.value, re.create, re.version, re.lease = kv.Value, kv.CreateRevision, kv.Version, kv.Lease
		}
		if n := len(out); n > 0 && out[n-1].next == kv.ModRevision+1 {
			out[n-1].events = append(out[n-1].events, re)
		} else {
			out = append(out, batch{events: []*rawEvent{re}, next: kv.ModRevision + 1})
		}
	}
	if n := len(out); n > 0 {
		s.next = out[n-1].next
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
	s.h.c.cfg.Metrics.Add(MetricWatchResyncs, 1)
	act := s.handler.resync(kvs, rev)
	s.next = rev + 1
	return act, nil
}

// read reads the target's keys at rev (0: the latest revision) and returns
// them sorted by key with the read revision, retrying transient failures
// with backoff until ctx ends. keysOnly leaves the values out. With rev != 0
// a compacted rev fails with rpctypes.ErrCompacted.
func (h *watchHub) read(ctx context.Context, t watchTarget, rev int64, keysOnly bool) ([]*mvccpb.KeyValue, int64, error) {
	for {
		var kvs []*mvccpb.KeyValue
		var got int64
		err := h.retry(ctx, t, func() (err error) {
			kvs, got, err = h.readOnce(ctx, t, rev, keysOnly)
			return err
		})
		if errors.Is(err, rpctypes.ErrCompacted) && rev == 0 {
			continue // a compaction between two pages: read again
		}
		return kvs, got, err
	}
}

// revision returns the cluster's current revision through a linearizable
// read, retrying as read does: every change the caller could have seen
// before the call is at or below it.
func (h *watchHub) revision(ctx context.Context, t watchTarget) (int64, error) {
	var rev int64
	err := h.retry(ctx, t, func() error {
		resp, err := h.get(ctx, t.key, 0, clientv3.WithCountOnly())
		if err == nil {
			rev = resp.Header.Revision
		}
		return err
	})
	return rev, err
}

// retry runs the read op until it succeeds, fails for good or ctx ends,
// waiting with backoff between transient failures. A compaction is for the
// caller to handle.
func (h *watchHub) retry(ctx context.Context, t watchTarget, op func() error) error {
	bo := backoff.New(minRewatchDelay, 2*time.Second)
	for {
		err := op()
		switch {
		case err == nil, errors.Is(err, rpctypes.ErrCompacted):
			return err
		case ctx.Err() != nil:
			return ctx.Err()
		case h.c.closed():
			return ErrClosed
		case isTerminal(err):
			return errorf("watch: read %q: %w", t.key, err)
		}
		h.c.log.Debug("watch read failed, retrying", zap.Stringer("target", t), zap.Error(err))
		if !bo.Wait(ctx) {
			return ctx.Err()
		}
	}
}

func (h *watchHub) readOnce(ctx context.Context, t watchTarget, rev int64, keysOnly bool) ([]*mvccpb.KeyValue, int64, error) {
	var opts []clientv3.OpOption
	if keysOnly {
		opts = append(opts, clientv3.WithKeysOnly())
	}
	if !t.prefix {
		resp, err := h.get(ctx, t.key, rev, opts...)
		if err != nil {
			return nil, 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		return resp.Kvs, rev, nil
	}
	var kvs []*mvccpb.KeyValue
	end := clientv3.GetPrefixRangeEnd(t.key)
	from := t.key
	opts = append(opts, clientv3.WithRange(end), clientv3.WithLimit(listPageSize))
	for {
		resp, err := h.get(ctx, from, rev, opts...)
		if err != nil {
			return nil, 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		kvs = append(kvs, resp.Kvs...)
		if !resp.More || len(resp.Kvs) == 0 {
			return kvs, rev, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// get is one read on the request connection. It requires a leader, so a
// member cut off from the others refuses at once and the request moves to
// another member instead of waiting for its timeout.
func (h *watchHub) get(ctx context.Context, key string, rev int64, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	ctx, cancel, err := h.c.opContext(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	if rev != 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	return h.c.raw.Get(clientv3.WithRequireLeader(ctx), key, opts...)
}

// diffState compares a state a receiver was brought to (name -> mod
// revision; nil when it is not known) with the keys read at rev, and returns
// the Resync events that bring the receiver to the read state, with the new
// state. Puts come first in revision order, then deletes, stamped rev. With
// an unknown old state only keys changed at or after from are reported, and
// deletions only for a single key (an absent key reported deleted is
// harmless; a prefix's vanished keys cannot be known).
func diffState(t watchTarget, old map[string]int64, kvs []*mvccpb.KeyValue, rev, from int64) (batch, map[string]int64) {
	cur := make(map[string]int64, len(kvs))
	var puts, dels []*rawEvent
	for _, kv := range kvs {
		name := t.name(kv.Key)
		cur[name] = kv.ModRevision
		if old != nil {
			if prev, ok := old[name]; ok && prev == kv.ModRevision {
				continue
			}
		} else if kv.ModRevision < from {
			continue
		}
		puts = append(puts, &rawEvent{typ: Put, name: name, value: kv.Value, rev: kv.ModRevision,
			create: kv.CreateRevision, version: kv.Version, lease: kv.Lease, resync: true})
	}
	if old != nil {
		for name := range old {
			if _, ok := cur[name]; !ok {
				dels = append(dels, &rawEvent{typ: Delete, name: name, rev: rev, resync: true})
			}
		}
	} else if !t.prefix && len(kvs) == 0 {
		dels = append(dels, &rawEvent{typ: Delete, name: t.name([]byte(t.key)), rev: rev, resync: true})
	}
	slices.SortFunc(puts, func(a, b *rawEvent) int {
		return cmp.Or(cmp.Compare(a.rev, b.rev), cmp.Compare(a.name, b.name))
	})
	slices.SortFunc(dels, func(a, b *rawEvent) int { return cmp.Compare(a.name, b.name) })
	return batch{events: append(puts, dels...), next: rev + 1, resync: true}, cur
}

// stateOf returns the name -> mod revision state of kvs.
func stateOf(t watchTarget, kvs []*mvccpb.KeyValue) map[string]int64 {
	st := make(map[string]int64, len(kvs))
	for _, kv := range kvs {
		st[t.name(kv.Key)] = kv.ModRevision
	}
	return st
}

// applyState advances a name -> mod revision state by a batch.
func applyState(st map[string]int64, b batch) {
	for _, e := range b.events {
		if e.typ == Delete {
			delete(st, e.name)
		} else {
			st[e.name] = e.rev
		}
	}
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
