package etcdkit_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// mxPrefix is the etcd prefix of the keys of mutex name under namespace ns,
// as documented on Mutex.
func mxPrefix(ns, name string) string {
	return ns + "/_etcdkit/mutex/" + name + "/"
}

type lockResult struct {
	lk  *etcdkit.Lock
	err error
	at  time.Time
}

// mxLockAsync runs Lock in the background and delivers its result. When the
// test ends, the wait is cancelled and a lock nobody took is closed.
func mxLockAsync(t testing.TB, m *etcdkit.Mutex) <-chan lockResult {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan lockResult, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		lk, err := m.Lock(ctx)
		ch <- lockResult{lk, err, time.Now()}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		select {
		case r := <-ch:
			if r.lk != nil {
				_ = r.lk.Close()
			}
		default:
		}
	})
	return ch
}

// mxResult waits for a Lock's result; a lock taken is closed when the test
// ends.
func mxResult(t testing.TB, ch <-chan lockResult) lockResult {
	t.Helper()
	select {
	case r := <-ch:
		if r.lk != nil {
			t.Cleanup(func() { _ = r.lk.Close() })
		}
		return r
	case <-time.After(elWait):
		t.Fatalf("Lock did not return within %v", elWait)
		return lockResult{}
	}
}

// mxLock locks m and unlocks when the test ends.
func mxLock(t testing.TB, m *etcdkit.Mutex) *etcdkit.Lock {
	t.Helper()
	lk, err := m.Lock(testContext(t, elWait))
	require.NoError(t, err)
	t.Cleanup(func() { _ = lk.Close() })
	return lk
}

func mxPending(t testing.TB, ch <-chan lockResult, who string) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("%s: Lock returned (lock %v, err %v), want it still waiting", who, r.lk != nil, r.err)
	default:
	}
}

func TestMutexInvalidArguments(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "mx")
	ctx := testContext(t, elWait)
	for _, tc := range []struct {
		name string
		m    *etcdkit.Mutex
		want error
	}{
		{"nil client", etcdkit.NewMutex(nil, "m", 2*time.Second), nil},
		{"bad name", etcdkit.NewMutex(c, "a/../b", 2*time.Second), etcdkit.ErrInvalidName},
		{"bad ttl", etcdkit.NewMutex(c, "m", 1500*time.Millisecond), etcdkit.ErrInvalidTTL},
		{"nil option", etcdkit.NewMutex(c, "m", 2*time.Second, nil), nil},
		{"nil election option", etcdkit.NewMutex(c, "m", 2*time.Second, etcdkit.ElectionOption(nil)), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Error(t, tc.m.Validate())
			if tc.want != nil {
				assert.ErrorIs(t, tc.m.Validate(), tc.want)
			}
			_, err := tc.m.Lock(ctx)
			assert.Equal(t, tc.m.Validate(), err)
			_, err = tc.m.TryLock(ctx)
			assert.Equal(t, tc.m.Validate(), err)
		})
	}
	k := etcdkit.NewKey(c, "k", etcdkit.String())
	_, err := etcdkit.GuardedPut(ctx, (*etcdkit.Lock)(nil), k, "v")
	assert.ErrorContains(t, err, "nil fence")
	_, err = etcdkit.GuardedDelete(ctx, nil, k)
	assert.ErrorContains(t, err, "nil fence")
	_, err = etcdkit.GuardedTxn((*etcdkit.Permit)(nil)).Commit(ctx)
	assert.ErrorContains(t, err, "nil fence")

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = etcdkit.NewMutex(c, "m", 2*time.Second).Lock(cancelled)
	assert.ErrorIs(t, err, context.Canceled)
}

// TryLock fails at once with ErrLocked naming the holder, leaves no key,
// and succeeds once the mutex is free.
func TestMutexTryLock(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "mx")
	raw := srv.Client(t)
	a := etcdkit.NewMutex(c, "job", 2*time.Second, etcdkit.WithHolderID("a"))
	b := etcdkit.NewMutex(c, "job", 2*time.Second, etcdkit.WithHolderID("b"))

	la := mxLock(t, a)
	_, err := b.TryLock(testContext(t, elWait))
	require.ErrorIs(t, err, etcdkit.ErrLocked)
	var he *etcdkit.HeldError
	require.ErrorAs(t, err, &he)
	require.Len(t, he.Holders, 1)
	assert.Equal(t, "a", he.Holders[0].ID)
	assert.Equal(t, la.Token(), he.Holders[0].Token)
	elWaitCandidates(t, raw, mxPrefix("mx", "job"), 1)
	h, err := b.Holder(testContext(t, elWait))
	require.NoError(t, err)
	assert.Equal(t, "a", h.ID)

	require.NoError(t, la.Unlock(testContext(t, elWait)))
	lb, err := b.TryLock(testContext(t, elWait))
	require.NoError(t, err)
	t.Cleanup(func() { _ = lb.Close() })
	assert.Greater(t, lb.Token(), la.Token())
	assert.ErrorIs(t, la.Err(), etcdkit.ErrClosed)
	_, err = etcdkit.GuardedPut(testContext(t, elWait), la, etcdkit.NewKey(c, "k", etcdkit.String()), "late")
	assert.ErrorIs(t, err, etcdkit.ErrNotHeld)
}

