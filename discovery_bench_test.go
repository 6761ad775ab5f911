package etcdkit_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// nextView returns the first view on Updates for which ok holds, and when
// it was received.
func nextView(t testing.TB, tr *etcdkit.Tracker[nodeMeta], ok func([]string) bool) time.Time {
	t.Helper()
	timeout := time.After(dsWait)
	for {
		select {
		case v, open := <-tr.Updates():
			require.True(t, open, "tracker ended: %v", tr.Err())
			if ok(dsIDs(v)) {
				return time.Now()
			}
		case <-timeout:
			t.Fatalf("no such view within %v; view %v", dsWait, dsIDs(tr.Instances()))
		}
	}
}

// BenchmarkDiscoveryRemoval measures how long a tracker takes to see an instance
// go: after a Close (the lease is revoked, the key deleted at once) and
// after a silent death (the node's link is blackholed with proxy
// Blackhole(Both); the key goes when the server expires the lease), against
// the TTL. One iteration takes about 30s and logs its figures; it never
// fails on timing.
func BenchmarkDiscoveryRemoval(b *testing.B) {
	for b.Loop() {
		measureDiscovery(b)
	}
}

func measureDiscovery(t testing.TB) {
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	c := testClient(t, []string{srv.Endpoint()}, "m")
	svc := dsService(c)
	tr := dsTrack(t, svc)
	has := func(id string) func([]string) bool {
		return func(ids []string) bool { return slices.Contains(ids, id) }
	}
	lacks := func(id string) func([]string) bool {
		return func(ids []string) bool { return !slices.Contains(ids, id) }
	}

	var seen, closing []time.Duration
	for i := range 20 {
		id := fmt.Sprintf("close-%d", i)
		r, err := svc.Register(testContext(t, time.Minute), dsInstance(id, 3000+i), dsTTL)
		require.NoError(t, err)
		nextView(t, tr, has(id))
		start := time.Now()
		require.NoError(t, r.Close())
		closed := time.Now()
		at := nextView(t, tr, lacks(id))
		seen, closing = append(seen, at.Sub(start)), append(closing, closed.Sub(start))
	}
	t.Logf("Close to the tracker's view without the instance: %s (Close itself returned after %s)", durationStats(seen), durationStats(closing))

	node := testClient(t, []string{srv.ProxyEndpoint()}, "m")
	for _, ttl := range []time.Duration{2 * time.Second, 3 * time.Second} {
		var gone, lost, back []time.Duration
		r, err := dsService(node).Register(testContext(t, time.Minute), dsInstance(fmt.Sprintf("silent-%v", ttl), 4000), ttl)
		require.NoError(t, err)
		id := r.Instance().ID
		states := recordStates(t, r.States())
		nextView(t, tr, has(id))
		for range 3 {
			states.settled(t, etcdkit.SessionLive, dsWait)
			mark := time.Now()
			start := time.Now()
			srv.Proxy().Blackhole(proxy.Both)
			at := nextView(t, tr, lacks(id))
			gone = append(gone, at.Sub(start))
			lost = append(lost, states.waitFor(t, etcdkit.SessionLost, mark, dsWait).Sub(start))
			heal := time.Now()
			srv.Proxy().Unblackhole()
			back = append(back, nextView(t, tr, has(id)).Sub(heal))
		}
		require.NoError(t, r.Close())
		t.Logf("TTL %v, silent death to the tracker's view without the instance: %s", ttl, durationStats(gone))
		t.Logf("TTL %v, silent death to the node's own SessionLost: %s", ttl, durationStats(lost))
		t.Logf("TTL %v, heal to the instance back in the view: %s", ttl, durationStats(back))
	}
}
