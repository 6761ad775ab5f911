//go:build etcdbinary

// The etcdbinary build tag selects tests that need members running as
// processes of a real etcd binary, named by ETCDTEST_BINARY (see
// etcdtest.BinaryEnv): .ci/run builds etcd 3.5, 3.6 and 3.7 servers and
// runs them with the tag and the variable set, once per release. A plain
// `go test ./...` compiles none of them.

package etcdkit_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// TestFrozenLeader stops (SIGSTOP) the cluster's leader, which is also the
// member the client's watch and keepalive streams use, for longer than the
// election timeout and than the session TTL, as a long garbage-collection
// pause or a stalled VM would. A frozen member keeps its connections open
// and answers nothing, so only the library's stall detection notices it.
// While it is frozen, the watch delivers what the new leader commits, the
// session keeps its lease alive through another member, and the election
// keeps its leader and queues a new candidate. After the thaw, when the old
// leader wakes up believing it still leads, nothing arrives twice and
// nothing is missing: the watch's events are exactly the writes made, the
// observers see each leader once, and the ephemeral key is held by the
// session (see below for what the server may do to its lease).
func TestFrozenLeader(t *testing.T) {
	if os.Getenv(etcdtest.BinaryEnv) == "" {
		t.Fatalf("built with the etcdbinary tag, this test needs %s naming an etcd binary (see .ci/etcd-binaries)", etcdtest.BinaryEnv)
	}
	const ttl = 3 * time.Second
	cl := etcdtest.StartCluster(t, 3, etcdtest.WithProxy())
	c := testClientConfig(t, etcdkit.Config{Endpoints: cl.Endpoints(), Namespace: "fz"})
	ctx := testContext(t, 2*time.Minute)

	start := currentRev(t, cl.Client(t))
	w := etcdkit.NewPrefix(c, "cfg", etcdkit.String()).Watch(ctx, etcdkit.AfterRevision(start))
	col := collect(t, w)
	untilState(t, "watch", w.State, etcdkit.WatchConnected)
	var victim *etcdtest.Server
	var others, otherProxies []string
	for _, m := range cl.Members() {
		if m.ProxyEndpoint() == etcdkit.StreamEndpoint(c) {
			victim = m
		} else {
			others = append(others, m.Endpoint())
			otherProxies = append(otherProxies, m.ProxyEndpoint())
		}
	}
	require.NotNil(t, victim, "the client's stream member")
	cl.MoveLeader(t, victim)
	raw := newTestRawClient(t, others)
	wr := newWriter(t, raw, "fz")

	eph, err := etcdkit.NewEphemeral(ctx, etcdkit.NewKey(c, "svc/a", etcdkit.String()), "mine", ttl)
	require.NoError(t, err)
	t.Cleanup(func() { _ = eph.Close() })
	lease := eph.Lease()
	states := recordStates(t, eph.States())

	// A Live value of the key the writer changes, on the same client.
	live := etcdkit.NewLive(ctx, etcdkit.NewKey(c, "cfg/n", etcdkit.String()), etcdkit.WithDefault("unset"))
	t.Cleanup(func() { _ = live.Close() })

	el := etcdkit.NewElection(c, "lead", ttl)
	lead, err := el.Campaign(ctx, "a")
	require.NoError(t, err)
	t.Cleanup(func() { _ = lead.Close() })
	obs := observeAll(t, el.Observe(ctx))
	obs.until(t, "the first leader observed", func(ls []etcdkit.LeaderInfo) bool { return len(ls) == 1 })
	col.untilRev(t, wr.put("cfg/n", "0"))

	frozenAt := time.Now()
	require.NoError(t, victim.Freeze())
	next := cl.WaitLeader(t)
	require.NotEqual(t, victim, next)
	t.Logf("new leader %s %v after the freeze", next.Name(), time.Since(frozenAt).Round(time.Millisecond))

	// A second candidate, on a client that never knew the frozen member,
	// queues behind the first.
	c2 := testClientConfig(t, etcdkit.Config{Endpoints: otherProxies, Namespace: "fz"})
	el2 := etcdkit.NewElection(c2, "lead", ttl)
	second := make(chan *etcdkit.Leadership, 1)
	campaignErr := make(chan error, 1)
	go func() {
		l, err := el2.Campaign(ctx, "b")
		campaignErr <- err
		second <- l
	}()

	wr.put("cfg/n", "1")
	wr.del("cfg/n")
	last := wr.txn("cfg/x", "2", "cfg/y", "2")
	col.untilRev(t, last)
	t.Logf("changes delivered %v after the freeze", time.Since(frozenAt).Round(time.Millisecond))
	require.NotEqual(t, victim.ProxyEndpoint(), etcdkit.StreamEndpoint(c), "the watch left the frozen member")

	// The lease outlives its TTL counted from the freeze only if keepalives
	// reached the new leader meanwhile.
	eventually(t, "a session TTL passed since the freeze, the lease alive", func() bool {
		alive := leaseAlive(t, raw, lease)
		require.True(t, alive, "lease %x expired %v after the freeze", lease, time.Since(frozenAt))
		return time.Since(frozenAt) > ttl+time.Second
	})
	require.True(t, victim.Frozen())
	select {
	case <-lead.Done():
		t.Fatalf("leadership ended during the freeze: %v", lead.Err())
	default:
	}
	select {
	case err := <-campaignErr:
		t.Fatalf("second candidate's campaign returned during the freeze: %v", err)
	default:
	}

	thawedAt := time.Now()
	require.NoError(t, victim.Thaw())
	t.Logf("frozen for %v", thawedAt.Sub(frozenAt).Round(time.Millisecond))
	last = wr.put("cfg/n", "3")
	col.untilRev(t, last)
	require.Equal(t, wr.since(start, "cfg/"), changesOf(col.events()), "watch events across the freeze")

	require.NoError(t, lead.Resign(ctx))
	require.NoError(t, <-campaignErr)
	lead2 := <-second
	t.Cleanup(func() { _ = lead2.Close() })
	seen := obs.until(t, "the second leader observed", func(ls []etcdkit.LeaderInfo) bool {
		return len(ls) > 0 && ls[len(ls)-1].ID == "b"
	})
	require.Len(t, seen, 2, "observed leaders: %+v", seen)
	require.Equal(t, "a", seen[0].ID)
	require.Equal(t, lead.Token(), seen[0].Token)
	require.Equal(t, lead2.Token(), seen[1].Token)
	require.Greater(t, seen[1].Token, seen[0].Token)

	// The ephemeral key is held by the session, under its current lease.
	// The lease itself may not survive the thaw: the old leader wakes with
	// a fresh raft tick, so etcd's check against a stale leader revoking
	// leases (etcd #15247) takes it for an active leader, and its lessor,
	// which saw no keepalive during the freeze, proposes to revoke the
	// lease; once the member has stepped down, raft forwards the proposal
	// to the new leader, which commits it. Seen in about one run in eight
	// on 3.5, 3.6 and 3.7. The session then reports SessionLost and
	// SessionRecovered with a new lease, and the Ephemeral puts its key
	// back: that much is asserted, and the replacement is logged.
	eventually(t, "ephemeral live, holding its key", func() bool {
		resp, err := raw.Get(ctx, "fz/svc/a")
		require.NoError(t, err)
		return eph.State() == etcdkit.SessionLive && len(resp.Kvs) == 1 &&
			string(resp.Kvs[0].Value) == "mine" && resp.Kvs[0].Lease == int64(eph.Lease())
	})
	if eph.Lease() != lease {
		t.Logf("the session replaced lease %x after the thaw: states %v; key history %v", lease, states, keyHistory(t, raw, "fz/svc/a", start))
	}
	// The Live value followed the key across the freeze and holds its last
	// value, which nothing rejected.
	eventually(t, "the Live value at the last write", func() bool { return live.Get() == "3" && !live.Stale() })
	if r, ok := live.Rejected(); ok {
		t.Fatalf("the Live value rejected %v", r)
	}

	// The thawed member catches up with the same history.
	requireSerializable(t, victim.Client(t), "fz/cfg/n", "3")
	col.quiet(t, 500*time.Millisecond, len(col.events()))
	require.Equal(t, wr.since(start, "cfg/"), changesOf(col.events()), "watch events after the thaw")
}

