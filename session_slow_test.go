package etcdkit_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// A cluster that answers, only more slowly than StallTimeout (a loaded
// machine, a long link), must not cost a session its lease: StallTimeout
// moves requests off a silent member, but when every answer is slow, an
// attempt that was cut at StallTimeout is tried again with more time, so
// that a keepalive gets through while the lease still lives. (Each attempt
// was once cut at StallTimeout however often that failed, so no keepalive
// ever got through, and the session was Lost although the member answered
// every request.)
func TestSessionKeepsItsLeaseOnASlowMember(t *testing.T) {
	const ttl = 3 * time.Second
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()}, Logger: lsLogger(t),
		StallTimeout: 200 * time.Millisecond})
	raw := srv.Client(t)
	s := lsSession(t, c, ttl)
	states := recordStates(t, s.States())
	id := s.Lease()

	// Every answer now takes 300 ms or more, well over StallTimeout.
	slow := time.Now()
	srv.Proxy().SetLatency(proxy.Both, 150*time.Millisecond, 0)
	t.Cleanup(func() { srv.Proxy().SetLatency(proxy.Both, 0, 0) })
	// Three TTLs: a lease that no keepalive reached would have expired twice.
	deadline := slow.Add(3 * ttl)
	for time.Now().Before(deadline) {
		if states.first(etcdkit.SessionLost, slow) != (time.Time{}) {
			break
		}
		time.Sleep(lsTick)
	}
	t.Logf("states since the latency: %v", states)
	assert.Zero(t, states.first(etcdkit.SessionLost, slow), "the session was Lost on a member that answered every request")
	assert.Equal(t, id, s.Lease(), "the same lease")
	assert.Greater(t, lsLeaseTTL(t, raw, id), int64(0), "the lease lives on the server")
}

// The same slow member, met by a client that must dial it and grant a
// lease: a dial or a grant that ran out of StallTimeout is tried again with
// more time, so that NewSession succeeds. (Each was once cut at
// StallTimeout however often that failed, so NewSession never did.)
func TestSessionGrantedOnASlowMember(t *testing.T) {
	const ttl = 3 * time.Second
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()}, Logger: lsLogger(t),
		StallTimeout: 200 * time.Millisecond})
	raw := srv.Client(t)

	srv.Proxy().SetLatency(proxy.Both, 150*time.Millisecond, 0)
	t.Cleanup(func() { srv.Proxy().SetLatency(proxy.Both, 0, 0) })
	srv.Proxy().ResetConns() // every connection is dialled again, slowly

	ctx, cancel := context.WithTimeout(lsContext(t), 20*time.Second)
	defer cancel()
	start := time.Now()
	s, err := c.NewSession(ctx, ttl)
	require.NoError(t, err, "NewSession on a member that answers in 300 ms, StallTimeout 200 ms")
	t.Cleanup(func() { _ = s.Close() })
	t.Logf("granted after %v", time.Since(start))
	assert.Greater(t, lsLeaseTTL(t, raw, s.Lease()), int64(0), "the lease lives on the server")
}
