package etcdkit_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// requireClearError checks an error chain's text: the package prefix once,
// no key of the library's own layout, and every word of want.
func requireClearError(t *testing.T, err error, want ...string) {
	t.Helper()
	require.Error(t, err)
	msg := err.Error()
	t.Log(msg)
	assert.Equal(t, 1, strings.Count(msg, "etcdkit:"), "got %q, want the prefix once", msg)
	assert.NotContains(t, msg, "_etcdkit", "got %q, want no internal key", msg)
	for _, w := range want {
		assert.Contains(t, msg, w)
	}
}

// TestErrorTextNamesUserObjects goes through the calls whose errors wrap
// other errors of the package, and checks their text.
func TestErrorTextNamesUserObjects(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "errs")
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	ctx := testContext(t, time.Minute)

	svc := etcdkit.NewService(c, "pricing", etcdkit.JSON[string]())
	k := etcdkit.NewKey(c, "config/limits", etcdkit.JSON[int]())

	t.Run("register cancelled", func(t *testing.T) {
		_, err := svc.Register(cancelled, etcdkit.Instance[string]{ID: "x", Addr: "127.0.0.1:9"}, 5*time.Second)
		requireClearError(t, err, `"x"`, `"pricing"`, "context canceled")
		assert.ErrorIs(t, err, context.Canceled)
	})
	t.Run("register taken", func(t *testing.T) {
		reg, err := svc.Register(ctx, etcdkit.Instance[string]{ID: "y", Addr: "127.0.0.1:9"}, 5*time.Second)
		require.NoError(t, err)
		t.Cleanup(func() { _ = reg.Close() })
		_, err = svc.Register(ctx, etcdkit.Instance[string]{ID: "y", Addr: "127.0.0.1:10"}, 5*time.Second)
		requireClearError(t, err, `"y"`, `"pricing"`)
		assert.ErrorIs(t, err, etcdkit.ErrExists)
	})
	t.Run("register bad ID", func(t *testing.T) {
		_, err := svc.Register(ctx, etcdkit.Instance[string]{ID: "a/b", Addr: "127.0.0.1:9"}, 5*time.Second)
		requireClearError(t, err, `"pricing"`)
		assert.ErrorIs(t, err, etcdkit.ErrInvalidInstance)
		assert.ErrorIs(t, err, etcdkit.ErrInvalidName)
	})
	t.Run("register too large", func(t *testing.T) {
		_, err := svc.Register(ctx, etcdkit.Instance[string]{ID: "z", Addr: "127.0.0.1:9", Meta: strings.Repeat("m", 2<<20)}, 5*time.Second)
		requireClearError(t, err, `"z"`, `"pricing"`)
		assert.ErrorIs(t, err, etcdkit.ErrTooLarge)
	})
	t.Run("registration update", func(t *testing.T) {
		reg, err := svc.Register(ctx, etcdkit.Instance[string]{ID: "u", Addr: "127.0.0.1:9"}, 5*time.Second)
		require.NoError(t, err)
		t.Cleanup(func() { _ = reg.Close() })
		err = reg.Update(cancelled, "m")
		requireClearError(t, err, `"u"`, `"pricing"`, "context canceled")
		assert.ErrorIs(t, err, context.Canceled)
		err = reg.Update(ctx, strings.Repeat("m", 2<<20))
		requireClearError(t, err, `"u"`, `"pricing"`)
		assert.ErrorIs(t, err, etcdkit.ErrTooLarge)
		require.NoError(t, reg.Close())
		err = reg.Update(ctx, "m")
		requireClearError(t, err, `"u"`, `"pricing"`)
		assert.ErrorIs(t, err, etcdkit.ErrClosed)
	})
	t.Run("get cancelled", func(t *testing.T) {
		_, err := k.Get(cancelled)
		requireClearError(t, err, `"config/limits"`, "context canceled")
		assert.ErrorIs(t, err, context.Canceled)
	})
	t.Run("put cancelled", func(t *testing.T) {
		_, err := k.Put(cancelled, 1)
		requireClearError(t, err, `"config/limits"`, "context canceled")
		assert.ErrorIs(t, err, context.Canceled)
	})
	t.Run("ephemeral cancelled", func(t *testing.T) {
		_, err := etcdkit.NewEphemeral(cancelled, k, 1, 5*time.Second)
		requireClearError(t, err, `"config/limits"`, "context canceled")
		assert.ErrorIs(t, err, context.Canceled)
	})
	t.Run("campaign cancelled", func(t *testing.T) {
		_, err := etcdkit.NewElection(c, "leader", 5*time.Second).Campaign(cancelled, "me")
		requireClearError(t, err, `"leader"`, "context canceled")
		assert.ErrorIs(t, err, context.Canceled)
	})
	t.Run("invalid name", func(t *testing.T) {
		_, err := etcdkit.NewKey(c, "a//b", etcdkit.JSON[int]()).Get(ctx)
		requireClearError(t, err, `"a//b"`)
		assert.ErrorIs(t, err, etcdkit.ErrInvalidName)
	})

	closed := testClient(t, []string{srv.Endpoint()}, "errs")
	require.NoError(t, closed.Close())
	t.Run("track closed", func(t *testing.T) {
		_, err := etcdkit.NewService(closed, "pricing", etcdkit.JSON[string]()).Track(ctx)
		requireClearError(t, err, `"pricing"`)
		assert.ErrorIs(t, err, etcdkit.ErrClosed)
	})
	t.Run("session closed", func(t *testing.T) {
		_, err := closed.NewSession(ctx, 5*time.Second)
		requireClearError(t, err)
		assert.ErrorIs(t, err, etcdkit.ErrClosed)
	})
	t.Run("list closed", func(t *testing.T) {
		_, _, err := etcdkit.NewPrefix(closed, "config", etcdkit.JSON[int]()).List(ctx)
		requireClearError(t, err, `"config"`)
		assert.ErrorIs(t, err, etcdkit.ErrClosed)
	})
	t.Run("put closed", func(t *testing.T) {
		_, err := etcdkit.NewKey(closed, "config/limits", etcdkit.JSON[int]()).Put(ctx, 1)
		requireClearError(t, err, `"config/limits"`)
		assert.ErrorIs(t, err, etcdkit.ErrClosed)
	})
}

