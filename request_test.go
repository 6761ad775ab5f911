package etcdkit_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// requestStall is the StallTimeout of the request fault tests: each attempt
// on a member gets this long before the runner gives up on it.
const requestStall = time.Second

// pinnedCluster starts a three-member cluster, each member behind a proxy,
// and returns it with a follower and the endpoints to configure, that
// follower's first: the runner pins requests to the first endpoint until it
// fails, so the follower is "the client's member".
func pinnedCluster(t *testing.T) (*etcdtest.Cluster, *etcdtest.Server, []string) {
	t.Helper()
	cl := etcdtest.StartCluster(t, 3, etcdtest.WithProxy())
	lead := cl.WaitLeader(t)
	var victim *etcdtest.Server
	eps := []string{}
	for _, m := range cl.Members() {
		if m != lead && victim == nil {
			victim = m
			eps = append([]string{m.ProxyEndpoint()}, eps...)
			continue
		}
		eps = append(eps, m.ProxyEndpoint())
	}
	return cl, victim, eps
}

// opResult is one call of the traffic: a Put of val, or a Get.
type opResult struct {
	put bool
	val string
	// stopped: the call was cut short by the end of the traffic.
	stopped bool
	rev     int64
	err     error
	issued  time.Time
	took    time.Duration
}

// traffic is a sequential writer and a sequential reader of one key.
type traffic struct {
	mu  sync.Mutex
	ops []opResult
}

func (tr *traffic) add(r opResult) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.ops = append(tr.ops, r)
}

// since returns the calls that returned at or after t: those in flight at t
// too.
func (tr *traffic) since(t time.Time) []opResult {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var out []opResult
	for _, r := range tr.ops {
		if !r.issued.Add(r.took).Before(t) {
			out = append(out, r)
		}
	}
	return out
}

// count returns how many writes and reads issued at or after t succeeded.
func (tr *traffic) count(t time.Time) (writes, reads int) {
	for _, r := range tr.since(t) {
		switch {
		case r.err != nil || r.issued.Before(t):
		case r.put:
			writes++
		default:
			reads++
		}
	}
	return writes, reads
}

// startTraffic runs a writer that puts "v0001", "v0002"... and a reader,
// each one call at a time with a 10s deadline, until the returned stop is
// called (also at cleanup).
func startTraffic(t *testing.T, k *etcdkit.Key[string]) (*traffic, func()) {
	tr := &traffic{}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for n := 1; ctx.Err() == nil; n++ {
			val := fmt.Sprintf("v%04d", n)
			octx, ocancel := context.WithTimeout(ctx, 10*time.Second)
			start := time.Now()
			rev, err := k.Put(octx, val)
			ocancel()
			stopped := ctx.Err() != nil && err != nil
			if stopped {
				// Cut short: its outcome is unknown, and recorded as such
				// for the history check.
				err = fmt.Errorf("%w: stopped: %w", etcdkit.ErrUnknownOutcome, err)
			}
			tr.add(opResult{put: true, val: val, rev: rev, err: err, issued: start, took: time.Since(start), stopped: stopped})
		}
	})
	wg.Go(func() {
		for ctx.Err() == nil {
			octx, ocancel := context.WithTimeout(ctx, 10*time.Second)
			start := time.Now()
			v, err := k.Get(octx)
			ocancel()
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, etcdkit.ErrNotFound) {
				err = nil
			}
			tr.add(opResult{val: v.Data, rev: v.Revision, err: err, issued: start, took: time.Since(start)})
		}
	})
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	return tr, stop
}

// checkAfterFault asserts that every read issued after the fault at
// faultAt succeeded, and every write but at most the one in flight at the
// fault, which failed with ErrUnknownOutcome, and logs the slowest call.
func checkAfterFault(t *testing.T, fault string, tr *traffic, faultAt time.Time) {
	t.Helper()
	unknown := 0
	var slowest time.Duration
	for _, r := range tr.since(faultAt) {
		if r.stopped {
			continue
		}
		slowest = max(slowest, r.took)
		if r.err == nil {
			continue
		}
		require.True(t, r.put, "got read error %v, want reads to move to another member", r.err)
		require.ErrorIs(t, r.err, etcdkit.ErrUnknownOutcome)
		unknown++
	}
	require.LessOrEqual(t, unknown, 1, "got %d writes of unknown outcome, want at most the one in flight at the fault", unknown)
	t.Logf("%s: slowest call after the fault %v (target %v), %d of unknown outcome", fault, slowest, requestStall+time.Second, unknown)
}

