//go:build etcdbinary

package etcdtest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdkit/etcdkit/etcdtest"
)

// The tests in this file run members as processes of the etcd binary named
// by ETCDTEST_BINARY; the etcdbinary build tag, which .ci/run sets along
// with the variable for each etcd release, selects them.

func requireBinary(t *testing.T) string {
	t.Helper()
	bin := os.Getenv(etcdtest.BinaryEnv)
	if bin == "" {
		t.Fatalf("tests built with the etcdbinary tag need %s naming an etcd binary (see .ci/etcd-binaries)", etcdtest.BinaryEnv)
	}
	return bin
}

// requireExited fails the test unless no process has the given ID: the
// member's process was killed and reaped.
func requireExited(t *testing.T, pid int) {
	t.Helper()
	require.NotZero(t, pid)
	err := syscall.Kill(pid, 0)
	require.True(t, errors.Is(err, syscall.ESRCH), "process %d still exists (signal 0: %v)", pid, err)
}

func followerOf(c *etcdtest.Cluster, leader *etcdtest.Server) *etcdtest.Server {
	for _, m := range c.Members() {
		if m != leader {
			return m
		}
	}
	return nil
}

func TestProcessStopRestartKill(t *testing.T) {
	bin := requireBinary(t)
	c := etcdtest.StartCluster(t, 3, etcdtest.WithProxy())
	ctx := ctxT(t)
	for _, m := range c.Members() {
		require.Equal(t, bin, m.Binary())
		require.Nil(t, m.Etcd(), "a process member has no embedded server")
		require.NotZero(t, m.PID())
		require.NotZero(t, m.ID())
	}
	cli := proxiedClient(t, c.Endpoints()...)
	_, err := cli.Put(ctx, "k", "1")
	require.NoError(t, err)

	// Stop: SIGTERM, the leader hands over first.
	leader := c.WaitLeader(t)
	pid := leader.PID()
	leader.Stop()
	require.False(t, leader.Running())
	require.Zero(t, leader.PID())
	requireExited(t, pid)
	next := c.WaitLeader(t)
	require.NotEqual(t, leader, next)
	_, err = cli.Put(ctx, "k", "2")
	require.NoError(t, err)
	require.NoError(t, leader.Restart())
	requireValue(t, memberClient(t, leader), "k", "2", "restarted member")

	// Kill: SIGKILL, no handover; the others elect a leader after an
	// election timeout.
	leader = c.WaitLeader(t)
	id, pid := leader.ID(), leader.PID()
	leader.Kill()
	requireExited(t, pid)
	require.NotEqual(t, leader, c.WaitLeader(t))
	_, err = cli.Put(ctx, "k", "3")
	require.NoError(t, err)
	require.NoError(t, leader.Restart())
	require.Equal(t, id, leader.ID(), "a restarted member keeps its identity")
	requireValue(t, memberClient(t, leader), "k", "3", "member restarted after SIGKILL")
	c.WaitLeader(t)
}

func TestProcessPartitionAndHeal(t *testing.T) {
	requireBinary(t)
	c := etcdtest.StartCluster(t, 3)
	ctx := ctxT(t)
	leader := c.WaitLeader(t)
	// The leader is the harder case: it must lose leadership although its
	// own process is fine.
	cut := leader
	cutClient := memberClient(t, cut)
	_, err := cutClient.Put(ctx, "before", "1")
	require.NoError(t, err)

	cut.Partition()
	require.Eventually(t, func() bool {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		st, err := cutClient.Status(sctx, cut.Endpoint())
		return err == nil && st.Leader == 0
	}, waitFor, 20*time.Millisecond, "partitioned member still reports a leader")
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err = cutClient.Get(clientv3.WithRequireLeader(rctx), "before")
	cancel()
	require.ErrorIs(t, err, rpctypes.ErrNoLeader)

	rest := c.WaitLeader(t)
	require.NotEqual(t, cut, rest)
	_, err = memberClient(t, rest).Put(ctx, "during", "2")
	require.NoError(t, err)
	_, ok := serializableValue(ctx, cutClient, "during")
	require.False(t, ok, "partitioned member got a write made during the partition")

	// The cut survives a restart of the partitioned member.
	require.NoError(t, cut.Restart())
	_, ok = serializableValue(ctx, cutClient, "during")
	require.False(t, ok, "restarted partitioned member got a write made during the partition")

	cut.Heal()
	requireValue(t, cutClient, "during", "2", "healed member")
	require.Equal(t, rest, c.WaitLeader(t))
}

func TestProcessFreezeAndThawLeader(t *testing.T) {
	requireBinary(t)
	c := etcdtest.StartCluster(t, 3, etcdtest.WithProxy())
	ctx := ctxT(t)
	leader := c.WaitLeader(t)
	frozenClient := memberClient(t, leader)
	_, err := frozenClient.Put(ctx, "k", "1")
	require.NoError(t, err)

	require.NoError(t, leader.Freeze())
	require.True(t, leader.Frozen())
	require.True(t, leader.Running(), "a frozen member still runs")
	require.NoError(t, leader.Freeze(), "freezing twice does nothing")
	// The others elect a new leader after an election timeout, while the
	// frozen one still believes it leads.
	next := c.WaitLeader(t)
	require.NotEqual(t, leader, next)
	require.False(t, leader.IsLeader(), "a frozen member cannot say it leads")
	_, err = memberClient(t, next).Put(ctx, "k", "2")
	require.NoError(t, err)
	// The frozen member accepts connections and answers nothing.
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	_, err = frozenClient.Get(rctx, "k", clientv3.WithSerializable())
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded)

	require.NoError(t, leader.Thaw())
	require.False(t, leader.Frozen())
	requireValue(t, frozenClient, "k", "2", "thawed former leader")
	require.Equal(t, next, c.WaitLeader(t), "the thawed member steps down to the newer term")
}

