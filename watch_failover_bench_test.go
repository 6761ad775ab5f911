package etcdkit_test

import (
	"context"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// BenchmarkWatchFailoverAfterBlackhole blackholes the member a watch streams
// from, on a 3-member cluster whose members each sit behind a proxy, writes
// through a direct client, and measures the time from the cut to the
// change's arrival: a typed Watch (stall detection, then the next member)
// against a raw clientv3 watch with WithRequireLeader and gRPC keepalive at
// its floor (10s, timeout 5s), on a client of the same three proxies. Each
// watcher's own member is cut, found for the raw watch by which proxy
// carried a marker event. One iteration is one round, 15-20s because of the
// raw side; it reports the mean of each and never fails on timing.
func BenchmarkWatchFailoverAfterBlackhole(b *testing.B) {
	cl := etcdtest.StartCluster(b, 3, etcdtest.WithProxy())
	direct := cl.Client(b)
	c := testClient(b, cl.Endpoints(), "bench")
	raw, err := clientv3.New(clientv3.Config{
		Endpoints:            cl.Endpoints(),
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		Logger:               zap.NewNop(),
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = raw.Close() })
	ctx := benchContext(b)
	proxies := map[string]*proxy.Proxy{}
	for _, m := range cl.Members() {
		proxies[m.ProxyEndpoint()] = m.Proxy()
	}

	typed := etcdkit.NewKey(c, "failover", etcdkit.String()).Watch(ctx)
	b.Cleanup(func() { _ = typed.Close() })
	waitSynced(b, typed)
	rch := raw.Watch(clientv3.WithRequireLeader(ctx), "bench/failover")

	var typedTotal, rawTotal time.Duration
	for i := 0; b.Loop(); i++ {
		// Settle: both watches deliver a marker, which also tells which
		// proxy carries the raw watch's stream.
		before := downBytes(proxies)
		marker := "marker-" + strings.Repeat("x", 8<<10)
		benchPut(b, direct, "bench/failover", marker)
		nextTyped(b, typed)
		rawUntil(b, rch, marker, waitTimeout)
		typedVia := proxies[etcdkit.StreamEndpoint(c)]
		rawVia := busiest(proxies, before, typedVia, int64(len(marker)))
		if rawVia == nil || typedVia == nil {
			b.Fatal("cannot tell which members the watches stream from")
		}

		// Typed: cut its member, write, time the arrival.
		cut := time.Now()
		typedVia.Blackhole(proxy.Both)
		benchPut(b, direct, "bench/failover", "typed")
		nextTyped(b, typed)
		typedTotal += time.Since(cut)
		typedVia.Unblackhole()

		// Raw: the same for its member.
		cut = time.Now()
		rawVia.Blackhole(proxy.Both)
		benchPut(b, direct, "bench/failover", "raw")
		rawUntil(b, rch, "raw", time.Minute)
		rawTook := time.Since(cut)
		rawTotal += rawTook
		rawVia.Unblackhole()
		b.Logf("round %d: typed watch via %s, raw watch via %s: raw delivered %v after its member was cut",
			i, typedVia.Addr(), rawVia.Addr(), rawTook)
		// The typed watch saw "raw" too; take it off its channel.
		if ev := nextTyped(b, typed); ev.Value != "raw" {
			b.Fatalf("typed watch delivered %q, want %q", ev.Value, "raw")
		}
	}
	typedMs := float64(typedTotal.Milliseconds()) / float64(b.N)
	rawMs := float64(rawTotal.Milliseconds()) / float64(b.N)
	b.ReportMetric(typedMs, "typed-ms/failover")
	b.ReportMetric(rawMs, "raw-ms/failover")
	b.ReportMetric(rawMs/typedMs, "speedup")
}

// downBytes snapshots the bytes each proxy has delivered to its clients.
func downBytes(ps map[string]*proxy.Proxy) map[*proxy.Proxy]int64 {
	m := map[*proxy.Proxy]int64{}
	for _, p := range ps {
		m[p] = p.Stats().BytesDown
	}
	return m
}

// busiest returns the proxy that delivered the most bytes since before,
// not counting the n bytes the typed watch's proxy carried for it.
func busiest(ps map[string]*proxy.Proxy, before map[*proxy.Proxy]int64, typedVia *proxy.Proxy, n int64) *proxy.Proxy {
	var best *proxy.Proxy
	var most int64
	for _, p := range ps {
		d := p.Stats().BytesDown - before[p]
		if p == typedVia {
			d -= n
		}
		if d > most {
			best, most = p, d
		}
	}
	return best
}

// rawUntil receives from a raw watch until an event with value want
// arrives, within d: a raw watch on a silent link waits for gRPC keepalive.
// Earlier events (the typed round's write) are skipped.
func rawUntil(b *testing.B, wch clientv3.WatchChan, want string, d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		select {
		case resp, ok := <-wch:
			if !ok || resp.Err() != nil {
				b.Fatalf("raw watch ended: %v", resp.Err())
			}
			for _, ev := range resp.Events {
				if string(ev.Kv.Value) == want {
					return
				}
			}
		case <-ctx.Done():
			b.Fatalf("no raw event %q within %v", want, d)
		}
	}
}
