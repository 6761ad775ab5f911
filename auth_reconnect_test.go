package etcdkit_test

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/server/v3/embed"
	"google.golang.org/grpc"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// authenticateMethod is the gRPC method of etcd's login.
const authenticateMethod = "/etcdserverpb.Auth/Authenticate"

// countLogins returns a dial option that counts the Authenticate requests
// the client sends, on every connection it dials.
func countLogins(n *atomic.Int64) grpc.DialOption {
	return grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any,
		cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method == authenticateMethod {
			n.Add(1)
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	})
}

// keptAliveSince waits until a keepalive of s sent at or after t succeeded:
// the session's Lost deadline is then TTL minus the margin after t or
// later.
func keptAliveSince(t *testing.T, s *etcdkit.Session, since time.Time, margin time.Duration) {
	t.Helper()
	require.Eventually(t, func() bool {
		return s.State() == etcdkit.SessionLive && !time.Now().Add(s.Remaining()).Before(since.Add(s.TTL()-margin))
	}, 30*time.Second, lsTick, "no keepalive succeeded since %v (state %v, remaining %v)", since, s.State(), s.Remaining())
}

// TestAuthReconnectKeepsItsToken closes every connection of a client with
// credentials five times (proxy CloseConns: a FIN on each), and after each
// reads a key and waits for a session keepalive to succeed. Every
// connection the client dialled, and every stream it opened, logged in
// again (an Authenticate request: a bcrypt check and a raft round trip), so
// that after a FIN the keepalive waited for a login before its first
// keepalive; a soak on a busy cluster saw a 1s-TTL session lose its lease
// that way. The client now holds one token, shared by its connections: a
// reconnect is a TCP dial, and the count of logins stays that of the first
// connections.
func TestAuthReconnectKeepsItsToken(t *testing.T) {
	srv := authServer(t, authNS)
	c, k, logins, ctx := loginCounted(t, srv, "v")
	const ttl, margin = 5 * time.Second, 500 * time.Millisecond
	s := lsSession(t, c, ttl, etcdkit.WithKeepAliveInterval(200*time.Millisecond), etcdkit.WithLostMargin(margin))
	keptAliveSince(t, s, time.Now(), margin)
	base := logins.Load()
	t.Logf("%d logins for the first connections", base)

	for i := range 5 {
		cut := time.Now()
		srv.Proxy().CloseConns()
		v, err := k.Get(ctx)
		require.NoError(t, err, "read after reconnect %d", i+1)
		require.Equal(t, "v", v.Data)
		keptAliveSince(t, s, cut, margin)
	}
	require.Equal(t, base, logins.Load(), "got %d logins after 5 reconnects, want %d (those of the first connections)",
		logins.Load(), base)

	// Wrong credentials still fail New, with etcd's error.
	bad := authConfig(srv.ProxyEndpoint())
	bad.Password = "wrong"
	_, err := etcdkit.New(ctx, bad)
	require.ErrorIs(t, err, rpctypes.ErrAuthFailed, "got %v, want the wrong password refused", err)
}

// TestAuthMemberRestart restarts the only member of a client with
// credentials (Server.Restart) while a watch and a session run on it. etcd
// keeps simple tokens in a member's memory: the restarted member refuses
// the token the client held, on its requests, on the watch the engine
// creates again and on the keepalive stream. Each refusal fetches a new
// token and goes on: a read, a watch event and a keepalive all succeed
// after the restart, and every connection shares the one new token.
func TestAuthMemberRestart(t *testing.T) {
	srv := authServer(t, authNS)
	c, k, logins, ctx := loginCounted(t, srv, "v1")
	const ttl, margin = 10 * time.Second, time.Second
	s := lsSession(t, c, ttl, etcdkit.WithKeepAliveInterval(200*time.Millisecond), etcdkit.WithLostMargin(margin))
	w := k.Watch(ctx)
	t.Cleanup(func() { _ = w.Close() })
	select {
	case <-w.Synced():
	case <-ctx.Done():
		t.Fatal("the watch never synced")
	}
	keptAliveSince(t, s, time.Now(), margin)
	base := logins.Load()

	restarted := time.Now()
	require.NoError(t, srv.Restart())

	// The watch first, before a request refreshes the token.
	_, err := srv.Client(t).Put(ctx, authNS+"x", "v2")
	require.NoError(t, err)
	waitEvent(t, ctx, w, "v2")
	keptAliveSince(t, s, restarted, margin)
	v, err := k.Get(ctx)
	require.NoError(t, err, "read after the restart")
	require.Equal(t, "v2", v.Data)
	require.NoError(t, w.Err())
	require.Equal(t, etcdkit.SessionLive, s.State())
	t.Logf("%d logins after the restart", logins.Load()-base)
}