func TestProcessFreezeThenStopOrKill(t *testing.T) {
	requireBinary(t)
	c := etcdtest.StartCluster(t, 3)
	ms := c.Members()
	require.NoError(t, ms[0].Freeze())
	pid := ms[0].PID()
	ms[0].Stop() // thaws it so that it can act on SIGTERM
	requireExited(t, pid)
	require.False(t, ms[0].Frozen())
	require.ErrorIs(t, ms[0].Freeze(), etcdtest.ErrStopped)
	require.ErrorIs(t, ms[0].Thaw(), etcdtest.ErrStopped)

	require.NoError(t, ms[1].Freeze())
	pid = ms[1].PID()
	ms[1].Kill()
	requireExited(t, pid)

	require.NoError(t, ms[0].Restart())
	require.NoError(t, ms[1].Restart())
	c.WaitLeader(t)
	_, err := c.Client(t).Put(ctxT(t), "k", "v")
	require.NoError(t, err)
}

func TestProcessMoveLeaderAndCompact(t *testing.T) {
	requireBinary(t)
	c := etcdtest.StartCluster(t, 3)
	ctx := ctxT(t)
	leader := c.WaitLeader(t)
	to := followerOf(c, leader)
	c.MoveLeader(t, to)
	require.Equal(t, to, c.Leader())

	cli := c.Client(t)
	put, err := cli.Put(ctx, "k", "1")
	require.NoError(t, err)
	_, err = cli.Put(ctx, "k", "2")
	require.NoError(t, err)
	rev := to.Compact(t)
	require.Greater(t, rev, put.Header.Revision)
	_, err = cli.Get(ctx, "k", clientv3.WithRev(put.Header.Revision))
	require.ErrorIs(t, err, rpctypes.ErrCompacted)
}

// TestProcessNoLeaks checks that every member process is gone once its
// cluster is closed, by the test's cleanup or by Close on a standalone
// cluster, whatever state it was left in.
func TestProcessNoLeaks(t *testing.T) {
	requireBinary(t)
	var pids []int
	t.Run("cleanup", func(t *testing.T) {
		c := etcdtest.StartCluster(t, 3, etcdtest.WithProxy())
		ms := c.Members()
		for _, m := range ms {
			pids = append(pids, m.PID())
		}
		require.NoError(t, ms[0].Freeze())
		ms[1].Partition()
	})
	for _, pid := range pids {
		requireExited(t, pid)
	}

	c, err := etcdtest.NewCluster(3)
	require.NoError(t, err)
	pids = pids[:0]
	for _, m := range c.Members() {
		pids = append(pids, m.PID())
	}
	require.NoError(t, c.Members()[2].Freeze())
	c.Close()
	for _, pid := range pids {
		requireExited(t, pid)
	}
	require.ErrorIs(t, c.Members()[0].Restart(), etcdtest.ErrClosed)

	s, err := etcdtest.New()
	require.NoError(t, err)
	pid := s.PID()
	s.Close()
	requireExited(t, pid)
}

// TestProcessStartFailure checks that a member whose process exits at once
// fails the start with etcd's own explanation.
func TestProcessStartFailure(t *testing.T) {
	requireBinary(t)
	_, err := etcdtest.New(etcdtest.WithFlags("--no-such-flag"))
	require.Error(t, err)
	require.Contains(t, err.Error(), "no-such-flag")
}

// TestProcessClientTLSAndFlags checks that a process member serves TLS
// clients with WithClientTLS, and that WithFlags reaches the server.
func TestProcessClientTLSAndFlags(t *testing.T) {
	requireBinary(t)
	info, err := transport.SelfCert(zap.NewNop(), t.TempDir(), []string{"127.0.0.1"}, 1)
	require.NoError(t, err)
	// A request larger than 1 KiB is refused only if the flag was applied.
	s := etcdtest.Start(t, etcdtest.WithClientTLS(info), etcdtest.WithFlags("--max-request-bytes=1024"))
	ctx := ctxT(t)
	cli := s.Client(t)
	_, err = cli.Put(ctx, "small", "v")
	require.NoError(t, err)
	_, err = cli.Put(ctx, "large", string(make([]byte, 2048)))
	require.ErrorIs(t, err, rpctypes.ErrRequestTooLarge)
	require.NoError(t, s.Restart())
	_, err = cli.Put(ctx, "after-restart", "v")
	require.NoError(t, err)
}

// dumpT records what the members' log dump prints, and reports the test as
// failed so that there is a dump.
type dumpT struct {
	exampleT
	logged []string
}

func (t *dumpT) Failed() bool { return true }
func (t *dumpT) Logf(format string, args ...any) {
	t.logged = append(t.logged, fmt.Sprintf(format, args...))
}

// TestProcessLogsDumpedOnFailure checks that a process member's own output
// is what a failed test prints as the member's log.
func TestProcessLogsDumpedOnFailure(t *testing.T) {
	requireBinary(t)
	dt := &dumpT{}
	s := etcdtest.Start(dt, etcdtest.WithLogs())
	pid := s.PID()
	s.Stop()
	requireExited(t, pid)
	dt.finish()
	got := strings.Join(dt.logged, "\n")
	require.Contains(t, got, "etcd member m0 log")
	require.Contains(t, got, "ready to serve client requests", "etcd's own log lines")
	require.Contains(t, got, "received signal; shutting down", "the last lines, written as the process stopped on SIGTERM")
}
