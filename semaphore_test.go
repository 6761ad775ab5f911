package etcdkit_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
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

func smPrefix(ns, name string) string {
	return ns + "/_etcdkit/semaphore/" + name + "/"
}

// smHolding is one permit as the cluster saw it: its key, the revision of
// the holder's first guarded write (proof that the holder acted on the
// permit while its key stood) and the revision at which its key was deleted
// (0: never, within the run).
type smHolding struct {
	key        string
	start, end int64
}

// smCheck returns an error if at any revision more than limit holdings
// were live: begun (start <= rev) and their key not yet deleted (rev < end).
func smCheck(hs []smHolding, limit int) error {
	for _, h := range hs {
		if h.end != 0 && h.end <= h.start {
			return fmt.Errorf("holding %s acted at revision %d after its key was deleted at %d", h.key, h.start, h.end)
		}
		live := 0
		var who []string
		for _, o := range hs {
			if o.start <= h.start && (o.end == 0 || h.start < o.end) {
				live++
				who = append(who, fmt.Sprintf("%s[%d,%d)", o.key, o.start, o.end))
			}
		}
		if live > limit {
			return fmt.Errorf("%d live permits at revision %d, limit %d: %v", live, h.start, limit, who)
		}
	}
	return nil
}

func TestSemaphoreCheckerRejectsForgedHistories(t *testing.T) {
	ok := []smHolding{{"a", 10, 20}, {"b", 11, 0}, {"c", 21, 30}, {"d", 30, 40}}
	require.NoError(t, smCheck(ok, 2))
	for name, hs := range map[string][]smHolding{
		"three overlap":            {{"a", 10, 20}, {"b", 11, 0}, {"c", 19, 30}},
		"one acts after deletion":  {{"a", 10, 20}, {"b", 25, 22}},
		"starts at the same point": {{"a", 5, 0}, {"b", 5, 0}, {"c", 5, 9}},
	} {
		t.Run(name, func(t *testing.T) {
			assert.Error(t, smCheck(hs, 2))
		})
	}
}

func TestSemaphoreLimitRecordedAndTry(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "sm")
	raw := srv.Client(t)
	prefix := smPrefix("sm", "re")
	ctx := testContext(t, elWait)

	for _, s := range []*etcdkit.Semaphore{
		etcdkit.NewSemaphore(c, "re", 0, 2*time.Second),
		etcdkit.NewSemaphore(nil, "re", 2, 2*time.Second),
		etcdkit.NewSemaphore(c, "", 2, 2*time.Second),
		etcdkit.NewSemaphore(c, "re", 2, time.Second/2),
		etcdkit.NewSemaphore(c, "re", 2, 2*time.Second, nil),
	} {
		require.Error(t, s.Validate())
		_, err := s.Acquire(ctx)
		assert.Equal(t, s.Validate(), err)
	}

	var permits []*etcdkit.Permit
	for i := range 2 {
		p, err := etcdkit.NewSemaphore(c, "re", 2, 2*time.Second, etcdkit.WithHolderID(fmt.Sprint("p", i))).TryAcquire(ctx)
		require.NoError(t, err)
		t.Cleanup(func() { _ = p.Close() })
		permits = append(permits, p)
	}
	_, err := etcdkit.NewSemaphore(c, "re", 2, 2*time.Second).TryAcquire(ctx)
	require.ErrorIs(t, err, etcdkit.ErrNoPermit)
	var he *etcdkit.HeldError
	require.ErrorAs(t, err, &he)
	require.Len(t, he.Holders, 2)
	assert.Equal(t, []string{"p0", "p1"}, []string{he.Holders[0].ID, he.Holders[1].ID})
	elWaitCandidates(t, raw, prefix, 2)

	// Another limit for the same name is refused before any key is put.
	_, err = etcdkit.NewSemaphore(c, "re", 3, 2*time.Second).Acquire(ctx)
	require.ErrorIs(t, err, etcdkit.ErrLimitMismatch)
	assert.ErrorContains(t, err, `limit of this name is "2"`)
	assert.Len(t, elCandidates(t, raw, prefix), 2)

	hs, err := etcdkit.NewSemaphore(c, "re", 2, 2*time.Second).Holders(ctx)
	require.NoError(t, err)
	require.Len(t, hs, 2)
	assert.Equal(t, permits[0].Token(), hs[0].Token)

	ch := make(chan error, 1)
	go func() {
		p, err := etcdkit.NewSemaphore(c, "re", 2, 2*time.Second).Acquire(ctx)
		if err == nil {
			err = p.Close()
		}
		ch <- err
	}()
	elWaitCandidates(t, raw, prefix, 3)
	require.NoError(t, permits[1].Release(ctx))
	require.NoError(t, permits[1].Release(ctx), "a second Release")
	select {
	case err := <-ch:
		require.NoError(t, err)
	case <-time.After(elWait):
		t.Fatal("the waiter did not acquire the released permit")
	}
	_, err = etcdkit.GuardedPut(ctx, permits[0], etcdkit.NewKey(c, "k", etcdkit.String()), "v")
	require.NoError(t, err)
	_, err = etcdkit.GuardedPut(ctx, permits[1], etcdkit.NewKey(c, "k", etcdkit.String()), "v")
	require.ErrorIs(t, err, etcdkit.ErrNotHeld)
}

