package etcdkit_test

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// The watch benchmarks compare etcdkit with a raw clientv3 watch in the same
// run, on the same server, and report the ratio with b.ReportMetric, so that
// the comparison holds whatever the machine's load. Writes always go through
// a raw client, so only the receiving side differs.

// benchPut writes value to key through raw and fails the benchmark on error.
func benchPut(b *testing.B, raw *clientv3.Client, key, value string) {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if _, err := raw.Put(ctx, key, value); err != nil {
		b.Fatal(err)
	}
}

func nextTyped(b *testing.B, w *etcdkit.Watch[string]) etcdkit.Event[string] {
	select {
	case e, ok := <-w.Events():
		if !ok {
			b.Fatalf("watch ended: %v", w.Err())
		}
		return e
	case <-time.After(waitTimeout):
		b.Fatal("no typed event")
	}
	return etcdkit.Event[string]{}
}

func nextRaw(b *testing.B, wch clientv3.WatchChan) *clientv3.Event {
	for {
		select {
		case resp, ok := <-wch:
			if !ok || resp.Err() != nil {
				b.Fatalf("raw watch ended: %v", resp.Err())
			}
			if len(resp.Events) > 0 {
				return resp.Events[0]
			}
		case <-time.After(waitTimeout):
			b.Fatal("no raw event")
		}
	}
}

// BenchmarkWatchLatency measures the time from the start of a put to the
// event's arrival, alternating a typed Watch and a raw clientv3 watch of the
// same key so that both see the same conditions. ns/op covers one of each.
func BenchmarkWatchLatency(b *testing.B) {
	srv := etcdtest.Start(b)
	c := testClient(b, []string{srv.Endpoint()}, "bench")
	raw := srv.Client(b)
	ctx := benchContext(b)
	typed := etcdkit.NewKey(c, "lat", etcdkit.String()).Watch(ctx)
	b.Cleanup(func() { _ = typed.Close() })
	waitSynced(b, typed)
	wch := raw.Watch(ctx, "bench/lat")
	benchPut(b, raw, "bench/lat", "warm-up")
	nextTyped(b, typed)
	nextRaw(b, wch)

	var typedTotal, rawTotal time.Duration
	b.ReportAllocs()
	for b.Loop() {
		start := time.Now()
		benchPut(b, raw, "bench/lat", "t")
		nextTyped(b, typed)
		typedTotal += time.Since(start)
		nextRaw(b, wch)

		start = time.Now()
		benchPut(b, raw, "bench/lat", "r")
		nextRaw(b, wch)
		rawTotal += time.Since(start)
		nextTyped(b, typed)
	}
	b.ReportMetric(float64(typedTotal.Microseconds())/float64(b.N), "typed-µs/event")
	b.ReportMetric(float64(rawTotal.Microseconds())/float64(b.N), "raw-µs/event")
	b.ReportMetric(float64(typedTotal)/float64(rawTotal), "typed/raw")
}

// BenchmarkWatchEventTyped and BenchmarkWatchEventRaw measure the same
// put-to-event round on their own, for allocations per event.
func BenchmarkWatchEventTyped(b *testing.B) {
	srv := etcdtest.Start(b)
	c := testClient(b, []string{srv.Endpoint()}, "bench")
	raw := srv.Client(b)
	w := etcdkit.NewKey(c, "ev", etcdkit.String()).Watch(benchContext(b))
	b.Cleanup(func() { _ = w.Close() })
	waitSynced(b, w)
	benchPut(b, raw, "bench/ev", "warm-up")
	nextTyped(b, w)
	b.ReportAllocs()
	for b.Loop() {
		benchPut(b, raw, "bench/ev", "v")
		nextTyped(b, w)
	}
}

func BenchmarkWatchEventRaw(b *testing.B) {
	srv := etcdtest.Start(b)
	raw := srv.Client(b)
	wch := raw.Watch(benchContext(b), "bench/ev")
	benchPut(b, raw, "bench/ev", "warm-up")
	nextRaw(b, wch)
	b.ReportAllocs()
	for b.Loop() {
		benchPut(b, raw, "bench/ev", "v")
		nextRaw(b, wch)
	}
}

// paddedInt64 fills a cache line, so that readers on different cores do
// not write to the same line.
type paddedInt64 struct {
	atomic.Int64
	_ [56]byte
}

