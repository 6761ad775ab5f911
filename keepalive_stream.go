package etcdkit

import (
	"context"
	"errors"
	"fmt"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
)

// Every session of a Client renews its lease on one LeaseKeepAlive stream
// per stream connection, kept open while the connection lives, rather than
// on a stream of its own per keepalive (clientv3's KeepAliveOnce). Opening
// a stream is not free: clientv3 given credentials fetches a new token for
// every stream it opens, an Authenticate request that goes through raft, so
// a stream per keepalive made every keepalive a write, and a session on a
// busy cluster lost its lease where one without auth kept it. (The client
// now shares one token across its connections and streams, see
// authTokens; a stream still costs its setup.)
//
// Answers come back on a stream in the order of its requests (the member
// renews one request at a time), so the waiters of one lease are answered
// in order, and a waiter that gave up keeps its place: the answer to its
// request is never taken for that of a later one, whose send time would
// then overstate the lease's life.

// keepAlives holds the current shared stream.
type keepAlives struct {
	mu  sync.Mutex
	cur *keepAliveStream
}

// keepAliveStream is one LeaseKeepAlive stream on the stream connection of
// generation gen.
type keepAliveStream struct {
	gen   uint64
	alive func()        // marks the connection's member as having answered
	ready chan struct{} // closed once the stream is open, or failed to
	// Set before ready is closed.
	stream pb.Lease_LeaseKeepAliveClient
	err    error

	mu      sync.Mutex // guards waiters and broken, and serialises sends
	waiters map[int64][]*keepAliveWaiter
	broken  error // set once the stream failed; it takes no more requests
}

type keepAliveWaiter struct {
	done chan keepAliveAnswer // buffered: the receiver never blocks
}

type keepAliveAnswer struct {
	ttl int64
	err error
}

// keepAliveOnce renews lease id once on the shared stream of cli, the
// stream connection of generation gen, bounded by ctx. It fails with
// rpctypes.ErrLeaseNotFound when the member no longer knows the lease. A
// stream the member ended because it refused the auth token (a restarted
// member has forgotten it) is opened again at once, with a new token, and
// the keepalive sent once more.
func (c *Client) keepAliveOnce(ctx context.Context, cli *clientv3.Client, gen uint64, id clientv3.LeaseID) error {
	err := c.keepAliveOn(ctx, cli, gen, id)
	if c.tokens != nil && tokenRefused(err) && ctx.Err() == nil {
		err = c.keepAliveOn(ctx, cli, gen, id)
	}
	return err
}

// keepAliveOn is one try of keepAliveOnce.
func (c *Client) keepAliveOn(ctx context.Context, cli *clientv3.Client, gen uint64, id clientv3.LeaseID) error {
	ks, err := c.keepAliveStream(cli, gen)
	if err != nil {
		return err
	}
	select {
	case <-ks.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	if ks.err != nil {
		return ks.err
	}
	w := &keepAliveWaiter{done: make(chan keepAliveAnswer, 1)}
	if err := ks.send(id, w); err != nil {
		return err
	}
	select {
	case a := <-w.done:
		switch {
		case a.err != nil:
			return a.err
		case a.ttl <= 0:
			return rpctypes.ErrLeaseNotFound
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// keepAliveStream returns the shared stream of generation gen, opening one
// if there is none (or the current one is of an older connection, or
// broke). The stream is opened on a goroutine of its own, bounded by the
// connection's life and the client's: with auth on, opening it fetches a
// token, which a silent member does not give, and a caller must not be held
// past its own deadline by that.
func (c *Client) keepAliveStream(cli *clientv3.Client, gen uint64) (*keepAliveStream, error) {
	c.kas.mu.Lock()
	defer c.kas.mu.Unlock()
	if ks := c.kas.cur; ks != nil && ks.gen == gen && !ks.isBroken() {
		return ks, nil
	}
	ks := &keepAliveStream{gen: gen, ready: make(chan struct{}), waiters: make(map[int64][]*keepAliveWaiter),
		alive: func() { c.streams.Alive(gen) }}
	ctx, cancel := context.WithCancel(c.life)
	stop := context.AfterFunc(c.streams.Life(gen), cancel)
	if !c.spawn(func() {
		defer cancel()
		defer stop()
		ks.run(ctx, cli)
	}) {
		stop()
		cancel()
		return nil, ErrClosed
	}
	c.kas.cur = ks
	return ks, nil
}

// run opens the stream and hands each answer to the first waiter of its
// lease, until the stream fails or ctx ends; then it fails the waiters
// left.
func (ks *keepAliveStream) run(ctx context.Context, cli *clientv3.Client) {
	// Like clientv3's own keepalive stream: it waits for the connection,
	// and a member without a leader ends it (its renewals would fail).
	ks.stream, ks.err = pb.NewLeaseClient(cli.ActiveConnection()).LeaseKeepAlive(clientv3.WithRequireLeader(ctx), grpc.WaitForReady(true))
	if ks.err != nil {
		ks.err = fmt.Errorf("open the keepalive stream: %w", clientv3.ContextError(ctx, ks.err))
		ks.fail(ks.err)
		close(ks.ready)
		return
	}
	close(ks.ready)
	for {
		resp, err := ks.stream.Recv()
		if err != nil {
			ks.fail(clientv3.ContextError(ctx, err))
			return
		}
		ks.alive()
		ks.answer(resp)
	}
}

// send sends a keepalive of id and queues w for its answer.
func (ks *keepAliveStream) send(id clientv3.LeaseID, w *keepAliveWaiter) error {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.broken != nil {
		return ks.broken
	}
	if err := ks.stream.Send(&pb.LeaseKeepAliveRequest{ID: int64(id)}); err != nil {
		err = clientv3.ContextError(ks.stream.Context(), err)
		ks.failLocked(err)
		return err
	}
	ks.waiters[int64(id)] = append(ks.waiters[int64(id)], w)
	return nil
}

// answer hands resp to the oldest waiter of its lease.
func (ks *keepAliveStream) answer(resp *pb.LeaseKeepAliveResponse) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	q := ks.waiters[resp.ID]
	if len(q) == 0 {
		return
	}
	q[0].done <- keepAliveAnswer{ttl: resp.TTL}
	if len(q) == 1 {
		delete(ks.waiters, resp.ID)
	} else {
		ks.waiters[resp.ID] = q[1:]
	}
}

func (ks *keepAliveStream) fail(err error) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.failLocked(err)
}

// failLocked marks the stream broken and fails every waiter. The caller
// holds ks.mu.
func (ks *keepAliveStream) failLocked(err error) {
	if ks.broken != nil {
		return
	}
	if err == nil {
		err = errors.New("keepalive stream ended")
	}
	ks.broken = err
	for id, q := range ks.waiters {
		for _, w := range q {
			w.done <- keepAliveAnswer{err: err}
		}
		delete(ks.waiters, id)
	}
}

func (ks *keepAliveStream) isBroken() bool {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.broken != nil
}
