package etcdkit_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// TestMyServiceSurvivesAPartition is the README's example of testing a
// service with etcdtest and proxy, the service being a Live configuration
// value: blackholed, it knows its value may be old; healed, it follows
// etcd again.
func TestMyServiceSurvivesAPartition(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithProxy()) // stopped by t.Cleanup
	svc := startMyService(t, srv.ProxyEndpoint())  // your code, through the proxy
	require.Eventually(t, func() bool { return !svc.Stale() }, 30*time.Second, 10*time.Millisecond, "got a stale service, want one synced with etcd")

	srv.Proxy().Blackhole(proxy.Both) // bytes vanish, nothing is closed
	require.Eventually(t, svc.Stale, 30*time.Second, 10*time.Millisecond, "cut off: got a fresh service, want a stale one")

	srv.Proxy().Unblackhole() // cut streams are closed, not resumed corrupted
	require.Eventually(t, func() bool { return !svc.Stale() }, 30*time.Second, 10*time.Millisecond, "healed: got a stale service, want one synced with etcd")
}

// startMyService stands for the service under test: it reads its limits
// from the etcd at endpoint until the test ends.
func startMyService(t *testing.T, endpoint string) *etcdkit.Live[Limits] {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: []string{endpoint}, Namespace: "billing"})
	if err != nil {
		cancel()
		t.Fatalf("got %v, want a client", err)
	}
	limits := etcdkit.NewLive(ctx, etcdkit.NewKey(c, "config/limits", etcdkit.JSON[Limits]()), etcdkit.WithDefault(DefaultLimits))
	t.Cleanup(func() {
		_ = limits.Close()
		_ = c.Close()
		cancel()
	})
	return limits
}
