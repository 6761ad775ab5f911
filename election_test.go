package etcdkit_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// Generous bounds for conditions to come true on a loaded two-core machine
// running with -race. Tests wait on conditions, never on fixed sleeps.
const (
	elWait = 20 * time.Second
	elTick = 10 * time.Millisecond
)

// elPrefix is the etcd prefix of the candidate keys of election name under
// namespace ns, as documented on Election.
func elPrefix(ns, name string) string {
	return ns + "/_etcdkit/election/" + name + "/"
}

// elCandidates returns the candidate keys of an election, as etcd holds
// them, in create order.
func elCandidates(t testing.TB, raw *clientv3.Client, prefix string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := raw.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	require.NoError(t, err)
	keys := make([]string, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		keys[i] = string(kv.Key)
	}
	return keys
}

// elWaitCandidates waits until the election has n candidate keys.
func elWaitCandidates(t testing.TB, raw *clientv3.Client, prefix string, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return len(elCandidates(t, raw, prefix)) == n }, elWait, elTick,
		"want %d candidate keys under %q", n, prefix)
}

// elLead campaigns and returns the leadership, which is closed when the
// test ends.
func elLead(t testing.TB, e *etcdkit.Election, id string) *etcdkit.Leadership {
	t.Helper()
	l, err := e.Campaign(testContext(t, elWait), id)
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	return l
}

type campaignResult struct {
	l   *etcdkit.Leadership
	err error
	at  time.Time
}

// elCampaignAsync runs Campaign in the background and delivers its result.
// When the test ends, the campaign is cancelled and waited for, and a
// leadership nobody took is closed.
func elCampaignAsync(t testing.TB, e *etcdkit.Election, id string) <-chan campaignResult {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan campaignResult, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l, err := e.Campaign(ctx, id)
		ch <- campaignResult{l, err, time.Now()}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		select {
		case r := <-ch:
			if r.l != nil {
				_ = r.l.Close()
			}
		default:
		}
	})
	return ch
}

// elResult waits for a campaign's result; a won leadership is closed when
// the test ends.
func elResult(t testing.TB, ch <-chan campaignResult) campaignResult {
	t.Helper()
	select {
	case r := <-ch:
		if r.l != nil {
			t.Cleanup(func() { _ = r.l.Close() })
		}
		return r
	case <-time.After(elWait):
		t.Fatalf("campaign did not return within %v", elWait)
		return campaignResult{}
	}
}

// elPending checks that a campaign is still waiting.
func elPending(t testing.TB, ch <-chan campaignResult, who string) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("%s: campaign returned (leadership %v, err %v), want it still waiting", who, r.l != nil, r.err)
	default:
	}
}

// elWaitDone waits for a leadership to end and returns its Err.
func elWaitDone(t testing.TB, l *etcdkit.Leadership) error {
	t.Helper()
	select {
	case <-l.Done():
		return l.Err()
	case <-time.After(elWait):
		t.Fatalf("leadership %q did not end within %v", l.ID(), elWait)
		return nil
	}
}

// observed records what an Observation delivers.
type observed struct {
	h      *etcdkit.Observation
	mu     sync.Mutex
	vals   []etcdkit.LeaderInfo
	closed bool
}

// elObserve observes e until ctx ends or the test does.
func elObserve(t testing.TB, ctx context.Context, e *etcdkit.Election) *observed {
	ctx, cancel := context.WithCancel(ctx)
	o := &observed{h: e.Observe(ctx)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for li := range o.h.Updates() {
			o.mu.Lock()
			o.vals = append(o.vals, li)
			o.mu.Unlock()
		}
		o.mu.Lock()
		o.closed = true
		o.mu.Unlock()
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = o.h.Close()
	})
	return o
}

// elEnded checks that o has ended, with Events closed, and returns its Err.
func elEnded(t testing.TB, o *etcdkit.Observation) error {
	t.Helper()
	select {
	case <-o.Done():
	case <-time.After(elWait):
		t.Fatalf("observation did not end within %v", elWait)
	}
	_, ok := <-o.Updates()
	assert.False(t, ok, "Events is closed once Done is")
	require.Error(t, o.Err(), "an ended observation has a cause")
	return o.Err()
}

func (o *observed) list() []etcdkit.LeaderInfo {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]etcdkit.LeaderInfo(nil), o.vals...)
}

func (o *observed) isClosed() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.closed
}

// waitLen waits until at least n values were delivered and returns them.
func (o *observed) waitLen(t testing.TB, n int) []etcdkit.LeaderInfo {
	t.Helper()
	require.Eventually(t, func() bool { return len(o.list()) >= n }, elWait, elTick, "want %d observed values, got %v", n, o.list())
	return o.list()
}

