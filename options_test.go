package etcdkit_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// TestNilOptions checks the one rule for options: a nil option of any type is
// an error, reported where each call reports an invalid option, and nothing
// is written or left running.
func TestNilOptions(t *testing.T) {
	srv := etcdtest.Start(t)
	raw := srv.Client(t)
	c := testClient(t, []string{srv.Endpoint()}, "opts")
	ctx := testContext(t, time.Minute)
	const ttl = 2 * time.Second

	// ended checks a handle that must have ended at once with a nil option
	// error.
	ended := func(t *testing.T, done <-chan struct{}, err func() error) {
		t.Helper()
		select {
		case <-done:
		default:
			t.Fatal("got a running handle, want one that has already ended")
		}
		require.Error(t, err())
		assert.Contains(t, err().Error(), "nil option")
	}
	// refused checks a call that must fail with a nil option error and
	// leave no lease behind.
	refused := func(t *testing.T, err error) {
		t.Helper()
		require.Error(t, err)
		assert.Contains(t, err.Error(), "nil option")
		leases, lerr := raw.Leases(ctx)
		require.NoError(t, lerr)
		assert.Empty(t, leases.Leases, "a refused call granted no lease")
	}

	k := etcdkit.NewKey(c, "k", etcdkit.String())
	p := etcdkit.NewPrefix(c, "p", etcdkit.String())

	t.Run("WatchOption", func(t *testing.T) {
		for name, w := range map[string]*etcdkit.Watch[string]{
			"Key.Watch":    k.Watch(ctx, nil),
			"Prefix.Watch": p.Watch(ctx, etcdkit.WithInitial(), nil),
		} {
			t.Run(name, func(t *testing.T) { ended(t, w.Done(), w.Err) })
		}
		ca, err := p.Cache(ctx)
		require.NoError(t, err)
		defer ca.Close()
		w := ca.Subscribe(nil)
		ended(t, w.Done(), w.Err)
	})
	t.Run("SessionOption", func(t *testing.T) {
		_, err := c.NewSession(ctx, ttl, nil)
		refused(t, err)
		_, err = c.NewSession(ctx, ttl, etcdkit.WithoutRecovery(), nil)
		refused(t, err)
		_, err = etcdkit.NewEphemeral(ctx, k, "v", ttl, nil)
		refused(t, err)
		_, err = k.Get(ctx)
		assert.ErrorIs(t, err, etcdkit.ErrNotFound, "NewEphemeral with a nil option wrote nothing")
		svc := etcdkit.NewService(c, "svc", etcdkit.String())
		_, err = svc.Register(ctx, etcdkit.Instance[string]{ID: "a", Addr: "127.0.0.1:1"}, ttl, nil)
		refused(t, err)
	})
	t.Run("ElectionOption", func(t *testing.T) {
		for name, e := range map[string]*etcdkit.Election{
			"nil ElectionOption": etcdkit.NewElection(c, "e", ttl, nil),
			"nil SessionOption":  etcdkit.NewElection(c, "e", ttl, etcdkit.SessionOption(nil)),
		} {
			t.Run(name, func(t *testing.T) {
				require.Error(t, e.Validate())
				assert.Contains(t, e.Validate().Error(), "nil option")
			})
		}
	})
	t.Run("HealthOption", func(t *testing.T) {
		hm := etcdkit.NewHealthMonitor(c, etcdkit.WithInterval(time.Second), nil)
		defer hm.Close()
		ended(t, hm.Done(), hm.Err)
	})
}
