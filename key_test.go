package etcdkit_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

type limits struct {
	MaxConns int    `json:"max_conns"`
	Mode     string `json:"mode,omitempty"`
}

func TestKeyCRUD(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "crud")
	raw := srv.Client(t)
	ctx := testContext(t, time.Minute)
	// Every subtest works on keys of its own and writes the state it starts
	// from, so that none depends on another having run before it.
	keyWith := func(t *testing.T, name string, v limits) *etcdkit.Key[limits] {
		t.Helper()
		k := etcdkit.NewKey(c, name, etcdkit.JSON[limits]())
		_, err := k.Put(ctx, v)
		require.NoError(t, err)
		return k
	}

	t.Run("get absent", func(t *testing.T) {
		k := etcdkit.NewKey(c, "config/absent", etcdkit.JSON[limits]())
		_, err := k.Get(ctx)
		require.ErrorIs(t, err, etcdkit.ErrNotFound)
	})

	t.Run("put then get", func(t *testing.T) {
		k := etcdkit.NewKey(c, "config/limits", etcdkit.JSON[limits]())
		rev, err := k.Put(ctx, limits{MaxConns: 10})
		require.NoError(t, err)
		v, err := k.Get(ctx)
		require.NoError(t, err)
		assert.Equal(t, limits{MaxConns: 10}, v.Data)
		assert.Equal(t, rev, v.Revision)
		assert.Equal(t, rev, v.CreateRevision)
		assert.Equal(t, int64(1), v.Version)
		assert.Equal(t, int64(0), v.Lease)

		// The key lives under the namespace, as JSON.
		resp, err := raw.Get(ctx, "crud/config/limits")
		require.NoError(t, err)
		require.Len(t, resp.Kvs, 1)
		assert.JSONEq(t, `{"max_conns":10}`, string(resp.Kvs[0].Value))
	})

	t.Run("create if absent", func(t *testing.T) {
		fresh := etcdkit.NewKey(c, "config/fresh", etcdkit.String())
		rev, err := fresh.Create(ctx, "one")
		require.NoError(t, err)
		_, err = fresh.Create(ctx, "two")
		require.ErrorIs(t, err, etcdkit.ErrExists)
		var ce *etcdkit.ConflictError[string]
		require.ErrorAs(t, err, &ce)
		assert.True(t, ce.Exists)
		assert.Equal(t, "one", ce.Current.Data)
		assert.Equal(t, rev, ce.Current.Revision)
		v, err := fresh.Get(ctx)
		require.NoError(t, err)
		assert.Equal(t, "one", v.Data, "Create must not overwrite")
	})

	t.Run("compare and swap", func(t *testing.T) {
		k := keyWith(t, "config/cas", limits{MaxConns: 10})
		v, err := k.Get(ctx)
		require.NoError(t, err)
		rev, err := k.CompareAndSwap(ctx, limits{MaxConns: 20}, v.Revision)
		require.NoError(t, err)
		assert.Greater(t, rev, v.Revision)

		// The old revision no longer matches: the conflict carries the
		// current value so the caller can retry without reading.
		_, err = k.CompareAndSwap(ctx, limits{MaxConns: 30}, v.Revision)
		require.ErrorIs(t, err, etcdkit.ErrConflict)
		require.NotErrorIs(t, err, etcdkit.ErrExists)
		var ce *etcdkit.ConflictError[limits]
		require.ErrorAs(t, err, &ce)
		assert.Equal(t, limits{MaxConns: 20}, ce.Current.Data)
		assert.Equal(t, rev, ce.Current.Revision)
		assert.Equal(t, v.Revision, ce.Expected)
		assert.Contains(t, ce.Error(), "config/cas")

		rev2, err := k.CompareAndSwap(ctx, limits{MaxConns: 30}, ce.Current.Revision)
		require.NoError(t, err)
		assert.Greater(t, rev2, rev)
	})

	t.Run("compare and swap on absent key", func(t *testing.T) {
		gone := etcdkit.NewKey(c, "config/cas-absent", etcdkit.String())
		_, err := gone.CompareAndSwap(ctx, "x", 5)
		var ce *etcdkit.ConflictError[string]
		require.ErrorAs(t, err, &ce)
		assert.False(t, ce.Exists)
		_, err = gone.CompareAndSwap(ctx, "x", 0)
		require.NoError(t, err, "expected revision 0 means absent")
	})

	t.Run("update", func(t *testing.T) {
		k := keyWith(t, "config/update", limits{MaxConns: 30})
		v, err := k.Update(ctx, func(cur limits, exists bool) (limits, error) {
			require.True(t, exists)
			cur.MaxConns++
			cur.Mode = "strict"
			return cur, nil
		})
		require.NoError(t, err)
		assert.Equal(t, limits{MaxConns: 31, Mode: "strict"}, v.Data)
		got, err := k.Get(ctx)
		require.NoError(t, err)
		assert.Equal(t, v, got)

		// An absent key reaches fn as the zero value with exists false.
		n := etcdkit.NewKey(c, "counters/new", etcdkit.JSON[int]())
		v2, err := n.Update(ctx, func(cur int, exists bool) (int, error) {
			assert.False(t, exists)
			return cur + 1, nil
		})
		require.NoError(t, err)
		assert.Equal(t, 1, v2.Data)
		assert.Equal(t, int64(1), v2.Version)
		assert.Equal(t, v2.Revision, v2.CreateRevision)
	})

	t.Run("update error stores nothing", func(t *testing.T) {
		k := keyWith(t, "config/update-error", limits{MaxConns: 10})
		before, err := k.Get(ctx)
		require.NoError(t, err)
		boom := errors.New("refused")
		_, err = k.Update(ctx, func(cur limits, _ bool) (limits, error) { return cur, boom })
		require.ErrorIs(t, err, boom)
		after, err := k.Get(ctx)
		require.NoError(t, err)
		assert.Equal(t, before, after)
	})

	t.Run("delete", func(t *testing.T) {
		k := keyWith(t, "config/delete", limits{MaxConns: 10})
		require.NoError(t, k.Delete(ctx))
		_, err := k.Get(ctx)
		require.ErrorIs(t, err, etcdkit.ErrNotFound)
		require.NoError(t, k.Delete(ctx), "deleting an absent key is not an error")
	})
}

