package etcdkit_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// TestCampaignLostWhilePutUnanswered: a candidate's put has written its
// key, but its answer has not come back when the link goes silent and the
// session is lost. Campaign must say the lease was lost, as it does when
// the link goes silent while the candidate waits, not "context canceled".
// The answer is held back by a client interceptor until the call's context
// ends, as a silent link would.
func TestCampaignLostWhilePutUnanswered(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	raw := srv.Client(t)
	leader := testClient(t, []string{srv.Endpoint()}, "el")
	var hold atomic.Bool
	// The put's attempt outlasts the session, so that the session's end
	// cuts the attempt short rather than the attempt's own deadline.
	cfg := etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()}, Namespace: "el", StallTimeout: 10 * time.Second}
	cfg.DialOptions = []grpc.DialOption{grpc.WithChainUnaryInterceptor(
		func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			err := invoker(ctx, method, req, reply, cc, opts...)
			if method == "/etcdserverpb.KV/Txn" && hold.Load() {
				<-ctx.Done() // written, but the answer never arrives
				return ctx.Err()
			}
			return err
		})}
	cb := testClientConfig(t, cfg)
	prefix := elPrefix("el", "svc")
	elLead(t, etcdkit.NewElection(leader, "svc", 2*time.Second), "a")
	hold.Store(true)
	bCh := elCampaignAsync(t, etcdkit.NewElection(cb, "svc", 2*time.Second), "b")
	elWaitCandidates(t, raw, prefix, 2) // b's key is written; its put has no answer
	srv.Proxy().Blackhole(proxy.Both)
	t.Cleanup(srv.Proxy().Unblackhole)
	r := elResult(t, bCh)
	require.ErrorIs(t, r.err, etcdkit.ErrLeaseLost, "got %v", r.err)
}

// TestCampaignLeaseRevokedWhilePutUnanswered: as above, but the link stays
// up and another tool revokes the candidate's lease, so the connection is
// never replaced: only the session's end stops the unanswered put, and
// Campaign must still name the lost lease, not "context canceled".
func TestCampaignLeaseRevokedWhilePutUnanswered(t *testing.T) {
	srv := etcdtest.Start(t)
	raw := srv.Client(t)
	leader := testClient(t, []string{srv.Endpoint()}, "el")
	var hold atomic.Bool
	cfg := etcdkit.Config{Endpoints: []string{srv.Endpoint()}, Namespace: "el", StallTimeout: 30 * time.Second}
	cfg.DialOptions = []grpc.DialOption{grpc.WithChainUnaryInterceptor(
		func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			err := invoker(ctx, method, req, reply, cc, opts...)
			if method == "/etcdserverpb.KV/Txn" && hold.Load() {
				<-ctx.Done()
				return ctx.Err()
			}
			return err
		})}
	cb := testClientConfig(t, cfg)
	prefix := elPrefix("el", "svc")
	elLead(t, etcdkit.NewElection(leader, "svc", 2*time.Second), "a")
	hold.Store(true)
	bCh := elCampaignAsync(t, etcdkit.NewElection(cb, "svc", 2*time.Second), "b")
	elWaitCandidates(t, raw, prefix, 2)

	ctx := testContext(t, elWait)
	resp, err := raw.Get(ctx, elCandidates(t, raw, prefix)[1])
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	_, err = raw.Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease))
	require.NoError(t, err)

	r := elResult(t, bCh)
	require.ErrorIs(t, r.err, etcdkit.ErrLeaseLost, "got %v", r.err)
}
