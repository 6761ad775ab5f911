package etcdkit_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
)

// TestGuardedWritesMoveOffASickMember: the guarded writes of a
// Leadership, a Lock and a Permit go through the request path, so once the
// member the client's requests use is partitioned from its peers and
// knows it has no leader (it refuses them before proposing anything), they
// go to a healthy member: no write is left with an unknown outcome, and
// each lands. (A write sent before the member knows, as any write, may be
// left unknown: see TestRequestUnknownOutcome.)
func TestGuardedWritesMoveOffASickMember(t *testing.T) {
	_, victim, eps := pinnedCluster(t)
	c := testClientConfig(t, etcdkit.Config{Endpoints: eps, Namespace: "route", StallTimeout: requestStall})
	ctx := testContext(t, 2*time.Minute)
	l, err := etcdkit.NewElection(c, "e", 10*time.Second).Campaign(ctx, "a")
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	lk, err := etcdkit.NewMutex(c, "m", 10*time.Second).Lock(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = lk.Close() })
	p, err := etcdkit.NewSemaphore(c, "s", 2, 10*time.Second).Acquire(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	k := etcdkit.NewKey(c, "out", etcdkit.String())

	victim.Partition()
	t.Cleanup(victim.Heal)
	// Once it knows it has no leader, the member refuses a write before
	// proposing it, so the write may move on.
	direct := victim.Client(t)
	require.Eventually(t, func() bool {
		st, err := direct.Status(ctx, victim.Endpoint())
		return err == nil && st.Leader == 0
	}, time.Minute, 5*time.Millisecond)
	for i, f := range []etcdkit.Fence{l, lk, p} {
		rev, err := etcdkit.GuardedPut(ctx, f, k, string(rune('a'+i)))
		require.NoError(t, err, "guarded write %d", i)
		got, err := k.Get(ctx)
		require.NoError(t, err)
		require.Equal(t, rev, got.Revision)
	}
}
