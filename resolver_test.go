package etcdkit_test

import (
	"context"
	"errors"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/resolver"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

var dsBuildOptions = resolver.BuildOptions{}

func dsTarget(t testing.TB, target string) resolver.Target {
	t.Helper()
	u, err := url.Parse(target)
	require.NoError(t, err)
	return resolver.Target{URL: *u}
}

// fakeConn stands in for gRPC's side of a resolver and records what the
// resolver tells it. Its other methods are nil: calling one panics.
type fakeConn struct {
	resolver.ClientConn

	mu     sync.Mutex
	states []resolver.State
	errs   []error
	log    []string // "state" or "error", in order
}

func (f *fakeConn) UpdateState(s resolver.State) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.states = append(f.states, s)
	f.log = append(f.log, "state")
	return nil
}

func (f *fakeConn) ReportError(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs = append(f.errs, err)
	f.log = append(f.log, "error")
}

func (f *fakeConn) last() (resolver.State, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.states) == 0 {
		return resolver.State{}, false
	}
	return f.states[len(f.states)-1], true
}

func (f *fakeConn) lastError() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.errs) == 0 {
		return nil
	}
	return f.errs[len(f.errs)-1]
}

func (f *fakeConn) events() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.log)
}

// resolved returns the instances of a resolver state's endpoints, checking
// that each endpoint's address is its instance's.
func resolved(t testing.TB, st resolver.State) []etcdkit.ResolvedInstance {
	t.Helper()
	out := make([]etcdkit.ResolvedInstance, 0, len(st.Endpoints))
	for i, ep := range st.Endpoints {
		ri, ok := etcdkit.ResolvedInstanceFrom(ep.Attributes)
		require.True(t, ok, "endpoint %d has no ResolvedInstance", i)
		require.Len(t, ep.Addresses, 1)
		require.Equal(t, ri.Addr, ep.Addresses[0].Addr)
		require.Equal(t, ri.Addr, st.Addresses[i].Addr)
		out = append(out, ri)
	}
	require.Len(t, st.Addresses, len(st.Endpoints))
	return out
}

// resolvedIDs returns the IDs of a resolver state's endpoints, "?" for an
// endpoint without a ResolvedInstance.
func resolvedIDs(st resolver.State) []string {
	ids := make([]string, 0, len(st.Endpoints))
	for _, ep := range st.Endpoints {
		ri, ok := etcdkit.ResolvedInstanceFrom(ep.Attributes)
		if !ok {
			ri.ID = "?"
		}
		ids = append(ids, ri.ID)
	}
	return ids
}

// waitResolved waits until the last state the resolver sent holds exactly
// the instances ids.
func waitResolved(t testing.TB, cc *fakeConn, ids ...string) resolver.State {
	t.Helper()
	require.Eventually(t, func() bool {
		st, ok := cc.last()
		return ok && slices.Equal(resolvedIDs(st), ids)
	}, dsWait, dsTick, "resolver state never held %v", ids)
	st, _ := cc.last()
	resolved(t, st)
	return st
}

