package etcdkit_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// TestTooLargeIsNotRetryable sends a value above gRPC's default 2 MiB send
// limit but within MaxValueSize. Without the client's gRPC limits following
// MaxValueSize, gRPC refuses it with ResourceExhausted, which read as
// retryable: a caller would retry a request that can never succeed.
func TestTooLargeIsNotRetryable(t *testing.T) {
	big := strings.Repeat("x", 3<<20)

	t.Run("server limit", func(t *testing.T) {
		srv := etcdtest.Start(t) // etcd's default request limit: 1.5 MiB
		c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, MaxValueSize: 8 << 20})
		_, err := etcdkit.NewKey(c, "big", etcdkit.String()).Put(testContext(t, 30*time.Second), big)
		require.Error(t, err)
		assert.ErrorIs(t, err, etcdkit.ErrTooLarge)
		assert.False(t, etcdkit.IsRetryable(err), "IsRetryable(%v) = true, want false", err)
	})

	t.Run("within every limit", func(t *testing.T) {
		srv := etcdtest.Start(t, etcdtest.WithConfig(func(cfg *embed.Config) { cfg.MaxRequestBytes = 10 << 20 }))
		c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, MaxValueSize: 8 << 20})
		ctx := testContext(t, 30*time.Second)
		k := etcdkit.NewKey(c, "big", etcdkit.String())
		w := k.Watch(ctx)
		t.Cleanup(func() { _ = w.Close() })
		_, err := k.Put(ctx, big)
		require.NoError(t, err, "a value within MaxValueSize and the server's limit is sent")
		v, err := k.Get(ctx)
		require.NoError(t, err)
		assert.Len(t, v.Data, len(big))
		ev := nextEvent(t, w)
		assert.Len(t, ev.Value, len(big), "the watch receives the value")
	})
}

// TestGetAboveReceiveLimit reads a value larger than gRPC's default 4 MiB
// receive limit, within MaxValueSize and the server's limit. Without the
// client's receive limit raised on every request, gRPC refuses the answer
// with ResourceExhausted ("received message larger than max") and the Get
// fails with ErrTooLarge for a value the Put stored.
func TestGetAboveReceiveLimit(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithConfig(func(cfg *embed.Config) { cfg.MaxRequestBytes = 10 << 20 }))
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, MaxValueSize: 8 << 20})
	ctx := testContext(t, 30*time.Second)
	k := etcdkit.NewKey(c, "big", etcdkit.String())
	big := strings.Repeat("x", 5<<20)
	_, err := k.Put(ctx, big)
	require.NoError(t, err)
	v, err := k.Get(ctx)
	require.NoError(t, err)
	assert.Len(t, v.Data, len(big))
}

// TestIsRetryableTooLarge checks the predicate on its own: too large is
// never retryable, whatever else the chain holds.
func TestIsRetryableTooLarge(t *testing.T) {
	err := errors.Join(etcdkit.ErrTooLarge, context.DeadlineExceeded)
	assert.False(t, etcdkit.IsRetryable(err), "IsRetryable(%v) = true, want false", err)
}