func TestKeyConcurrentUpdate(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "concurrent")
	ctx := testContext(t, 2*time.Minute)
	k := etcdkit.NewKey(c, "counter", etcdkit.JSON[int]())

	const workers, increments = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers*increments)
	for range workers {
		wg.Go(func() {
			for range increments {
				_, err := k.Update(ctx, func(cur int, _ bool) (int, error) { return cur + 1, nil })
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("update: %v", err)
	}
	v, err := k.Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, workers*increments, v.Data, "got %d, want %d", v.Data, workers*increments)
	assert.Equal(t, int64(workers*increments), v.Version)
}

func TestKeyUpdateNeverSeesTornValue(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "torn")
	raw := srv.Client(t)
	ctx := testContext(t, time.Minute)
	k := etcdkit.NewKey(c, "cfg", etcdkit.JSON[limits]())
	_, err := k.Put(ctx, limits{MaxConns: 1})
	require.NoError(t, err)

	// Another tool writes garbage: Update must report it and not call fn.
	_, err = raw.Put(ctx, "torn/cfg", "{not json")
	require.NoError(t, err)
	called := false
	_, err = k.Update(ctx, func(cur limits, _ bool) (limits, error) { called = true; return cur, nil })
	var de *etcdkit.DecodeError
	require.ErrorAs(t, err, &de)
	assert.Equal(t, "cfg", de.Key)
	assert.False(t, called)

	// A conflict whose winner wrote garbage is reported the same way.
	_, err = k.Put(ctx, limits{MaxConns: 2})
	require.NoError(t, err)
	first := true
	_, err = k.Update(ctx, func(cur limits, _ bool) (limits, error) {
		if first {
			first = false
			_, perr := raw.Put(ctx, "torn/cfg", "\x00garbage")
			require.NoError(t, perr)
		} else {
			t.Error("fn called again after the value became undecodable")
		}
		return cur, nil
	})
	require.ErrorAs(t, err, &de)
}