// leaseAlive reports whether the lease still exists, failing the test if
// the cluster cannot say.
func leaseAlive(t testing.TB, cli *clientv3.Client, id clientv3.LeaseID) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	resp, err := cli.TimeToLive(ctx, id)
	require.NoError(t, err)
	return resp.TTL > 0
}

// keyHistory lists the changes of key since revision rev, for failure
// messages.
func keyHistory(t testing.TB, cli *clientv3.Client, key string, rev int64) []string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	now, err := cli.Get(ctx, key)
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	for wr := range cli.Watch(wctx, key, clientv3.WithRev(rev+1)) {
		for _, ev := range wr.Events {
			out = append(out, fmt.Sprintf("%s %q lease %x at %d", ev.Type, ev.Kv.Value, ev.Kv.Lease, ev.Kv.ModRevision))
		}
		if wr.Err() != nil || wr.Header.Revision >= now.Header.Revision {
			break
		}
	}
	return out
}

// requireSerializable waits until the member cli talks to has applied key
// with value want.
func requireSerializable(t testing.TB, cli *clientv3.Client, key, want string) {
	t.Helper()
	eventually(t, "member caught up with "+key+"="+want, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		resp, err := cli.Get(ctx, key, clientv3.WithSerializable())
		return err == nil && len(resp.Kvs) == 1 && string(resp.Kvs[0].Value) == want
	})
}

