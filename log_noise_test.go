package etcdkit_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// warnings renders the WARN and ERROR lines logs holds, one per line.
func warnings(logs *observer.ObservedLogs) []string {
	var out []string
	for _, e := range logs.FilterLevelExact(zapcore.WarnLevel).All() {
		out = append(out, fmt.Sprintf("%s %s %v", e.LoggerName, e.Message, e.ContextMap()))
	}
	for _, e := range logs.FilterLevelExact(zapcore.ErrorLevel).All() {
		out = append(out, fmt.Sprintf("%s %s %v", e.LoggerName, e.Message, e.ContextMap()))
	}
	return out
}

// TestNoWarningsWhenAllIsWell: a client that uses every engine (requests,
// a watch, a Live value, a session, an election, a mutex and a health
// monitor) logs no WARN or ERROR line, clientv3's included, in a healthy
// run, at a normal shutdown (handles closed first, or the Client closed
// under them), and after a cut-off that healed.
func TestNoWarningsWhenAllIsWell(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	for _, tc := range []string{"healthy", "healed", "closed with handles open"} {
		t.Run(tc, func(t *testing.T) {
			core, logs := observer.New(zapcore.InfoLevel)
			c, err := etcdkit.New(testContext(t, time.Minute), etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()},
				Namespace: "quiet-" + tc, StallTimeout: 500 * time.Millisecond, Logger: zap.New(core)})
			require.NoError(t, err)
			ctx, cancel := context.WithCancel(testContext(t, 2*time.Minute))
			key := etcdkit.NewKey(c, "k", etcdkit.JSON[int]())
			_, err = key.Put(ctx, 1)
			require.NoError(t, err)
			w := key.Watch(ctx)
			live := etcdkit.NewLive(ctx, key)
			s, err := c.NewSession(ctx, 2*time.Second)
			require.NoError(t, err)
			l, err := etcdkit.NewElection(c, "e", 2*time.Second).Campaign(ctx, "a")
			require.NoError(t, err)
			lk, err := etcdkit.NewMutex(c, "m", 2*time.Second).Lock(ctx)
			require.NoError(t, err)
			hm := etcdkit.NewHealthMonitor(c, etcdkit.WithInterval(100*time.Millisecond))
			waitSynced(t, w)
			untilGet(t, live.Get, 1)
			waitHealth(t, hm, "healthy", isStatus(etcdkit.Healthy))

			if tc == "healed" {
				srv.Proxy().Blackhole(proxy.Both)
				require.Eventually(t, live.Stale, time.Minute, 5*time.Millisecond)
				srv.Proxy().Unblackhole()
				ctx := testContext(t, time.Minute)
				for {
					if _, err = key.Put(ctx, 2); err == nil || ctx.Err() != nil {
						break
					}
				}
				require.NoError(t, err)
				untilGet(t, live.Get, 2)
				require.Eventually(t, func() bool { return !live.Stale() }, time.Minute, 5*time.Millisecond)
				waitHealth(t, hm, "healthy", isStatus(etcdkit.Healthy))
			} else {
				_, err = key.Put(ctx, 2)
				require.NoError(t, err)
				untilGet(t, live.Get, 2)
			}

			if tc != "closed with handles open" {
				// A normal shutdown: handles first, then the client.
				_ = lk.Unlock(ctx)
				_ = l.Resign(ctx)
				_ = s.Close()
				_ = hm.Close()
				_ = live.Close()
				_ = w.Close()
				cancel()
			}
			// Otherwise a defer c.Close() with everything still running.
			require.NoError(t, c.Close())
			cancel()
			if ws := warnings(logs); len(ws) > 0 {
				t.Errorf("%d WARN or ERROR lines:\n%s", len(ws), strings.Join(ws, "\n"))
			}
		})
	}
}