func TestKeyDecodeErrors(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "garbage")
	raw := srv.Client(t)
	ctx := testContext(t, time.Minute)

	_, err := raw.Put(ctx, "garbage/cfg", "\xff\xfe not json")
	require.NoError(t, err)

	for name, get := range map[string]func() error{
		"json":   func() error { _, err := etcdkit.NewKey(c, "cfg", etcdkit.JSON[limits]()).Get(ctx); return err },
		"string": func() error { _, err := etcdkit.NewKey(c, "cfg", etcdkit.String()).Get(ctx); return err },
		"proto": func() error {
			_, err := etcdkit.NewKey(c, "cfg", etcdkit.Proto[*wrapperspb.StringValue]()).Get(ctx)
			return err
		},
	} {
		t.Run(name, func(t *testing.T) {
			err := get()
			var de *etcdkit.DecodeError
			require.ErrorAs(t, err, &de)
			assert.Equal(t, "cfg", de.Key)
			assert.NotZero(t, de.Revision)
			assert.Contains(t, err.Error(), `"cfg"`)
		})
	}
	// Bytes takes anything.
	v, err := etcdkit.NewKey(c, "cfg", etcdkit.Bytes()).Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, []byte("\xff\xfe not json"), v.Data)
}

func TestKeyCodecs(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "codecs")
	ctx := testContext(t, time.Minute)

	pk := etcdkit.NewKey(c, "proto", etcdkit.Proto[*wrapperspb.StringValue]())
	_, err := pk.Put(ctx, wrapperspb.String("hello"))
	require.NoError(t, err)
	pv, err := pk.Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, "hello", pv.Data.GetValue())

	bk := etcdkit.NewKey(c, "bytes", etcdkit.Bytes())
	_, err = bk.Put(ctx, []byte{0, 1, 2})
	require.NoError(t, err)
	bv, err := bk.Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, []byte{0, 1, 2}, bv.Data)
}

func TestKeyTooLarge(t *testing.T) {
	srv := etcdtest.Start(t)
	raw := srv.Client(t)
	ctx := testContext(t, time.Minute)

	t.Run("default limit", func(t *testing.T) {
		c := testClient(t, []string{srv.Endpoint()}, "big")
		k := etcdkit.NewKey(c, "blob", etcdkit.Bytes())
		_, err := k.Put(ctx, make([]byte, etcdkit.DefaultMaxValueSize+1))
		require.ErrorIs(t, err, etcdkit.ErrTooLarge)
		for name, op := range map[string]func() error{
			"create": func() error { _, err := k.Create(ctx, make([]byte, 2<<20)); return err },
			"cas":    func() error { _, err := k.CompareAndSwap(ctx, make([]byte, 2<<20), 0); return err },
			"update": func() error {
				_, err := k.Update(ctx, func([]byte, bool) ([]byte, error) { return make([]byte, 2<<20), nil })
				return err
			},
		} {
			require.ErrorIs(t, op(), etcdkit.ErrTooLarge, name)
		}
		// Nothing was sent.
		resp, err := raw.Get(ctx, "big/blob")
		require.NoError(t, err)
		assert.Empty(t, resp.Kvs)
	})

	t.Run("configured limit", func(t *testing.T) {
		c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, Namespace: "small", MaxValueSize: 8})
		k := etcdkit.NewKey(c, "s", etcdkit.String())
		_, err := k.Put(ctx, "12345678")
		require.NoError(t, err)
		_, err = k.Put(ctx, "123456789")
		require.ErrorIs(t, err, etcdkit.ErrTooLarge)
		assert.Contains(t, err.Error(), "9 bytes")
		v, err := k.Get(ctx)
		require.NoError(t, err)
		assert.Equal(t, "12345678", v.Data, "a refused put loses nothing")
	})

	t.Run("server limit", func(t *testing.T) {
		// A value under our limit but over the server's request limit maps
		// to ErrTooLarge as well.
		c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, Namespace: "srvbig", MaxValueSize: 4 << 20})
		k := etcdkit.NewKey(c, "blob", etcdkit.Bytes())
		_, err := k.Put(ctx, make([]byte, 1800<<10))
		require.ErrorIs(t, err, etcdkit.ErrTooLarge, "over etcd's request limit")
		_, err = k.Put(ctx, make([]byte, 3<<20))
		require.ErrorIs(t, err, etcdkit.ErrTooLarge, "over gRPC's message limit")
	})
}