func TestElectionInvalidArguments(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "el")
	ctx := testContext(t, elWait)

	cases := []struct {
		name string
		e    *etcdkit.Election
		want error
	}{
		{"nil client", etcdkit.NewElection(nil, "x", 2*time.Second), nil},
		{"empty name", etcdkit.NewElection(c, "", 2*time.Second), etcdkit.ErrInvalidName},
		{"dot-dot segment", etcdkit.NewElection(c, "a/../b", 2*time.Second), etcdkit.ErrInvalidName},
		{"TTL under a second", etcdkit.NewElection(c, "x", 500*time.Millisecond), etcdkit.ErrInvalidTTL},
		{"fractional TTL", etcdkit.NewElection(c, "x", 1500*time.Millisecond), etcdkit.ErrInvalidTTL},
		{"step-down margin too large", etcdkit.NewElection(c, "x", 2*time.Second, etcdkit.WithStepDownMargin(2*time.Second)), nil},
		{"negative step-down margin", etcdkit.NewElection(c, "x", 2*time.Second, etcdkit.WithStepDownMargin(-time.Second)), nil},
		{"nil option", etcdkit.NewElection(c, "x", 2*time.Second, nil), nil},
		{"nil session option", etcdkit.NewElection(c, "x", 2*time.Second, etcdkit.SessionOption(nil)), nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := tc.e
			require.Error(t, e.Validate())
			if tc.want != nil {
				assert.ErrorIs(t, e.Validate(), tc.want)
			}
			_, err := e.Campaign(ctx, "a")
			assert.Equal(t, e.Validate(), err, "Campaign")
			_, err = e.Leader(ctx)
			assert.Equal(t, e.Validate(), err, "Leader")
			err = e.Run(ctx, "a", func(context.Context) error { return nil })
			assert.Equal(t, e.Validate(), err, "Run")
			o := e.Observe(ctx)
			select {
			case <-o.Done():
			default:
				t.Fatal("the Observation of an invalid election has not ended")
			}
			assert.Equal(t, e.Validate(), o.Err(), "Observe")
			_, ok := <-o.Updates()
			assert.False(t, ok, "Events of an invalid election's Observation is closed")
			assert.NoError(t, o.Close())
		})
	}

	e := etcdkit.NewElection(c, "x", 2*time.Second)
	require.NoError(t, e.Validate())
	assert.Equal(t, "x", e.Name())
	assert.Equal(t, 2*time.Second, e.TTL())
	tooBig := string(make([]byte, etcdkit.DefaultMaxValueSize+1))
	_, err := e.Campaign(ctx, tooBig)
	assert.ErrorIs(t, err, etcdkit.ErrTooLarge)
	assert.Error(t, e.Run(ctx, "a", nil), "Run with a nil function")
}

func TestElectionClosedClientAndCancelledContext(t *testing.T) {
	srv := etcdtest.Start(t)
	raw := srv.Client(t)
	c := testClient(t, []string{srv.Endpoint()}, "el")
	e := etcdkit.NewElection(c, "svc", 2*time.Second)
	prefix := elPrefix("el", "svc")

	// A context that has already ended fails at once, sending nothing.
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := e.Campaign(ended, "a")
	assert.ErrorIs(t, err, context.Canceled)
	assert.Empty(t, elCandidates(t, raw, prefix))

	// Cancelled while waiting in line: the error says so and the key goes.
	l := elLead(t, e, "a")
	ctx, cancelWait := context.WithCancel(context.Background())
	defer cancelWait()
	res := make(chan error, 1)
	go func() {
		_, err := e.Campaign(ctx, "b")
		res <- err
	}()
	elWaitCandidates(t, raw, prefix, 2)
	cancelWait()
	select {
	case err := <-res:
		assert.ErrorIs(t, err, context.Canceled)
	case <-time.After(elWait):
		t.Fatal("Campaign did not return after its ctx was cancelled")
	}
	assert.Len(t, elCandidates(t, raw, prefix), 1, "the cancelled candidate's key was removed")

	// Deadline while waiting: DeadlineExceeded.
	short, cancelShort := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancelShort()
	_, err = e.Campaign(short, "c")
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Len(t, elCandidates(t, raw, prefix), 1, "the timed-out candidate's key was removed")

	// Closing the client ends the leadership and every call.
	obs := elObserve(t, context.Background(), e)
	obs.waitLen(t, 1)
	require.NoError(t, c.Close())
	err = elWaitDone(t, l)
	assert.ErrorIs(t, err, etcdkit.ErrClosed)
	assert.Error(t, l.Context().Err())
	_, err = l.Txn(testContext(t, elWait))
	assert.ErrorIs(t, err, etcdkit.ErrNotLeader)
	_, err = e.Campaign(testContext(t, elWait), "d")
	assert.ErrorIs(t, err, etcdkit.ErrClosed)
	_, err = e.Leader(testContext(t, elWait))
	assert.ErrorIs(t, err, etcdkit.ErrClosed)
	err = e.Run(testContext(t, elWait), "d", func(context.Context) error { return nil })
	assert.ErrorIs(t, err, etcdkit.ErrClosed)
	require.Eventually(t, obs.isClosed, elWait, elTick, "Observation ended with the client")
	assert.ErrorIs(t, elEnded(t, obs.h), etcdkit.ErrClosed, "Observation's cause after Client.Close")
	assert.ErrorIs(t, elEnded(t, e.Observe(context.Background())), etcdkit.ErrClosed, "Observe on a closed client")
	assert.Empty(t, elCandidates(t, raw, prefix), "Close revoked the leader's lease")
}

