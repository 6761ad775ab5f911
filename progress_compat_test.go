package etcdkit_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// TestStallDetectionWhereProgressIsWithheld covers what changed across etcd
// releases in progress notifications, which the stall detection relies on:
// since the fixes for etcd #15220 and #17507 a server answers a progress
// request on a gRPC stream only once every watch on it is synced, and since
// #20229 (3.6.2, backported to 3.5) never while one of them starts at a
// revision the server has not reached. Older servers answer at once. The
// test reports what the server under test does, then puts a watch at a
// future revision on the client's stream beside an ordinary one: on a
// healthy, quiet link no stall may be declared, whichever way the server
// behaves, and a silent link must still be detected and left, with the
// ordinary watch then delivering exactly what was written. It is part of
// the compatibility suite (.ci/compat), so it runs on each etcd release.
func TestStallDetectionWhereProgressIsWithheld(t *testing.T) {
	const stall = time.Second
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	raw := srv.Client(t)
	ctx := testContext(t, time.Minute)
	st, err := raw.Status(ctx, srv.Endpoint())
	require.NoError(t, err)
	t.Logf("etcd %s: a progress request on a stream with a watch at a future revision is %s", st.Version, progressBehaviour(t, raw))

	m := newMetrics()
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()}, Namespace: "pw", Metrics: m, StallTimeout: stall})
	start := currentRev(t, raw)
	future := etcdkit.NewKey(c, "future", etcdkit.String()).Watch(ctx, etcdkit.AfterRevision(start+1000))
	t.Cleanup(func() { _ = future.Close() })
	w := etcdkit.NewKey(c, "now", etcdkit.String()).Watch(ctx, etcdkit.AfterRevision(start))
	col := collect(t, w)
	untilState(t, "watch", w.State, etcdkit.WatchConnected)
	untilState(t, "future watch", future.State, etcdkit.WatchConnected)
	require.Equal(t, int64(2), etcdkit.EtcdWatches(c), "one etcd watch each")

	// Quiet and healthy for several stall timeouts: the link monitor asks
	// for progress, and must find another sign of life where the server
	// withholds it.
	col.quiet(t, 4*stall, 0)
	require.Zero(t, m.get(etcdkit.MetricWatchStalls), "stalls declared on a healthy link")
	require.Equal(t, etcdkit.WatchConnected, w.State())

	wr := newWriter(t, raw, "pw")
	cut := time.Now()
	srv.Proxy().Blackhole(proxy.Both)
	eventually(t, "stall detected", func() bool { return m.get(etcdkit.MetricWatchStalls) >= 1 })
	t.Logf("silent link detected %v after the cut (StallTimeout %v)", time.Since(cut).Round(time.Millisecond), stall)
	wr.put("now", "1")
	srv.Proxy().Unblackhole()
	col.untilRev(t, wr.put("now", "2"))
	col.quiet(t, 200*time.Millisecond, 2)
	require.Equal(t, wr.since(start, ""), changesOf(col.events()))
}

// progressBehaviour reports whether the server answers a progress request
// on a stream whose only watch starts at a future revision.
func progressBehaviour(t *testing.T, raw *clientv3.Client) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(context.Background()), 10*time.Second)
	defer cancel()
	resp, err := raw.Get(ctx, "progress-probe", clientv3.WithCountOnly())
	require.NoError(t, err)
	wch := raw.Watch(ctx, "progress-probe", clientv3.WithRev(resp.Header.Revision+1000), clientv3.WithCreatedNotify())
	created := <-wch
	require.True(t, created.Created, "watch not created: %v", created.Err())
	require.NoError(t, raw.RequestProgress(ctx))
	select {
	case wr := <-wch:
		require.True(t, wr.IsProgressNotify(), "got %+v", wr)
		return "answered"
	case <-time.After(time.Second):
		return "withheld"
	}
}