// TestAsConflict checks that a conflict can be inspected without knowing the
// key's type, through errors that wrap it, for every call that reports one.
func TestAsConflict(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "conflicts")
	ctx := testContext(t, time.Minute)
	k := etcdkit.NewKey(c, "config/limits", etcdkit.JSON[int]())
	created, err := k.Create(ctx, 1)
	require.NoError(t, err)

	_, err = k.Create(ctx, 2)
	got, ok := etcdkit.AsConflict(fmt.Errorf("reload limits: %w", err))
	require.True(t, ok, "Create on a present key: got %v, want a conflict", err)
	assert.ErrorIs(t, err, etcdkit.ErrExists)
	assert.Equal(t, "config/limits", got.Key)
	assert.True(t, got.Exists)
	assert.Equal(t, created, got.ModRevision, "the key's mod revision")
	assert.Equal(t, created, got.CreateRevision)
	assert.Equal(t, int64(1), got.Version)
	assert.GreaterOrEqual(t, got.Revision, created, "the revision of the failed attempt")

	_, err = k.CompareAndSwap(ctx, 3, created-1)
	got, ok = etcdkit.AsConflict(fmt.Errorf("outer: %w", fmt.Errorf("inner: %w", err)))
	require.True(t, ok, "CompareAndSwap with a stale revision: got %v, want a conflict", err)
	assert.ErrorIs(t, err, etcdkit.ErrConflict)
	assert.Equal(t, etcdkit.Conflict{Key: "config/limits", Expected: created - 1, Exists: true, ModRevision: created,
		CreateRevision: created, Version: 1, Revision: got.Revision}, got)

	absent := etcdkit.NewKey(c, "config/absent", etcdkit.String())
	_, err = absent.CompareAndSwap(ctx, "x", created)
	got, ok = etcdkit.AsConflict(fmt.Errorf("wrapped: %w", err))
	require.True(t, ok, "CompareAndSwap on an absent key: got %v, want a conflict", err)
	assert.Equal(t, etcdkit.Conflict{Key: "config/absent", Expected: created, Revision: got.Revision}, got,
		"an absent key has no metadata")

	svc := etcdkit.NewService(c, "pricing", etcdkit.JSON[string]())
	inst := etcdkit.Instance[string]{ID: "node-1", Addr: "127.0.0.1:1001", Meta: "first"}
	reg, err := svc.Register(ctx, inst, 2*time.Second)
	require.NoError(t, err)
	defer reg.Close()
	inst.Addr = "127.0.0.1:2002"
	_, err = svc.Register(ctx, inst, 2*time.Second)
	got, ok = etcdkit.AsConflict(fmt.Errorf("start pricing: %w", err))
	require.True(t, ok, "Register of a taken ID: got %v, want a conflict", err)
	assert.ErrorIs(t, err, etcdkit.ErrExists)
	assert.Equal(t, "node-1", got.Key, "a refused registration's Key is the instance ID")
	assert.True(t, got.Exists)
	assert.Equal(t, int64(reg.Lease()), got.Lease, "the holder's lease")

	for _, err := range []error{nil, etcdkit.ErrExists, etcdkit.ErrConflict, fmt.Errorf("x: %w", etcdkit.ErrNotFound)} {
		_, ok := etcdkit.AsConflict(err)
		assert.False(t, ok, "AsConflict(%v): got true, want false", err)
	}
}
