package etcdtest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
)

const waitFor = 20 * time.Second

// memberClient returns a client that talks to m alone.
func memberClient(t *testing.T, m *etcdtest.Server) *clientv3.Client {
	return m.Client(t)
}

// serializableValue reads key from the member's own store, without
// consensus, so it shows what that member has applied.
func serializableValue(ctx context.Context, cli *clientv3.Client, key string) (string, bool) {
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := cli.Get(rctx, key, clientv3.WithSerializable())
	if err != nil || len(resp.Kvs) != 1 {
		return "", false
	}
	return string(resp.Kvs[0].Value), true
}

func requireValue(t *testing.T, cli *clientv3.Client, key, want, msg string) {
	t.Helper()
	ctx := ctxT(t)
	require.Eventually(t, func() bool {
		got, ok := serializableValue(ctx, cli, key)
		return ok && got == want
	}, waitFor, 20*time.Millisecond, "%s: key %q never got value %q", msg, key, want)
}

func TestClusterStartsAndServes(t *testing.T) {
	start := time.Now()
	c := etcdtest.StartCluster(t, 3)
	t.Logf("3-member cluster ready in %v", time.Since(start))
	require.Less(t, time.Since(start), 15*time.Second, "cluster start too slow")

	ms := c.Members()
	require.Len(t, ms, 3)
	require.Equal(t, c.DirectEndpoints(), c.Endpoints(), "without WithProxy, Endpoints must be direct")
	leader := c.WaitLeader(t)
	require.True(t, leader.IsLeader())
	require.Equal(t, leader, c.Leader())

	ctx := ctxT(t)
	_, err := c.Client(t).Put(ctx, "k", "v")
	require.NoError(t, err)
	for _, m := range ms {
		requireValue(t, memberClient(t, m), "k", "v", "member "+m.Name())
	}
}

func TestClusterLeaderFailover(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	old := c.WaitLeader(t)

	start := time.Now()
	old.Stop()
	require.False(t, old.IsLeader())
	stopped := time.Since(start)
	next := c.WaitLeader(t)
	t.Logf("leader %s stopped in %v, %s leads %v after the stop began", old.Name(), stopped, next.Name(), time.Since(start))
	require.NotEqual(t, old, next, "got the stopped member as leader")

	ctx := ctxT(t)
	_, err := c.Client(t).Put(ctx, "after-failover", "yes")
	require.NoError(t, err)

	// A restarted member keeps its data and catches up with what it missed.
	require.NoError(t, old.Restart())
	requireValue(t, memberClient(t, old), "after-failover", "yes", "restarted member")
	require.Equal(t, next, c.WaitLeader(t))
}

func TestClusterPartitionAndHeal(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	ctx := ctxT(t)
	// Partition a follower here; the leader case is the same to clients.
	leader := c.WaitLeader(t)
	var cut *etcdtest.Server
	for _, m := range c.Members() {
		if m != leader {
			cut = m
			break
		}
	}
	cutClient := memberClient(t, cut)
	_, err := cutClient.Put(ctx, "before", "1")
	require.NoError(t, err)

	start := time.Now()
	cut.Partition()
	// Fault: raft messages to and from cut are dropped (CutPeer on every
	// side); its client connection stays up. Its clients must see it lose
	// the leader instead of being served stale data as if nothing happened.
	require.Eventually(t, func() bool {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		st, err := cutClient.Status(sctx, cut.Endpoint())
		return err == nil && st.Leader == 0
	}, waitFor, 20*time.Millisecond, "partitioned member still reports a leader")
	t.Logf("partitioned member lost its leader after %v", time.Since(start))
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err = cutClient.Get(clientv3.WithRequireLeader(rctx), "before")
	cancel()
	require.ErrorIs(t, err, rpctypes.ErrNoLeader, "got %v, want no leader from the partitioned member", err)

	// The majority keeps a leader and serves writes.
	rest := c.WaitLeader(t)
	require.NotEqual(t, cut, rest)
	_, err = memberClient(t, rest).Put(ctx, "during", "2")
	require.NoError(t, err)
	_, ok := serializableValue(ctx, cutClient, "during")
	require.False(t, ok, "partitioned member got a write made during the partition")

	cut.Heal()
	requireValue(t, cutClient, "during", "2", "healed member")
	require.Equal(t, rest, c.WaitLeader(t))
}

func TestClusterPartitionedLeaderSurvivesRestart(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	ctx := ctxT(t)
	leader := c.WaitLeader(t)
	leader.Partition()
	next := c.WaitLeader(t)
	require.NotEqual(t, leader, next, "a partitioned leader must be replaced")

	// The cut survives a restart of the partitioned member...
	require.NoError(t, leader.Restart())
	_, err := memberClient(t, next).Put(ctx, "k", "v")
	require.NoError(t, err)
	require.False(t, leader.IsLeader())
	// ...and of a peer.
	require.NoError(t, next.Restart())
	c.WaitLeader(t)

	leader.Heal()
	requireValue(t, memberClient(t, leader), "k", "v", "healed member")
}

