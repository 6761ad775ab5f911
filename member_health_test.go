package etcdkit_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// quietMonitor is a monitor whose only check runs at once: after it, the
// endpoints' standing it reports is what the client's own traffic made it.
func quietMonitor(t *testing.T, c *etcdkit.Client) *etcdkit.HealthMonitor {
	t.Helper()
	hm := testMonitor(t, c, etcdkit.WithInterval(time.Hour))
	waitHealth(t, hm, "the first check", func(h etcdkit.ClusterHealth) bool {
		return !h.CheckedAt.IsZero() && len(h.Endpoints) == 1 && h.Endpoints[0].Healthy
	})
	return hm
}

// sickThenHealed blackholes the member's proxy (both directions) until the
// client's view has its endpoint sick, then heals it.
func sickThenHealed(t *testing.T, srv *etcdtest.Server, hm *etcdkit.HealthMonitor) {
	t.Helper()
	srv.Proxy().Blackhole(proxy.Both)
	healed := false
	t.Cleanup(func() {
		if !healed {
			srv.Proxy().Unblackhole()
		}
	})
	h := waitHealth(t, hm, "the endpoint sick", func(h etcdkit.ClusterHealth) bool { return !h.Endpoints[0].Healthy })
	t.Logf("sick: %s", h.Endpoints[0].Cause)
	srv.Proxy().Unblackhole()
	healed = true
}

// TestMemberHealthFromStreams makes the only member silent (proxy
// Blackhole of both directions) until the client's view of it is sick, then
// heals it, while only a session's keepalives, or only a watch, run on it.
// A member marked sick became healthy again only through a request's
// success: with no request and no monitor check, ClusterHealth.Endpoints
// showed it sick for ever while its keepalives and watch ran fine. Their
// successes count as well.
func TestMemberHealthFromStreams(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, c *etcdkit.Client, srv *etcdtest.Server) (check func())
	}{
		{"keepalive", func(t *testing.T, c *etcdkit.Client, _ *etcdtest.Server) func() {
			// A TTL long enough that the cut never makes the lease Lost:
			// recovering it would grant a lease through a request.
			s := lsSession(t, c, 10*time.Second)
			states := recordStates(t, s.States())
			return func() {
				states.settled(t, etcdkit.SessionLive, lsWait)
				require.NotContains(t, states.list(), etcdkit.SessionLost)
			}
		}},
		{"watch", func(t *testing.T, c *etcdkit.Client, srv *etcdtest.Server) func() {
			k := etcdkit.NewKey(c, "w", etcdkit.String())
			w := k.Watch(testContext(t, time.Minute))
			t.Cleanup(func() { _ = w.Close() })
			<-w.Synced()
			return func() {
				_, err := srv.Client(t).Put(testContext(t, 20*time.Second), c.KeyPrefix()+"w", "after")
				require.NoError(t, err)
				require.Equal(t, "after", nextEvent(t, w).Value)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := etcdtest.Start(t, etcdtest.WithProxy())
			c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()}, Namespace: "mh",
				StallTimeout: 300 * time.Millisecond})
			check := tc.run(t, c, srv)
			hm := quietMonitor(t, c)
			sickThenHealed(t, srv, hm)
			check()
			waitHealth(t, hm, "the endpoint healthy again through the "+tc.name, func(h etcdkit.ClusterHealth) bool {
				return h.Endpoints[0].Healthy
			})
		})
	}
}

// TestMemberHealthIgnoresClientSizeLimit sends, to a member the client's
// view has sick, a Put that gRPC refuses before sending because it is over
// the call's send limit (forced down to 16 bytes for Puts by an
// interceptor in Config.DialOptions). The refusal said the member was
// healthy, though the member never saw the request; it now says nothing
// about the member, which stays sick until something reaches it.
func TestMemberHealthIgnoresClientSizeLimit(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	tiny := grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any,
		cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method == "/etcdserverpb.KV/Put" {
			opts = append(opts, grpc.MaxCallSendMsgSize(16))
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	})
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()}, Namespace: "mh",
		StallTimeout: 300 * time.Millisecond, DialOptions: []grpc.DialOption{tiny}})
	k := etcdkit.NewKey(c, "k", etcdkit.String())
	hm := quietMonitor(t, c)

	// The endpoint turns sick through a read that the silent member does
	// not answer.
	srv.Proxy().Blackhole(proxy.Both)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_, err := k.Get(ctx)
	cancel()
	require.Error(t, err)
	srv.Proxy().Unblackhole()
	h := hm.Current()
	require.False(t, h.Endpoints[0].Healthy, "got %+v, want the endpoint sick after the failed read", h.Endpoints[0])

	_, err = k.Put(testContext(t, 20*time.Second), "a value over 16 bytes, refused by gRPC before sending")
	require.ErrorIs(t, err, etcdkit.ErrTooLarge)
	require.Contains(t, err.Error(), "trying to send message larger than max")
	h = hm.Current()
	require.False(t, h.Endpoints[0].Healthy, "got %+v, want the endpoint still sick: the member never saw the Put", h.Endpoints[0])
}
