package etcdkit_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
)

// TestRequestErrorNamesEveryMemberTried: when the caller's deadline cuts a
// later round of attempts short on its first member, the error still
// names every member tried and why, not only the one the round had
// reached. Here a silent endpoint (it accepts connections and says
// nothing) is tried first in each round and a refusing one second; the
// deadline falls in the second round's wait on the silent one, and the
// error keeps why the silent one failed in the first round.
func TestRequestErrorNamesEveryMemberTried(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = silent.Close() })
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				_ = c.Close()
			}
		}()
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	refusing, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	refused := refusing.Addr().String()
	require.NoError(t, refusing.Close())

	c, err := etcdkit.New(testContext(t, time.Minute), etcdkit.Config{Endpoints: []string{silent.Addr().String(), refused},
		StartWithoutCluster: true, StallTimeout: time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	_, err = etcdkit.NewKey(c, "x", etcdkit.String()).Get(ctx)
	require.Error(t, err)
	t.Log(err)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	for _, ep := range []string{silent.Addr().String(), refused} {
		require.True(t, strings.Contains(err.Error(), "endpoint "+ep), "the error names %s: %v", ep, err)
	}
	// The silent one's wait, cut short by the deadline in the second round,
	// does not hide what the first round found.
	require.Contains(t, err.Error(), "endpoint "+silent.Addr().String()+" did not accept a connection in time")
}