// fanOut is n subscribers of one key, each with a reader that records how
// long after the current put's start the event arrived.
type fanOut struct {
	b     *testing.B
	raw   *clientv3.Client
	key   string
	n     int
	start atomic.Int64 // UnixNano of the current put's start
	ws    []*etcdkit.Watch[string]
	slots []paddedInt64
	count atomic.Int64
	all   chan struct{}
}

func newFanOut(b *testing.B, c *etcdkit.Client, raw *clientv3.Client, name string, n int) *fanOut {
	ctx := benchContext(b)
	f := &fanOut{b: b, raw: raw, key: "bench/" + name, n: n}
	k := etcdkit.NewKey(c, name, etcdkit.String())
	f.slots = make([]paddedInt64, n)
	f.all = make(chan struct{}, 1)
	for i := range n {
		w := k.Watch(ctx)
		f.ws = append(f.ws, w)
		go func() {
			for range w.Events() {
				f.slots[i].Store(time.Now().UnixNano() - f.start.Load())
				if f.count.Add(1) == int64(f.n) {
					f.all <- struct{}{}
				}
			}
		}()
	}
	for _, w := range f.ws {
		waitSynced(b, w)
	}
	b.Cleanup(f.close)
	f.round() // the first event after a watch starts waits for etcd's sync loop
	return f
}

// round puts the key once and returns the delays of all n subscribers.
func (f *fanOut) round() []time.Duration {
	f.start.Store(time.Now().UnixNano())
	benchPut(f.b, f.raw, f.key, "v")
	select {
	case <-f.all:
	case <-time.After(waitTimeout):
		f.b.Fatal("a subscriber got nothing")
	}
	f.count.Store(0)
	delays := make([]time.Duration, 0, f.n)
	for i := range f.slots {
		delays = append(delays, time.Duration(f.slots[i].Load()))
	}
	return delays
}

func (f *fanOut) close() {
	for _, w := range f.ws {
		_ = w.Close()
	}
}

// handoffStamp is a Metrics that records when a feed last finished handing
// a batch to its subscribers: the feed sets the subscriber-lag gauge right
// after its last subscriber's channel took the batch.
type handoffStamp struct{ at atomic.Int64 }

func (m *handoffStamp) Add(etcdkit.Metric, float64) {}

func (m *handoffStamp) Set(k etcdkit.Metric, _ float64) {
	if k == etcdkit.MetricSubscriberLag {
		m.at.Store(time.Now().UnixNano())
	}
}

// BenchmarkWatchFanOut1000 puts a key watched by 1,000 subscribers of one
// client, which share one etcd watch, and compares the 99th percentile of
// put-to-event delays over all subscribers with that of a single subscriber
// of another key of the same client. The two alternate, round by round, so
// that both see the same load. A subscriber's delay ends when its reader
// goroutine has the event; the hand-off delay ends when the engine has put
// the event in the last subscriber's channel, before the Go scheduler has
// run the readers. It also reports the memory each idle subscriber costs,
// its reader goroutine included. ns/op is one put delivered to all 1,000
// plus one put delivered to the single subscriber.
func BenchmarkWatchFanOut1000(b *testing.B) {
	const n = 1000
	srv := etcdtest.Start(b)
	stamp := &handoffStamp{}
	c := testClientConfig(b, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, Namespace: "bench", Metrics: stamp})
	raw := srv.Client(b)

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	many := newFanOut(b, c, raw, "many", n)
	runtime.GC()
	runtime.ReadMemStats(&after)
	perSub := float64(after.HeapAlloc+after.StackInuse-before.HeapAlloc-before.StackInuse) / n
	one := newFanOut(b, c, raw, "one", 1)
	eventually(b, "one etcd watch per key", func() bool { return etcdkit.EtcdWatches(c) == 2 })

	var d1, dn, h1, hn []time.Duration
	b.ReportAllocs()
	for b.Loop() {
		dn = append(dn, many.round()...)
		hn = append(hn, time.Duration(stamp.at.Load()-many.start.Load()))
		d1 = append(d1, one.round()...)
		h1 = append(h1, time.Duration(stamp.at.Load()-one.start.Load()))
	}
	p99n, p99one := etcdkit.Percentile(dn, 0.99), etcdkit.Percentile(d1, 0.99)
	b.ReportMetric(float64(etcdkit.Percentile(dn, 0.5).Microseconds()), "p50-µs/1000-subs")
	b.ReportMetric(float64(p99n.Microseconds()), "p99-µs/1000-subs")
	b.ReportMetric(float64(etcdkit.Percentile(d1, 0.5).Microseconds()), "p50-µs/1-sub")
	b.ReportMetric(float64(p99one.Microseconds()), "p99-µs/1-sub")
	b.ReportMetric(float64(p99n)/float64(p99one), "p99-ratio")
	hp99n, hp99one := etcdkit.Percentile(hn, 0.99), etcdkit.Percentile(h1, 0.99)
	b.ReportMetric(float64(hp99n.Microseconds()), "handoff-p99-µs/1000-subs")
	b.ReportMetric(float64(hp99one.Microseconds()), "handoff-p99-µs/1-sub")
	b.ReportMetric(float64(hp99n)/float64(hp99one), "handoff-p99-ratio")
	b.ReportMetric(perSub, "bytes/subscriber")
}

