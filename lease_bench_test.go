package etcdkit_test

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// BenchmarkSessionLostMargin measures, for a TTL of 5s, how long before the
// server deletes an owner's key the owner is told its lease is gone, when
// the owner's link goes silent (proxy Blackhole(Both)). It compares the
// Ephemeral's Lost state with the raw recipe: a concurrency.Session whose
// Done is the only signal, with a key attached to its lease. Both owners sit
// behind the same proxy and are cut at the same moment; a direct watcher
// timestamps the deletions. A positive margin means the owner knew first; a
// negative one that it was told after its key was gone.
//
// One iteration is one round, about 10s; run several with -benchtime, e.g.
// -benchtime=5x. It reports medians and never fails on timing.
func BenchmarkSessionLostMargin(b *testing.B) {
	const ttl = 5 * time.Second
	var ours, raw []time.Duration
	for b.Loop() {
		o, r := measureLostMargin(b, ttl)
		ours = append(ours, o)
		raw = append(raw, r)
		b.Logf("Ephemeral SessionLost %v before the deletion; raw Session Done %v before the deletion", o, r)
	}
	b.Logf("TTL %v (positive: the owner knew before its key was deleted)", ttl)
	b.Logf("  etcdkit Ephemeral, SessionLost:        %s", durationStats(ours))
	b.Logf("  raw concurrency.Session, Done:  %s", durationStats(raw))
	reportMedian(b, ours, "ms-lost-before-delete")
	reportMedian(b, raw, "ms-done-before-delete-raw")
}

// measureLostMargin runs one round and returns the margins of the Ephemeral
// and of the raw session.
func measureLostMargin(t testing.TB, ttl time.Duration) (ours, raw time.Duration) {
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	direct := srv.Client(t)
	oursEvents := watchKey(t, direct, "m/ours")
	rawEvents := watchKey(t, direct, "m/raw")

	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()}})
	e := lsEphemeral(t, c, "m/ours", "x", ttl)
	states := recordStates(t, e.States())

	rc, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.ProxyEndpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = rc.Close() })
	rs, err := concurrency.NewSession(rc, concurrency.WithTTL(int(ttl/time.Second)))
	require.NoError(t, err)
	t.Cleanup(func() { _ = rs.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = rc.Put(ctx, "m/raw", "x", clientv3.WithLease(rs.Lease()))
	require.NoError(t, err)

	rawDone := make(chan time.Time, 1)
	stop := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		select {
		case <-rs.Done():
			rawDone <- time.Now()
		case <-stop:
		}
	}()
	t.Cleanup(func() { close(stop); <-exited })

	// Cut at a random point of the keepalive cycles, as a real failure
	// would; this sleep is part of the measurement, not synchronisation.
	time.Sleep(ttl/3 + rand.N(ttl/3))
	cut := time.Now()
	srv.Proxy().Blackhole(proxy.Both)
	t.Cleanup(srv.Proxy().Unblackhole)

	delOurs := oursEvents.waitFirst(t, mvccpb.DELETE, cut, 3*ttl).at
	delRaw := rawEvents.waitFirst(t, mvccpb.DELETE, cut, 3*ttl).at
	lost := states.waitFor(t, etcdkit.SessionLost, cut, 3*ttl)
	var done time.Time
	select {
	case done = <-rawDone:
	case <-time.After(3 * ttl):
		t.Fatalf("raw session Done never closed, %v after the cut", time.Since(cut))
	}
	t.Logf("after the cut: SessionLost %v, our key deleted %v; raw Done %v, raw key deleted %v",
		lost.Sub(cut), delOurs.Sub(cut), done.Sub(cut), delRaw.Sub(cut))
	return delOurs.Sub(lost), delRaw.Sub(done)
}