// Waiters acquire in the order they arrived.
func TestMutexWaitersFIFO(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "mx")
	raw := srv.Client(t)
	prefix := mxPrefix("mx", "fifo")
	holder := mxLock(t, etcdkit.NewMutex(c, "fifo", 2*time.Second))
	var waiting []<-chan lockResult
	for i := range 4 {
		waiting = append(waiting, mxLockAsync(t, etcdkit.NewMutex(c, "fifo", 2*time.Second)))
		elWaitCandidates(t, raw, prefix, i+2)
	}
	prev := holder
	for i, ch := range waiting {
		require.NoError(t, prev.Unlock(testContext(t, elWait)))
		r := mxResult(t, ch)
		require.NoError(t, r.err, "waiter %d", i)
		assert.Greater(t, r.lk.Token(), prev.Token())
		for j := i + 1; j < len(waiting); j++ {
			mxPending(t, waiting[j], "a later waiter")
		}
		prev = r.lk
	}
}

// Fault: the holder's only link goes silent (Blackhole(Both) on its own
// member's proxy), with two contenders waiting. With etcd's
// concurrency.Mutex the holder would learn nothing until its TTL ran out on
// the server, when the next one already holds.
func TestMutexBlackholedHolderStepsDownFirst(t *testing.T) {
	cl := etcdtest.StartCluster(t, 3, etcdtest.WithProxy())
	members := cl.Members()
	raw := cl.Client(t)
	const ttl = 2 * time.Second
	clients := elMemberClients(t, cl, etcdkit.Config{Namespace: "mx"})
	mutexes := make([]*etcdkit.Mutex, len(clients))
	for i, c := range clients {
		mutexes[i] = etcdkit.NewMutex(c, "migrate", ttl, etcdkit.WithHolderID([]string{"c0", "c1", "c2"}[i]))
	}
	prefix := mxPrefix("mx", "migrate")

	old := mxLock(t, mutexes[0])
	waiting := []<-chan lockResult{mxLockAsync(t, mutexes[1]), mxLockAsync(t, mutexes[2])}
	elWaitCandidates(t, raw, prefix, 3)
	var mu sync.Mutex
	var lost time.Time
	context.AfterFunc(old.Context(), func() {
		mu.Lock()
		lost = time.Now()
		mu.Unlock()
	})
	counter := etcdkit.NewKey(clients[0], "counter", etcdkit.JSON[int]())
	_, err := etcdkit.GuardedPut(testContext(t, elWait), old, counter, 1)
	require.NoError(t, err)

	members[0].Proxy().Blackhole(proxy.Both)
	t.Cleanup(members[0].Proxy().Unblackhole)

	var next lockResult
	var other <-chan lockResult
	select {
	case next = <-waiting[0]:
		other = waiting[1]
	case next = <-waiting[1]:
		other = waiting[0]
	case <-time.After(elWait):
		t.Fatalf("no contender acquired within %v of the cut", elWait)
	}
	require.NoError(t, next.err)
	t.Cleanup(func() { _ = next.lk.Close() })
	mu.Lock()
	down := lost
	mu.Unlock()
	require.False(t, down.IsZero(), "the next holder acquired while the old one still held its Context")
	assert.True(t, down.Before(next.at), "old holder's Context cancelled at %v, next holder acquired at %v", down, next.at)
	assert.ErrorIs(t, context.Cause(old.Context()), etcdkit.ErrNotHeld)
	assert.NotErrorIs(t, context.Cause(old.Context()), etcdkit.ErrNotLeader)
	assert.Greater(t, next.lk.Token(), old.Token())
	mxPending(t, other, "the third contender")

	// The old holder's guarded writes are refused, without a request.
	start := time.Now()
	_, err = etcdkit.GuardedPut(testContext(t, elWait), old, counter, 2)
	assert.ErrorIs(t, err, etcdkit.ErrNotHeld)
	assert.Less(t, time.Since(start), time.Second)
	nextKey := etcdkit.NewKey(clients[indexOf(t, next.lk.ID())], "counter", etcdkit.JSON[int]())
	_, err = etcdkit.GuardedPut(testContext(t, elWait), next.lk, nextKey, 3)
	require.NoError(t, err)

	// Heal: the old holder's late Unlock removes nothing of the new one's.
	members[0].Proxy().Unblackhole()
	require.NoError(t, old.Unlock(testContext(t, elWait)))
	elWaitCandidates(t, raw, prefix, 2)
	_, err = etcdkit.GuardedPut(testContext(t, elWait), old, counter, 4)
	assert.ErrorIs(t, err, etcdkit.ErrNotHeld)
	h, err := mutexes[0].Holder(testContext(t, elWait))
	require.NoError(t, err)
	assert.Equal(t, next.lk.ID(), h.ID)
	assert.Equal(t, next.lk.Token(), h.Token)
	v, err := counter.Get(testContext(t, elWait))
	require.NoError(t, err)
	assert.Equal(t, 3, v.Data, "only the new holder's write landed after the cut")
}

