package etcdkit

import (
	"context"

	"github.com/etcdkit/etcdkit/internal/watch"
)

// EventType says what a change did to a key. The zero value is not a valid
// event type.
type EventType int

const (
	// Put means the key was created or its value replaced.
	Put EventType = iota + 1
	// Delete means the key was removed.
	Delete
)

// String returns "Put" or "Delete".
func (t EventType) String() string {
	switch t {
	case Put:
		return "Put"
	case Delete:
		return "Delete"
	}
	return "EventType(invalid)"
}

// Event is one change delivered by a Watch.
type Event[T any] struct {
	// Type is Put or Delete.
	Type EventType
	// Name is the key's name: relative to the prefix for a Prefix watch or a
	// Cache, the key's own name (relative to the namespace) for a Key watch.
	Name string
	// Value is the decoded value of a Put; the zero value for a Delete or
	// when Err is set.
	Value T
	// Revision orders events: the key's mod revision for a Put (the revision
	// of the write, also for Initial and Resync puts), the revision of the
	// deletion for a Delete, and for a Resync delete the revision at which
	// the state was re-read (the deletion happened at or before it).
	// Revisions never decrease along a watch; the events of one transaction
	// share a revision and are delivered together.
	Revision int64
	// CreateRevision, Version and Lease are the key's metadata after a Put,
	// as in Value; zero for a Delete.
	CreateRevision, Version, Lease int64
	// Initial marks the current state delivered first by WithInitial.
	Initial bool
	// Resync marks an event produced by re-reading the state after the
	// revisions needed were compacted, rather than read from etcd's history.
	// The state is read at the compaction's revision, the oldest one etcd
	// kept: the changes that are gone are summed up, so that after the
	// Resync events of one revision the subscriber holds the state at that
	// revision, deletes included, and every later change follows one by one
	// from history. A Resync event may restate a value the subscriber
	// already has, and a Key watch's may report deleted a key it already
	// had absent (the key may have come and gone in the history that is
	// gone). Under a Prefix, keys that came and went entirely in that
	// history, when nothing else under the prefix changed, leave no Resync
	// event: their names went with the history.
	Resync bool
	// Err is a *DecodeError when the stored bytes of a Put did not decode.
	// The event is still delivered (Value is then the zero value), so that
	// nothing is lost and revisions stay contiguous.
	Err error

	// moreResync marks a Resync event that more Resync events of the same
	// re-read follow: a reader that publishes a revision with its state
	// (LiveMap) applies a re-read whole, since until its last event the
	// state is that of no revision; readRev is the revision the re-read was
	// made at, the state's once it is applied.
	moreResync bool
	readRev    int64
}

// WatchState is the state of the stream behind a Watch or Cache.
type WatchState int

const (
	// WatchConnecting means the etcd watch has not been established yet.
	WatchConnecting WatchState = iota
	// WatchConnected means an etcd watch is established and events flow.
	WatchConnected
	// WatchSuspended means the link broke (a stall, a lost connection, a
	// member without leader) and the engine is re-establishing the watch,
	// on another member if there is one. Nothing is lost meanwhile.
	WatchSuspended
	// WatchClosed means the watch has ended; see Err.
	WatchClosed
)

// String returns the state's name.
func (s WatchState) String() string {
	switch s {
	case WatchConnecting:
		return "Connecting"
	case WatchConnected:
		return "Connected"
	case WatchSuspended:
		return "Suspended"
	case WatchClosed:
		return "Closed"
	}
	return "WatchState(invalid)"
}