// leaderLog records every LeaderInfo an Observation sends.
type leaderLog struct {
	mu   sync.Mutex
	seen []etcdkit.LeaderInfo
	more chan struct{}
}

func observeAll(t testing.TB, o *etcdkit.Observation) *leaderLog {
	l := &leaderLog{more: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for li := range o.Updates() {
			l.mu.Lock()
			l.seen = append(l.seen, li)
			close(l.more)
			l.more = make(chan struct{})
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = o.Close()
		<-done
	})
	return l
}

// until waits for cond to hold on what was observed so far and returns it.
func (l *leaderLog) until(t testing.TB, what string, cond func([]etcdkit.LeaderInfo) bool) []etcdkit.LeaderInfo {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		seen, more := slices.Clone(l.seen), l.more
		l.mu.Unlock()
		if cond(seen) {
			return seen
		}
		select {
		case <-more:
		case <-deadline.C:
			t.Fatalf("no %s within %v; observed %+v", what, waitTimeout, seen)
		}
	}
}

// TestRequestsMoveOffFrozenMember is TestRequestsMoveOffSickMember with a
// fault only a process member can show: the client's member is frozen
// (SIGSTOP), so its connections stay open and nothing answers, as in a long
// pause. Reads move on; the one write in flight at the freeze fails with
// ErrUnknownOutcome, the others succeed; the history holds every
// acknowledged write once, also after the member thaws.
func TestRequestsMoveOffFrozenMember(t *testing.T) {
	if os.Getenv(etcdtest.BinaryEnv) == "" {
		t.Fatalf("built with the etcdbinary tag, this test needs %s naming an etcd binary (see .ci/etcd-binaries)", etcdtest.BinaryEnv)
	}
	cl, victim, eps := pinnedCluster(t)
	c := testClientConfig(t, etcdkit.Config{Endpoints: eps, Namespace: "req", StallTimeout: requestStall})
	k := etcdkit.NewKey(c, "seq", etcdkit.String())
	tr, stop := startTraffic(t, k)
	start := time.Now()
	require.Eventually(t, func() bool { w, r := tr.count(start); return w >= 5 && r >= 5 },
		20*time.Second, 10*time.Millisecond, "traffic before the freeze")

	frozenAt := time.Now()
	require.NoError(t, victim.Freeze())
	thawed := false
	t.Cleanup(func() {
		if !thawed {
			_ = victim.Thaw()
		}
	})
	require.Eventually(t, func() bool { w, r := tr.count(frozenAt); return w >= 20 && r >= 20 },
		60*time.Second, 10*time.Millisecond, "traffic during the freeze")
	require.True(t, victim.Frozen())
	require.NoError(t, victim.Thaw())
	thawed = true
	thawAt := time.Now()
	require.Eventually(t, func() bool { w, r := tr.count(thawAt); return w >= 5 && r >= 5 },
		20*time.Second, 10*time.Millisecond, "traffic after the thaw")
	stop()

	checkAfterFault(t, "frozen", tr, frozenAt)
	checkHistory(t, cl, c.KeyPrefix()+k.Name(), tr)
}
