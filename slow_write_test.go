package etcdkit_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// A write that a member is slow to answer (a disk-bound member takes
// longer than StallTimeout to commit it) must not drop the stream
// connection while the member answers everything else on it. The fault: a
// unary interceptor holds every transaction (what Ephemeral.Update sends)
// for longer than StallTimeout before sending it, while the watch progress
// requests and keepalives on the same connection are answered at once.
// Without the library's handling, the write's first timed-out attempt
// dropped the connection: every watch on it reconnected, the shared
// keepalive stream died with it (a session Suspended, and Lost after a few
// in a row), although the member was never silent.
func TestSlowWriteKeepsTheStreamConnection(t *testing.T) {
	const (
		// Long enough that the watch's own stall detector stays quiet on
		// a loaded machine.
		stall = time.Second
		// Longer than the first two attempts (1 s, 2 s), shorter than the
		// third (4 s): the write gets through on the third.
		delay = 2500 * time.Millisecond
		ttl   = 3 * time.Second
	)
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	var slow atomic.Bool
	var held atomic.Int32
	slowTxn := grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any,
		cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method == "/etcdserverpb.KV/Txn" && slow.Load() {
			held.Add(1)
			timer := time.NewTimer(delay)
			defer timer.Stop()
			select {
			case <-timer.C:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	})
	m := newMetrics()
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()}, Namespace: "slowwrite",
		Logger: lsLogger(t), StallTimeout: stall, RequestTimeout: 30 * time.Second, Metrics: m,
		DialOptions: []grpc.DialOption{slowTxn}})
	raw := srv.Client(t)

	e := lsEphemeral(t, c, "svc/i1", "v1", ttl)
	states := recordStates(t, e.States())
	lsHolds(t, raw, e, "slowwrite/svc/i1", "v1", lsWait)

	// A watch on the same connection, live before the fault: it must see
	// the write without reconnecting.
	w := etcdkit.NewKey(c, "svc/i1", etcdkit.String()).Watch(lsContext(t))
	t.Cleanup(func() { _ = w.Close() })
	select {
	case <-w.Synced():
	case <-time.After(lsWait):
		t.Fatal("the watch never synced")
	}
	reconnects := m.get(etcdkit.MetricWatchReconnects)
	stalls := m.get(etcdkit.MetricWatchStalls)
	before := len(states.list())

	slow.Store(true)
	start := time.Now()
	ctx, cancel := context.WithTimeout(lsContext(t), 30*time.Second)
	defer cancel()
	require.NoError(t, e.Update(ctx, "v2"), "Update on a member that answers writes in %v, StallTimeout %v", delay, stall)
	slow.Store(false)
	t.Logf("update took %v over %d attempts", time.Since(start).Round(time.Millisecond), held.Load())
	require.GreaterOrEqual(t, held.Load(), int32(2), "got %d attempts, want at least one that timed out", held.Load())

	select {
	case ev := <-w.Events():
		require.Equal(t, "v2", ev.Value, "got event %+v, want the update", ev)
	case <-time.After(lsWait):
		t.Fatal("the watch never delivered the update")
	}
	lsHolds(t, raw, e, "slowwrite/svc/i1", "v2", lsWait)
	assert.Equal(t, reconnects, m.get(etcdkit.MetricWatchReconnects), "watch reconnects: got %v, want %v", m.get(etcdkit.MetricWatchReconnects), reconnects)
	assert.Equal(t, stalls, m.get(etcdkit.MetricWatchStalls), "stalls: got %v, want %v", m.get(etcdkit.MetricWatchStalls), stalls)
	assert.Empty(t, states.list()[before:], "session states during the slow write: got %v, want none (Live throughout)", states.list()[before:])
	assert.Equal(t, etcdkit.SessionLive, e.State())
}