func TestLeaderNoLeaderAndCurrent(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "el")
	e := etcdkit.NewElection(c, "svc", 2*time.Second)
	ctx := testContext(t, elWait)

	li, err := e.Leader(ctx)
	assert.ErrorIs(t, err, etcdkit.ErrNoCandidate)
	assert.False(t, li.Present)
	assert.Positive(t, li.Revision)

	l := elLead(t, e, "a")
	li, err = e.Leader(ctx)
	require.NoError(t, err)
	assert.True(t, li.Present)
	assert.Equal(t, "a", li.ID)
	assert.Equal(t, l.Token(), li.Token)
	assert.Equal(t, int64(l.Lease()), li.Lease)
	assert.Equal(t, "a", l.ID())
	assert.Equal(t, fmt.Sprintf("%s%x", elPrefix("el", "svc"), l.Lease()), l.HoldingKey())

	require.NoError(t, l.Resign(ctx))
	_, err = e.Leader(ctx)
	assert.ErrorIs(t, err, etcdkit.ErrNoCandidate)
}

func TestElectionResignHandsOver(t *testing.T) {
	srv := etcdtest.Start(t)
	metrics := newMetrics()
	ca := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, Namespace: "el", Metrics: metrics})
	cb := testClient(t, []string{srv.Endpoint()}, "el")
	ea := etcdkit.NewElection(ca, "svc", 2*time.Second)
	eb := etcdkit.NewElection(cb, "svc", 2*time.Second)
	ctx := testContext(t, elWait)

	a := elLead(t, ea, "a")
	assert.Equal(t, 1.0, metrics.get(etcdkit.MetricLeadershipChanges), "one win")
	bCh := elCampaignAsync(t, eb, "b")
	elWaitCandidates(t, srv.Client(t), elPrefix("el", "svc"), 2)
	elPending(t, bCh, "b while a leads")

	counter := etcdkit.NewKey(ca, "counter", etcdkit.JSON[int]())
	_, err := etcdkit.GuardedPut(ctx, a, counter, 1)
	require.NoError(t, err)

	resigned := time.Now()
	require.NoError(t, a.Resign(ctx))
	assert.ErrorIs(t, context.Cause(a.Context()), etcdkit.ErrClosed)
	b := elResult(t, bCh)
	require.NoError(t, b.err)
	t.Logf("takeover %v after Resign", b.at.Sub(resigned))
	assert.Greater(t, b.l.Token(), a.Token(), "tokens grow")
	assert.ErrorIs(t, elWaitDone(t, a), etcdkit.ErrClosed)
	assert.Equal(t, 2.0, metrics.get(etcdkit.MetricLeadershipChanges), "a win and a loss")

	_, err = etcdkit.GuardedPut(ctx, a, counter, 2)
	assert.ErrorIs(t, err, etcdkit.ErrNotLeader, "the old leader's guarded write")
	_, err = etcdkit.GuardedPut(ctx, b.l, etcdkit.NewKey(cb, "counter", etcdkit.JSON[int]()), 3)
	require.NoError(t, err, "the new leader's guarded write")
	v, err := counter.Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, 3, v.Data)

	// Resign and Close are idempotent.
	require.NoError(t, a.Resign(ctx))
	require.NoError(t, a.Close())
}

func TestElectionGuardedWrites(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "el")
	other := testClient(t, []string{srv.Endpoint()}, "el")
	raw := srv.Client(t)
	e := etcdkit.NewElection(c, "svc", 2*time.Second)
	ctx := testContext(t, elWait)
	l := elLead(t, e, "a")

	k := etcdkit.NewKey(c, "cfg", etcdkit.String())
	rev, err := etcdkit.GuardedPut(ctx, l, k, "v1")
	require.NoError(t, err)
	v, err := k.Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, "v1", v.Data)
	assert.Equal(t, rev, v.Revision)

	_, err = etcdkit.GuardedDelete(ctx, l, k)
	require.NoError(t, err)
	_, err = k.Get(ctx)
	assert.ErrorIs(t, err, etcdkit.ErrNotFound)

	// Raw operations take full etcd keys: the namespace is the caller's.
	resp, err := l.Txn(ctx, clientv3.OpPut(c.Namespace()+"/raw", "r"), clientv3.OpGet(c.Namespace()+"/raw"))
	require.NoError(t, err)
	assert.Len(t, resp.Responses, 2)
	got, err := raw.Get(ctx, "el/raw")
	require.NoError(t, err)
	require.Len(t, got.Kvs, 1)
	assert.Equal(t, "r", string(got.Kvs[0].Value))

	// No ops: a linearizable "am I still the leader?".
	_, err = l.Txn(ctx)
	require.NoError(t, err)

	_, err = etcdkit.GuardedPut(ctx, l, etcdkit.NewKey(other, "cfg", etcdkit.String()), "x")
	assert.ErrorContains(t, err, "another Client")
	_, err = etcdkit.GuardedPut(ctx, l, etcdkit.NewKey(c, "../x", etcdkit.String()), "x")
	assert.ErrorIs(t, err, etcdkit.ErrInvalidName)
	_, err = etcdkit.GuardedPut(ctx, nil, k, "x")
	assert.Error(t, err)
	_, err = etcdkit.GuardedPut(ctx, l, k, string(make([]byte, etcdkit.DefaultMaxValueSize+1)))
	assert.ErrorIs(t, err, etcdkit.ErrTooLarge)

	// Someone deletes the leader key: the next guarded write is refused by
	// the cluster, and the leadership ends.
	_, err = raw.Delete(ctx, l.HoldingKey())
	require.NoError(t, err)
	_, err = etcdkit.GuardedPut(ctx, l, k, "late")
	assert.ErrorIs(t, err, etcdkit.ErrNotLeader)
	assert.ErrorIs(t, elWaitDone(t, l), etcdkit.ErrNotLeader)
	_, err = k.Get(ctx)
	assert.ErrorIs(t, err, etcdkit.ErrNotFound, "the refused write did not apply")
}

