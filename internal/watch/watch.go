// Package watch is the untyped engine behind etcdkit's watches and caches:
// it moves bytes and revisions, and the root package turns them into typed
// events.
//
// The engine is cut out of the root package along the line users never
// cross: everything here is shared machinery (the hub that shares one etcd
// watch per key or prefix among subscribers, the stream that resumes an
// etcd watch from its own position, the link monitor that notices a silent
// connection, the subscriber's bounded buffer and catch-up, the diff that
// turns a compacted gap into resync events), and everything it needs from
// the client comes in through Config. The root package keeps the types
// users see (Watch[T], Cache[T], Event[T]) and the decoding.
//
// Files: hub.go (Hub, the shared feeds), stream.go (one resumable etcd
// watch), link.go (stall detection for one connection), sub.go (a
// subscriber), catchup.go (a subscriber out of step with its feed), fan.go
// (a feed driven by its owner: a Cache), read.go (paginated reads), diff.go
// (resync differences).
package watch

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdkit/etcdkit/internal/conn"
)

// Config is what the engine needs of its client.
type Config struct {
	// Life ends when the client closes; every feed and link ends with it.
	Life context.Context
	// Spawn runs f on a goroutine the client waits for on close, and
	// reports false (without running f) once the client is closing.
	Spawn func(f func()) bool
	Log   *zap.Logger
	// StallTimeout is how long a connection may stay silent after a
	// progress request before it is declared stalled.
	StallTimeout time.Duration
	// Conns is the stream connection the etcd watches run on.
	Conns *conn.Pool
	// Get is one read on the client's request connection, bounded as the
	// client bounds requests.
	Get func(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error)
	// PageSize is how many keys a read of a prefix takes per request.
	PageSize func() int64
	// Closed is the error for a closed client.
	Closed error
	// Compacted is the error that ends a prefix subscriber which must
	// resync but whose state at its position could no longer be read.
	Compacted error
	// Observe reports what the engine does, for metrics. Nil fields are
	// skipped.
	Observe Observer
}

// Observer receives the engine's countable events.
type Observer struct {
	// Stalled: a link was found silent and dropped.
	Stalled func()
	// Reconnected: an etcd watch was re-established after a broken link.
	Reconnected func()
	// Resynced: a stream re-read the state after a compaction.
	Resynced func()
	// Lag: the largest number of events a subscriber of a feed has waiting,
	// after a batch with events was fanned out.
	Lag func(n int)
}

func call(f func()) {
	if f != nil {
		f()
	}
}

// State is the state of what feeds a subscriber. The values match the root
// package's WatchState.
type State int32

const (
	Connecting State = iota
	Connected
	Suspended
	Closed
)

// Kind says what a change did to a key. The values match the root
// package's EventType.
type Kind int

const (
	Put Kind = iota + 1
	Delete
)

// Options say where a subscriber starts and how much it may buffer.
type Options struct {
	// After starts after this revision; -1 when unset.
	After int64
	// Initial starts with the current state.
	Initial bool
	// Buffer is how many events may wait before the subscriber is unhooked.
	Buffer int
}
