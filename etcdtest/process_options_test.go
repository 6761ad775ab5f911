package etcdtest_test

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/etcdkit/etcdkit/etcdtest"
)

func TestFreezeNeedsAProcess(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.WithBinary(""))
	require.Empty(t, s.Binary())
	require.Zero(t, s.PID())
	require.ErrorIs(t, s.Freeze(), etcdtest.ErrNotProcess)
	require.ErrorIs(t, s.Thaw(), etcdtest.ErrNotProcess)
	require.False(t, s.Frozen())
	require.NotNil(t, s.Etcd())
}

func TestBinaryOptionErrors(t *testing.T) {
	t.Setenv(etcdtest.BinaryEnv, "")
	_, err := etcdtest.New(etcdtest.WithFlags("--auto-compaction-retention=1"))
	require.ErrorContains(t, err, "WithFlags needs members that run as processes")

	_, err = etcdtest.New(etcdtest.WithBinary("etcd"), etcdtest.WithConfig(func(*embed.Config) {}))
	require.ErrorContains(t, err, "WithConfig changes an embedded member's configuration")

	missing := filepath.Join(t.TempDir(), "no-etcd-here")
	_, err = etcdtest.New(etcdtest.WithBinary(missing))
	require.ErrorContains(t, err, "no-etcd-here")

	// The variable selects the binary for the whole suite; WithBinary("")
	// brings in-process members back.
	t.Setenv(etcdtest.BinaryEnv, missing)
	_, err = etcdtest.New()
	require.ErrorContains(t, err, "no-etcd-here")
	s, err := etcdtest.New(etcdtest.WithBinary(""))
	require.NoError(t, err)
	defer s.Close()
	require.NotNil(t, s.Etcd())
}