func TestKeyInvalidNames(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "names")
	ctx := testContext(t, time.Minute)

	for _, name := range []string{"", "..", ".", "../escape", "a/../b", "a/./b", "/abs", "trail/", "a//b", "ctl\x00x", "nl\nx", "del\x7f", "bad\xffutf8", strings.Repeat("x", 5000)} {
		t.Run(fmt.Sprintf("%q", name), func(t *testing.T) {
			k := etcdkit.NewKey(c, name, etcdkit.String())
			require.ErrorIs(t, k.Validate(), etcdkit.ErrInvalidName)
			_, err := k.Get(ctx)
			require.ErrorIs(t, err, etcdkit.ErrInvalidName)
			_, err = k.Put(ctx, "v")
			require.ErrorIs(t, err, etcdkit.ErrInvalidName)
			_, err = k.Create(ctx, "v")
			require.ErrorIs(t, err, etcdkit.ErrInvalidName)
			_, err = k.CompareAndSwap(ctx, "v", 1)
			require.ErrorIs(t, err, etcdkit.ErrInvalidName)
			_, err = k.Update(ctx, func(s string, _ bool) (string, error) { return s, nil })
			require.ErrorIs(t, err, etcdkit.ErrInvalidName)
			require.ErrorIs(t, k.Delete(ctx), etcdkit.ErrInvalidName)

			p := etcdkit.NewPrefix(c, name, etcdkit.String())
			_, _, err = p.List(ctx)
			require.ErrorIs(t, err, etcdkit.ErrInvalidName)
			_, err = etcdkit.NewPrefix(c, "ok", etcdkit.String()).Key(name).Get(ctx)
			require.ErrorIs(t, err, etcdkit.ErrInvalidName)
		})
	}
	for _, name := range []string{"a", "a/b/c", "with space", "dots.in.name", "..x", "x..", "ünïcode"} {
		require.NoError(t, etcdkit.NewKey(c, name, etcdkit.String()).Validate(), name)
	}

	t.Run("nil codec and client", func(t *testing.T) {
		k := etcdkit.NewKey[string](c, "x", nil)
		_, err := k.Put(ctx, "v")
		require.Error(t, err)
		k = etcdkit.NewKey(nil, "x", etcdkit.String())
		_, err = k.Get(ctx)
		require.Error(t, err)
		_, _, err = etcdkit.NewPrefix[string](c, "p", nil).List(ctx)
		require.Error(t, err)
	})
}

func TestKeyClosedAndCancelled(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "closed")
	k := etcdkit.NewKey(c, "k", etcdkit.String())

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := k.Put(cancelled, "v")
	require.ErrorIs(t, err, context.Canceled)
	_, err = k.Get(cancelled)
	require.ErrorIs(t, err, context.Canceled)

	require.NoError(t, c.Close())
	require.NoError(t, c.Close(), "Close is idempotent")
	ctx := testContext(t, time.Minute)
	_, err = k.Put(ctx, "v")
	require.ErrorIs(t, err, etcdkit.ErrClosed)
	_, err = k.Get(ctx)
	require.ErrorIs(t, err, etcdkit.ErrClosed)
	require.ErrorIs(t, k.Delete(ctx), etcdkit.ErrClosed)
	_, _, err = etcdkit.NewPrefix(c, "p", etcdkit.String()).List(ctx)
	require.ErrorIs(t, err, etcdkit.ErrClosed)
}

func TestNamespaceIsolation(t *testing.T) {
	srv := etcdtest.Start(t)
	a := testClient(t, []string{srv.Endpoint()}, "team-a")
	b := testClient(t, []string{srv.Endpoint()}, "team-a2")
	nested := testClient(t, []string{srv.Endpoint()}, "team-a/sub")
	ctx := testContext(t, time.Minute)

	_, err := etcdkit.NewKey(a, "cfg", etcdkit.String()).Put(ctx, "from a")
	require.NoError(t, err)
	_, err = etcdkit.NewKey(b, "cfg", etcdkit.String()).Put(ctx, "from b")
	require.NoError(t, err)

	va, err := etcdkit.NewKey(a, "cfg", etcdkit.String()).Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, "from a", va.Data)
	vb, err := etcdkit.NewKey(b, "cfg", etcdkit.String()).Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, "from b", vb.Data)
	_, err = etcdkit.NewKey(nested, "cfg", etcdkit.String()).Get(ctx)
	require.ErrorIs(t, err, etcdkit.ErrNotFound)

	// Neither namespace sees the other's keys in a listing.
	_, err = etcdkit.NewKey(a, "svc/x", etcdkit.String()).Put(ctx, "ax")
	require.NoError(t, err)
	_, err = etcdkit.NewKey(b, "svc/y", etcdkit.String()).Put(ctx, "by")
	require.NoError(t, err)
	la, _, err := etcdkit.NewPrefix(a, "svc", etcdkit.String()).List(ctx)
	require.NoError(t, err)
	require.Len(t, la, 1)
	assert.Equal(t, "x", la[0].Name)
	lb, _, err := etcdkit.NewPrefix(b, "svc", etcdkit.String()).List(ctx)
	require.NoError(t, err)
	require.Len(t, lb, 1)
	assert.Equal(t, "y", lb[0].Name)
}