// Fault: a waiter's own link goes silent (Blackhole(Both) on its proxy).
// With etcd's concurrency.Mutex the waiter keeps blocking after its session
// expired. Here Lock fails within the TTL and a few seconds, and its key
// is gone.
func TestMutexWaiterLinkDies(t *testing.T) {
	cl := etcdtest.StartCluster(t, 3, etcdtest.WithProxy())
	raw := cl.Client(t)
	direct := testClient(t, cl.DirectEndpoints(), "mx")
	// The waiter's only endpoint is member 1's proxy.
	waiter := cl.Members()[1].Proxy()
	cut := testClient(t, []string{cl.Members()[1].ProxyEndpoint()}, "mx")
	const ttl = 2 * time.Second
	prefix := mxPrefix("mx", "w")
	holder := mxLock(t, etcdkit.NewMutex(direct, "w", ttl))
	ch := mxLockAsync(t, etcdkit.NewMutex(cut, "w", ttl))
	elWaitCandidates(t, raw, prefix, 2)

	start := time.Now()
	waiter.Blackhole(proxy.Both)
	t.Cleanup(waiter.Unblackhole)
	r := mxResult(t, ch)
	took := time.Since(start)
	require.Error(t, r.err)
	assert.ErrorIs(t, r.err, etcdkit.ErrLeaseLost)
	assert.Less(t, took, ttl+5*time.Second)
	t.Logf("waiter gave up %v after the cut: %v", took, r.err)
	// The key expires with the lease nothing keeps alive any more.
	elWaitCandidates(t, raw, prefix, 1)
	assert.NoError(t, holder.Context().Err())
	_, err := etcdkit.GuardedPut(testContext(t, elWait), holder, etcdkit.NewKey(direct, "k", etcdkit.String()), "v")
	assert.NoError(t, err)
}

// Unlock twice, and an Unlock so late that its lease expired and another
// holder acquired, leave the new holder's key in place.
func TestMutexUnlockNeverRemovesAnotherHolder(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	raw := srv.Client(t)
	direct := testClient(t, []string{srv.Endpoint()}, "mx")
	cut := testClient(t, []string{srv.ProxyEndpoint()}, "mx")
	const ttl = 2 * time.Second
	prefix := mxPrefix("mx", "u")
	k := etcdkit.NewKey(direct, "k", etcdkit.String())

	a := mxLock(t, etcdkit.NewMutex(direct, "u", ttl))
	ch := mxLockAsync(t, etcdkit.NewMutex(direct, "u", ttl))
	elWaitCandidates(t, raw, prefix, 2)
	require.NoError(t, a.Unlock(testContext(t, elWait)))
	b := mxResult(t, ch)
	require.NoError(t, b.err)
	require.NoError(t, a.Unlock(testContext(t, elWait)), "a second Unlock")
	require.NoError(t, a.Close())
	elWaitCandidates(t, raw, prefix, 1)
	_, err := etcdkit.GuardedPut(testContext(t, elWait), b.lk, k, "b")
	require.NoError(t, err, "b still holds after a's second Unlock")

	// Late: c holds through the proxy, is cut off until its lease expired
	// and d acquired, then unlocks when its link is back.
	require.NoError(t, b.lk.Unlock(testContext(t, elWait)))
	c := mxLock(t, etcdkit.NewMutex(cut, "u", ttl))
	ch = mxLockAsync(t, etcdkit.NewMutex(direct, "u", ttl))
	elWaitCandidates(t, raw, prefix, 2)
	srv.Proxy().Blackhole(proxy.Both)
	t.Cleanup(srv.Proxy().Unblackhole)
	d := mxResult(t, ch)
	require.NoError(t, d.err)
	srv.Proxy().Unblackhole()
	err = c.Unlock(testContext(t, elWait))
	if err != nil && !errors.Is(err, etcdkit.ErrClosed) {
		t.Logf("late Unlock: %v", err)
	}
	elWaitCandidates(t, raw, prefix, 1)
	_, err = etcdkit.GuardedPut(testContext(t, elWait), d.lk, k, "d")
	require.NoError(t, err, "d still holds after c's late Unlock")
	keys := elCandidates(t, raw, prefix)
	require.Len(t, keys, 1)
	assert.Equal(t, d.lk.HoldingKey(), keys[0])
}