// BenchmarkCacheGet reads a key from a Cache and, in the same run, with a
// raw linearizable Get, and reports how many times faster the cache is.
func BenchmarkCacheGet(b *testing.B) {
	srv := etcdtest.Start(b)
	c := testClient(b, []string{srv.Endpoint()}, "bench")
	raw := srv.Client(b)
	for i := range 100 {
		benchPut(b, raw, fmt.Sprintf("bench/cache/k%03d", i), fmt.Sprint(i))
	}
	ctx := benchContext(b)
	ca, err := etcdkit.NewPrefix(c, "cache", etcdkit.String()).Cache(ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = ca.Close() })
	waitDone(b, ca.Synced(), "cache sync")

	const rawGets = 300
	rawStart := time.Now()
	for range rawGets {
		if _, err := raw.Get(ctx, "bench/cache/k042"); err != nil {
			b.Fatal(err)
		}
	}
	rawPer := time.Since(rawStart) / rawGets

	b.ReportAllocs()
	for b.Loop() {
		if _, ok := ca.Get("k042"); !ok {
			b.Fatal("missing")
		}
	}
	cachePer := float64(b.Elapsed()) / float64(b.N)
	b.ReportMetric(float64(rawPer.Nanoseconds()), "raw-ns/get")
	b.ReportMetric(float64(rawPer)/cachePer, "speedup")
}

// BenchmarkWatchResumeAfterFIN cuts the watches' link with a FIN (proxy
// Stop), writes directly to the member, heals (proxy Start) and measures the
// time from the heal to the change's arrival, for a typed Watch and for a
// raw clientv3 watch through the same proxy.
func BenchmarkWatchResumeAfterFIN(b *testing.B) {
	srv := etcdtest.Start(b, etcdtest.WithProxy())
	c := testClient(b, []string{srv.ProxyEndpoint()}, "bench")
	direct := srv.Client(b)
	viaProxy := newTestRawClient(b, []string{srv.ProxyEndpoint()})
	ctx := benchContext(b)
	typed := etcdkit.NewKey(c, "heal", etcdkit.String()).Watch(ctx)
	b.Cleanup(func() { _ = typed.Close() })
	waitSynced(b, typed)
	wch := viaProxy.Watch(ctx, "bench/heal")
	benchPut(b, direct, "bench/heal", "warm-up")
	nextTyped(b, typed)
	nextRaw(b, wch)

	var typedTotal, rawTotal time.Duration
	for b.Loop() {
		srv.Proxy().Stop()
		benchPut(b, direct, "bench/heal", "v")
		if err := srv.Proxy().Start(); err != nil {
			b.Fatal(err)
		}
		healed := time.Now()
		typedDone := make(chan time.Duration, 1)
		go func() {
			select {
			case <-typed.Events():
				typedDone <- time.Since(healed)
			case <-time.After(waitTimeout):
				typedDone <- -1
			}
		}()
		nextRaw(b, wch)
		rawTotal += time.Since(healed)
		d := <-typedDone
		if d < 0 {
			b.Fatal("no typed event after the heal")
		}
		typedTotal += d
	}
	b.ReportMetric(float64(typedTotal.Milliseconds())/float64(b.N), "typed-ms/heal")
	b.ReportMetric(float64(rawTotal.Milliseconds())/float64(b.N), "raw-ms/heal")
}
