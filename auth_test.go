package etcdkit_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// The tests in this file run with etcd auth on (etcdtest.WithAuth) and a
// client that logs in as a user whose role may read and write its
// namespace only, as a service is usually set up. They are part of the
// compatibility run (.ci/compat), so auth is checked against every
// supported etcd release.

const (
	authUser     = "svc"
	authPassword = "svc-password"
	authNS       = "/svc/"
)

// authServer starts one member with auth on, behind a proxy, with
// authUser confined to prefix.
func authServer(t *testing.T, prefix string) *etcdtest.Server {
	t.Helper()
	srv := etcdtest.Start(t, etcdtest.WithAuth(), etcdtest.WithProxy())
	srv.AddUser(t, authUser, authPassword, prefix)
	return srv
}

// authConfig is the configuration of a client that logs in as authUser.
func authConfig(endpoints ...string) etcdkit.Config {
	return etcdkit.Config{Endpoints: endpoints, Namespace: authNS, Username: authUser, Password: authPassword}
}

// deadEndpoint returns an address nothing listens on: a dial is refused.
func deadEndpoint(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

// TestAuthRequestSkipsUnreachableMember gives a client with credentials two
// endpoints, the first unreachable, and reads with a 1s deadline. With auth
// on, clientv3 fetches a token when a connection is made; the first
// request dialled the unreachable endpoint bounded by DialTimeout alone
// (10s here), so the read failed after 10s with "no member answered within
// 10.001s: endpoint ... could not be dialled", never trying the live
// member (without auth: 12ms). The dial and the token fetch are an attempt
// like any other, bounded by StallTimeout and the caller's deadline: the
// read is answered by the live member within its deadline.
func TestAuthRequestSkipsUnreachableMember(t *testing.T) {
	for _, tc := range []struct {
		name  string
		stall time.Duration
		// first returns the unreachable endpoint.
		first func(t *testing.T, srv *etcdtest.Server) string
	}{
		// Nothing listens: the connection is refused at once.
		{"refused", time.Second, func(t *testing.T, _ *etcdtest.Server) string { return deadEndpoint(t) }},
		// A second proxy in front of the member that drops every byte
		// (Blackhole of both directions): the connection is accepted and
		// silent, so the attempt ends at StallTimeout.
		{"silent", 300 * time.Millisecond, func(t *testing.T, srv *etcdtest.Server) string {
			p, err := proxy.New(srv.Endpoint())
			require.NoError(t, err)
			t.Cleanup(func() { _ = p.Close() })
			p.Blackhole(proxy.Both)
			return p.Addr()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := authServer(t, authNS)
			_, err := srv.Client(t).Put(testContext(t, 20*time.Second), authNS+"x", "v")
			require.NoError(t, err)

			cfg := authConfig(tc.first(t, srv), srv.ProxyEndpoint())
			cfg.StallTimeout, cfg.DialTimeout = tc.stall, 10*time.Second
			c := testClientConfig(t, cfg)
			k := etcdkit.NewKey(c, "x", etcdkit.String())

			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			start := time.Now()
			v, err := k.Get(ctx)
			took := time.Since(start)
			t.Logf("read answered after %v", took)
			require.NoError(t, err, "after %v", took)
			require.Equal(t, "v", v.Data)
			require.Less(t, took, time.Second, "got the read after %v, want it within its 1s deadline", took)
		})
	}
}

// TestAuthSessionLostOnTime makes a session's only member silent (proxy
// Blackhole of both directions) under a client with credentials and a
// long DialTimeout. The keepalive dropped the silent connection and dialled
// it again; with auth on that dial fetched a token, bounded only by
// DialTimeout, so the session said Lost 15.9s after the cut, long after the
// server could have expired the lease, and State said Live or Suspended
// meanwhile (without auth: 1.17s). The dial is bounded like any attempt and
// the keepalive does not wait for it past its own deadline: Lost comes
// within the TTL, as without auth.
func TestAuthSessionLostOnTime(t *testing.T) {
	srv := authServer(t, authNS)
	cfg := authConfig(srv.ProxyEndpoint())
	cfg.DialTimeout = 15 * time.Second
	c := testClientConfig(t, cfg)
	const ttl = 2 * time.Second
	s := lsSession(t, c, ttl)
	states := recordStates(t, s.States())
	states.settled(t, etcdkit.SessionLive, lsWait)

	cut := time.Now()
	srv.Proxy().Blackhole(proxy.Both)
	t.Cleanup(srv.Proxy().Unblackhole)
	lost := states.waitFor(t, etcdkit.SessionLost, cut, 30*time.Second)
	t.Logf("Lost %v after the cut", lost.Sub(cut))
	require.Less(t, lost.Sub(cut), ttl, "got Lost %v after the cut, want it within the TTL of %v; states %v",
		lost.Sub(cut), ttl, states)
}

// TestAuthLivePermissionDenied follows, as a user whose role may not read
// it, a key outside the user's prefix. The read was refused with
// "permission denied" and retried for ever, logged at debug level only:
// the Live stayed Stale with the default, its Err nil and nothing to say
// why. The refusal is now its Rejection (matching
// rpctypes.ErrPermissionDenied), logged once, and LiveReadiness reports it;
// the Live keeps retrying, and serves the value once the role may read it.
func TestAuthLivePermissionDenied(t *testing.T) {
	srv := authServer(t, authNS+"allowed/")
	root := srv.Client(t)
	ctx := testContext(t, 30*time.Second)
	_, err := root.Put(ctx, authNS+"limits", "42")
	require.NoError(t, err)

	core, logs := observer.New(zap.InfoLevel)
	cfg := authConfig(srv.ProxyEndpoint())
	cfg.Logger = zap.New(core)
	c := testClientConfig(t, cfg)
	l := etcdkit.NewLive(lsContext(t), etcdkit.NewKey(c, "limits", etcdkit.String()), etcdkit.WithDefault("none"))
	t.Cleanup(func() { _ = l.Close() })

	var rej etcdkit.Rejection
	require.Eventually(t, func() bool {
		var ok bool
		rej, ok = l.Rejected()
		return ok
	}, 20*time.Second, lsTick, "no rejection: the permission denied is not visible (Stale %v, Err %v)", l.Stale(), l.Err())
	require.ErrorIs(t, rej.Err, rpctypes.ErrPermissionDenied, "got rejection %v", rej.Err)
	require.True(t, l.Stale())
	require.Equal(t, "none", l.Get())
	require.NoError(t, l.Err(), "the Live keeps running")
	// Each refused read renews the rejection: wait for a retry, then
	// check that the refusal was logged once.
	require.Eventually(t, func() bool { r, ok := l.Rejected(); return ok && r.At.After(rej.At) }, 20*time.Second, lsTick,
		"the read is retried")
	require.Equal(t, 1, logs.FilterMessage("live value cannot be read, retrying").Len(), "got logs %v", logs.All())
	ready := etcdkit.LiveReadiness(l).Readiness()
	require.ErrorIs(t, ready, rpctypes.ErrPermissionDenied, "got readiness %v", ready)

	_, err = root.RoleGrantPermission(ctx, authUser, authNS+"limits", "", 2 /* read and write */)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return l.Get() == "42" && !l.Stale() }, 20*time.Second, lsTick,
		"the value once the role may read it")
	require.NoError(t, etcdkit.LiveReadiness(l).Readiness())
	_, ok := l.Rejected()
	require.False(t, ok, "the refusal is gone once a read succeeded")
}