// TestGuardedWriteInterruptedByLossOfLeadership blackholes the leader's
// only link (proxy Blackhole(Both)) and sends a guarded write into it; the
// leader steps down while the write is in flight, which interrupts it. The
// write's outcome is then unknown, and the caller must learn that it was
// leadership that ended, whatever ctx it passed: before, a write made with
// Leadership.Context (the natural ctx inside Election.Run) failed with a
// bare "context canceled", which matched neither ErrNotLeader nor said that
// the write may have applied.
func TestGuardedWriteInterruptedByLossOfLeadership(t *testing.T) {
	for _, tc := range []struct {
		name    string
		leaders bool // pass Leadership.Context as ctx, else context.Background()
		write   func(ctx context.Context, l *etcdkit.Leadership, k *etcdkit.Key[string]) error
	}{
		{"GuardedPut with Context", true, func(ctx context.Context, l *etcdkit.Leadership, k *etcdkit.Key[string]) error {
			_, err := etcdkit.GuardedPut(ctx, l, k, "v")
			return err
		}},
		{"GuardedDelete with Context", true, func(ctx context.Context, l *etcdkit.Leadership, k *etcdkit.Key[string]) error {
			_, err := etcdkit.GuardedDelete(ctx, l, k)
			return err
		}},
		{"Txn with Context", true, func(ctx context.Context, l *etcdkit.Leadership, k *etcdkit.Key[string]) error {
			_, err := l.Txn(ctx, clientv3.OpPut(l.HoldingKey()+"-note", "v"))
			return err
		}},
		{"GuardedPut with Background", false, func(ctx context.Context, l *etcdkit.Leadership, k *etcdkit.Key[string]) error {
			_, err := etcdkit.GuardedPut(ctx, l, k, "v")
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := etcdtest.Start(t, etcdtest.WithProxy())
			// The request timeout is far longer than the step-down, so that
			// only the end of leadership can interrupt the write.
			c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()}, Namespace: "el",
				RequestTimeout: time.Minute})
			l := elLead(t, etcdkit.NewElection(c, "svc", 2*time.Second), "a")
			k := etcdkit.NewKey(c, "out", etcdkit.String())

			srv.Proxy().Blackhole(proxy.Both)
			t.Cleanup(srv.Proxy().Unblackhole)
			ctx := context.Background()
			if tc.leaders {
				ctx = l.Context()
			}
			errc := make(chan error, 1)
			go func() { errc <- tc.write(ctx, l, k) }()
			var err error
			select {
			case err = <-errc:
			case <-time.After(elWait):
				t.Fatalf("the write did not return within %v of the cut", elWait)
			}
			require.Error(t, l.Context().Err(), "the write returned (%v) while still leading", err)
			assert.ErrorIs(t, err, etcdkit.ErrNotLeader)
			assert.ErrorContains(t, err, "may have applied")
		})
	}
}

// elPartitionedLeader starts a member behind a proxy and a client through
// it, whose WARN lines go to logs and whose metrics to m, and returns a
// leadership of that client, with TTL 2s. The test cuts the link.
func elPartitionedLeader(t *testing.T) (*etcdtest.Server, *etcdkit.Client, *etcdkit.Leadership, *observer.ObservedLogs, *metrics) {
	t.Helper()
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	core, logs := observer.New(zap.WarnLevel)
	m := newMetrics()
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()}, Namespace: "el",
		Logger: zap.New(core), Metrics: m})
	l := elLead(t, etcdkit.NewElection(c, "svc", 2*time.Second), "a")
	t.Cleanup(srv.Proxy().Unblackhole)
	return srv, c, l, logs, m
}

// TestLeadershipLossCountedAtCancel cuts the leader's only link silently
// (proxy Blackhole(Both)): the leader steps down, and its revoke cannot
// reach the cluster. Before, leadership_changes_total counted the loss only
// once the revoke gave up, about 2s after Context was cancelled, so a
// dashboard showed a leader that had already stepped down. The loss must be
// counted by the time Context is cancelled.
func TestLeadershipLossCountedAtCancel(t *testing.T) {
	srv, _, l, _, m := elPartitionedLeader(t)
	require.Equal(t, 1.0, m.get(etcdkit.MetricLeadershipChanges), "leadership changes once won")
	atCancel := make(chan float64, 1)
	context.AfterFunc(l.Context(), func() { atCancel <- m.get(etcdkit.MetricLeadershipChanges) })

	srv.Proxy().Blackhole(proxy.Both)
	select {
	case n := <-atCancel:
		assert.Equal(t, 2.0, n, "leadership changes counted when Context was cancelled")
	case <-time.After(elWait):
		t.Fatalf("leadership did not end within %v of the cut", elWait)
	}
	assert.ErrorIs(t, elWaitDone(t, l), etcdkit.ErrNotLeader)
	assert.Equal(t, 2.0, m.get(etcdkit.MetricLeadershipChanges), "leadership changes once ended")
}

