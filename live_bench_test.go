package etcdkit_test

import (
	"encoding/json"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// BenchmarkLiveGet measures Live.Get, which every request of a service may
// call, and in the same run a plain sync/atomic pointer load of the same
// value type, the floor it is built on; it reports the atomic load's time
// and Get's time as a multiple of it.
func BenchmarkLiveGet(b *testing.B) {
	srv := etcdtest.Start(b)
	c := testClient(b, []string{srv.Endpoint()}, "bench")
	key := etcdkit.NewKey(c, "live", etcdkit.JSON[liveLimits]())
	ctx := benchContext(b)
	if _, err := key.Put(ctx, liveLimits{Rate: 1, Burst: 2, Mode: "m"}); err != nil {
		b.Fatal(err)
	}
	live := etcdkit.NewLive(ctx, key)
	b.Cleanup(func() { _ = live.Close() })
	waitLiveSynced(b, live.Synced())

	var p atomic.Pointer[liveLimits]
	p.Store(&liveLimits{Rate: 1, Burst: 2, Mode: "m"})
	var sink liveLimits
	const baseline = 20_000_000
	start := time.Now()
	for range baseline {
		sink = *p.Load()
	}
	atomicNs := float64(time.Since(start).Nanoseconds()) / baseline

	b.ReportAllocs()
	for b.Loop() {
		sink = live.Get()
	}
	getNs := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	if sink.Rate != 1 {
		b.Fatalf("got %+v", sink)
	}
	b.ReportMetric(atomicNs, "atomic-ns/load")
	b.ReportMetric(getNs/atomicNs, "get/atomic")
}

// BenchmarkLiveMapSync50k measures how long a LiveMap of 50,000 JSON
// entries takes to be synced, and the heap it holds per entry, beside, in
// the same run and on the same server and data: a raw clientv3 Get of the
// prefix (paged as the library pages it) decoded with the same codec into
// a map, and a plain Cache of the prefix. Each iteration runs the three in
// turn, in rotating order, so that they see the same load; the ratios are
// of their sums.
func BenchmarkLiveMapSync50k(b *testing.B) {
	const n = 50_000
	srv := etcdtest.Start(b)
	c := testClient(b, []string{srv.Endpoint()}, "bench")
	raw := srv.Client(b)
	ctx := benchContext(b)
	value, _ := json.Marshal(flag{On: true, Percent: 42})
	for i := 0; i < n; i += 100 {
		ops := make([]clientv3.Op, 0, 100)
		for j := i; j < i+100; j++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("bench/flags/tenant-%05d", j), string(value)))
		}
		if _, err := raw.Txn(ctx).Then(ops...).Commit(); err != nil {
			b.Fatal(err)
		}
	}
	p := etcdkit.NewPrefix(c, "flags", etcdkit.JSON[flag]())
	codec := etcdkit.JSON[flag]()

	rawSync := func() any {
		m := make(map[string]flag, n)
		from, end := "bench/flags/", clientv3.GetPrefixRangeEnd("bench/flags/")
		var rev int64
		for {
			opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(1000)}
			if rev != 0 {
				opts = append(opts, clientv3.WithRev(rev))
			}
			resp, err := raw.Get(ctx, from, opts...)
			if err != nil {
				b.Fatal(err)
			}
			rev = resp.Header.Revision
			for _, kv := range resp.Kvs {
				v, err := codec.Decode(kv.Value)
				if err != nil {
					b.Fatal(err)
				}
				m[string(kv.Key[len("bench/flags/"):])] = v
			}
			if !resp.More || len(resp.Kvs) == 0 {
				break
			}
			from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
		if len(m) != n {
			b.Fatalf("raw: %d entries", len(m))
		}
		return m
	}
	cacheSync := func() any {
		ca, err := p.Cache(ctx)
		if err != nil {
			b.Fatal(err)
		}
		waitLiveSynced(b, ca.Synced())
		if ca.Len() != n {
			b.Fatalf("cache: %d entries", ca.Len())
		}
		return ca
	}
	liveSync := func() any {
		m := etcdkit.NewLiveMap(ctx, p)
		waitLiveSynced(b, m.Synced())
		if len(m.Names()) != n {
			b.Fatalf("live map: %d entries", len(m.Names()))
		}
		return m
	}
	release := func(h any) {
		if cl, ok := h.(interface{ Close() error }); ok {
			_ = cl.Close()
		}
	}
	// timed runs f and returns how long it took and the heap it left
	// behind, measured while its result is still held.
	timed := func(f func() any) (time.Duration, float64) {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		start := time.Now()
		h := f()
		took := time.Since(start)
		runtime.GC()
		runtime.ReadMemStats(&after)
		runtime.KeepAlive(h)
		release(h)
		return took, float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / n
	}
	fs := []func() any{rawSync, cacheSync, liveSync}
	var sum [3]time.Duration
	var bytes [3]float64
	for i := 0; b.Loop(); i++ {
		for j := range fs {
			k := (i + j) % len(fs)
			d, by := timed(fs[k])
			sum[k] += d
			bytes[k] += by
		}
	}
	per := func(k int) float64 { return float64(sum[k].Milliseconds()) / float64(b.N) }
	b.ReportMetric(per(0), "raw-ms/sync")
	b.ReportMetric(per(1), "cache-ms/sync")
	b.ReportMetric(per(2), "livemap-ms/sync")
	b.ReportMetric(float64(sum[1])/float64(sum[0]), "cache/raw")
	b.ReportMetric(float64(sum[2])/float64(sum[0]), "livemap/raw")
	b.ReportMetric(bytes[0]/float64(b.N), "raw-B/entry")
	b.ReportMetric(bytes[1]/float64(b.N), "cache-B/entry")
	b.ReportMetric(bytes[2]/float64(b.N), "livemap-B/entry")
	b.ReportMetric(0, "ns/op")
}
