package etcdkit_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// TestConfigStallTimeoutMinimum checks that a StallTimeout too short to
// time anything is refused by New. Accepted, 5ns made the resolver's ticker
// panic ("non-positive interval for NewTicker").
func TestConfigStallTimeoutMinimum(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := testContext(t, 30*time.Second)
	c, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, StallTimeout: 5 * time.Nanosecond})
	if err == nil {
		t.Cleanup(func() { _ = c.Close() })
		r, berr := c.ResolverBuilder().Build(dsTarget(t, "etcdkit:///svc"), &fakeConn{}, dsBuildOptions)
		if berr == nil {
			r.Close()
		}
	}
	require.Error(t, err, "StallTimeout 5ns accepted")
	assert.Contains(t, err.Error(), "StallTimeout")
}

// FuzzConfigDurations gives New every kind of duration (zero, negative,
// tiny, huge) and, when it accepts them, runs the parts that derive timers
// from them: the resolver, a watch, a session and requests. Nothing may
// panic; New either refuses a value with an error or works with it.
func FuzzConfigDurations(f *testing.F) {
	type seed struct{ dial, request, kaTime, kaTimeout, stall int64 }
	for _, s := range []seed{
		{0, 0, 0, 0, 0},
		{0, 0, 0, 0, 5},
		{0, 0, 0, 0, int64(time.Millisecond)},
		{0, 0, 0, 0, int64(100 * time.Millisecond)},
		{1, 1, 1, 1, int64(time.Second)},
		{-1, 0, 0, 0, 0},
		{0, 0, -int64(time.Second), 0, 0},
		{0, int64(time.Microsecond), int64(time.Microsecond), int64(time.Microsecond), int64(time.Hour)},
		{0, 1 << 62, 1 << 62, 1 << 62, 1 << 62},
		{1<<63 - 1, 1<<63 - 1, 1<<63 - 1, 1<<63 - 1, 1<<63 - 1},
	} {
		f.Add(s.dial, s.request, s.kaTime, s.kaTimeout, s.stall)
	}
	srv := etcdtest.Start(f)
	f.Fuzz(func(t *testing.T, dial, request, kaTime, kaTimeout, stall int64) {
		cfg := etcdkit.Config{
			Endpoints:        []string{srv.Endpoint()},
			DialTimeout:      time.Duration(dial),
			RequestTimeout:   time.Duration(request),
			KeepAliveTime:    time.Duration(kaTime),
			KeepAliveTimeout: time.Duration(kaTimeout),
			StallTimeout:     time.Duration(stall),
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := etcdkit.New(ctx, cfg)
		if err != nil {
			return
		}
		defer func() { _ = c.Close() }()

		r, err := c.ResolverBuilder().Build(dsTarget(t, "etcdkit:///svc"), &fakeConn{}, dsBuildOptions)
		if err == nil {
			defer r.Close()
		}
		k := etcdkit.NewKey(c, "fuzz", etcdkit.String())
		w := k.Watch(ctx)
		defer func() { _ = w.Close() }()
		_, _ = k.Put(ctx, "v")
		_, _ = k.Get(ctx)
		if s, err := c.NewSession(ctx, 2*time.Second); err == nil {
			_ = s.Close()
		}
	})
}