// Watch is a subscription to the changes of a key or a prefix, made by
// [Key.Watch], [Prefix.Watch] or [Cache.Subscribe]. It delivers every change
// once, in revision order, on Events, whatever happens to the link, and
// turns a compacted gap into Resync events.
//
// It starts from now, after a revision ([AfterRevision]) or from the
// current state ([WithInitial]). From now means after the revision of a
// linearizable read made when Watch is called, so a watch started after a
// read never delivers a change older than what was read. Across a closed,
// reset, silent or leaderless link, a restarted server or a failed member
// it resumes from the revision after the last one it delivered, on another
// member when there is one. A silent link is noticed within
// [Config.StallTimeout] plus a fraction of a second, by asking the server
// for progress, not after gRPC's keepalive. If the revisions it needs were
// compacted, it reads the state at the oldest revision etcd kept and sends
// events flagged Resync (deletes included) that bring the subscriber to it;
// the changes after that revision follow one by one.
//
// Slow subscribers. Watches of one [Client] on the same key, or on the same
// prefix, share one etcd watch, which hands each event straight to every
// subscriber's Events channel. Each subscriber has its own bounded buffer
// ([WithBufferSize], 1024 events by default): a subscriber that does not
// keep up never slows the others and never makes memory grow. When its
// buffer is full it is unhooked from the shared stream; once its reader has
// drained half of the buffer it catches up on its own from the first
// revision it is missing, through its own etcd watch, or, if that history
// has been compacted meanwhile, with Resync events; then it rejoins the
// shared stream. Nothing is dropped. A Watch runs no goroutine of its own
// while its reader keeps up.
//
// A Watch ends when the ctx it was made with ends, when Close or
// Client.Close is called, or on a failure that retrying cannot cure (such
// as a permission denied, or [ErrCompacted] for a Prefix watch that must
// resync from a state that could no longer be read), never because of the
// network. Then Err is set,
// Events is closed, and Done is closed, in that order; events already in
// the Events channel can still be received before its close, the rest of
// the buffer is dropped.
//
// A Watch is safe for concurrent use.
type Watch[T any] struct {
	lifetime
	events chan Event[T] // closed after Err is set, before Done
	ready  <-chan struct{}
	state  func() WatchState
}

// eventsBuffer is the capacity of a Watch's Events channel; the rest of its
// buffer is a queue behind it, used only while the reader lags.
const eventsBuffer = 16

// Events returns the channel of changes. It holds up to 16 events (the rest
// of the Watch's buffer lies behind it) and is closed when the Watch ends,
// after Err has been set.
func (w *Watch[T]) Events() <-chan Event[T] { return w.events }

// Synced is closed once the watch is in step with the cluster: its start
// revision is fixed and, with WithInitial, the current state it starts from
// has been read (as Cache.Synced and Live.Synced mark a first complete
// view). A watch from now starts after the revision of a linearizable read
// made when Watch is called: no change the caller could have read before
// calling Watch, nor any older one, is delivered, even when the member the
// watch streams from lags behind the cluster; every change committed after
// Synced is closed is delivered (a change committed between Watch and Synced
// may or may not be). With AfterRevision or WithInitial the start is exact
// anyway. Synced is also closed when the watch ends.
func (w *Watch[T]) Synced() <-chan struct{} { return w.ready }

// Done is closed when the watch has ended, after Err is set and Events is
// closed.
func (w *Watch[T]) Done() <-chan struct{} { return w.done }

// Err returns why the watch ended once Done is closed, nil before: the ctx's
// cause (context.Canceled or context.DeadlineExceeded) when its ctx ended,
// ErrClosed after Close or Client.Close, or the failure that ended it.
func (w *Watch[T]) Err() error {
	return w.cause()
}

// State reports the state of the stream that feeds the watch.
func (w *Watch[T]) State() WatchState {
	select {
	case <-w.done:
		return WatchClosed
	default:
		return w.state()
	}
}

// Close ends the watch (Err then reports ErrClosed unless it had already
// ended) and returns once its goroutines have finished. It is idempotent and
// returns nil.
func (w *Watch[T]) Close() error {
	return w.close()
}

// newWatch makes a Watch bounded by ctx and by c's life, whose end
// Client.Close waits for. If c is closed it returns a Watch that has ended
// with ErrClosed, and false. Set producers, ready and state, then call arm.
func newWatch[T any](ctx context.Context, c *Client, buffer int) (*Watch[T], bool) {
	w := &Watch[T]{}
	if !beginEvents(&w.lifetime, &w.events, ctx, c, buffer) {
		return endedWatch[T](ErrClosed), false
	}
	return w, true
}

// endedWatch returns a Watch that has already ended with err.
func endedWatch[T any](err error) *Watch[T] {
	w := &Watch[T]{state: func() WatchState { return WatchClosed }}
	endedEvents(&w.lifetime, &w.events, err)
	ready := make(chan struct{})
	close(ready)
	w.ready = ready
	return w
}

