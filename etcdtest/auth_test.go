package etcdtest_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdkit/etcdkit/etcdtest"
)

// userClient connects to endpoints as user, or without credentials for "".
func userClient(t *testing.T, endpoints []string, user, password string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 10 * time.Second,
		Username: user, Password: password, Logger: zap.NewNop()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// TestAuthUsers starts a cluster WithAuth (in-process members, or processes
// of ETCDTEST_BINARY) and checks what each kind of client may do: one
// without credentials nothing, a user added with AddUser its prefix only,
// and etcdtest's own root client everything, also across a member restart
// that invalidates the tokens it handed out.
func TestAuthUsers(t *testing.T) {
	c := etcdtest.StartCluster(t, 3, etcdtest.WithAuth())
	c.WaitLeader(t)
	c.AddUser(t, "app", "app-pw", "/app/")
	ctx := ctxT(t)

	anon := userClient(t, c.Endpoints(), "", "")
	_, err := anon.Put(ctx, "/app/x", "1")
	require.ErrorIs(t, err, rpctypes.ErrUserEmpty, "got %v, want the anonymous write refused", err)

	app := userClient(t, c.Endpoints(), "app", "app-pw")
	_, err = app.Put(ctx, "/app/x", "1")
	require.NoError(t, err)
	_, err = app.Get(ctx, "/other/x")
	require.ErrorIs(t, err, rpctypes.ErrPermissionDenied, "got %v, want a read outside the prefix refused", err)
	_, err = app.Put(ctx, "/other/x", "1")
	require.ErrorIs(t, err, rpctypes.ErrPermissionDenied, "got %v, want a write outside the prefix refused", err)

	_, err = clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 10 * time.Second,
		Username: "app", Password: "wrong", Logger: zap.NewNop()})
	require.ErrorIs(t, err, rpctypes.ErrAuthFailed, "got %v, want a wrong password refused", err)

	root := c.Client(t)
	_, err = root.Put(ctx, "/other/x", "1")
	require.NoError(t, err)

	m := c.Members()[0]
	require.NoError(t, m.Restart())
	c.WaitLeader(t)
	c.Members()[1].Compact(t)
	require.Eventually(t, func() bool {
		_, err := app.Put(ctx, "/app/x", "2")
		return err == nil
	}, 20*time.Second, 20*time.Millisecond, "the user's writes after a restart")
}
