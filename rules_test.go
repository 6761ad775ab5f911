package etcdkit_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// TestMakingRule checks the first rule of the package documentation on
// every constructor: a view that cannot start comes back already ended
// (Prefix.Cache and Service.Track: an error and no handle), a holding that
// is not granted returns an error and no handle, a description with bad
// arguments is never nil and says what is wrong from Validate.
func TestMakingRule(t *testing.T) {
	srv := etcdtest.Start(t)
	live := testClient(t, []string{srv.Endpoint()}, "rules")
	closed, err := etcdkit.New(testContext(t, 20*time.Second), etcdkit.Config{Endpoints: []string{srv.Endpoint()}, Namespace: "rules"})
	require.NoError(t, err)
	require.NoError(t, closed.Close())
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	const ttl = 2 * time.Second

	for _, tc := range []struct {
		name string
		c    *etcdkit.Client
		ctx  context.Context
		want error
	}{
		{"closed client", closed, context.Background(), etcdkit.ErrClosed},
		{"ended ctx", live, ended, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := etcdkit.NewKey(tc.c, "k", etcdkit.String())
			prefix := etcdkit.NewPrefix(tc.c, "p", etcdkit.String())
			svc := etcdkit.NewService(tc.c, "s", etcdkit.String())
			el := etcdkit.NewElection(tc.c, "e", ttl)
			views := map[string]handle{
				"Key.Watch":         key.Watch(tc.ctx),
				"Prefix.Watch":      prefix.Watch(tc.ctx, etcdkit.WithInitial()),
				"Election.Observe":  el.Observe(tc.ctx),
				"NewLive":           etcdkit.NewLive(tc.ctx, key),
				"NewLiveMap":        etcdkit.NewLiveMap(tc.ctx, prefix),
				"NewHealthMonitor":  etcdkit.NewHealthMonitor(tc.c),
				"an invalid option": key.Watch(tc.ctx, etcdkit.WithBufferSize(-1)),
			}
			for name, h := range views {
				if name == "NewHealthMonitor" && tc.c == live {
					continue // takes no ctx: an ended one cannot end it
				}
				require.NotNil(t, h, name)
				waitDone(t, h.Done(), name)
				if name == "an invalid option" {
					require.ErrorContains(t, h.Err(), "size must be positive", name)
				} else {
					require.ErrorIs(t, h.Err(), tc.want, name)
				}
				require.NoError(t, h.Close(), name)
			}

			ca, err := prefix.Cache(tc.ctx)
			require.ErrorIs(t, err, tc.want, "Prefix.Cache")
			require.Nil(t, ca, "Prefix.Cache")
			tr, err := svc.Track(tc.ctx)
			require.ErrorIs(t, err, tc.want, "Service.Track")
			require.Nil(t, tr, "Service.Track")

			holdings := map[string]func() (handle, error){
				"Client.NewSession": func() (handle, error) { return nilIfErr(tc.c.NewSession(tc.ctx, ttl)) },
				"NewEphemeral":      func() (handle, error) { return nilIfErr(etcdkit.NewEphemeral(tc.ctx, key, "v", ttl)) },
				"Service.Register": func() (handle, error) {
					return nilIfErr(svc.Register(tc.ctx, etcdkit.Instance[string]{ID: "i", Addr: "127.0.0.1:1"}, ttl))
				},
				"Election.Campaign": func() (handle, error) { return nilIfErr(el.Campaign(tc.ctx, "a")) },
				"Mutex.Lock":        func() (handle, error) { return nilIfErr(etcdkit.NewMutex(tc.c, "m", ttl).Lock(tc.ctx)) },
				"Mutex.TryLock":     func() (handle, error) { return nilIfErr(etcdkit.NewMutex(tc.c, "m", ttl).TryLock(tc.ctx)) },
				"Semaphore.Acquire": func() (handle, error) { return nilIfErr(etcdkit.NewSemaphore(tc.c, "s", 2, ttl).Acquire(tc.ctx)) },
				"Semaphore.TryAcquire": func() (handle, error) {
					return nilIfErr(etcdkit.NewSemaphore(tc.c, "s", 2, ttl).TryAcquire(tc.ctx))
				},
			}
			for name, f := range holdings {
				h, err := f()
				require.Error(t, err, name)
				require.True(t, errors.Is(err, tc.want) || errors.Is(err, context.DeadlineExceeded),
					"%s: got %v, want %v", name, err, tc.want)
				require.Nil(t, h, name)
			}
		})
	}

	t.Run("subscription of an ended cache", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		ca, err := etcdkit.NewPrefix(live, "p", etcdkit.String()).Cache(ctx)
		require.NoError(t, err)
		cancel()
		waitDone(t, ca.Done(), "cache")
		w := ca.Subscribe()
		waitDone(t, w.Done(), "subscription")
		require.ErrorIs(t, w.Err(), context.Canceled)
		require.NoError(t, w.Close())
	})

	t.Run("descriptions", func(t *testing.T) {
		for name, v := range map[string]interface{ Validate() error }{
			"NewKey":       etcdkit.NewKey(live, "a//b", etcdkit.String()),
			"NewPrefix":    etcdkit.NewPrefix(live, "../p", etcdkit.String()),
			"NewService":   etcdkit.NewService(live, "", etcdkit.String()),
			"NewElection":  etcdkit.NewElection(live, "e", 500*time.Millisecond),
			"NewMutex":     etcdkit.NewMutex(nil, "m", ttl),
			"NewSemaphore": etcdkit.NewSemaphore(live, "s", 0, ttl),
		} {
			require.NotNil(t, v, name)
			require.Error(t, v.Validate(), name)
		}
		_, err := etcdkit.NewKey(live, "a//b", etcdkit.String()).Get(context.Background())
		require.ErrorIs(t, err, etcdkit.ErrInvalidName, "every method returns what Validate does")
		_, err = etcdkit.NewTxn(nil).Commit(context.Background())
		require.ErrorContains(t, err, "nil client")
	})
}

// nilIfErr turns a constructor's typed nil into a nil handle, so that "no
// handle" can be checked whatever the handle's type.
func nilIfErr[H handle](h H, err error) (handle, error) {
	if err != nil {
		var none H
		if any(h) != any(none) {
			return h, err
		}
		return nil, err
	}
	return h, nil
}
