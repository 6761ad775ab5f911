package etcdkit_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// The typed benchmarks and their raw clientv3 twins use the same server, the
// same key, the same JSON value and the same context, so the ratio measures
// only what etcdkit adds per request. The context carries a deadline, as a
// production caller's would: with a deadline-less context etcdkit adds its
// RequestTimeout, which costs a timer on both sides of the connection.
var benchValue = limits{MaxConns: 100, Mode: "strict"}

func benchContext(b *testing.B) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	b.Cleanup(cancel)
	return ctx
}

func BenchmarkKeyPut(b *testing.B) {
	srv := etcdtest.Start(b)
	c := testClient(b, []string{srv.Endpoint()}, "bench")
	k := etcdkit.NewKey(c, "put", etcdkit.JSON[limits]())
	ctx := benchContext(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.Put(ctx, benchValue); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRawPut(b *testing.B) {
	srv := etcdtest.Start(b)
	raw := srv.Client(b)
	ctx := benchContext(b)
	b.ReportAllocs()
	for b.Loop() {
		data, err := json.Marshal(benchValue)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := raw.Put(ctx, "bench/put", string(data)); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkKeyGet(b *testing.B) {
	srv := etcdtest.Start(b)
	c := testClient(b, []string{srv.Endpoint()}, "bench")
	k := etcdkit.NewKey(c, "get", etcdkit.JSON[limits]())
	ctx := benchContext(b)
	if _, err := k.Put(ctx, benchValue); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.Get(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRawGet(b *testing.B) {
	srv := etcdtest.Start(b)
	raw := srv.Client(b)
	ctx := benchContext(b)
	data, _ := json.Marshal(benchValue)
	if _, err := raw.Put(ctx, "bench/get", string(data)); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		resp, err := raw.Get(ctx, "bench/get")
		if err != nil {
			b.Fatal(err)
		}
		var v limits
		if err := json.Unmarshal(resp.Kvs[0].Value, &v); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPutPaired and BenchmarkGetPaired run one typed and one raw
// request per iteration on the same server, in alternating order, so both
// see the same load, and report raw time over typed time (the typed
// throughput as a fraction of raw): the ratio that BenchmarkKeyPut against
// BenchmarkRawPut estimates, without the drift between two separate runs.
func BenchmarkPutPaired(b *testing.B) {
	srv := etcdtest.Start(b)
	c := testClient(b, []string{srv.Endpoint()}, "bench")
	raw := srv.Client(b)
	k := etcdkit.NewKey(c, "paired", etcdkit.JSON[limits]())
	ctx := benchContext(b)
	typedOp := func() {
		if _, err := k.Put(ctx, benchValue); err != nil {
			b.Fatal(err)
		}
	}
	rawOp := func() {
		data, err := json.Marshal(benchValue)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := raw.Put(ctx, "bench/paired", string(data)); err != nil {
			b.Fatal(err)
		}
	}
	pairedRatio(b, typedOp, rawOp, "put")
}

func BenchmarkGetPaired(b *testing.B) {
	srv := etcdtest.Start(b)
	c := testClient(b, []string{srv.Endpoint()}, "bench")
	raw := srv.Client(b)
	k := etcdkit.NewKey(c, "paired", etcdkit.JSON[limits]())
	ctx := benchContext(b)
	if _, err := k.Put(ctx, benchValue); err != nil {
		b.Fatal(err)
	}
	typedOp := func() {
		if _, err := k.Get(ctx); err != nil {
			b.Fatal(err)
		}
	}
	rawOp := func() {
		resp, err := raw.Get(ctx, "bench/paired")
		if err != nil {
			b.Fatal(err)
		}
		var v limits
		if err := json.Unmarshal(resp.Kvs[0].Value, &v); err != nil {
			b.Fatal(err)
		}
	}
	pairedRatio(b, typedOp, rawOp, "get")
}

// pairedRatio times typedOp and rawOp once per iteration, swapping their
// order every iteration, and reports both means and raw/typed.
func pairedRatio(b *testing.B, typedOp, rawOp func(), op string) {
	var typed, rawT time.Duration
	timed := func(f func()) time.Duration {
		start := time.Now()
		f()
		return time.Since(start)
	}
	for i := 0; b.Loop(); i++ {
		if i%2 == 0 {
			typed += timed(typedOp)
			rawT += timed(rawOp)
		} else {
			rawT += timed(rawOp)
			typed += timed(typedOp)
		}
	}
	b.ReportMetric(float64(typed.Nanoseconds())/float64(b.N), "typed-ns/"+op)
	b.ReportMetric(float64(rawT.Nanoseconds())/float64(b.N), "raw-ns/"+op)
	b.ReportMetric(float64(rawT)/float64(typed), "typed-throughput/raw")
}

// BenchmarkKeyPutShortDeadline and BenchmarkRawPutShortDeadline give each
// Put a context of its own whose deadline (1s) comes before the end of the
// attempt's StallTimeout (2s by default), as a caller with a tight deadline
// would: the attempt then needs no timer of its own.
func BenchmarkKeyPutShortDeadline(b *testing.B) {
	srv := etcdtest.Start(b)
	c := testClient(b, []string{srv.Endpoint()}, "bench")
	k := etcdkit.NewKey(c, "put", etcdkit.JSON[limits]())
	ctx := benchContext(b)
	b.ReportAllocs()
	for b.Loop() {
		octx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := k.Put(octx, benchValue)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRawPutShortDeadline(b *testing.B) {
	srv := etcdtest.Start(b)
	raw := srv.Client(b)
	ctx := benchContext(b)
	b.ReportAllocs()
	for b.Loop() {
		data, err := json.Marshal(benchValue)
		if err != nil {
			b.Fatal(err)
		}
		octx, cancel := context.WithTimeout(ctx, time.Second)
		_, err = raw.Put(octx, "bench/put", string(data))
		cancel()
		if err != nil {
			b.Fatal(err)
		}
	}
}