// TestRevokeUnderPartitionLogsOnce cuts the leader's only link silently
// (proxy Blackhole(Both)) for good, then closes the client. The leader
// steps down and revokes its lease, which cannot reach the cluster, while
// the watch engine replaces the client's stream connection. Before, the
// revoke went on retrying every 25ms on the connection already replaced,
// each try a WARN line (dozens in 2s, more at shutdown). It must move to
// the live connection with backoff, and the failure be logged once.
func TestRevokeUnderPartitionLogsOnce(t *testing.T) {
	srv, c, l, logs, _ := elPartitionedLeader(t)

	srv.Proxy().Blackhole(proxy.Both)
	assert.ErrorIs(t, elWaitDone(t, l), etcdkit.ErrNotLeader)
	during := logs.All()
	require.NoError(t, c.Close())
	atClose := logs.All()[len(during):]

	for _, e := range logs.All() {
		t.Logf("%s %s: %s %v", e.Level, e.LoggerName, e.Message, e.ContextMap())
	}
	// clientv3's interceptor reports every failed request once: a revoke
	// attempt stopped when its connection was replaced, and one on the new
	// connection until the revoke's deadline, with room for one more.
	revokes := func(es []observer.LoggedEntry) int {
		n := 0
		for _, e := range es {
			if e.ContextMap()["method"] == "/etcdserverpb.Lease/LeaseRevoke" {
				n++
			}
		}
		return n
	}
	assert.LessOrEqual(t, revokes(during), 3, "WARN lines about revokes from the cut to the end of leadership")
	assert.LessOrEqual(t, revokes(atClose), 1, "WARN lines about revokes while the client closes")
	// The library's own: the loss, with the revoke's failure, once.
	own := 0
	for _, e := range logs.All() {
		if e.LoggerName != "clientv3" {
			own++
		}
	}
	assert.Equal(t, 1, own, "the library's own WARN lines")
	assert.LessOrEqual(t, len(logs.All()), 10, "WARN lines in all")
}

func TestElectionLeaderKeyDeletedEndsLeadership(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "el")
	raw := srv.Client(t)
	e := etcdkit.NewElection(c, "svc", 2*time.Second)
	a := elLead(t, e, "a")
	bCh := elCampaignAsync(t, e, "b")
	elWaitCandidates(t, raw, elPrefix("el", "svc"), 2)

	// An operator deletes the leader key: without the library, the leader
	// would keep acting while b leads.
	_, err := raw.Delete(testContext(t, elWait), a.HoldingKey())
	require.NoError(t, err)
	b := elResult(t, bCh)
	require.NoError(t, b.err)
	select {
	case <-a.Context().Done():
	case <-time.After(elWait):
		t.Fatal("the leadership whose key was deleted did not end")
	}
	assert.ErrorIs(t, context.Cause(a.Context()), etcdkit.ErrNotLeader)
	assert.ErrorContains(t, context.Cause(a.Context()), "deleted")
	assert.Greater(t, b.l.Token(), a.Token())
}

func TestObserveNoLeaderThenNewLeader(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "el")
	watcher := testClient(t, []string{srv.Endpoint()}, "el")
	e := etcdkit.NewElection(c, "svc", 2*time.Second)
	ew := etcdkit.NewElection(watcher, "svc", 2*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	obs := elObserve(t, ctx, ew)

	vals := obs.waitLen(t, 1)
	assert.False(t, vals[0].Present, "first value: nobody leads yet")

	a := elLead(t, e, "a")
	vals = obs.waitLen(t, 2)
	assert.True(t, vals[1].Present)
	assert.Equal(t, "a", vals[1].ID)
	assert.Equal(t, a.Token(), vals[1].Token)

	require.NoError(t, a.Resign(testContext(t, elWait)))
	vals = obs.waitLen(t, 3)
	assert.False(t, vals[2].Present, "after the only candidate resigned: no leader")
	assert.Greater(t, vals[2].Revision, vals[1].Revision)

	b := elLead(t, e, "b")
	vals = obs.waitLen(t, 4)
	assert.Equal(t, "b", vals[3].ID)
	assert.Equal(t, b.Token(), vals[3].Token)

	// With a candidate in line, a resignation hands over directly.
	cCh := elCampaignAsync(t, e, "c")
	elWaitCandidates(t, srv.Client(t), elPrefix("el", "svc"), 2)
	require.NoError(t, b.Resign(testContext(t, elWait)))
	cl := elResult(t, cCh)
	require.NoError(t, cl.err)
	vals = obs.waitLen(t, 5)
	assert.Equal(t, "c", vals[4].ID)
	assert.Equal(t, cl.l.Token(), vals[4].Token)
	assert.Len(t, obs.list(), 5, "no change reported twice, no spurious value")

	cancel()
	require.Eventually(t, obs.isClosed, elWait, elTick, "Observation ended when its ctx ended")
	assert.ErrorIs(t, elEnded(t, obs.h), context.Canceled, "Observation's cause after its ctx was cancelled")
}

