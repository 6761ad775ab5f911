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
)

// With etcd auth on, clientv3 fetches a token (an Authenticate request,
// which goes through raft) for every stream it opens. A session renewed
// its lease on a new stream per keepalive, so every keepalive cost a raft
// write, and on a busy cluster sessions with auth lost leases that sessions
// without it kept (the robustness suite's auth lane). The sessions of a
// Client now renew on one stream per connection: a few logins, however many
// keepalives. It is part of the compatibility run with the other TestAuth
// tests.
func TestAuthKeepalivesShareOneStream(t *testing.T) {
	srv := authServer(t, authNS)
	var logins, opens, keepalives atomic.Int64
	count := []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any,
			cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			if method == "/etcdserverpb.Auth/Authenticate" {
				logins.Add(1)
			}
			return invoker(ctx, method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn,
			method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			cs, err := streamer(ctx, desc, cc, method, opts...)
			if err == nil && method == "/etcdserverpb.Lease/LeaseKeepAlive" {
				opens.Add(1)
				cs = countingStream{cs, &keepalives}
			}
			return cs, err
		}),
	}
	cfg := authConfig(srv.ProxyEndpoint())
	cfg.DialOptions = count
	cfg.Logger = lsLogger(t)
	c := testClientConfig(t, cfg)
	sessions := []*etcdkit.Session{
		lsSession(t, c, 2*time.Second, etcdkit.WithKeepAliveInterval(100*time.Millisecond)),
		lsSession(t, c, 2*time.Second, etcdkit.WithKeepAliveInterval(100*time.Millisecond)),
	}
	before := logins.Load()
	require.Eventually(t, func() bool { return keepalives.Load() >= 20 }, lsWait, lsTick, "keepalives sent")
	for _, s := range sessions {
		assert.Equal(t, etcdkit.SessionLive, s.State())
	}
	t.Logf("%d keepalives on %d streams, %d logins meanwhile", keepalives.Load(), opens.Load(), logins.Load()-before)
	assert.LessOrEqual(t, opens.Load(), int64(2), "keepalive streams opened")
	assert.LessOrEqual(t, logins.Load()-before, int64(2), "logins while the sessions kept their leases")
}

// countingStream counts the messages sent on a stream.
type countingStream struct {
	grpc.ClientStream
	n *atomic.Int64
}

func (s countingStream) SendMsg(m any) error {
	s.n.Add(1)
	return s.ClientStream.SendMsg(m)
}