func TestClusterMoveLeader(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	old := c.WaitLeader(t)
	for _, m := range c.Members() {
		if m == old {
			continue
		}
		start := time.Now()
		c.MoveLeader(t, m)
		t.Logf("moved leadership from %s to %s in %v", old.Name(), m.Name(), time.Since(start))
		require.True(t, m.IsLeader())
		require.Equal(t, m, c.Leader())
		old = m
	}
}

func TestClusterWritesThroughEveryProxy(t *testing.T) {
	c := etcdtest.StartCluster(t, 3, etcdtest.WithProxy())
	ms := c.Members()
	require.Len(t, c.Endpoints(), 3)
	ctx := ctxT(t)
	for i, m := range ms {
		require.NotEmpty(t, m.ProxyEndpoint())
		require.Equal(t, m.ProxyEndpoint(), c.Endpoints()[i])
		require.NotEqual(t, m.Endpoint(), m.ProxyEndpoint())
		cli := proxiedClient(t, m.ProxyEndpoint())
		_, err := cli.Put(ctx, fmt.Sprintf("via-%s", m.Name()), m.Name())
		require.NoError(t, err)
		require.Positive(t, m.Proxy().Stats().Accepted, "no connection went through %s's proxy", m.Name())
	}
	for _, m := range ms {
		cli := memberClient(t, m)
		for _, w := range ms {
			requireValue(t, cli, "via-"+w.Name(), w.Name(), "member "+m.Name())
		}
	}
}

func proxiedClient(t *testing.T, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	t.Cleanup(func() { cli.Close() })
	return cli
}

func TestClusterKillLeaderFailover(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	old := c.WaitLeader(t)

	// Fault: the leader dies without handing over leadership, so the others
	// must notice the silence and hold an election.
	start := time.Now()
	old.Kill()
	next := c.WaitLeader(t)
	t.Logf("after killing leader %s, %s leads after %v", old.Name(), next.Name(), time.Since(start))
	require.NotEqual(t, old, next, "got the killed member as leader")

	ctx := ctxT(t)
	_, err := c.Client(t).Put(ctx, "after-kill", "yes")
	require.NoError(t, err)
	require.NoError(t, old.Restart())
	requireValue(t, memberClient(t, old), "after-kill", "yes", "restarted member")
}

func TestClusterRestartWithoutQuorum(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	ctx := ctxT(t)
	_, err := c.Client(t).Put(ctx, "k", "v")
	require.NoError(t, err)
	ms := c.Members()
	for _, m := range ms {
		m.Stop()
	}
	// The first member back has no quorum, so Restart must not wait for it
	// to get ready.
	require.NoError(t, ms[0].Restart())
	require.NoError(t, ms[1].Restart())
	c.WaitLeader(t)
	require.NoError(t, ms[2].Restart())
	c.WaitLeader(t)
	for _, m := range ms {
		requireValue(t, memberClient(t, m), "k", "v", "member "+m.Name())
	}
}

func TestClusterCleanupLeavesNoGoroutines(t *testing.T) {
	before := goleak.IgnoreCurrent()
	t.Run("cluster", func(t *testing.T) {
		c := etcdtest.StartCluster(t, 3, etcdtest.WithProxy())
		ms := c.Members()
		ms[0].Partition()
		ms[1].Stop()
		require.NoError(t, ms[1].Restart())
		ms[0].Heal()
		c.WaitLeader(t)
		_, err := proxiedClient(t, c.Endpoints()...).Put(ctxT(t), "k", "v")
		require.NoError(t, err)
	})
	// Every member, proxy, peer connection and client must be gone once the
	// subtest's cleanup has returned, not merely by the end of the run.
	goleak.VerifyNone(t, before)
}

// TestNewProxiesCutOffOneClient: a client on proxies of its own is cut off
// alone. Its reads fail once its proxies are blackholed, while a client on
// the cluster's shared proxies goes on, and it reads again once they are
// healed.
func TestNewProxiesCutOffOneClient(t *testing.T) {
	c := etcdtest.StartCluster(t, 3, etcdtest.WithProxy())
	ps, eps := c.NewProxies(t)
	require.Len(t, eps, 3)
	for i, m := range c.Members() {
		require.Equal(t, ps[i].Addr(), eps[i])
		require.Equal(t, m.Endpoint(), ps[i].Target())
		require.NotEqual(t, m.ProxyEndpoint(), eps[i])
	}
	alone := proxiedClient(t, eps...)
	shared := proxiedClient(t, c.Endpoints()...)
	_, err := alone.Put(ctxT(t), "k", "1")
	require.NoError(t, err)

	for _, p := range ps {
		p.Blackhole(proxy.Both)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	_, err = alone.Get(ctx, "k")
	cancel()
	require.Error(t, err, "the client on its own proxies is cut off")
	_, err = shared.Put(ctxT(t), "k", "2")
	require.NoError(t, err, "the other client is not")

	for _, p := range ps {
		p.Unblackhole()
	}
	requireValue(t, alone, "k", "2", "the healed client")
}