// TestObserveEndCauses checks that every way an Observation ends leaves Err
// saying why: its ctx's cause, Close, or Client.Close.
func TestObserveEndCauses(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "el")
	e := etcdkit.NewElection(c, "svc", 2*time.Second)
	first := func(t *testing.T, o *etcdkit.Observation) {
		t.Helper()
		select {
		case li, ok := <-o.Updates():
			require.True(t, ok, "Events closed before the first state: %v", o.Err())
			assert.False(t, li.Present, "first value: got %v, want no leader", li)
			assert.Positive(t, li.Revision, "no leader is stated at a revision")
		case <-time.After(elWait):
			t.Fatalf("no first state within %v", elWait)
		}
		assert.NoError(t, o.Err(), "Err before the end")
	}

	t.Run("ctx cause", func(t *testing.T) {
		errStop := errors.New("observer stopped")
		ctx, cancel := context.WithCancelCause(context.Background())
		o := e.Observe(ctx)
		first(t, o)
		cancel(errStop)
		assert.ErrorIs(t, elEnded(t, o), errStop)
		assert.NoError(t, o.Close())
		assert.ErrorIs(t, o.Err(), errStop, "Close after the end keeps the cause")
	})
	t.Run("deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		o := e.Observe(ctx)
		first(t, o)
		assert.ErrorIs(t, elEnded(t, o), context.DeadlineExceeded)
	})
	t.Run("Close", func(t *testing.T) {
		o := e.Observe(context.Background())
		first(t, o)
		require.NoError(t, o.Close())
		assert.ErrorIs(t, elEnded(t, o), etcdkit.ErrClosed)
		assert.NoError(t, o.Close(), "Close is idempotent")
	})
	t.Run("Close before the first state", func(t *testing.T) {
		o := e.Observe(context.Background())
		require.NoError(t, o.Close())
		assert.ErrorIs(t, elEnded(t, o), etcdkit.ErrClosed)
	})
	t.Run("Client.Close", func(t *testing.T) {
		c2 := testClient(t, []string{srv.Endpoint()}, "el")
		o := etcdkit.NewElection(c2, "svc", 2*time.Second).Observe(context.Background())
		first(t, o)
		require.NoError(t, c2.Close())
		assert.ErrorIs(t, elEnded(t, o), etcdkit.ErrClosed)
	})
}

func TestObserveSurvivesSilentLinkAndCompaction(t *testing.T) {
	cl := etcdtest.StartCluster(t, 3, etcdtest.WithProxy())
	members := cl.Members()
	c := testClient(t, cl.DirectEndpoints(), "el")
	// The observer's link is the fragile one: through every proxy.
	watcher := testClient(t, cl.Endpoints(), "el")
	e := etcdkit.NewElection(c, "svc", 2*time.Second)
	ew := etcdkit.NewElection(watcher, "svc", 2*time.Second)
	obs := elObserve(t, context.Background(), ew)
	obs.waitLen(t, 1)

	a := elLead(t, e, "a")
	obs.waitLen(t, 2)

	// While the observer's links are silent, a resigns and b takes over,
	// and the history is compacted away.
	for _, m := range members {
		m.Proxy().Blackhole(proxy.Both)
	}
	require.NoError(t, a.Resign(testContext(t, elWait)))
	b := elLead(t, e, "b")
	members[0].Compact(t)
	for _, m := range members {
		m.Proxy().Unblackhole()
	}
	require.Eventually(t, func() bool {
		vals := obs.list()
		last := vals[len(vals)-1]
		return last.Present && last.Token == b.Token()
	}, elWait, elTick, "observer never reported b; got %v", obs.list())
	for _, li := range obs.list()[2:] {
		assert.False(t, li.Present && li.Token == a.Token(), "a reported again after the heal: %v", obs.list())
	}
	assert.False(t, obs.isClosed(), "the channel never closes because of the network")
}

func TestElectionNamesDoNotNest(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "el")
	outer := etcdkit.NewElection(c, "a", 2*time.Second)
	inner := etcdkit.NewElection(c, "a/b", 2*time.Second)
	li := elLead(t, inner, "inner")
	lo := elLead(t, outer, "outer")
	got, err := outer.Leader(testContext(t, elWait))
	require.NoError(t, err)
	assert.Equal(t, "outer", got.ID, "election a does not see the candidates of a/b")
	got, err = inner.Leader(testContext(t, elWait))
	require.NoError(t, err)
	assert.Equal(t, "inner", got.ID)
	assert.NoError(t, lo.Context().Err())
	assert.NoError(t, li.Context().Err())
}