// Fault: five contenders for two permits, each behind a proxy of its own,
// while their links go silent (Blackhole(Both)) or drop (Stop, then Start)
// for one to three seconds at random, often longer than the TTL. A
// semaphore that let a waiter count a dead holder's permit before the
// holder knew it was gone would show three live permits at some revision.
func TestSemaphoreLimitHoldsUnderFaults(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 17))
	srv := etcdtest.Start(t)
	raw := srv.Client(t)
	const (
		n     = 5
		limit = 2
		ttl   = 2 * time.Second
		run   = 15 * time.Second
	)
	prefix := smPrefix("sm", "chaos")

	proxies := make([]*proxy.Proxy, n)
	sems := make([]*etcdkit.Semaphore, n)
	markers := make([]*etcdkit.Key[int], n)
	for i := range n {
		p, err := proxy.New(srv.Endpoint())
		require.NoError(t, err)
		t.Cleanup(func() { _ = p.Close() })
		proxies[i] = p
		c := testClient(t, []string{p.Addr()}, "sm")
		sems[i] = etcdkit.NewSemaphore(c, "chaos", limit, ttl, etcdkit.WithHolderID(fmt.Sprint("c", i)))
		markers[i] = etcdkit.NewKey(c, fmt.Sprint("marker/", i), etcdkit.JSON[int]())
	}

	var (
		mu       sync.Mutex
		holdings []smHolding
		holding  = make([]bool, n)
		faulted  = make([]bool, n)
		lost     int
	)
	ctx, cancel := context.WithTimeout(context.Background(), run)
	defer cancel()
	var wg sync.WaitGroup
	for i := range n {
		hrng := rand.New(rand.NewPCG(seed, uint64(i)))
		wg.Go(func() {
			for ctx.Err() == nil {
				p, err := sems[i].Acquire(ctx)
				if err != nil {
					continue
				}
				rev, err := etcdkit.GuardedPut(ctx, p, markers[i], i)
				if err == nil {
					mu.Lock()
					holdings = append(holdings, smHolding{key: p.HoldingKey(), start: rev})
					holding[i] = true
					mu.Unlock()
					select {
					case <-time.After(time.Duration(100+hrng.IntN(1400)) * time.Millisecond):
					case <-p.Context().Done():
					}
					// A holder cut off goes on working until told its
					// permit may be lost: the case the permit's Context is
					// for.
					for cutOff := true; cutOff && p.Context().Err() == nil; {
						mu.Lock()
						cutOff = faulted[i]
						mu.Unlock()
						sleepCtx(p.Context(), 20*time.Millisecond)
					}
				}
				mu.Lock()
				holding[i] = false
				if errors.Is(context.Cause(p.Context()), etcdkit.ErrNotHeld) {
					lost++
				}
				mu.Unlock()
				rctx, rcancel := context.WithTimeout(context.Background(), elWait)
				_ = p.Release(rctx)
				rcancel()
			}
		})
	}
	// The faults fall on holders when there are any.
	for ctx.Err() == nil {
		mu.Lock()
		var pick []int
		for i, h := range holding {
			if h {
				pick = append(pick, i)
			}
		}
		mu.Unlock()
		i := rng.IntN(n)
		if len(pick) > 0 {
			i = pick[rng.IntN(len(pick))]
		}
		stop := rng.IntN(2) == 0
		mu.Lock()
		faulted[i] = true
		mu.Unlock()
		if stop {
			proxies[i].Stop()
		} else {
			proxies[i].Blackhole(proxy.Both)
		}
		sleepCtx(ctx, time.Duration(1000+rng.IntN(2500))*time.Millisecond)
		if stop {
			require.NoError(t, proxies[i].Start())
		} else {
			proxies[i].Unblackhole()
		}
		mu.Lock()
		faulted[i] = false
		mu.Unlock()
		sleepCtx(ctx, time.Duration(200+rng.IntN(800))*time.Millisecond)
	}
	wg.Wait()

	// The deletions of the permit keys, from the cluster's own history, up
	// to a last key put once every contender has stopped.
	elWaitCandidates(t, raw, prefix, 0)
	wctx, wcancel := context.WithTimeout(context.Background(), elWait)
	defer wcancel()
	sentinel := prefix + "~end"
	_, err := raw.Put(wctx, sentinel, "")
	require.NoError(t, err)
	// A key's name is used again by later holdings of one session: each
	// holding ended at the first deletion of its key after its start.
	end := map[string][]int64{}
	seen := false
	for wr := range raw.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(1)) {
		require.NoError(t, wr.Err())
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypeDelete {
				end[string(ev.Kv.Key)] = append(end[string(ev.Kv.Key)], ev.Kv.ModRevision)
			}
			seen = seen || string(ev.Kv.Key) == sentinel
		}
		if seen {
			break
		}
	}
	require.True(t, seen, "the history up to the sentinel")
	mu.Lock()
	defer mu.Unlock()
	for i := range holdings {
		for _, rev := range end[holdings[i].key] {
			if rev > holdings[i].start {
				holdings[i].end = rev
				break
			}
		}
		require.NotZero(t, holdings[i].end, "the deletion of %s", holdings[i].key)
	}
	slices.SortFunc(holdings, func(a, b smHolding) int { return int(a.start - b.start) })
	t.Logf("%d holdings, %d lost to faults", len(holdings), lost)
	require.NoError(t, smCheck(holdings, limit))
	assert.GreaterOrEqual(t, len(holdings), 10, "the contenders made progress")
	assert.GreaterOrEqual(t, lost, 1, "a fault took a permit away")
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