// history returns every value the key held, in revision order, with the
// revision that wrote it, read through a watch from revision 1 on a raw
// client of the whole cluster.
func history(t *testing.T, cl *etcdtest.Cluster, key string) (vals []string, revs []int64) {
	t.Helper()
	raw := cl.Client(t)
	ctx := testContext(t, 30*time.Second)
	cur, err := raw.Get(ctx, key)
	require.NoError(t, err)
	if len(cur.Kvs) == 0 {
		return nil, nil
	}
	last := cur.Kvs[0].ModRevision
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for resp := range raw.Watch(wctx, key, clientv3.WithRev(1)) {
		require.NoError(t, resp.Err())
		for _, ev := range resp.Events {
			require.Equal(t, clientv3.EventTypePut, ev.Type, "nothing deletes the key")
			vals = append(vals, string(ev.Kv.Value))
			revs = append(revs, ev.Kv.ModRevision)
		}
		if len(revs) > 0 && revs[len(revs)-1] >= last {
			return vals, revs
		}
	}
	t.Fatalf("watch of the history ended: %v", ctx.Err())
	return nil, nil
}

// checkHistory asserts that every acknowledged write is in the key's
// history exactly once, at the revision Put returned; that a write of
// unknown outcome is there at most once; that nothing else is; and that the
// values are in the writer's order.
func checkHistory(t *testing.T, cl *etcdtest.Cluster, key string, tr *traffic) {
	t.Helper()
	vals, revs := history(t, cl, key)
	at := make(map[string][]int64)
	for i, v := range vals {
		at[v] = append(at[v], revs[i])
	}
	// A write of unknown outcome may apply late, after writes issued later:
	// a frozen member forwards the proposal it held once it thaws. The
	// others are in the writer's order.
	unknown := make(map[string]bool)
	for _, r := range tr.since(time.Time{}) {
		if r.put && r.err != nil {
			unknown[r.val] = true
		}
	}
	known := slices.DeleteFunc(slices.Clone(vals), func(v string) bool { return unknown[v] })
	require.True(t, slices.IsSorted(known), "got history %v, want the writer's order (writes of unknown outcome aside)", vals)
	issued := make(map[string]bool)
	for _, r := range tr.since(time.Time{}) {
		if !r.put {
			continue
		}
		issued[r.val] = true
		switch {
		case r.err == nil:
			require.Equal(t, []int64{r.rev}, at[r.val], "acknowledged write %s at revision %d: got revisions %v", r.val, r.rev, at[r.val])
		default:
			require.ErrorIs(t, r.err, etcdkit.ErrUnknownOutcome, "write %s", r.val)
			require.LessOrEqual(t, len(at[r.val]), 1, "write %s of unknown outcome applied %d times", r.val, len(at[r.val]))
		}
	}
	for v := range at {
		require.True(t, issued[v], "history holds %s, which no call wrote", v)
	}
}

// TestRequestsMoveOffSickMember runs a sequential writer and reader on a
// client whose requests go to one follower, then makes that follower sick
// three ways. Without the request runner, clientv3's round robin sent one
// call in three to the sick member, where it waited the whole request
// timeout and failed with a bare "context deadline exceeded"; and the
// client pinned to it stopped entirely. With it, every read succeeds, every
// write succeeds except at most the one in flight when the fault struck,
// which fails with ErrUnknownOutcome, and the history holds every
// acknowledged write exactly once.
func TestRequestsMoveOffSickMember(t *testing.T) {
	for _, tc := range []struct {
		name   string
		inject func(*etcdtest.Server)
		heal   func(*testing.T, *etcdtest.Server)
	}{
		// Partition: raft messages to and from the member are dropped; its
		// client connection stays up, and within an election timeout it
		// has no leader.
		{"partitioned", (*etcdtest.Server).Partition, func(_ *testing.T, s *etcdtest.Server) { s.Heal() }},
		// Blackhole: the proxy in front of the member drops every byte both
		// ways; the connection looks up but nothing answers.
		{"blackholed", func(s *etcdtest.Server) { s.Proxy().Blackhole(proxy.Both) },
			func(_ *testing.T, s *etcdtest.Server) { s.Proxy().Unblackhole() }},
		// Stop: the member shuts down; its proxy then closes every
		// connection and refuses new ones upstream.
		{"stopped", (*etcdtest.Server).Stop, func(t *testing.T, s *etcdtest.Server) { require.NoError(t, s.Restart()) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl, victim, eps := pinnedCluster(t)
			c := testClientConfig(t, etcdkit.Config{Endpoints: eps, Namespace: "req", StallTimeout: requestStall})
			k := etcdkit.NewKey(c, "seq", etcdkit.String())
			tr, stop := startTraffic(t, k)
			start := time.Now()
			require.Eventually(t, func() bool { w, r := tr.count(start); return w >= 5 && r >= 5 },
				20*time.Second, 10*time.Millisecond, "traffic before the fault")

			faultAt := time.Now()
			tc.inject(victim)
			healed := false
			t.Cleanup(func() {
				if !healed {
					tc.heal(t, victim)
				}
			})
			require.Eventually(t, func() bool { w, r := tr.count(faultAt); return w >= 20 && r >= 20 },
				60*time.Second, 10*time.Millisecond, "traffic after the fault")
			stop()
			tc.heal(t, victim)
			healed = true

			checkAfterFault(t, tc.name, tr, faultAt)
			checkHistory(t, cl, c.KeyPrefix()+k.Name(), tr)
		})
	}
}