func TestCampaignSessionRevokedWhileWaiting(t *testing.T) {
	srv := etcdtest.Start(t)
	raw := srv.Client(t)
	c := testClient(t, []string{srv.Endpoint()}, "el")
	e := etcdkit.NewElection(c, "svc", 2*time.Second)
	prefix := elPrefix("el", "svc")
	a := elLead(t, e, "a")
	bCh := elCampaignAsync(t, e, "b")
	elWaitCandidates(t, raw, prefix, 2)

	// b's lease is revoked (an operator, or a lease expiry we provoke):
	// raw concurrency.Election's Campaign would keep waiting, then report a
	// win it does not hold once a resigns.
	ctx := testContext(t, elWait)
	resp, err := raw.Get(ctx, elCandidates(t, raw, prefix)[1])
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	_, err = raw.Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease))
	require.NoError(t, err)

	r := elResult(t, bCh)
	require.Error(t, r.err)
	assert.Nil(t, r.l)
	assert.True(t, errors.Is(r.err, etcdkit.ErrNotLeader) || errors.Is(r.err, etcdkit.ErrLeaseLost), "got %v", r.err)
	assert.Equal(t, []string{a.HoldingKey()}, elCandidates(t, raw, prefix), "only the leader's key is left")
	assert.NoError(t, a.Context().Err(), "the leader is unaffected")
}

func TestCampaignSessionLostWhileWaiting(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	raw := srv.Client(t)
	ca := testClient(t, []string{srv.Endpoint()}, "el")
	cb := testClient(t, []string{srv.ProxyEndpoint()}, "el")
	prefix := elPrefix("el", "svc")
	a := elLead(t, etcdkit.NewElection(ca, "svc", 2*time.Second), "a")
	bCh := elCampaignAsync(t, etcdkit.NewElection(cb, "svc", 2*time.Second), "b")
	elWaitCandidates(t, raw, prefix, 2)

	// b's link goes silent: its session is lost, and Campaign says so
	// rather than waiting for ever.
	cut := time.Now()
	srv.Proxy().Blackhole(proxy.Both)
	t.Cleanup(srv.Proxy().Unblackhole)
	r := elResult(t, bCh)
	assert.ErrorIs(t, r.err, etcdkit.ErrLeaseLost)
	t.Logf("Campaign failed %v after the cut: %v", time.Since(cut), r.err)
	// Its key goes with its lease, which nothing keeps alive any more.
	elWaitCandidates(t, raw, prefix, 1)
	srv.Proxy().Unblackhole()
	assert.Equal(t, []string{a.HoldingKey()}, elCandidates(t, raw, prefix))
	assert.NoError(t, a.Context().Err(), "the leader is unaffected")
}