// Watch subscribes to the changes of the key, from now unless an option says
// otherwise (see AfterRevision, WithInitial, WithBufferSize). It does not
// block: ctx bounds the life of the returned Watch, not the call. Event
// names are the key's name. An invalid key or option yields a Watch that has
// already ended with the error.
func (k *Key[T]) Watch(ctx context.Context, opts ...WatchOption) *Watch[T] {
	if k.err != nil {
		return endedWatch[T](k.err)
	}
	codec, name := k.codec, k.name
	t := watch.Target{Key: k.path, Strip: len(k.c.ns)}
	return hubWatch(ctx, k.c, t, opts, func(re *watch.Event) Event[T] { return decodeEvent(codec, name, re) })
}

// Watch subscribes to the changes of every key under the prefix, from now
// unless an option says otherwise (see AfterRevision, WithInitial,
// WithBufferSize). It does not block: ctx bounds the life of the returned
// Watch, not the call. Event names are relative to the prefix. An invalid
// prefix or option yields a Watch that has already ended with the error.
func (p *Prefix[T]) Watch(ctx context.Context, opts ...WatchOption) *Watch[T] {
	if p.err != nil {
		return endedWatch[T](p.err)
	}
	return hubWatch(ctx, p.c, p.target(), opts, p.decoder())
}

func (p *Prefix[T]) target() watch.Target {
	return watch.Target{Key: p.path, Prefix: true, Strip: len(p.path)}
}

func (p *Prefix[T]) decoder() func(*watch.Event) Event[T] {
	codec, name := p.codec, p.name
	return func(re *watch.Event) Event[T] { return decodeEvent(codec, joinName(name, re.Name), re) }
}

// hubWatch starts a typed Watch over a hub subscriber.
func hubWatch[T any](ctx context.Context, c *Client, t watch.Target, opts []WatchOption, decode func(*watch.Event) Event[T]) *Watch[T] {
	cfg := newWatchConfig(opts)
	if err := cfg.err(); err != nil {
		return endedWatch[T](err)
	}
	w, ok := newWatch[T](ctx, c, min(cfg.buffer, eventsBuffer))
	if !ok {
		return w
	}
	s := c.hub.NewSub(w.ctx, t, cfg.options())
	s.SetSink(&chanSink[T]{ch: w.events, decode: decode}, func(err error) { w.cancel(err) })
	w.ready, w.state, w.producers = s.Ready(), subState(s), s.Close
	// The start needs a read (the revision for a watch from now, the state
	// for WithInitial) or the feed's position (AfterRevision): it is fixed
	// off the caller's goroutine.
	if !c.hub.Join(s) || !s.Go() {
		w.cancel(ErrClosed)
	}
	w.arm()
	return w
}

// subState reports the state of what feeds s as a WatchState.
func subState(s *watch.Sub) func() WatchState {
	return func() WatchState { return WatchState(s.State()) }
}

// chanSink is the typed end of a hub subscriber: its Watch's channel.
type chanSink[T any] struct {
	ch     chan Event[T]
	decode func(*watch.Event) Event[T]
}

func (k *chanSink[T]) Room() int    { return cap(k.ch) - len(k.ch) }
func (k *chanSink[T]) Waiting() int { return len(k.ch) }

// The engine hands a sink whole batches (all the events of a revision, or
// of a re-read), which is how the sink knows where a re-read ends.

func (k *chanSink[T]) Put(evs []*watch.Event) {
	for i, e := range evs {
		k.ch <- k.event(evs, i, e)
	}
}

func (k *chanSink[T]) Send(ctx context.Context, evs []*watch.Event) bool {
	for i, e := range evs {
		select {
		case k.ch <- k.event(evs, i, e):
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// event decodes evs[i], e, marking a Resync event that more of its batch's
// Resync events follow.
func (k *chanSink[T]) event(evs []*watch.Event, i int, e *watch.Event) Event[T] {
	ev := k.decode(e)
	ev.moreResync = e.Resync && i+1 < len(evs) && evs[i+1].Resync
	return ev
}

// decodeEvent makes a typed event; name is the key's name for errors.
func decodeEvent[T any](codec Codec[T], name string, re *watch.Event) Event[T] {
	e := Event[T]{Type: EventType(re.Type), Name: re.Name, Revision: re.Rev, CreateRevision: re.Create,
		Version: re.Version, Lease: re.Lease, Initial: re.Initial, Resync: re.Resync, readRev: re.ReadRev}
	if re.Type == watch.Put {
		v, err := codec.Decode(re.Value)
		if err != nil {
			e.Err = &DecodeError{Key: name, Revision: re.Rev, Err: err}
		} else {
			e.Value = v
		}
	}
	return e
}