// TestRequestUnknownOutcome blackholes the client's member (proxy Blackhole
// of both directions) and writes: the write reaches a member that never
// answers, so whether it applied cannot be known, and the error says so,
// naming the member and the cause. Without the runner the Put waited the
// whole request timeout and failed with a bare "context deadline exceeded".
// The member is then sick in the shared view: the next write and read go
// to a healthy member.
func TestRequestUnknownOutcome(t *testing.T) {
	_, victim, eps := pinnedCluster(t)
	c := testClientConfig(t, etcdkit.Config{Endpoints: eps, Namespace: "req", StallTimeout: requestStall})
	k := etcdkit.NewKey(c, "x", etcdkit.String())
	ctx := testContext(t, 60*time.Second)
	_, err := k.Put(ctx, "before")
	require.NoError(t, err)

	victim.Proxy().Blackhole(proxy.Both)
	t.Cleanup(victim.Proxy().Unblackhole)
	_, err = k.Put(ctx, "lost?")
	require.ErrorIs(t, err, etcdkit.ErrUnknownOutcome)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.True(t, etcdkit.IsRetryable(err))
	want := fmt.Sprintf(`etcdkit: put "x": outcome unknown: member %s (%s) did not answer within %v`, victim.Name(), victim.ProxyEndpoint(), requestStall)
	require.True(t, strings.HasPrefix(err.Error(), want), "got %q, want it to start with %q", err, want)

	_, err = k.Put(ctx, "after")
	require.NoError(t, err)
	v, err := k.Get(ctx)
	require.NoError(t, err)
	require.Equal(t, "after", v.Data)
}

// TestRequestErrorsNameMembers leaves no member able to serve: the first
// stopped, the other two partitioned from each other and from it. A read
// and a write then fail once their context ends, with an error that names
// every member and why it did not serve; the write is refused everywhere
// before being proposed, so its outcome is known: it did not apply.
func TestRequestErrorsNameMembers(t *testing.T) {
	cl, victim, eps := pinnedCluster(t)
	c := testClientConfig(t, etcdkit.Config{Endpoints: eps, Namespace: "req", StallTimeout: requestStall})
	k := etcdkit.NewKey(c, "x", etcdkit.String())
	ctx := testContext(t, 60*time.Second)
	_, err := k.Put(ctx, "before")
	require.NoError(t, err)

	victim.Stop()
	t.Cleanup(func() { _ = victim.Restart() })
	var others []*etcdtest.Server
	for _, m := range cl.Members() {
		if m != victim {
			m.Partition()
			t.Cleanup(m.Heal)
			others = append(others, m)
		}
	}
	noLeader := func(err error) bool {
		for _, m := range others {
			if !strings.Contains(err.Error(), fmt.Sprintf("member %s (%s) has no leader", m.Name(), m.ProxyEndpoint())) {
				return false
			}
		}
		return true
	}
	// The partitioned members notice that they lost the leader within an
	// election timeout; until then a request to them times out.
	require.Eventually(t, func() bool {
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		_, err := k.Get(rctx)
		if err != nil && !noLeader(err) {
			t.Log(err)
		}
		return err != nil && noLeader(err)
	}, 30*time.Second, 10*time.Millisecond, "both partitioned members report no leader")

	for _, op := range []struct {
		name string
		call func(context.Context) error
	}{
		{"get", func(ctx context.Context) error { _, err := k.Get(ctx); return err }},
		{"put", func(ctx context.Context) error { _, err := k.Put(ctx, "refused"); return err }},
	} {
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := op.call(rctx)
		cancel()
		require.Error(t, err)
		t.Log(err)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.NotErrorIs(t, err, etcdkit.ErrUnknownOutcome, "refused everywhere before being proposed")
		require.Contains(t, err.Error(), fmt.Sprintf(`etcdkit: %s "x": no member answered within `, op.name))
		require.True(t, noLeader(err), "got %q, want both partitioned members without a leader", err)
		require.Contains(t, err.Error(), fmt.Sprintf("member %s (%s) is unreachable", victim.Name(), victim.ProxyEndpoint()))
	}
}

