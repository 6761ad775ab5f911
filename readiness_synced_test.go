package etcdkit_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// TestWatchReadinessWaitsForTheFirstSync: a Cache whose first read is held
// back, made while another view of its prefix keeps the etcd watch it
// shares established, is connected, but its view is empty, not the
// prefix's: WatchReadiness must not report it ready until it is synced,
// so that a service does not take traffic with an empty view of its peers.
func TestWatchReadinessWaitsForTheFirstSync(t *testing.T) {
	srv := etcdtest.Start(t)
	raw := srv.Client(t)
	ctx := testContext(t, time.Minute)
	_, err := raw.Put(ctx, "sync/peers/a", `"x"`)
	require.NoError(t, err)

	gate := make(chan struct{})
	cfg := etcdkit.Config{Endpoints: []string{srv.Endpoint()}, Namespace: "sync", StallTimeout: time.Minute, RequestTimeout: time.Minute}
	cfg.DialOptions = []grpc.DialOption{grpc.WithChainUnaryInterceptor(
		func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			if method == "/etcdserverpb.KV/Range" {
				select {
				case <-gate:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return invoker(ctx, method, req, reply, cc, opts...)
		})}
	c := testClientConfig(t, cfg)
	peers := etcdkit.NewPrefix(c, "peers", etcdkit.JSON[string]())
	// Another view of the prefix on the same Client is already following
	// it, so the etcd watch the Cache shares is established.
	close(gate)
	w := peers.Watch(ctx)
	t.Cleanup(func() { _ = w.Close() })
	waitSynced(t, w)
	gate = make(chan struct{})
	ca, err := peers.Cache(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = ca.Close() })
	check := etcdkit.WatchReadiness(ca)

	// While the read waits, the Cache's view is empty, whatever the
	// state of the watch behind it: not ready.
	require.Empty(t, ca.List())
	require.Error(t, check.Readiness(), "not synced (state %v): not ready", ca.State())

	close(gate)
	waitSynced(t, ca)
	require.Eventually(t, func() bool { return check.Readiness() == nil }, time.Minute, 5*time.Millisecond,
		"synced and connected: ready")
	require.Len(t, ca.List(), 1)
}
