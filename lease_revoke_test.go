package etcdkit_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// The tests of this file revoke a holder's lease from another client (a raw
// Revoke on the lease found in the key's Lease field), as an operator with
// etcdctl lease revoke would. Their sessions keep the lease alive only
// every rvInterval, so that the holder learns of the revoke from its key
// and its next request, not from a keepalive that happens to come first.
const (
	rvTTL      = 30 * time.Second
	rvInterval = 20 * time.Second
)

func rvSession() etcdkit.SessionOption {
	return etcdkit.WithKeepAliveInterval(rvInterval)
}

// rvRevoke revokes the lease key is attached to and returns it.
func rvRevoke(t testing.TB, raw *clientv3.Client, key string) clientv3.LeaseID {
	t.Helper()
	ctx := testContext(t, elWait)
	resp, err := raw.Get(ctx, key)
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1, "key %s", key)
	lease := clientv3.LeaseID(resp.Kvs[0].Lease)
	require.NotZero(t, lease, "key %s has no lease", key)
	_, err = raw.Revoke(ctx, lease)
	require.NoError(t, err)
	return lease
}

// rvLease returns the lease of key, which must exist.
func rvLease(t testing.TB, raw *clientv3.Client, key string) clientv3.LeaseID {
	t.Helper()
	resp, err := raw.Get(testContext(t, elWait), key)
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1, "key %s", key)
	return clientv3.LeaseID(resp.Kvs[0].Lease)
}

// rvEnded waits for a holding's Context to end and returns its cause.
func rvEnded(t testing.TB, ctx context.Context) error {
	t.Helper()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-time.After(elWait):
		t.Fatalf("the holding did not end within %v of its lease's revoke", elWait)
		return nil
	}
}

// TestMutexLeaseRevokedElsewhere runs the loop of a cron-like job, Lock,
// work until the lock is lost, Lock again, while another tool revokes the
// Mutex's lease each time it holds. Each holding ends with a cause
// matching ErrLeaseLost, and each next Lock takes a new lease within the
// call. Before, the next Lock put its key under the revoked lease, which
// the Mutex still held as its own, and failed with etcd's raw "requested
// lease not found", ending the loop.
//
// With the default keepalive interval of a short TTL, the session's own
// keepalive may find the lease gone first: the outcome is the same.
func TestMutexLeaseRevokedElsewhere(t *testing.T) {
	for _, tc := range []struct {
		name string
		ttl  time.Duration
		opts []etcdkit.HolderOption
	}{
		{"rare keepalives", rvTTL, []etcdkit.HolderOption{rvSession()}},
		{"default keepalives", 2 * time.Second, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testMutexLeaseRevokedElsewhere(t, tc.ttl, tc.opts...)
		})
	}
}

func testMutexLeaseRevokedElsewhere(t *testing.T, ttl time.Duration, opts ...etcdkit.HolderOption) {
	srv := etcdtest.Start(t)
	raw := srv.Client(t)
	c := testClient(t, []string{srv.Endpoint()}, "mx")
	m := etcdkit.NewMutex(c, "cron", ttl, opts...)
	ctx := testContext(t, 2*elWait)

	var revoked []clientv3.LeaseID
	for i := range 3 {
		lk, err := m.Lock(ctx)
		require.NoError(t, err, "Lock %d", i)
		t.Cleanup(func() { _ = lk.Close() })
		for _, old := range revoked {
			require.NotEqual(t, old, rvLease(t, raw, lk.HoldingKey()), "Lock %d holds under a revoked lease", i)
		}
		revoked = append(revoked, rvRevoke(t, raw, lk.HoldingKey()))
		cause := rvEnded(t, lk.Context())
		assert.ErrorIs(t, cause, etcdkit.ErrLeaseLost, "Lock %d", i)
		assert.ErrorIs(t, cause, etcdkit.ErrNotHeld, "Lock %d", i)
		<-lk.Done()
		assert.ErrorIs(t, lk.Err(), etcdkit.ErrLeaseLost, "Lock %d", i)
	}
}