func TestConfigErrors(t *testing.T) {
	ctx := testContext(t, time.Minute)
	for name, cfg := range map[string]etcdkit.Config{
		"no endpoints":       {},
		"empty endpoint":     {Endpoints: []string{""}},
		"namespace dotdot":   {Endpoints: []string{"127.0.0.1:1"}, Namespace: ".."},
		"namespace slashes":  {Endpoints: []string{"127.0.0.1:1"}, Namespace: "//app"},
		"namespace trailing": {Endpoints: []string{"127.0.0.1:1"}, Namespace: "app//"},
		"endpoint no port":   {Endpoints: []string{"127.0.0.1"}},
		"stall too short":    {Endpoints: []string{"127.0.0.1:1"}, StallTimeout: time.Millisecond},
		"negative timeout":   {Endpoints: []string{"127.0.0.1:1"}, RequestTimeout: -time.Second},
		"negative size":      {Endpoints: []string{"127.0.0.1:1"}, MaxValueSize: -1},
		"user without pass":  {Endpoints: []string{"127.0.0.1:1"}, Username: "root"},
	} {
		t.Run(name, func(t *testing.T) {
			start := time.Now()
			_, err := etcdkit.New(ctx, cfg)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "etcdkit: config")
			assert.Less(t, time.Since(start), time.Second, "invalid config must fail before dialling")
		})
	}

	t.Run("unreachable", func(t *testing.T) {
		srv := etcdtest.Start(t)
		ep := srv.Endpoint()
		srv.Stop()
		_, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: []string{ep}, DialTimeout: 500 * time.Millisecond})
		require.Error(t, err)
		assert.Contains(t, err.Error(), ep)
	})
}

func TestWrap(t *testing.T) {
	srv := etcdtest.Start(t)
	raw := srv.Client(t)
	ctx := testContext(t, time.Minute)

	_, err := etcdkit.Wrap(nil, etcdkit.Config{})
	require.Error(t, err)
	_, err = etcdkit.Wrap(raw, etcdkit.Config{Namespace: "a/../b"})
	require.ErrorIs(t, err, etcdkit.ErrInvalidName)

	c, err := etcdkit.Wrap(raw, etcdkit.Config{Namespace: "wrapped"})
	require.NoError(t, err)
	assert.Same(t, raw, c.Raw())
	assert.Equal(t, "wrapped", c.Namespace())
	_, err = etcdkit.NewKey(c, "k", etcdkit.String()).Put(ctx, "v")
	require.NoError(t, err)
	require.NoError(t, c.Close())

	// The raw client is the caller's: still usable after Close.
	resp, err := raw.Get(ctx, "wrapped/k")
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	assert.Equal(t, "v", string(resp.Kvs[0].Value))
}

func TestIsRetryable(t *testing.T) {
	assert.False(t, etcdkit.IsRetryable(nil))
	assert.False(t, etcdkit.IsRetryable(etcdkit.ErrClosed))
	assert.False(t, etcdkit.IsRetryable(context.Canceled))
	assert.True(t, etcdkit.IsRetryable(fmt.Errorf("x: %w", context.DeadlineExceeded)))
	assert.False(t, etcdkit.IsRetryable(etcdkit.ErrNotFound))

	// A stopped member: the request times out and may be retried.
	srv := etcdtest.Start(t)
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, RequestTimeout: 300 * time.Millisecond})
	srv.Stop()
	_, err := etcdkit.NewKey(c, "k", etcdkit.String()).Get(context.Background())
	require.Error(t, err)
	assert.True(t, etcdkit.IsRetryable(err), "got %v", err)
}