// TestNewWithOneDeadEndpoint gives New a dead endpoint (nothing listens: a
// dial is refused) first and two live ones: New, reads and writes work, and
// the requests skip the dead endpoint.
func TestNewWithOneDeadEndpoint(t *testing.T) {
	cl := etcdtest.StartCluster(t, 3, etcdtest.WithProxy())
	cl.WaitLeader(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := ln.Addr().String()
	require.NoError(t, ln.Close())

	eps := append([]string{dead}, cl.Endpoints()[:2]...)
	c := testClientConfig(t, etcdkit.Config{Endpoints: eps, Namespace: "req", StallTimeout: requestStall})
	k := etcdkit.NewKey(c, "x", etcdkit.String())
	ctx := testContext(t, 30*time.Second)
	for i := range 5 {
		rev, err := k.Put(ctx, fmt.Sprint(i))
		require.NoError(t, err)
		v, err := k.Get(ctx)
		require.NoError(t, err)
		require.Equal(t, fmt.Sprint(i), v.Data)
		require.Equal(t, rev, v.Revision)
	}
}

// TestConfigDialOptions passes a gRPC unary interceptor through
// Config.DialOptions: the probe of New and the requests of keys go through
// it, and a request carrying a 1 MiB value still works.
func TestConfigDialOptions(t *testing.T) {
	srv := etcdtest.Start(t)
	var calls sync.Map
	count := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		n, _ := calls.LoadOrStore(method, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, Namespace: "dial",
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(count)}})
	k := etcdkit.NewKey(c, "x", etcdkit.Bytes())
	ctx := testContext(t, 30*time.Second)
	big := make([]byte, 1<<20)
	_, err := k.Put(ctx, big)
	require.NoError(t, err)
	v, err := k.Get(ctx)
	require.NoError(t, err)
	require.Len(t, v.Data, len(big))
	for _, m := range []string{"/etcdserverpb.Cluster/MemberList", "/etcdserverpb.KV/Put", "/etcdserverpb.KV/Range"} {
		n, ok := calls.Load(m)
		require.True(t, ok, "no call of %s went through the interceptor", m)
		require.Positive(t, n.(*atomic.Int64).Load())
	}
}

// TestRequestWriteNeverSentMovesOn blackholes the first endpoint (proxy
// Blackhole of both directions) before the client's first request: its
// connection never comes up, so a write cannot have left, and the runner
// sends it to the next member instead of failing it. Without the runner
// clientv3's round robin waited on that connection until the deadline for
// one request in three.
func TestRequestWriteNeverSentMovesOn(t *testing.T) {
	cl, victim, eps := pinnedCluster(t)
	victim.Proxy().Blackhole(proxy.Both)
	t.Cleanup(victim.Proxy().Unblackhole)
	c := testClientConfig(t, etcdkit.Config{Endpoints: eps, Namespace: "req", StallTimeout: requestStall})
	k := etcdkit.NewKey(c, "x", etcdkit.String())
	ctx := testContext(t, 60*time.Second)
	for i := range 5 {
		rev, err := k.Put(ctx, fmt.Sprint(i))
		require.NoError(t, err, "write %d", i)
		v, err := k.Get(ctx)
		require.NoError(t, err)
		require.Equal(t, etcdkit.Value[string]{Data: fmt.Sprint(i), Revision: rev, CreateRevision: v.CreateRevision, Version: int64(i + 1)}, v)
	}
	vals, _ := history(t, cl, c.KeyPrefix()+"x")
	require.Equal(t, []string{"0", "1", "2", "3", "4"}, vals, "each write applied once")
}
