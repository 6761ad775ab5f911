package etcdkit_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// BenchmarkPutWhileMemberPartitioned partitions a follower of a 3-member
// cluster (each member behind a proxy) from its peers, waits until it knows
// it has no leader, and times Puts: one on a typed client pinned to that
// member (a fresh client each round, with the default StallTimeout and
// RequestTimeout), and three in a row on a raw clientv3 client of the same
// three proxies, whose round robin sends one of them to the partitioned
// member, each bounded by the same 5s as the typed client's RequestTimeout.
// It reports the typed Put's mean time, the raw client's mean time of its
// slowest Put of the three, and how many raw Puts failed per round; it never
// fails on timing. One iteration is one round of several seconds (the raw
// side waits out its timeout).
func BenchmarkPutWhileMemberPartitioned(b *testing.B) {
	cl := etcdtest.StartCluster(b, 3, etcdtest.WithProxy())
	lead := cl.WaitLeader(b)
	var victim *etcdtest.Server
	eps := []string{}
	for _, m := range cl.Members() {
		if m != lead && victim == nil {
			victim = m
			eps = append([]string{m.ProxyEndpoint()}, eps...)
			continue
		}
		eps = append(eps, m.ProxyEndpoint())
	}
	status := victim.Client(b)
	raw, err := clientv3.New(clientv3.Config{Endpoints: cl.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = raw.Close() })
	ctx := benchContext(b)

	// waitLeader waits until the victim reports leader 0 (partitioned)
	// or a leader (healed).
	waitLeader := func(want bool) {
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			st, err := status.Status(sctx, victim.Endpoint())
			cancel()
			if err == nil && (st.Leader != 0) == want {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		b.Fatalf("member %s: leader known %v never came", victim.Name(), want)
	}

	var typedTotal, rawTotal time.Duration
	rawFailed := 0
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		c, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: eps, Namespace: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		k := etcdkit.NewKey(c, "partitioned", etcdkit.String())
		if _, err := k.Put(ctx, "warm"); err != nil {
			b.Fatal(err)
		}
		// Every one of the raw client's connections up, so that its round
		// robin takes each in turn.
		for j := range 3 {
			if _, err := raw.Put(ctx, "bench/partitioned", fmt.Sprint("warm", j)); err != nil {
				b.Fatal(err)
			}
		}
		victim.Partition()
		waitLeader(false)
		b.StartTimer()

		start := time.Now()
		if _, err := k.Put(ctx, fmt.Sprint("typed", i)); err != nil {
			b.Fatalf("typed put: %v", err)
		}
		typedTook := time.Since(start)
		typedTotal += typedTook

		var slowest time.Duration
		for j := range 3 {
			pctx, cancel := context.WithTimeout(ctx, etcdkit.DefaultRequestTimeout)
			start := time.Now()
			_, err := raw.Put(pctx, "bench/partitioned", fmt.Sprint("raw", i, j))
			cancel()
			slowest = max(slowest, time.Since(start))
			if err != nil {
				rawFailed++
			}
		}
		rawTotal += slowest
		b.Logf("round %d: typed put %v, slowest of 3 raw puts %v", i, typedTook, slowest)

		b.StopTimer()
		_ = c.Close()
		victim.Heal()
		waitLeader(true)
		b.StartTimer()
	}
	typedMs := float64(typedTotal.Microseconds()) / 1000 / float64(b.N)
	rawMs := float64(rawTotal.Microseconds()) / 1000 / float64(b.N)
	b.ReportMetric(typedMs, "typed-ms/put")
	b.ReportMetric(rawMs, "raw-slowest-ms/put")
	b.ReportMetric(float64(rawFailed)/float64(b.N), "raw-failed/round")
	b.ReportMetric(rawMs/typedMs, "speedup")
}