// TestResolverState drives the resolver with a stand-in for gRPC: the state
// it sends lists the instances with their metadata as attributes, follows
// registrations, updates and deregistrations, skips an unreadable key,
// reports a silent link (proxy Blackhole(Both)) through ReportError while
// keeping the endpoints, sends the state again after the heal, and reports
// the client's Close.
func TestResolverState(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	c := testClient(t, []string{srv.ProxyEndpoint()}, "app")
	direct := testClient(t, []string{srv.Endpoint()}, "app")
	svc := dsService(direct)
	ra := dsRegister(t, svc, dsInstance("a", 1001))
	rb := dsRegister(t, svc, dsInstance("b", 1002))

	for _, target := range []string{"etcdkit://authority/svc", "etcdkit:///", "etcdkit:///a//b"} {
		_, err := c.ResolverBuilder().Build(dsTarget(t, target), &fakeConn{}, dsBuildOptions)
		assert.Error(t, err, "target %q", target)
	}
	assert.Equal(t, "etcdkit", c.ResolverBuilder().Scheme())

	cc := &fakeConn{}
	r, err := c.ResolverBuilder().Build(dsTarget(t, "etcdkit:///svc"), cc, dsBuildOptions)
	require.NoError(t, err)
	t.Cleanup(r.Close)
	st := waitResolved(t, cc, "a", "b")
	ris := resolved(t, st)
	assert.Equal(t, etcdkit.ResolvedInstance{Service: "svc", ID: "a", Addr: "127.0.0.1:1001", Meta: []byte(`{"zone":"z-a","version":1}`)}, ris[0])
	for i, id := range []string{"a", "b"} {
		in, err := svc.DecodeResolved(ris[i])
		require.NoError(t, err)
		assert.Equal(t, dsInstance(id, 1001+i), in)
	}
	r.ResolveNow(resolver.ResolveNowOptions{})

	_, err = srv.Client(t).Put(testContext(t, 5*time.Second), "app/_etcdkit/service/svc/garbage", "not json")
	require.NoError(t, err)
	a2 := dsInstance("a", 1001)
	a2.Meta.Version = 2
	require.NoError(t, ra.Update(testContext(t, 5*time.Second), a2.Meta))
	require.Eventually(t, func() bool {
		st, _ := cc.last()
		if len(st.Endpoints) == 0 {
			return false
		}
		ri, _ := etcdkit.ResolvedInstanceFrom(st.Endpoints[0].Attributes)
		in, err := svc.DecodeResolved(ri)
		return err == nil && in == a2
	}, dsWait, dsTick, "new metadata never resolved")
	waitResolved(t, cc, "a", "b")

	// A silent link: gRPC hears of it, and keeps the endpoints it has.
	cut := time.Now()
	srv.Proxy().Blackhole(proxy.Both)
	require.Eventually(t, func() bool { return cc.lastError() != nil }, dsWait, dsTick, "no error reported on a silent link")
	t.Logf("silent link reported %v after the cut: %v", time.Since(cut), cc.lastError())
	assert.Contains(t, cc.lastError().Error(), "stale")
	st, _ = cc.last()
	assert.Equal(t, []string{"a", "b"}, resolvedIDs(st), "endpoints while cut off")
	srv.Proxy().Unblackhole()
	require.Eventually(t, func() bool { ev := cc.events(); return ev[len(ev)-1] == "state" }, dsWait, dsTick,
		"state not sent again after the heal")
	waitResolved(t, cc, "a", "b")

	require.NoError(t, ra.Close())
	waitResolved(t, cc, "b")
	require.NoError(t, rb.Close())
	st = waitResolved(t, cc)
	assert.Empty(t, st.Endpoints)

	require.NoError(t, c.Close())
	require.Eventually(t, func() bool { return errors.Is(cc.lastError(), etcdkit.ErrClosed) }, dsWait, dsTick,
		"client Close not reported; last error %v", cc.lastError())
	r.Close()
	_, err = c.ResolverBuilder().Build(dsTarget(t, "etcdkit:///svc"), &fakeConn{}, dsBuildOptions)
	assert.ErrorIs(t, err, etcdkit.ErrClosed)
}

// recordingBuilder wraps a resolver builder and keeps the last state its
// resolver gave the real gRPC channel.
type recordingBuilder struct {
	resolver.Builder
	mu   sync.Mutex
	last resolver.State
}

type recordingConn struct {
	resolver.ClientConn
	b *recordingBuilder
}

func (b *recordingBuilder) Build(t resolver.Target, cc resolver.ClientConn, o resolver.BuildOptions) (resolver.Resolver, error) {
	return b.Builder.Build(t, &recordingConn{ClientConn: cc, b: b}, o)
}