// TestMutexLeaseRevokedWhileWaiting revokes the lease of a waiting Lock
// (its key goes with it): the Lock takes a new lease, puts its key again
// and keeps waiting, and holds once the holder unlocks. Before, it failed
// with "candidate key was deleted".
func TestMutexLeaseRevokedWhileWaiting(t *testing.T) {
	srv := etcdtest.Start(t)
	raw := srv.Client(t)
	c := testClient(t, []string{srv.Endpoint()}, "mx")
	prefix := mxPrefix("mx", "wait")
	a := mxLock(t, etcdkit.NewMutex(c, "wait", rvTTL))
	b := etcdkit.NewMutex(c, "wait", rvTTL, rvSession())
	ch := mxLockAsync(t, b)
	elWaitCandidates(t, raw, prefix, 2)
	waiting := elCandidates(t, raw, prefix)[1]
	old := rvRevoke(t, raw, waiting)

	require.Eventually(t, func() bool {
		keys := elCandidates(t, raw, prefix)
		return len(keys) == 2 && keys[1] != waiting
	}, elWait, elTick, "the waiting Lock never put its key again")
	mxPending(t, ch, "b")
	require.NoError(t, a.Unlock(testContext(t, elWait)))
	r := mxResult(t, ch)
	require.NoError(t, r.err)
	assert.NotEqual(t, old, rvLease(t, raw, r.lk.HoldingKey()))
}

// TestSemaphoreLeaseRevokedElsewhere is TestMutexLeaseRevokedElsewhere for
// a Semaphore's Permits: the next Acquire failed with "requested lease not
// found".
func TestSemaphoreLeaseRevokedElsewhere(t *testing.T) {
	srv := etcdtest.Start(t)
	raw := srv.Client(t)
	c := testClient(t, []string{srv.Endpoint()}, "sm")
	s := etcdkit.NewSemaphore(c, "cron", 2, rvTTL, rvSession())
	ctx := testContext(t, 2*elWait)

	var revoked []clientv3.LeaseID
	for i := range 3 {
		p, err := s.Acquire(ctx)
		require.NoError(t, err, "Acquire %d", i)
		t.Cleanup(func() { _ = p.Close() })
		for _, old := range revoked {
			require.NotEqual(t, old, rvLease(t, raw, p.HoldingKey()), "Acquire %d holds under a revoked lease", i)
		}
		revoked = append(revoked, rvRevoke(t, raw, p.HoldingKey()))
		cause := rvEnded(t, p.Context())
		assert.ErrorIs(t, cause, etcdkit.ErrLeaseLost, "Acquire %d", i)
		assert.ErrorIs(t, cause, etcdkit.ErrNotHeld, "Acquire %d", i)
	}
}

// TestLeadershipLeaseRevokedElsewhere: a leader's lease revoked by another
// client ends its Leadership with a cause matching ErrLeaseLost (as well as
// ErrNotLeader), not only "the leader key was deleted"; a waiting
// candidate's revoke fails its Campaign with ErrLeaseLost; the next
// Campaign wins under a new lease.
func TestLeadershipLeaseRevokedElsewhere(t *testing.T) {
	srv := etcdtest.Start(t)
	raw := srv.Client(t)
	c := testClient(t, []string{srv.Endpoint()}, "el")
	e := etcdkit.NewElection(c, "svc", rvTTL, rvSession())
	prefix := elPrefix("el", "svc")

	l := elLead(t, e, "a")
	ch := elCampaignAsync(t, e, "b")
	elWaitCandidates(t, raw, prefix, 2)
	rvRevoke(t, raw, elCandidates(t, raw, prefix)[1])
	r := elResult(t, ch)
	assert.ErrorIs(t, r.err, etcdkit.ErrLeaseLost)

	old := rvRevoke(t, raw, l.HoldingKey())
	cause := rvEnded(t, l.Context())
	assert.ErrorIs(t, cause, etcdkit.ErrLeaseLost)
	assert.ErrorIs(t, cause, etcdkit.ErrNotLeader)
	assert.ErrorIs(t, elWaitDone(t, l), etcdkit.ErrLeaseLost)

	next := elLead(t, e, "a")
	assert.NotEqual(t, old, next.Lease())
}