// waitEvent waits for the put of want on w.
func waitEvent(t *testing.T, ctx context.Context, w *etcdkit.Watch[string], want string) {
	t.Helper()
	for {
		select {
		case e := <-w.Events():
			require.NoError(t, e.Err)
			if e.Value == want {
				return
			}
		case <-w.Done():
			t.Fatalf("the watch ended: %v", w.Err())
		case <-ctx.Done():
			t.Fatalf("no event %q", want)
		}
	}
}

// jwtTokens makes the members hand out JSON web tokens, signed with HMAC
// SHA-256 by a key of the test's, instead of simple tokens.
func jwtTokens(t *testing.T) etcdtest.Option {
	t.Helper()
	key := make([]byte, 32)
	_, err := rand.Read(key)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "jwt.key")
	require.NoError(t, os.WriteFile(path, key, 0o600))
	spec := "jwt,priv-key=" + path + ",sign-method=HS256,ttl=5m"
	if os.Getenv(etcdtest.BinaryEnv) != "" {
		return etcdtest.WithFlags("--auth-token=" + spec)
	}
	return etcdtest.WithConfig(func(cfg *embed.Config) { cfg.AuthToken = spec })
}

// TestAuthWatchAfterAuthChange changes the auth store (root adds a role)
// while a watch runs under a client with credentials and JWT tokens, then
// watches a second key. A JWT carries the auth revision it was issued at,
// and the member refuses it once the store has moved on
// (rpctypes.ErrAuthOldRevision), for the second watch as for a request. A
// watch stream keeps the token it was opened with and the first watch
// kept that stream open, so the second watch would be refused for ever,
// never Synced. The refused stream ends instead: both watches go on, on a
// new stream with a new token, and see the puts made after.
func TestAuthWatchAfterAuthChange(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithAuth(), etcdtest.WithProxy(), jwtTokens(t))
	srv.AddUser(t, authUser, authPassword, authNS)
	var logins atomic.Int64
	cfg := authConfig(srv.ProxyEndpoint())
	cfg.DialOptions = []grpc.DialOption{countLogins(&logins)}
	c := testClientConfig(t, cfg)
	ctx := testContext(t, 45*time.Second)
	synced := func(w *etcdkit.Watch[string]) {
		t.Helper()
		select {
		case <-w.Synced():
		case <-w.Done():
			t.Fatalf("the watch ended: %v", w.Err())
		case <-ctx.Done():
			t.Fatal("the watch never synced")
		}
	}
	wa := etcdkit.NewKey(c, "a", etcdkit.String()).Watch(ctx)
	t.Cleanup(func() { _ = wa.Close() })
	synced(wa)
	base := logins.Load()

	root := srv.Client(t)
	_, err := root.RoleAdd(ctx, "bump")
	require.NoError(t, err)

	wb := etcdkit.NewKey(c, "b", etcdkit.String()).Watch(ctx)
	t.Cleanup(func() { _ = wb.Close() })
	synced(wb)
	_, err = root.Put(ctx, authNS+"a", "va")
	require.NoError(t, err)
	_, err = root.Put(ctx, authNS+"b", "vb")
	require.NoError(t, err)
	waitEvent(t, ctx, wa, "va")
	waitEvent(t, ctx, wb, "vb")
	require.Equal(t, base+1, logins.Load(), "got %d logins after the auth change, want 1", logins.Load()-base)
}

// loginCounted makes a client with credentials through srv's proxy whose
// logins are counted, and puts value at its key "x".
func loginCounted(t *testing.T, srv *etcdtest.Server, value string) (*etcdkit.Client, *etcdkit.Key[string], *atomic.Int64, context.Context) {
	t.Helper()
	logins := new(atomic.Int64)
	cfg := authConfig(srv.ProxyEndpoint())
	cfg.DialOptions = []grpc.DialOption{countLogins(logins)}
	c := testClientConfig(t, cfg)
	k := etcdkit.NewKey(c, "x", etcdkit.String())
	ctx := testContext(t, 2*time.Minute)
	_, err := k.Put(ctx, value)
	require.NoError(t, err)
	return c, k, logins, ctx
}