func (r *recordingConn) UpdateState(s resolver.State) error {
	r.b.mu.Lock()
	r.b.last = s
	r.b.mu.Unlock()
	return r.ClientConn.UpdateState(s)
}

func (b *recordingBuilder) state() resolver.State {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last
}

// healthServer serves the gRPC health service on 127.0.0.1 until the test
// ends, and returns its address.
func healthServer(t testing.TB) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(lis)
	}()
	t.Cleanup(func() { s.Stop(); <-done })
	return lis.Addr().String()
}

// TestResolverGRPCRoundRobin dials "etcdkit:///svc" with round_robin over
// real gRPC servers on 127.0.0.1: calls reach every registered server, stop
// reaching a deregistered one, and reach a newly registered one; the
// metadata is in the state gRPC was given.
func TestResolverGRPCRoundRobin(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "app")
	svc := dsService(c)
	byAddr := map[string]string{}
	register := func(id string, zone string) *etcdkit.Registration[nodeMeta] {
		addr := healthServer(t)
		byAddr[addr] = id
		return dsRegister(t, svc, etcdkit.Instance[nodeMeta]{ID: id, Addr: addr, Meta: nodeMeta{Zone: zone, Version: 1}})
	}
	register("s1", "eu")
	r2 := register("s2", "us")
	register("s3", "eu")

	assert.Equal(t, "etcdkit:///svc", svc.Target())
	assert.Equal(t, "etcdkit:///a%20b/c", etcdkit.NewService(c, "a b/c", etcdkit.String()).Target())
	rb := &recordingBuilder{Builder: c.ResolverBuilder()}
	conn, err := grpc.NewClient(svc.Target(),
		grpc.WithResolvers(rb),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	hc := healthpb.NewHealthClient(conn)
	call := func() string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), dsWait)
		defer cancel()
		var p peer.Peer
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p), grpc.WaitForReady(true))
		require.NoError(t, err)
		return byAddr[p.Addr.String()]
	}
	// reachesAll calls until every server of ids has answered.
	reachesAll := func(ids ...string) {
		t.Helper()
		seen := map[string]bool{}
		deadline := time.Now().Add(dsWait)
		for len(seen) < len(ids) {
			require.True(t, time.Now().Before(deadline), "calls reached only %v of %v", seen, ids)
			id := call()
			if slices.Contains(ids, id) {
				seen[id] = true
			}
		}
	}
	// spread makes n calls and returns who answered how often.
	spread := func(n int) map[string]int {
		got := map[string]int{}
		for range n {
			got[call()]++
		}
		return got
	}

	reachesAll("s1", "s2", "s3")
	got := spread(30)
	assert.Equal(t, map[string]int{"s1": 10, "s2": 10, "s3": 10}, got, "round robin over three")

	require.NoError(t, r2.Close())
	// The balancer drops s2 once the resolver's update reaches it: wait for
	// a run of calls without it, then check that it stays out.
	deadline := time.Now().Add(dsWait)
	for run := 0; run < 30; {
		require.True(t, time.Now().Before(deadline), "calls still reach the deregistered server")
		if call() == "s2" {
			run = 0
		} else {
			run++
		}
	}
	got = spread(30)
	assert.Equal(t, map[string]int{"s1": 15, "s3": 15}, got, "after s2 left")

	register("s4", "ap")
	reachesAll("s1", "s3", "s4")
	got = spread(30)
	assert.Equal(t, map[string]int{"s1": 10, "s3": 10, "s4": 10}, got, "after s4 came")

	st := rb.state()
	var zones []string
	for _, ri := range resolved(t, st) {
		in, err := svc.DecodeResolved(ri)
		require.NoError(t, err)
		assert.Equal(t, ri.ID, byAddr[in.Addr])
		zones = append(zones, in.ID+"="+in.Meta.Zone)
	}
	assert.Equal(t, "s1=eu s3=eu s4=ap", strings.Join(zones, " "), "metadata in the resolver state")
}
