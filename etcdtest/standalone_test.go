package etcdtest_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdkit/etcdkit/etcdtest"
)

func TestNewClusterOutsideTests(t *testing.T) {
	cl, err := etcdtest.NewCluster(3, etcdtest.WithProxy())
	require.NoError(t, err)
	defer cl.Close()

	cli, err := clientv3.New(clientv3.Config{Endpoints: cl.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = cli.Put(ctx, "k", "v")
	require.NoError(t, err)

	dir := cl.Members()[0].Etcd().Config().Dir
	cl.Close()
	cl.Close()
	require.NoDirExists(t, dir, "Close removes the members' data")

	srv, err := etcdtest.New()
	require.NoError(t, err)
	require.NotEmpty(t, srv.Endpoint())
	srv.Close()

	_, err = etcdtest.NewCluster(0)
	require.Error(t, err)
}

// TestNilOption checks that a nil Option is an error, not a panic: New and
// NewCluster return it, and start nothing.
func TestNilOption(t *testing.T) {
	_, err := etcdtest.New(etcdtest.WithLogs(), nil)
	require.EqualError(t, err, "etcdtest: option 1 is nil")
	_, err = etcdtest.NewCluster(3, nil)
	require.EqualError(t, err, "etcdtest: option 0 is nil")
}
