package etcdkit_test

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// TestEphemeralCreateOnly: with WithCreateOnly, NewEphemeral refuses a key
// that anyone holds, another live Ephemeral included, instead of replacing
// it, and leaves the key and its holder untouched.
func TestEphemeralCreateOnly(t *testing.T) {
	srv := etcdtest.Start(t)
	c1 := testClient(t, []string{srv.Endpoint()}, "app")
	c2 := testClient(t, []string{srv.Endpoint()}, "app")
	raw := srv.Client(t)
	ctx := testContext(t, 30*time.Second)

	_, err := raw.Put(ctx, "app/svc/x", "left over")
	require.NoError(t, err)
	_, err = etcdkit.NewEphemeral(ctx, etcdkit.NewKey(c1, "svc/x", etcdkit.String()), "mine", 2*time.Second, etcdkit.WithCreateOnly())
	require.ErrorIs(t, err, etcdkit.ErrExists)
	var ce *etcdkit.ConflictError[string]
	require.True(t, errors.As(err, &ce), "got %T, want a *ConflictError[string]", err)
	assert.Equal(t, "left over", ce.Current.Data)
	assert.Equal(t, "svc/x", ce.Key)
	v, _, ok := lsGet(t, raw, "app/svc/x")
	assert.True(t, ok && v == "left over", "key after the refused create: got %q, %v", v, ok)

	_, err = raw.Delete(ctx, "app/svc/x")
	require.NoError(t, err)
	e1, err := etcdkit.NewEphemeral(ctx, etcdkit.NewKey(c1, "svc/x", etcdkit.String()), "one", 2*time.Second, etcdkit.WithCreateOnly())
	require.NoError(t, err)
	t.Cleanup(func() { _ = e1.Close() })

	_, err = etcdkit.NewEphemeral(ctx, etcdkit.NewKey(c2, "svc/x", etcdkit.String()), "two", 2*time.Second, etcdkit.WithCreateOnly())
	require.ErrorIs(t, err, etcdkit.ErrExists)
	require.True(t, errors.As(err, &ce))
	assert.Equal(t, "one", ce.Current.Data)
	assert.Equal(t, int64(e1.Lease()), ce.Current.Lease)
	v, lease, ok := lsGet(t, raw, "app/svc/x")
	assert.True(t, ok && v == "one" && lease == e1.Lease(), "key after the refused create: got %q under %x, %v", v, int64(lease), ok)
	assert.Equal(t, etcdkit.SessionLive, e1.State())

	require.NoError(t, e1.Close())
	e2, err := etcdkit.NewEphemeral(ctx, etcdkit.NewKey(c2, "svc/x", etcdkit.String()), "two", 2*time.Second, etcdkit.WithCreateOnly())
	require.NoError(t, err)
	t.Cleanup(func() { _ = e2.Close() })
	lsHolds(t, raw, e2, "app/svc/x", "two", lsWait)
}

// TestEphemeralCreateOnlyNotTakenBack: the owner of a create-only key is cut
// off (proxy Blackhole(Both)) until its lease expires; meanwhile another
// owner creates the same key. When the link heals, the first owner must not
// put its value back over the second's (two processes would then fight over
// one registration): it ends with ErrExists and the key stays the second's.
func TestEphemeralCreateOnlyNotTakenBack(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	raw := srv.Client(t)
	ctx := testContext(t, time.Minute)
	cut := testClient(t, []string{srv.ProxyEndpoint()}, "app")
	other := testClient(t, []string{srv.Endpoint()}, "app")

	first, err := etcdkit.NewEphemeral(ctx, etcdkit.NewKey(cut, "svc/x", etcdkit.String()), "first", 2*time.Second, etcdkit.WithCreateOnly())
	require.NoError(t, err)
	t.Cleanup(func() { _ = first.Close() })
	states := recordStates(t, first.States())

	srv.Proxy().Blackhole(proxy.Both)
	t.Cleanup(srv.Proxy().Unblackhole)
	states.waitFor(t, etcdkit.SessionLost, time.Time{}, lsWait)
	require.Eventually(t, func() bool {
		_, _, ok := lsGet(t, raw, "app/svc/x")
		return !ok
	}, lsWait, 20*time.Millisecond, "the server never expired the cut-off owner's lease")

	second, err := etcdkit.NewEphemeral(ctx, etcdkit.NewKey(other, "svc/x", etcdkit.String()), "second", 2*time.Second, etcdkit.WithCreateOnly())
	require.NoError(t, err)
	t.Cleanup(func() { _ = second.Close() })

	srv.Proxy().Unblackhole()
	select {
	case <-first.Done():
	case <-time.After(lsWait):
		t.Fatalf("the first owner did not end after the heal; state %v", first.State())
	}
	require.ErrorIs(t, first.Err(), etcdkit.ErrExists)
	var ce *etcdkit.ConflictError[string]
	require.ErrorAs(t, first.Err(), &ce)
	assert.Equal(t, "second", ce.Current.Data)

	v, lease, ok := lsGet(t, raw, "app/svc/x")
	assert.True(t, ok && v == "second" && lease == second.Lease(), "key after the heal: got %q under %x, %v; want the second owner's", v, int64(lease), ok)
	assert.Equal(t, etcdkit.SessionLive, second.State())
}