func TestElectionRun(t *testing.T) {
	srv := etcdtest.Start(t)
	raw := srv.Client(t)
	c := testClient(t, []string{srv.Endpoint()}, "el")
	e := etcdkit.NewElection(c, "svc", 2*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	terms := make(chan *etcdkit.Leadership, 8)
	boom := errors.New("boom")
	fail := make(chan struct{})
	runErr := make(chan error, 1)
	go func() {
		runErr <- e.Run(ctx, "a", func(lctx context.Context) error {
			l := etcdkit.LeadershipFrom(lctx)
			terms <- l
			select {
			case <-lctx.Done():
				return lctx.Err()
			case <-fail:
				return boom
			}
		})
	}()
	term := func() *etcdkit.Leadership {
		t.Helper()
		select {
		case l := <-terms:
			require.NotNil(t, l, "LeadershipFrom(fn's ctx)")
			return l
		case <-time.After(elWait):
			t.Fatal("Run did not start a term")
			return nil
		}
	}

	// A lost lease ends the term; Run campaigns again.
	first := term()
	_, err := raw.Revoke(testContext(t, elWait), first.Lease())
	require.NoError(t, err)
	second := term()
	assert.Greater(t, second.Token(), first.Token())
	assert.ErrorIs(t, elWaitDone(t, first), etcdkit.ErrNotLeader)

	// fn failing while it leads: Run resigns and returns the error.
	close(fail)
	select {
	case err := <-runErr:
		assert.ErrorIs(t, err, boom)
	case <-time.After(elWait):
		t.Fatal("Run did not return fn's error")
	}
	assert.ErrorIs(t, elWaitDone(t, second), etcdkit.ErrClosed)
	assert.Empty(t, elCandidates(t, raw, elPrefix("el", "svc")))

	// Run's ctx ending ends the term and Run.
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	go func() {
		runErr <- e.Run(ctx2, "b", func(lctx context.Context) error {
			terms <- etcdkit.LeadershipFrom(lctx)
			<-lctx.Done()
			return lctx.Err()
		})
	}()
	third := term()
	cancel2()
	select {
	case err := <-runErr:
		assert.ErrorIs(t, err, context.Canceled)
	case <-time.After(elWait):
		t.Fatal("Run did not return after its ctx ended")
	}
	assert.ErrorIs(t, elWaitDone(t, third), etcdkit.ErrClosed)
	assert.Nil(t, etcdkit.LeadershipFrom(context.Background()))
}

// elMemberClients returns one client per member of cl, each whose only
// endpoint is that member's proxy, so that a fault on one proxy cuts off
// exactly one client.
func elMemberClients(t testing.TB, cl *etcdtest.Cluster, cfg etcdkit.Config) []*etcdkit.Client {
	t.Helper()
	var cs []*etcdkit.Client
	for _, m := range cl.Members() {
		cfg := cfg
		cfg.Endpoints = []string{m.ProxyEndpoint()}
		cs = append(cs, testClientConfig(t, cfg))
	}
	return cs
}

func TestElectionLeaderBlackholedStepsDownFirst(t *testing.T) {
	cl := etcdtest.StartCluster(t, 3, etcdtest.WithProxy())
	members := cl.Members()
	raw := cl.Client(t)
	const ttl = 2 * time.Second
	clients := elMemberClients(t, cl, etcdkit.Config{Namespace: "el"})
	elections := make([]*etcdkit.Election, len(clients))
	for i, c := range clients {
		elections[i] = etcdkit.NewElection(c, "svc", ttl)
	}
	observer := testClient(t, cl.DirectEndpoints(), "el")
	obs := elObserve(t, context.Background(), etcdkit.NewElection(observer, "svc", ttl))
	prefix := elPrefix("el", "svc")

	old := elLead(t, elections[0], "c0")
	waiting := []<-chan campaignResult{elCampaignAsync(t, elections[1], "c1"), elCampaignAsync(t, elections[2], "c2")}
	elWaitCandidates(t, raw, prefix, 3)
	var steppedDown time.Time
	var mu sync.Mutex
	context.AfterFunc(old.Context(), func() {
		mu.Lock()
		steppedDown = time.Now()
		mu.Unlock()
	})
	counter := etcdkit.NewKey(clients[0], "counter", etcdkit.JSON[int]())
	_, err := etcdkit.GuardedPut(testContext(t, elWait), old, counter, 1)
	require.NoError(t, err)

	// Fault: the leader's only link goes silent (Blackhole(Both) on its
	// member's proxy). The raw recipe's leader would learn nothing until its
	// session's TTL countdown ran out, about when the next leader wins.
	cut := time.Now()
	members[0].Proxy().Blackhole(proxy.Both)
	t.Cleanup(members[0].Proxy().Unblackhole)

	var winner campaignResult
	var loser <-chan campaignResult
	select {
	case winner = <-waiting[0]:
		loser = waiting[1]
	case winner = <-waiting[1]:
		loser = waiting[0]
	case <-time.After(elWait):
		t.Fatalf("no candidate took over within %v of the cut", elWait)
	}
	require.NoError(t, winner.err)
	t.Cleanup(func() { _ = winner.l.Close() })
	mu.Lock()
	down := steppedDown
	mu.Unlock()
	require.False(t, down.IsZero(), "the new leader won while the old one still held its Context")
	assert.True(t, down.Before(winner.at), "old leader stepped down at %v, new leader won at %v", down, winner.at)
	t.Logf("after the cut: old leader stepped down %v, %s won %v (margin %v); cause: %v",
		down.Sub(cut), winner.l.ID(), winner.at.Sub(cut), winner.at.Sub(down), context.Cause(old.Context()))
	assert.ErrorIs(t, context.Cause(old.Context()), etcdkit.ErrNotLeader)
	assert.Greater(t, winner.l.Token(), old.Token())
	elPending(t, loser, "the third candidate")

	// The old leader's guarded writes are refused at once, without a
	// request.
	start := time.Now()
	_, err = etcdkit.GuardedPut(testContext(t, elWait), old, counter, 2)
	assert.ErrorIs(t, err, etcdkit.ErrNotLeader)
	assert.Less(t, time.Since(start), time.Second, "refused without waiting for the silent link")
	winnerKey := etcdkit.NewKey(clients[indexOf(t, winner.l.ID())], "counter", etcdkit.JSON[int]())
	_, err = etcdkit.GuardedPut(testContext(t, elWait), winner.l, winnerKey, 3)
	require.NoError(t, err)

	// Heal: the old leader's link works again. It must not lead again, nor
	// write: one leader, the new one.
	members[0].Proxy().Unblackhole()
	elWaitDone(t, old)
	elWaitCandidates(t, raw, prefix, 2)
	_, err = etcdkit.GuardedPut(testContext(t, elWait), old, counter, 4)
	assert.ErrorIs(t, err, etcdkit.ErrNotLeader)
	li, err := elections[0].Leader(testContext(t, elWait))
	require.NoError(t, err, "the healed client reads the leader")
	assert.Equal(t, winner.l.ID(), li.ID)
	assert.Equal(t, winner.l.Token(), li.Token)
	assert.NoError(t, winner.l.Context().Err(), "the new leader still leads")
	_, err = winner.l.Txn(testContext(t, elWait))
	assert.NoError(t, err, "the new leader's key is in place")
	elPending(t, loser, "the third candidate after the heal")
	v, err := counter.Get(testContext(t, elWait))
	require.NoError(t, err)
	assert.Equal(t, 3, v.Data, "only the new leader's write landed after the cut")

	vals := obs.list()
	require.NotEmpty(t, vals)
	last := vals[len(vals)-1]
	assert.Equal(t, winner.l.Token(), last.Token, "observer: %v", vals)
	for i := 1; i < len(vals); i++ {
		assert.Greater(t, vals[i].Token, vals[i-1].Token, "observer tokens grow: %v", vals)
	}
}

// indexOf returns the candidate index of id "c<i>".
func indexOf(t testing.TB, id string) int {
	t.Helper()
	var i int
	_, err := fmt.Sscanf(id, "c%d", &i)
	require.NoError(t, err)
	return i
}
