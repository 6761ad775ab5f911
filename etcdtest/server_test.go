package etcdtest_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestStartPutGet(t *testing.T) {
	start := time.Now()
	s := etcdtest.Start(t)
	t.Logf("single member ready in %v", time.Since(start))
	require.Regexp(t, `^127\.0\.0\.1:\d+$`, s.Endpoint())
	require.NotNil(t, s.Etcd())

	cli := s.Client(t)
	ctx := ctxT(t)
	_, err := cli.Put(ctx, "k", "v")
	require.NoError(t, err)
	resp, err := cli.Get(ctx, "k")
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	require.Equal(t, "v", string(resp.Kvs[0].Value), "got value %q, want %q", resp.Kvs[0].Value, "v")
}

func TestRestartKeepsData(t *testing.T) {
	s := etcdtest.Start(t)
	cli := s.Client(t)
	ctx := ctxT(t)
	_, err := cli.Put(ctx, "k", "before")
	require.NoError(t, err)

	s.Stop()
	require.False(t, s.Running())
	s.Stop() // idempotent
	start := time.Now()
	require.NoError(t, s.Restart())
	t.Logf("restart took %v", time.Since(start))

	// The old client reconnects on its own to the same address.
	require.Eventually(t, func() bool {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		resp, err := cli.Get(rctx, "k")
		return err == nil && len(resp.Kvs) == 1 && string(resp.Kvs[0].Value) == "before"
	}, 20*time.Second, 50*time.Millisecond, "value written before the restart is not readable after it")
}

func TestCompactThenOldWatchReportsCompaction(t *testing.T) {
	s := etcdtest.Start(t)
	cli := s.Client(t)
	ctx := ctxT(t)
	first, err := cli.Put(ctx, "k", "1")
	require.NoError(t, err)
	_, err = cli.Put(ctx, "k", "2")
	require.NoError(t, err)

	rev := s.Compact(t)
	require.Greater(t, rev, first.Header.Revision)

	wch := cli.Watch(ctx, "k", clientv3.WithRev(first.Header.Revision))
	select {
	case wr, ok := <-wch:
		require.True(t, ok, "watch channel closed without a response")
		require.ErrorIs(t, wr.Err(), rpctypes.ErrCompacted)
		require.Equal(t, rev, wr.CompactRevision, "got compact revision %d, want %d", wr.CompactRevision, rev)
	case <-ctx.Done():
		t.Fatal("no compaction response from a watch at a compacted revision")
	}
}

func TestClientTLS(t *testing.T) {
	info, err := transport.SelfCert(zap.NewNop(), t.TempDir(), []string{"127.0.0.1"}, 1)
	require.NoError(t, err)
	s := etcdtest.Start(t, etcdtest.WithClientTLS(info))
	require.Equal(t, "https", s.Etcd().Config().ListenClientUrls[0].Scheme)

	ctx := ctxT(t)
	_, err = s.Client(t).Put(ctx, "k", "v")
	require.NoError(t, err)
}

func TestWithConfigAppliedLast(t *testing.T) {
	s := etcdtest.Start(t,
		etcdtest.WithConfig(func(c *embed.Config) { c.SnapshotCount = 1234 }),
		etcdtest.WithQuotaBackendBytes(1<<20),
		etcdtest.WithConfig(func(c *embed.Config) { c.QuotaBackendBytes = 2 << 20 }),
	)
	cfg := s.Etcd().Config()
	require.EqualValues(t, 1234, cfg.SnapshotCount)
	require.EqualValues(t, 2<<20, cfg.QuotaBackendBytes, "got quota %d, want the WithConfig value", cfg.QuotaBackendBytes)
}

func TestRestartAfterCleanup(t *testing.T) {
	var s *etcdtest.Server
	t.Run("inner", func(t *testing.T) { s = etcdtest.Start(t) })
	require.False(t, s.Running())
	s.Stop()
	s.Kill()
	s.Close()
	require.ErrorIs(t, s.Restart(), etcdtest.ErrClosed)
}

func TestCloseIsIdempotent(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.WithProxy())
	s.Close()
	s.Close()
	require.False(t, s.Running())
	require.ErrorIs(t, s.Restart(), etcdtest.ErrClosed)

	c := etcdtest.StartCluster(t, 1)
	require.NotNil(t, c.WaitLeader(t))
	c.Close()
	c.Close()
	require.Nil(t, c.Leader())
	require.ErrorIs(t, c.Members()[0].Restart(), etcdtest.ErrClosed)
}

func TestProxy(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.WithProxy())
	require.NotNil(t, s.Proxy())
	require.NotEqual(t, s.Endpoint(), s.ProxyEndpoint())
	ctx := ctxT(t)

	viaProxy := proxiedClient(t, s.ProxyEndpoint())
	_, err := viaProxy.Put(ctx, "k", "v")
	require.NoError(t, err)
	require.Positive(t, s.Proxy().Stats().BytesUp)

	// Fault: Proxy.Stop closes the proxy's listener and connections. Clients
	// on the proxy must fail while the member itself is fine.
	s.Proxy().Stop()
	fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_, err = viaProxy.Get(fctx, "k")
	cancel()
	require.Error(t, err, "a client on a stopped proxy still got an answer")
	_, err = s.Client(t).Get(ctx, "k")
	require.NoError(t, err)

	require.NoError(t, s.Proxy().Start())
	require.Eventually(t, func() bool {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := viaProxy.Get(rctx, "k")
		return err == nil
	}, waitFor, 20*time.Millisecond, "client on the proxy did not recover after Proxy.Start")
}

func TestStopKeepsProxyListening(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.WithProxy())
	s.Stop()
	// The proxy still accepts, and resets the connection once the client
	// sends something and the member refuses the proxy's dial; a client sees
	// its requests fail, not "connection refused".
	conn, err := net.DialTimeout("tcp", s.ProxyEndpoint(), 5*time.Second)
	require.NoError(t, err, "proxy stopped listening with its member")
	conn.Close()
	require.Empty(t, etcdtest.Start(t).ProxyEndpoint(), "got a proxy endpoint without WithProxy")
}