// TestSemaphoreAcquireOneRequest: Acquire checks the recorded limit in the
// transaction that puts its key, so it costs one Txn, and another limit
// still fails with ErrLimitMismatch and leaves no key. Before, the check
// was a transaction of its own.
func TestSemaphoreAcquireOneRequest(t *testing.T) {
	srv := etcdtest.Start(t)
	raw := srv.Client(t)
	var txns atomic.Int64
	count := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method == "/etcdserverpb.KV/Txn" {
			txns.Add(1)
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, Namespace: "sm",
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(count)}})
	ctx := testContext(t, elWait)
	s := etcdkit.NewSemaphore(c, "one", 2, 2*time.Second)

	// The first Acquire records the limit, in the same transaction.
	for i, want := range []int64{1, 1} {
		before := txns.Load()
		p, err := s.Acquire(ctx)
		require.NoError(t, err, "Acquire %d", i)
		t.Cleanup(func() { _ = p.Close() })
		assert.Equal(t, want, txns.Load()-before, "transactions of Acquire %d", i)
	}
	resp, err := raw.Get(ctx, "sm/_etcdkit/semaphore-limit/one")
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	assert.Equal(t, "2", string(resp.Kvs[0].Value))
	assert.Zero(t, resp.Kvs[0].Lease, "the limit outlives the holders' lease")

	before := txns.Load()
	_, err = etcdkit.NewSemaphore(c, "one", 3, 2*time.Second).Acquire(ctx)
	require.ErrorIs(t, err, etcdkit.ErrLimitMismatch)
	assert.ErrorContains(t, err, `limit of this name is "2"`)
	assert.Equal(t, int64(1), txns.Load()-before, "transactions of the refused Acquire")
	assert.Len(t, elCandidates(t, raw, smPrefix("sm", "one")), 2, "the refused Acquire left no key")
}

// TestSemaphoreAcquireMovesOffSilentMember: the member the client uses
// goes silent (proxy Blackhole of both directions) between two Acquires.
// The second moves to another member and holds. Before, its limit check
// was a write sent on the request runner, which, unanswered, failed
// Acquire with ErrUnknownOutcome, though the check applies nothing.
func TestSemaphoreAcquireMovesOffSilentMember(t *testing.T) {
	_, victim, eps := pinnedCluster(t)
	c := testClientConfig(t, etcdkit.Config{Endpoints: eps, Namespace: "sm", StallTimeout: requestStall})
	ctx := testContext(t, 60*time.Second)
	s := etcdkit.NewSemaphore(c, "move", 2, 10*time.Second)
	p, err := s.Acquire(ctx)
	require.NoError(t, err)
	require.NoError(t, p.Release(ctx))

	victim.Proxy().Blackhole(proxy.Both)
	t.Cleanup(victim.Proxy().Unblackhole)
	p, err = s.Acquire(ctx)
	require.NoError(t, err)
	require.NotErrorIs(t, err, etcdkit.ErrUnknownOutcome)
	t.Cleanup(func() { _ = p.Close() })
	_, err = etcdkit.GuardedPut(ctx, p, etcdkit.NewKey(c, "k", etcdkit.String()), "v")
	require.NoError(t, err)
}

// TestEphemeralUpdateAfterRevoke: an Update right after another client
// revoked the Ephemeral's lease fails with ErrLeaseLost, as the
// documentation says of an Update while the lease is Lost, or succeeds,
// never with etcd's raw "requested lease not found"; the value is written
// under the new lease.
func TestEphemeralUpdateAfterRevoke(t *testing.T) {
	srv := etcdtest.Start(t)
	raw := srv.Client(t)
	c := testClient(t, []string{srv.Endpoint()}, "")
	e := lsEphemeral(t, c, "svc/u", "a", rvTTL, etcdkit.WithKeepAliveInterval(rvInterval))
	rvRevoke(t, raw, "svc/u")
	err := e.Update(testContext(t, elWait), "b")
	if err != nil {
		require.ErrorIs(t, err, etcdkit.ErrLeaseLost)
	}
	lsHolds(t, raw, e, "svc/u", "b", lsWait)
}