// The Locks of one Mutex share its lease and use their key names again,
// so an uncontended Lock costs no lease grant; the lease is revoked a TTL
// after the last Lock ends.
func TestMutexLocksShareOneLease(t *testing.T) {
	srv := etcdtest.Start(t)
	raw := srv.Client(t)
	c := testClient(t, []string{srv.Endpoint()}, "mx")
	const ttl = 2 * time.Second
	m := etcdkit.NewMutex(c, "shared", ttl)
	ctx := testContext(t, elWait)

	lease := func(key string) int64 {
		resp, err := raw.Get(ctx, key)
		require.NoError(t, err)
		require.Len(t, resp.Kvs, 1, "key %s", key)
		return resp.Kvs[0].Lease
	}
	a := mxLock(t, m)
	keyA, leaseA, tokenA := a.HoldingKey(), lease(a.HoldingKey()), a.Token()
	require.NoError(t, a.Unlock(ctx))
	assert.ErrorIs(t, context.Cause(a.Context()), etcdkit.ErrClosed)
	assert.ErrorContains(t, context.Cause(a.Context()), "lock released")
	b := mxLock(t, m)
	assert.Equal(t, keyA, b.HoldingKey(), "the second Lock uses the first one's key name again")
	assert.Equal(t, leaseA, lease(b.HoldingKey()), "under the same lease")
	assert.Greater(t, b.Token(), tokenA)
	// A second, concurrent holding of the same Mutex gets a name of its own.
	ch := mxLockAsync(t, m)
	elWaitCandidates(t, raw, mxPrefix("mx", "shared"), 2)
	require.NoError(t, b.Unlock(ctx))
	r := mxResult(t, ch)
	require.NoError(t, r.err)
	assert.NotEqual(t, keyA, r.lk.HoldingKey())
	assert.Equal(t, leaseA, lease(r.lk.HoldingKey()))
	require.NoError(t, r.lk.Unlock(ctx))

	// Unused for a TTL, the lease is revoked.
	deadline := time.Now().Add(elWait)
	for {
		resp, err := raw.TimeToLive(ctx, clientv3.LeaseID(leaseA))
		require.NoError(t, err)
		if resp.TTL == -1 {
			break
		}
		require.True(t, time.Now().Before(deadline), "the idle lease was never revoked (TTL %d)", resp.TTL)
		time.Sleep(50 * time.Millisecond)
	}
	// And the next Lock takes a new one.
	d := mxLock(t, m)
	assert.NotEqual(t, leaseA, lease(d.HoldingKey()))
	require.NoError(t, d.Unlock(ctx))
}

// An Unlock whose delete fails (the link is down) leaves the key to a
// delete retried in the background, and the Mutex takes a new lease for
// later Locks, so that the failed delete, which may yet apply, can never
// hit a later holding's key of the same name.
func TestMutexFailedUnlockRetiresItsLease(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	raw := srv.Client(t)
	c := testClient(t, []string{srv.ProxyEndpoint()}, "mx")
	// Long enough that the lease outlives the cut: the key must go by the
	// retried delete, and the next Lock take a new lease all the same.
	const ttl = 10 * time.Second
	m := etcdkit.NewMutex(c, "retire", ttl)
	prefix := mxPrefix("mx", "retire")

	a := mxLock(t, m)
	keyA := a.HoldingKey()
	srv.Proxy().Blackhole(proxy.Both)
	t.Cleanup(srv.Proxy().Unblackhole)
	uctx, ucancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer ucancel()
	require.Error(t, a.Unlock(uctx), "Unlock with the link down")
	require.Error(t, a.Context().Err())
	srv.Proxy().Unblackhole()

	// The next Lock does not take a's lease, nor a's key name: it waits
	// behind a's key, which the retried delete removes once the link is
	// back, and holds under a new lease.
	b := mxLock(t, m)
	assert.NotEqual(t, keyA, b.HoldingKey(), "a new lease, so a new key name")
	elWaitCandidates(t, raw, prefix, 1)
	_, err := etcdkit.GuardedPut(testContext(t, elWait), b, etcdkit.NewKey(c, "k", etcdkit.String()), "b")
	require.NoError(t, err)
	require.NoError(t, b.Unlock(testContext(t, elWait)))
}
