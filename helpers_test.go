package etcdkit_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
)

// testClient connects an etcdkit client to endpoints under namespace ns and
// closes it when the test ends.
func testClient(t testing.TB, endpoints []string, ns string) *etcdkit.Client {
	t.Helper()
	return testClientConfig(t, etcdkit.Config{Endpoints: endpoints, Namespace: ns})
}

// testClientConfig connects an etcdkit client with cfg and closes it when the
// test ends.
func testClientConfig(t testing.TB, cfg etcdkit.Config) *etcdkit.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := etcdkit.New(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// testContext returns a context that ends with the test or after d.
func testContext(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
