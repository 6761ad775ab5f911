package etcdkit_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// BenchmarkElectionTakeover measures, with a TTL of 5s on a 3-member
// cluster, how long a waiting candidate takes to win after the leader resigns
// and after the leader's link goes silent (proxy Blackhole(Both)), and, in
// the second case, the step-down margin: how long before the new leader won
// the old one was told to stop (Leadership.Context cancelled). It compares
// with etcd's concurrency.Election measured the same way, whose only signal
// to a cut-off leader is its session's Done. The leader and the waiting
// candidate sit behind different members' proxies; ours and the raw ones
// share the proxies and are cut at the same moment. A positive margin means
// the old leader knew before the new one won.
//
// One iteration is one round of both measurements, about 15s; run several
// with -benchtime, e.g. -benchtime=5x. It reports medians and never fails on
// timing.
func BenchmarkElectionTakeover(b *testing.B) {
	const ttl = 5 * time.Second
	cl := etcdtest.StartCluster(b, 3, etcdtest.WithProxy())
	var m measurements
	for i := 0; b.Loop(); i++ {
		measureResign(b, cl, ttl, fmt.Sprintf("resign-%d", i), &m)
		measureSilentDeath(b, cl, ttl, fmt.Sprintf("silent-%d", i), &m)
	}
	b.Logf("TTL %v, 3-member cluster", ttl)
	b.Logf("  takeover after Resign:          etcdkit %s", durationStats(m.resignOurs))
	b.Logf("                                  raw     %s", durationStats(m.resignRaw))
	b.Logf("  takeover after a silent link:   etcdkit %s", durationStats(m.deathOurs))
	b.Logf("                                  raw     %s", durationStats(m.deathRaw))
	b.Logf("  step-down margin (old leader told -> new leader won; positive: told first):")
	b.Logf("                                  etcdkit %s", durationStats(m.marginOurs))
	b.Logf("                                  raw     %s", durationStats(m.marginRaw))
	reportMedian(b, m.resignOurs, "ms-resign-takeover")
	reportMedian(b, m.resignRaw, "ms-resign-takeover-raw")
	reportMedian(b, m.deathOurs, "ms-silent-takeover")
	reportMedian(b, m.deathRaw, "ms-silent-takeover-raw")
	reportMedian(b, m.marginOurs, "ms-stepdown-margin")
	reportMedian(b, m.marginRaw, "ms-stepdown-margin-raw")
}

// reportMedian reports the median of ds in milliseconds under unit.
func reportMedian(b *testing.B, ds []time.Duration, unit string) {
	if len(ds) == 0 {
		return
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	b.ReportMetric(float64(s[len(s)/2])/float64(time.Millisecond), unit)
}

type measurements struct {
	resignOurs, resignRaw, deathOurs, deathRaw, marginOurs, marginRaw []time.Duration
}

// rawCandidate is a concurrency.Election candidate on its own raw client.
type rawCandidate struct {
	cli *clientv3.Client
	s   *concurrency.Session
	e   *concurrency.Election
}

func newRawCandidate(t testing.TB, endpoint, name string, ttl time.Duration) *rawCandidate {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(int(ttl/time.Second)))
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return &rawCandidate{cli: cli, s: s, e: concurrency.NewElection(s, name)}
}

