package etcdkit_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// TestStartWithoutCluster: with StartWithoutCluster, New returns a Client
// while no member answers (its DialTimeout is longer than the test's
// wait, so a New that waited could not return nil before the cluster
// came up). Until a member answers, a Live value serves its default and a
// request fails naming the member; once the cluster comes up, requests go
// through the same Client, the Live value follows its key, errors learn
// the members' names, and the logs say once that the cluster was not
// reached and once that it was.
func TestStartWithoutCluster(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	raw := srv.Client(t)
	srv.Proxy().Stop() // the member refuses connections
	core, logs := observer.New(zapcore.InfoLevel)
	cfg := etcdkit.Config{
		Endpoints:           []string{srv.ProxyEndpoint()},
		Namespace:           "cold",
		DialTimeout:         time.Hour,
		StartWithoutCluster: true,
		Logger:              zap.New(core),
	}
	c, err := etcdkit.New(testContext(t, time.Minute), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })

	key := etcdkit.NewKey(c, "limit", etcdkit.JSON[int]())
	live := etcdkit.NewLive(testContext(t, 2*time.Minute), key, etcdkit.WithDefault(7))
	t.Cleanup(func() { _ = live.Close() })
	assert.Equal(t, 7, live.Get(), "the default is served while no member answers")
	assert.True(t, live.Stale())

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_, err = key.Put(ctx, 1)
	cancel()
	require.Error(t, err)
	assert.Contains(t, err.Error(), srv.ProxyEndpoint(), "the error names the endpoint")
	require.Eventually(t, func() bool { return logs.FilterMessageSnippet("has not answered yet").Len() > 0 },
		time.Minute, 10*time.Millisecond, "a Warn says the cluster was not reached")

	require.NoError(t, srv.Proxy().Start())
	ctx = testContext(t, time.Minute)
	for {
		if _, err = key.Put(ctx, 42); err == nil || ctx.Err() != nil {
			break
		}
	}
	require.NoError(t, err, "a Put through the same Client once the cluster is up")
	untilGet(t, live.Get, 42)
	_, err = raw.Put(ctx, c.KeyPrefix()+"limit", "43")
	require.NoError(t, err)
	untilGet(t, live.Get, 43)

	require.Eventually(t, func() bool { return logs.FilterMessage("etcdkit: reached the cluster").Len() == 1 },
		time.Minute, 10*time.Millisecond, "an Info says the cluster was reached")
	seen := make(map[string]bool)
	for _, w := range logs.FilterMessageSnippet("has not answered yet").All() {
		msg := w.ContextMap()["error"].(string)
		assert.False(t, seen[msg], "logged twice: %s", msg)
		seen[msg] = true
	}

	// Errors name the member now that the client knows the members.
	srv.Proxy().Stop()
	ctx, cancel = context.WithTimeout(context.Background(), time.Second)
	_, err = key.Get(ctx)
	cancel()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "member "+srv.Name(), "got %v", err)
	require.NoError(t, srv.Proxy().Start())
}

// TestStartWithoutClusterWrongPassword: wrong credentials do not fail New
// with StartWithoutCluster; the failure is logged once at Warn as
// "authentication failed", and a request fails with it at once, naming the
// member, rather than trying again until its deadline.
func TestStartWithoutClusterWrongPassword(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithAuth())
	core, logs := observer.New(zapcore.InfoLevel)
	c, err := etcdkit.New(testContext(t, time.Minute), etcdkit.Config{
		Endpoints:           []string{srv.Endpoint()},
		Username:            etcdtest.RootUser,
		Password:            "wrong",
		StartWithoutCluster: true,
		Logger:              zap.New(core),
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	// The member's refusal ends the request at once, not at its deadline:
	// every member would refuse the login too.
	_, err = etcdkit.NewKey(c, "k", etcdkit.JSON[int]()).Get(testContext(t, time.Minute))
	require.ErrorIs(t, err, rpctypes.ErrAuthFailed)
	assert.Contains(t, err.Error(), srv.Endpoint(), "the error names the endpoint")
	require.Eventually(t, func() bool {
		for _, e := range logs.FilterMessageSnippet("has not answered yet").All() {
			if strings.Contains(e.ContextMap()["error"].(string), "authentication failed") {
				return true
			}
		}
		return false
	}, time.Minute, 10*time.Millisecond, "a Warn names the refused credentials")
}
