package etcdkit_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// nextEvent waits for the next event of w, failing the test if the watch
// ends or none comes within a generous deadline.
func nextEvent[T any](t testing.TB, w *etcdkit.Watch[T]) etcdkit.Event[T] {
	t.Helper()
	select {
	case ev, ok := <-w.Events():
		require.True(t, ok, "watch ended: %v", w.Err())
		return ev
	case <-time.After(20 * time.Second):
		t.Fatal("no event within 20s")
	}
	panic("unreachable")
}

// TestNamespaceExistingLayouts points clients at keys laid out by another
// tool (a raw clientv3 client), under each form of Namespace, and checks that
// every way of reading them (Get, List, Watch, Cache) finds them, and that
// the library's own keys follow the same layout.
func TestNamespaceExistingLayouts(t *testing.T) {
	srv := etcdtest.Start(t)
	raw := srv.Client(t)
	for _, tc := range []struct {
		ns, root string // root: the etcd key prefix the namespace stands for
	}{
		{"/acc1/", "/acc1/"},
		{"/acc2", "/acc2/"},
		{"acc3", "acc3/"},
		{"acc4/", "acc4/"},
		{"/deep/acc5/", "/deep/acc5/"},
		{"/", "/"},
	} {
		t.Run(tc.ns, func(t *testing.T) {
			ctx := testContext(t, time.Minute)
			_, err := raw.Put(ctx, tc.root+"config/limits", `{"max":100}`)
			require.NoError(t, err)

			c := testClient(t, []string{srv.Endpoint()}, tc.ns)
			assert.Equal(t, tc.root, c.KeyPrefix())
			assert.Equal(t, tc.ns, c.Namespace())

			type limits struct {
				Max int `json:"max"`
			}
			k := etcdkit.NewKey(c, "config/limits", etcdkit.JSON[limits]())
			v, err := k.Get(ctx)
			require.NoError(t, err)
			assert.Equal(t, 100, v.Data.Max)

			p := etcdkit.NewPrefix(c, "config", etcdkit.JSON[limits]())
			entries, _, err := p.List(ctx)
			require.NoError(t, err)
			require.Len(t, entries, 1)
			assert.Equal(t, "limits", entries[0].Name)
			assert.Equal(t, 100, entries[0].Data.Max)

			ca, err := p.Cache(ctx)
			require.NoError(t, err)
			t.Cleanup(func() { _ = ca.Close() })
			waitSynced(t, ca)
			cv, ok := ca.Get("limits")
			require.True(t, ok, "cache holds limits")
			assert.Equal(t, 100, cv.Data.Max)

			kw := k.Watch(ctx)
			t.Cleanup(func() { _ = kw.Close() })
			pw := p.Watch(ctx)
			t.Cleanup(func() { _ = pw.Close() })
			// Changes made by the other tool reach both watches with names
			// relative to the namespace and the prefix.
			for _, ready := range []<-chan struct{}{kw.Synced(), pw.Synced()} {
				select {
				case <-ready:
				case <-ctx.Done():
					t.Fatal("watch never ready")
				}
			}
			_, err = raw.Put(ctx, tc.root+"config/limits", `{"max":200}`)
			require.NoError(t, err)
			ev := nextEvent(t, kw)
			for ev.Value.Max != 200 {
				ev = nextEvent(t, kw)
			}
			assert.Equal(t, "config/limits", ev.Name)
			assert.Equal(t, 200, ev.Value.Max)
			ev = nextEvent(t, pw)
			for ev.Value.Max != 200 {
				ev = nextEvent(t, pw)
			}
			assert.Equal(t, "limits", ev.Name)
			assert.Equal(t, 200, ev.Value.Max)

			// The library's own keys live under the same root.
			svc := etcdkit.NewService(c, "pricing", etcdkit.JSON[struct{}]())
			reg, err := svc.Register(ctx, etcdkit.Instance[struct{}]{ID: "a", Addr: "127.0.0.1:9"}, 5*time.Second)
			require.NoError(t, err)
			t.Cleanup(func() { _ = reg.Close() })
			resp, err := raw.Get(ctx, tc.root+"_etcdkit/service/pricing/a")
			require.NoError(t, err)
			assert.Len(t, resp.Kvs, 1, "instance stored at %s_etcdkit/service/pricing/a", tc.root)
		})
	}
}

// TestNamespaceRefusesEscapes checks that the forms of Namespace that hold
// an empty, "." or ".." segment, or a control character, are still refused,
// so that no namespace reaches outside the one it names.
func TestNamespaceRefusesEscapes(t *testing.T) {
	for _, ns := range []string{"//", "//acc", "/acc//", "acc//", "/../acc", "/acc/../b", "/acc/./", "..", "/..", "/a\x00/", "/a\nb"} {
		t.Run(ns, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: []string{"127.0.0.1:1"}, Namespace: ns})
			if err == nil {
				_ = c.Close()
			}
			require.Error(t, err)
			assert.True(t, errors.Is(err, etcdkit.ErrInvalidName), "got %v, want an ErrInvalidName", err)
		})
	}
}