// campaignAt runs a raw Campaign in the background and sends when it won.
func (r *rawCandidate) campaignAt(t testing.TB, id string) <-chan time.Time {
	ctx, cancel := context.WithCancel(context.Background())
	won := make(chan time.Time, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := r.e.Campaign(ctx, id); err == nil {
			won <- time.Now()
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return won
}

func waitTime(t testing.TB, ch <-chan time.Time, what string) time.Time {
	t.Helper()
	select {
	case at := <-ch:
		return at
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: nothing within 30s", what)
		return time.Time{}
	}
}

// measureResign: the leader resigns; how long until the next candidate has
// won.
func measureResign(t testing.TB, cl *etcdtest.Cluster, ttl time.Duration, name string, m *measurements) {
	members := cl.Members()
	raw := cl.Client(t)
	ctx := testContext(t, time.Minute)

	ca := testClient(t, []string{members[0].ProxyEndpoint()}, "m")
	cb := testClient(t, []string{members[1].ProxyEndpoint()}, "m")
	a := elLead(t, etcdkit.NewElection(ca, name, ttl), "a")
	bCh := elCampaignAsync(t, etcdkit.NewElection(cb, name, ttl), "b")
	elWaitCandidates(t, raw, elPrefix("m", name), 2)
	start := time.Now()
	require.NoError(t, a.Resign(ctx))
	b := elResult(t, bCh)
	require.NoError(t, b.err)
	ours := b.at.Sub(start)

	ra := newRawCandidate(t, members[0].ProxyEndpoint(), "raw/"+name, ttl)
	rb := newRawCandidate(t, members[1].ProxyEndpoint(), "raw/"+name, ttl)
	require.NoError(t, ra.e.Campaign(ctx, "a"))
	rbWon := rb.campaignAt(t, "b")
	elWaitCandidates(t, raw, "raw/"+name+"/", 2)
	start = time.Now()
	require.NoError(t, ra.e.Resign(ctx))
	rawTook := waitTime(t, rbWon, "raw takeover after Resign").Sub(start)
	t.Logf("takeover after Resign: etcdkit %v, raw %v", ours, rawTook)
	m.resignOurs = append(m.resignOurs, ours)
	m.resignRaw = append(m.resignRaw, rawTook)
}

// measureSilentDeath: the leader's link goes silent; how long until the
// next candidate has won, and how long before that the old leader was told.
func measureSilentDeath(t testing.TB, cl *etcdtest.Cluster, ttl time.Duration, name string, m *measurements) {
	members := cl.Members()
	raw := cl.Client(t)
	ctx := testContext(t, time.Minute)

	ca := testClient(t, []string{members[0].ProxyEndpoint()}, "m")
	cb := testClient(t, []string{members[1].ProxyEndpoint()}, "m")
	a := elLead(t, etcdkit.NewElection(ca, name, ttl), "a")
	bCh := elCampaignAsync(t, etcdkit.NewElection(cb, name, ttl), "b")
	var mu sync.Mutex
	var oursTold time.Time
	context.AfterFunc(a.Context(), func() {
		mu.Lock()
		oursTold = time.Now()
		mu.Unlock()
	})

	ra := newRawCandidate(t, members[0].ProxyEndpoint(), "raw/"+name, ttl)
	rb := newRawCandidate(t, members[1].ProxyEndpoint(), "raw/"+name, ttl)
	require.NoError(t, ra.e.Campaign(ctx, "a"))
	rbWon := rb.campaignAt(t, "b")
	rawTold := make(chan time.Time, 1)
	stop := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		select {
		case <-ra.s.Done():
			rawTold <- time.Now()
		case <-stop:
		}
	}()
	t.Cleanup(func() { close(stop); <-exited })
	elWaitCandidates(t, raw, elPrefix("m", name), 2)
	elWaitCandidates(t, raw, "raw/"+name+"/", 2)

	// Cut at a random point of the keepalive cycles, as a real failure
	// would; this sleep is part of the measurement, not synchronisation.
	time.Sleep(ttl/3 + rand.N(ttl/3))
	cut := time.Now()
	p := members[0].Proxy()
	p.Blackhole(proxy.Both)
	t.Cleanup(p.Unblackhole)

	b := elResult(t, bCh)
	require.NoError(t, b.err)
	rawWon := waitTime(t, rbWon, "raw takeover after the cut")
	rawDone := waitTime(t, rawTold, "raw session Done after the cut")
	mu.Lock()
	told := oursTold
	mu.Unlock()
	require.False(t, told.IsZero(), "the new leader won while the old one still held its Context")
	p.Unblackhole()

	t.Logf("after the cut: etcdkit old leader told %v, new leader won %v; raw session Done %v, new leader won %v",
		told.Sub(cut), b.at.Sub(cut), rawDone.Sub(cut), rawWon.Sub(cut))
	m.deathOurs = append(m.deathOurs, b.at.Sub(cut))
	m.deathRaw = append(m.deathRaw, rawWon.Sub(cut))
	m.marginOurs = append(m.marginOurs, b.at.Sub(told))
	m.marginRaw = append(m.marginRaw, rawWon.Sub(rawDone))
}
