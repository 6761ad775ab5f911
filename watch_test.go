package etcdkit_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// waitTimeout bounds every wait for a condition in the watch tests: generous,
// because a loaded two-core machine running -race can be slow.
const waitTimeout = 20 * time.Second

// change is what the tests compare: one change as a writer made it or as a
// subscriber received it.
type change struct {
	Type   etcdkit.EventType
	Name   string
	Value  string
	Rev    int64
	Resync bool
}

func (c change) String() string {
	s := fmt.Sprintf("%v %s@%d", c.Type, c.Name, c.Rev)
	if c.Type == etcdkit.Put {
		s += "=" + c.Value
	}
	if c.Resync {
		s += " (resync)"
	}
	return s
}

func changesOf(evs []etcdkit.Event[string]) []change {
	out := make([]change, len(evs))
	for i, e := range evs {
		out[i] = change{Type: e.Type, Name: e.Name, Value: e.Value, Rev: e.Revision, Resync: e.Resync}
	}
	return out
}

// collector reads a Watch's events into a slice until the Watch ends.
type collector struct {
	w    *etcdkit.Watch[string]
	mu   sync.Mutex
	evs  []etcdkit.Event[string]
	more chan struct{} // closed and replaced on every event
	done chan struct{} // closed when Events is closed
}

// collect starts reading w; the test's cleanup closes w and waits for the
// reader.
func collect(t testing.TB, w *etcdkit.Watch[string]) *collector {
	t.Helper()
	return collectAfter(t, w, nil)
}

// collectAfter is collect whose reader starts only once gate is closed (at
// once for a nil gate), so that the subscriber falls behind meanwhile.
func collectAfter(t testing.TB, w *etcdkit.Watch[string], gate <-chan struct{}) *collector {
	t.Helper()
	col := &collector{w: w, more: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(col.done)
		if gate != nil {
			select {
			case <-gate:
			case <-w.Done():
			}
		}
		for e := range w.Events() {
			col.mu.Lock()
			col.evs = append(col.evs, e)
			close(col.more)
			col.more = make(chan struct{})
			col.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = w.Close()
		<-col.done
	})
	return col
}

func (col *collector) events() []etcdkit.Event[string] {
	col.mu.Lock()
	defer col.mu.Unlock()
	return slices.Clone(col.evs)
}

// until waits for cond to hold on the events received so far and returns
// them; it fails the test after waitTimeout.
func (col *collector) until(t testing.TB, what string, cond func([]etcdkit.Event[string]) bool) []etcdkit.Event[string] {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		col.mu.Lock()
		evs, more := slices.Clone(col.evs), col.more
		col.mu.Unlock()
		if cond(evs) {
			return evs
		}
		select {
		case <-more:
		case <-col.done:
			col.mu.Lock()
			evs = slices.Clone(col.evs)
			col.mu.Unlock()
			if cond(evs) {
				return evs
			}
			t.Fatalf("watch ended (%v) before %s; got %v", col.w.Err(), what, changesOf(evs))
		case <-deadline.C:
			t.Fatalf("no %s within %v; got %v", what, waitTimeout, changesOf(evs))
		}
	}
}

// untilRev waits until an event with revision rev or later has arrived.
func (col *collector) untilRev(t testing.TB, rev int64) []etcdkit.Event[string] {
	t.Helper()
	return col.until(t, fmt.Sprintf("event at revision %d", rev), func(evs []etcdkit.Event[string]) bool {
		return len(evs) > 0 && evs[len(evs)-1].Revision >= rev
	})
}

// quiet checks that nothing more arrives for d (used only to show the
// absence of a duplicate, never to wait for something).
func (col *collector) quiet(t testing.TB, d time.Duration, n int) {
	t.Helper()
	time.Sleep(d)
	if evs := col.events(); len(evs) != n {
		t.Fatalf("got %d events, want %d: %v", len(evs), n, changesOf(evs))
	}
}

// waitSynced waits until a Watch, Cache, Live or LiveMap is synced.
func waitSynced(t testing.TB, w interface{ Synced() <-chan struct{} }) {
	t.Helper()
	waitDone(t, w.Synced(), "sync")
}

func waitDone(t testing.TB, done <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatalf("%s did not end within %v", what, waitTimeout)
	}
}

// eventually polls cond every 10ms until it holds, failing after waitTimeout.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %v", what, waitTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// writer makes changes through a raw client (directly to a member, bypassing
// any fault the test injects on the subscriber's link) and records them.
type writer struct {
	t   testing.TB
	cli *clientv3.Client
	ns  string // namespace + "/" of the subscriber's client
	mu  sync.Mutex
	log []change
}

func newWriter(t testing.TB, cli *clientv3.Client, ns string) *writer {
	return &writer{t: t, cli: cli, ns: ns + "/"}
}

func (w *writer) put(name, value string) int64 {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	resp, err := w.cli.Put(ctx, w.ns+name, value)
	require.NoError(w.t, err)
	w.record(change{Type: etcdkit.Put, Name: name, Value: value, Rev: resp.Header.Revision})
	return resp.Header.Revision
}

func (w *writer) del(name string) int64 {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	resp, err := w.cli.Delete(ctx, w.ns+name)
	require.NoError(w.t, err)
	if resp.Deleted > 0 {
		w.record(change{Type: etcdkit.Delete, Name: name, Rev: resp.Header.Revision})
	}
	return resp.Header.Revision
}

// txn puts every name=value pair in one transaction: one revision.
func (w *writer) txn(kv ...string) int64 {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var ops []clientv3.Op
	for i := 0; i < len(kv); i += 2 {
		ops = append(ops, clientv3.OpPut(w.ns+kv[i], kv[i+1]))
	}
	resp, err := w.cli.Txn(ctx).Then(ops...).Commit()
	require.NoError(w.t, err)
	for i := 0; i < len(kv); i += 2 {
		w.record(change{Type: etcdkit.Put, Name: kv[i], Value: kv[i+1], Rev: resp.Header.Revision})
	}
	return resp.Header.Revision
}

func (w *writer) record(c change) {
	w.mu.Lock()
	w.log = append(w.log, c)
	w.mu.Unlock()
}

// since returns the recorded changes with a revision above rev, with names
// made relative by trimming strip, in revision order.
func (w *writer) since(rev int64, strip string) []change {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []change
	for _, c := range w.log {
		if c.Rev > rev && len(c.Name) >= len(strip) && c.Name[:len(strip)] == strip {
			c.Name = c.Name[len(strip):]
			out = append(out, c)
		}
	}
	slices.SortStableFunc(out, func(a, b change) int { return int(a.Rev - b.Rev) })
	return out
}

// key returns the recorded changes of the key name with a revision above
// rev.
func (w *writer) key(rev int64, name string) []change {
	var out []change
	for _, c := range w.since(rev, "") {
		if c.Name == name {
			out = append(out, c)
		}
	}
	return out
}

// currentRev reads the cluster's current revision.
func currentRev(t testing.TB, cli *clientv3.Client) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	resp, err := cli.Get(ctx, "current-revision", clientv3.WithCountOnly())
	require.NoError(t, err)
	return resp.Header.Revision
}

func TestWatchKeyFromNow(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "wk")
	wr := newWriter(t, srv.Client(t), "wk")
	before := wr.put("cfg", "before")

	k := etcdkit.NewKey(c, "cfg", etcdkit.String())
	w := k.Watch(testContext(t, time.Minute))
	col := collect(t, w)
	waitSynced(t, w)
	eventually(t, "watch connected", func() bool { return w.State() == etcdkit.WatchConnected })

	wr.put("cfg", "a")
	wr.put("other", "x") // another key: not delivered
	wr.put("cfg", "b")
	wr.del("cfg")
	last := wr.put("cfg", "c")

	evs := col.untilRev(t, last)
	assert.Equal(t, wr.key(before, "cfg"), changesOf(evs))
	for _, e := range evs {
		assert.Equal(t, "cfg", e.Name)
		assert.NoError(t, e.Err)
	}
	assert.Equal(t, etcdkit.Put, evs[0].Type)
	assert.Equal(t, int64(1), evs[3].Version, "version restarts after a delete")
	assert.Equal(t, evs[3].Revision, evs[3].CreateRevision)
	require.NoError(t, w.Close())
	require.ErrorIs(t, w.Err(), etcdkit.ErrClosed)
}

func TestWatchPrefixNamesAndTransactions(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "wp")
	wr := newWriter(t, srv.Client(t), "wp")
	start := currentRev(t, srv.Client(t))

	p := etcdkit.NewPrefix(c, "svc", etcdkit.String())
	w := p.Watch(testContext(t, time.Minute))
	col := collect(t, w)
	waitSynced(t, w)

	wr.put("svc/a", "1")
	wr.put("svc2/a", "neighbour") // shares the bytes, not the boundary
	wr.put("svc", "parent")
	txn := wr.txn("svc/b", "2", "svc/c/d", "3", "svc/a", "4")
	wr.del("svc/b")
	last := wr.put("svc/a", "5")

	evs := col.untilRev(t, last)
	assert.Equal(t, wr.since(start, "svc/"), changesOf(evs))
	var inTxn []string
	for _, e := range evs {
		if e.Revision == txn {
			inTxn = append(inTxn, e.Name)
		}
	}
	assert.Equal(t, []string{"b", "c/d", "a"}, inTxn, "a transaction's events share its revision, in order")
}

func TestWatchAfterRevision(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "after")
	wr := newWriter(t, srv.Client(t), "after")
	var revs []int64
	for i := range 5 {
		revs = append(revs, wr.put(fmt.Sprintf("p/k%d", i%2), fmt.Sprint(i)))
	}
	p := etcdkit.NewPrefix(c, "p", etcdkit.String())
	k := etcdkit.NewKey(c, "p/k1", etcdkit.String())
	ctx := testContext(t, time.Minute)

	// One watch joins a shared stream that is already ahead of its start:
	// it catches up from history on its own first.
	ahead := collect(t, p.Watch(ctx))
	waitSynced(t, ahead.w)

	for _, from := range []int64{0, revs[1], revs[3], revs[4], revs[4] + 10} {
		wp := collect(t, p.Watch(ctx, etcdkit.AfterRevision(from)))
		wk := collect(t, k.Watch(ctx, etcdkit.AfterRevision(from)))
		var last int64
		for i := range 3 {
			last = wr.put(fmt.Sprintf("p/k%d", i%2), fmt.Sprintf("after %d: %d", from, i))
		}
		for last < from {
			last = wr.put("p/k1", "filler")
		}
		evs := wp.untilRev(t, last)
		assert.Equal(t, wr.since(from, "p/"), changesOf(evs), "prefix after %d", from)
		want := wr.key(from, "p/k1")
		evs = wk.untilRev(t, want[len(want)-1].Rev)
		assert.Equal(t, want, changesOf(evs), "key after %d", from)
	}
	// Those that started behind caught up on their own, then joined the
	// shared watch of their key or prefix.
	eventually(t, "one etcd watch per key or prefix", func() bool { return etcdkit.EtcdWatches(c) == 2 })
}

// Writers keep changing twenty keys while a WithInitial watch starts: for
// every key the watch must see exactly the writes from the one it read
// onwards, none missing between the read and the watch, none twice.
func TestWatchWithInitialNoGap(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "init")
	wr := newWriter(t, srv.Client(t), "init")
	for i := range 20 {
		wr.put(fmt.Sprintf("cfg/k%02d", i), "0")
	}
	p := etcdkit.NewPrefix(c, "cfg", etcdkit.String())
	ctx := testContext(t, time.Minute)

	var wg sync.WaitGroup
	startWrites := make(chan struct{})
	for g := range 4 {
		wg.Go(func() {
			<-startWrites
			for i := range 25 {
				wr.put(fmt.Sprintf("cfg/k%02d", (g*25+i)%20), fmt.Sprintf("%d-%d", g, i))
			}
		})
	}
	close(startWrites)
	time.Sleep(5 * time.Millisecond) // let the writers get going: the test wants overlap
	col := collect(t, p.Watch(ctx, etcdkit.WithInitial()))
	wg.Wait()
	last := wr.put("cfg/k00", "last")
	evs := col.untilRev(t, last)

	initial := map[string]bool{}
	got := map[string][]int64{}
	for i, e := range evs {
		if e.Initial {
			require.False(t, i > 0 && !evs[i-1].Initial, "initial events come first")
			initial[e.Name] = true
		}
		got[e.Name] = append(got[e.Name], e.Revision)
	}
	require.Len(t, initial, 20, "one initial event per key")
	for name, revs := range got {
		var want []int64
		for _, w := range wr.since(0, "cfg/") {
			if w.Name == name && w.Rev >= revs[0] {
				want = append(want, w.Rev)
			}
		}
		assert.Equal(t, want, revs, "key %s: revisions seen from the initial read on", name)
	}
}

func TestWatchEndings(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "end")
	k := etcdkit.NewKey(c, "k", etcdkit.String())

	checkEnded := func(t *testing.T, w *etcdkit.Watch[string], want error) {
		t.Helper()
		waitDone(t, w.Done(), "watch")
		if want == errAny {
			require.Error(t, w.Err())
			want = w.Err()
		}
		require.ErrorIs(t, w.Err(), want)
		for range w.Events() { // what was buffered when it ended, then the close
		}
		require.Equal(t, etcdkit.WatchClosed, w.State())
		require.NoError(t, w.Close(), "Close after the end")
		require.ErrorIs(t, w.Err(), want, "Close keeps the first cause")
	}

	t.Run("ctx cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		w := k.Watch(ctx)
		waitSynced(t, w)
		require.NoError(t, w.Err(), "no error while running")
		cancel()
		checkEnded(t, w, context.Canceled)
	})
	t.Run("ctx deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		checkEnded(t, k.Watch(ctx, etcdkit.WithInitial()), context.DeadlineExceeded)
	})
	t.Run("Close", func(t *testing.T) {
		w := k.Watch(context.Background())
		require.NoError(t, w.Close())
		require.NoError(t, w.Close(), "idempotent")
		checkEnded(t, w, etcdkit.ErrClosed)
	})
	t.Run("Close while unread events wait", func(t *testing.T) {
		w := k.Watch(context.Background(), etcdkit.WithInitial())
		_, err := k.Put(context.Background(), "x")
		require.NoError(t, err)
		waitSynced(t, w)
		require.NoError(t, w.Close())
		for range w.Events() {
		}
		checkEnded(t, w, etcdkit.ErrClosed)
	})
	t.Run("invalid options", func(t *testing.T) {
		checkEnded(t, k.Watch(context.Background(), etcdkit.AfterRevision(-1)), errAny)
		checkEnded(t, k.Watch(context.Background(), etcdkit.AfterRevision(1), etcdkit.WithInitial()), errAny)
		checkEnded(t, k.Watch(context.Background(), etcdkit.WithBufferSize(0)), errAny)
		checkEnded(t, etcdkit.NewKey(c, "bad//name", etcdkit.String()).Watch(context.Background()), etcdkit.ErrInvalidName)
		checkEnded(t, etcdkit.NewPrefix(c, "/bad", etcdkit.String()).Watch(context.Background()), etcdkit.ErrInvalidName)
	})
	t.Run("Client.Close", func(t *testing.T) {
		c2 := testClient(t, []string{srv.Endpoint()}, "end")
		k2 := etcdkit.NewKey(c2, "k", etcdkit.String())
		p2 := etcdkit.NewPrefix(c2, "p", etcdkit.String())
		ws := []*etcdkit.Watch[string]{k2.Watch(context.Background()), k2.Watch(context.Background(), etcdkit.WithInitial()),
			p2.Watch(context.Background(), etcdkit.AfterRevision(1))}
		for _, w := range ws {
			waitSynced(t, w)
		}
		require.NoError(t, c2.Close())
		for _, w := range ws {
			checkEnded(t, w, etcdkit.ErrClosed)
		}
		checkEnded(t, k2.Watch(context.Background()), etcdkit.ErrClosed)
	})
}

// errAny matches any non-nil error in checkEnded.
var errAny = errors.New("any error")

func TestWatchDecodeError(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "dec")
	wr := newWriter(t, srv.Client(t), "dec")
	type limits struct{ Max int }
	k := etcdkit.NewKey(c, "limits", etcdkit.JSON[limits]())
	w := k.Watch(testContext(t, time.Minute))
	t.Cleanup(func() { _ = w.Close() })
	waitSynced(t, w)

	bad := wr.put("limits", "{not json")
	good, err := k.Put(testContext(t, time.Minute), limits{Max: 7})
	require.NoError(t, err)

	next := func() etcdkit.Event[limits] {
		select {
		case e := <-w.Events():
			return e
		case <-time.After(waitTimeout):
			t.Fatal("no event")
		}
		return etcdkit.Event[limits]{}
	}
	e := next()
	var de *etcdkit.DecodeError
	require.ErrorAs(t, e.Err, &de)
	assert.Equal(t, "limits", de.Key)
	assert.Equal(t, bad, de.Revision)
	assert.Equal(t, bad, e.Revision)
	assert.Equal(t, limits{}, e.Value)
	e = next()
	require.NoError(t, e.Err)
	assert.Equal(t, good, e.Revision)
	assert.Equal(t, limits{Max: 7}, e.Value)
}

// Many watches on one key share one etcd watch, which ends with the last.
func TestWatchSharesOneEtcdWatch(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "share")
	wr := newWriter(t, srv.Client(t), "share")
	k := etcdkit.NewKey(c, "k", etcdkit.String())
	ctx := testContext(t, time.Minute)

	const n = 50
	start := currentRev(t, srv.Client(t))
	cols := make([]*collector, n)
	for i := range cols {
		cols[i] = collect(t, k.Watch(ctx))
	}
	for _, col := range cols {
		waitSynced(t, col.w)
	}
	eventually(t, "one etcd watch", func() bool { return etcdkit.EtcdWatches(c) == 1 })
	assert.Equal(t, 1, etcdkit.WatchFeeds(c))
	for i := range 10 {
		wr.put("k", fmt.Sprint(i))
	}
	want := wr.since(start, "")
	for _, col := range cols {
		assert.Equal(t, want, changesOf(col.untilRev(t, want[len(want)-1].Rev)))
	}
	assert.Equal(t, int64(1), etcdkit.EtcdWatches(c), "still one etcd watch")

	for _, col := range cols {
		require.NoError(t, col.w.Close())
	}
	eventually(t, "no etcd watch after the last subscriber left", func() bool { return etcdkit.EtcdWatches(c) == 0 })
	assert.Equal(t, 0, etcdkit.WatchFeeds(c))
}

// faulty is a single member behind a proxy, a client through the proxy and
// a writer that goes around it.
type faulty struct {
	srv *etcdtest.Server
	c   *etcdkit.Client
	wr  *writer
	m   *metrics
}

func startFaulty(t testing.TB, ns string) *faulty {
	t.Helper()
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	m := newMetrics()
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()}, Namespace: ns, Metrics: m})
	return &faulty{srv: srv, c: c, wr: newWriter(t, srv.Client(t), ns), m: m}
}

// untilState waits for a watch (or cache) to reach state and returns how
// long that took.
func untilState(t testing.TB, what string, st func() etcdkit.WatchState, want etcdkit.WatchState) time.Duration {
	t.Helper()
	start := time.Now()
	eventually(t, fmt.Sprintf("%s %v", what, want), func() bool { return st() == want })
	return time.Since(start)
}

// Each fault cuts the subscriber's link (never the writer's) while changes
// are made, then heals it. The watches must deliver exactly the writer's
// history since they started: nothing lost, nothing twice, nothing from
// before. What a raw clientv3 watch user would have seen is noted per fault.
func TestWatchSurvivesLinkFaults(t *testing.T) {
	faults := []struct {
		name string
		// cut injects the fault; heal ends it.
		cut, heal func(t *testing.T, f *faulty)
		// hold keeps the fault on at least this long.
		hold time.Duration
		// down: the engine must notice the fault (state Suspended) while
		// it is on.
		down bool
	}{{
		// proxy.Stop closes every connection with FIN and refuses new ones.
		// Raw clientv3 resumes by itself, but a watch made from "now"
		// resumes at the revision of its creation, so it gets again the
		// change that revision holds: one from before the watch began.
		name: "FIN and refused dials (proxy Stop, Start)",
		cut:  func(t *testing.T, f *faulty) { f.srv.Proxy().Stop() },
		heal: func(t *testing.T, f *faulty) { require.NoError(t, f.srv.Proxy().Start()) },
		down: true,
	}, {
		// proxy.ResetConns aborts every connection with RST; the proxy keeps
		// listening. Raw clientv3: as for FIN.
		name: "RST (proxy ResetConns)",
		cut:  func(t *testing.T, f *faulty) { f.srv.Proxy().ResetConns() },
		heal: func(t *testing.T, f *faulty) {},
	}, {
		// proxy.Blackhole drops every byte silently for 5s. Raw clientv3
		// notices nothing until gRPC keepalive gives up (10s + 5s here):
		// the watch just goes quiet, indistinguishable from a quiet key.
		name: "blackhole 5s (proxy Blackhole, Unblackhole)",
		cut:  func(t *testing.T, f *faulty) { f.srv.Proxy().Blackhole(proxy.Both) },
		heal: func(t *testing.T, f *faulty) { f.srv.Proxy().Unblackhole() },
		hold: 5 * time.Second,
		down: true,
	}, {
		// proxy.Pause stops forwarding without loss. Raw clientv3 waits for
		// keepalive like for a blackhole.
		name: "pause (proxy Pause, Resume)",
		cut:  func(t *testing.T, f *faulty) { f.srv.Proxy().Pause(proxy.Both) },
		heal: func(t *testing.T, f *faulty) { f.srv.Proxy().Resume() },
		down: true,
	}, {
		// The member itself restarts (Server.Stop, Server.Restart); the
		// writer writes once it is back. Raw clientv3: as for FIN.
		name: "member restart (Server Stop, Restart)",
		cut:  func(t *testing.T, f *faulty) { f.srv.Stop() },
		heal: func(t *testing.T, f *faulty) { require.NoError(t, f.srv.Restart()) },
		down: true,
	}}
	for _, fault := range faults {
		t.Run(fault.name, func(t *testing.T) {
			f := startFaulty(t, "faults")
			ctx := testContext(t, time.Minute)
			before := f.wr.put("cfg/a", "before") // never delivered: before the start
			start := currentRev(t, f.srv.Client(t))

			key := etcdkit.NewKey(f.c, "cfg/a", etcdkit.String()).Watch(ctx)
			pre := etcdkit.NewPrefix(f.c, "cfg", etcdkit.String()).Watch(ctx, etcdkit.AfterRevision(start))
			kc, pc := collect(t, key), collect(t, pre)
			waitSynced(t, key)
			untilState(t, "key watch", key.State, etcdkit.WatchConnected)

			f.wr.put("cfg/a", "1")
			rev := f.wr.put("cfg/b", "1")
			pc.untilRev(t, rev)

			cutAt := time.Now()
			fault.cut(t, f)
			writeDuring := fault.name != "member restart (Server Stop, Restart)"
			if writeDuring {
				f.wr.put("cfg/a", "2")
				f.wr.del("cfg/b")
				f.wr.txn("cfg/a", "3", "cfg/c", "3")
			}
			if fault.down {
				took := untilState(t, "key watch", key.State, etcdkit.WatchSuspended)
				t.Logf("fault noticed after %v", time.Since(cutAt).Round(time.Millisecond))
				if fault.hold > 0 {
					// A silent link must be noticed well before gRPC
					// keepalive would (10s): within 3s.
					assert.Less(t, took, 3*time.Second, "blackhole noticed")
					assert.GreaterOrEqual(t, f.m.get(etcdkit.MetricWatchStalls), 1.0, "stall counted")
				}
			}
			time.Sleep(time.Until(cutAt.Add(fault.hold)))
			healAt := time.Now()
			fault.heal(t, f)
			if !writeDuring {
				f.wr.put("cfg/a", "2")
				f.wr.del("cfg/b")
				f.wr.txn("cfg/a", "3", "cfg/c", "3")
			}
			last := f.wr.key(0, "cfg/a")
			kc.untilRev(t, last[len(last)-1].Rev)
			resumed := time.Since(healAt)
			t.Logf("changes made during the fault delivered %v after the heal", resumed.Round(time.Millisecond))
			if fault.hold > 0 {
				assert.Less(t, resumed, time.Second, "resumed within a second of the heal")
			}

			f.wr.put("cfg/a", "after")
			end := f.wr.put("cfg/c", "after")
			pc.untilRev(t, end)
			kevs := kc.untilRev(t, f.wr.key(0, "cfg/a")[len(f.wr.key(0, "cfg/a"))-1].Rev)
			assert.Equal(t, f.wr.key(before, "cfg/a"), changesOf(kevs), "key watch")
			assert.Equal(t, f.wr.since(start, "cfg/"), changesOf(pc.events()), "prefix watch")
			pc.quiet(t, 200*time.Millisecond, len(pc.events()))
			assert.Equal(t, int64(1), min(1, int64(f.m.get(etcdkit.MetricWatchReconnects))), "reconnects counted")
		})
	}
}

// After a reconnect with no write at all, the watch resumes without
// redelivering its last event and without anything from before its start.
// proxy.CloseConns closes the connections (FIN) and keeps listening.
// Raw clientv3 would redeliver the change at the revision the watch was
// created at.
func TestWatchReconnectWithoutWrites(t *testing.T) {
	f := startFaulty(t, "nowrite")
	ctx := testContext(t, time.Minute)
	f.wr.put("k", "before")
	w := etcdkit.NewKey(f.c, "k", etcdkit.String()).Watch(ctx)
	col := collect(t, w)
	waitSynced(t, w)
	untilState(t, "watch", w.State, etcdkit.WatchConnected)
	for round := range 3 {
		f.srv.Proxy().CloseConns()
		eventually(t, "reconnect counted", func() bool {
			return f.m.get(etcdkit.MetricWatchReconnects) >= float64(round+1)
		})
		untilState(t, "watch", w.State, etcdkit.WatchConnected)
		assert.Empty(t, col.events(), "nothing delivered by a reconnect")
	}
	rev := f.wr.put("k", "x")
	col.untilRev(t, rev)
	f.srv.Proxy().ResetConns()
	eventually(t, "reconnect counted", func() bool { return f.m.get(etcdkit.MetricWatchReconnects) >= 4 })
	untilState(t, "watch", w.State, etcdkit.WatchConnected)
	rev2 := f.wr.put("k", "y")
	evs := col.untilRev(t, rev2)
	assert.Equal(t, []change{{etcdkit.Put, "k", "x", rev, false}, {etcdkit.Put, "k", "y", rev2, false}}, changesOf(evs))
}

// In a three-member cluster the subscriber's member fails; the watch must
// continue on another member with nothing lost, before the member comes
// back. Writes go directly to the other members.
func TestWatchFailover(t *testing.T) {
	faults := []struct {
		name      string
		cut, heal func(t *testing.T, m *etcdtest.Server)
	}{{
		// Server.Partition cuts the member's raft traffic: it stays up for
		// its clients but loses its leader. Raw clientv3 with
		// WithRequireLeader gets its channel closed with "no leader" and
		// must re-watch itself; without it, the watch stays on the stale
		// member and sees nothing more.
		name: "partitioned (Server Partition)",
		cut:  func(t *testing.T, m *etcdtest.Server) { m.Partition() },
		heal: func(t *testing.T, m *etcdtest.Server) { m.Heal() },
	}, {
		// Server.Stop stops the member; its proxy refuses nothing but
		// forwards to nothing. Raw clientv3 retries the same endpoint list
		// and resumes by itself, from revisions of its own.
		name: "stopped (Server Stop)",
		cut:  func(t *testing.T, m *etcdtest.Server) { m.Stop() },
		heal: func(t *testing.T, m *etcdtest.Server) { require.NoError(t, m.Restart()) },
	}, {
		// The member's proxy blackholes the link. Raw clientv3 sees nothing
		// for 15s (keepalive), and then reconnects to the same balancer.
		name: "blackholed (Proxy Blackhole)",
		cut:  func(t *testing.T, m *etcdtest.Server) { m.Proxy().Blackhole(proxy.Both) },
		heal: func(t *testing.T, m *etcdtest.Server) { m.Proxy().Unblackhole() },
	}}
	for _, fault := range faults {
		t.Run(fault.name, func(t *testing.T) {
			cl := etcdtest.StartCluster(t, 3, etcdtest.WithProxy())
			m := newMetrics()
			c := testClientConfig(t, etcdkit.Config{Endpoints: cl.Endpoints(), Namespace: "fo", Metrics: m})
			ctx := testContext(t, 2*time.Minute)
			start := currentRev(t, cl.Client(t))
			w := etcdkit.NewPrefix(c, "cfg", etcdkit.String()).Watch(ctx, etcdkit.AfterRevision(start))
			col := collect(t, w)
			untilState(t, "watch", w.State, etcdkit.WatchConnected)

			var victim *etcdtest.Server
			var others []string
			for _, mem := range cl.Members() {
				if mem.ProxyEndpoint() == etcdkit.StreamEndpoint(c) {
					victim = mem
				} else {
					others = append(others, mem.Endpoint())
				}
			}
			require.NotNil(t, victim, "the watch's member")
			wcli := newTestRawClient(t, others)
			wr := newWriter(t, wcli, "fo")
			col.untilRev(t, wr.put("cfg/a", "1"))

			cutAt := time.Now()
			fault.cut(t, victim)
			cl.WaitLeader(t) // among the others, if the victim led
			wr.put("cfg/a", "2")
			wr.del("cfg/a")
			last := wr.txn("cfg/b", "3", "cfg/c", "3")
			col.untilRev(t, last)
			t.Logf("changes delivered %v after the fault, from another member", time.Since(cutAt).Round(time.Millisecond))
			assert.NotEqual(t, victim.ProxyEndpoint(), etcdkit.StreamEndpoint(c), "moved to another member")

			fault.heal(t, victim)
			last = wr.put("cfg/a", "after")
			col.untilRev(t, last)
			assert.Equal(t, wr.since(start, "cfg/"), changesOf(col.events()))
		})
	}
}

// newTestRawClient returns a raw client of endpoints, closed with the test.
func newTestRawClient(t testing.TB, endpoints []string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// model applies events to a name -> value map, as a subscriber would.
func model(evs []etcdkit.Event[string]) map[string]string {
	m := map[string]string{}
	for _, e := range evs {
		if e.Type == etcdkit.Delete {
			delete(m, e.Name)
		} else {
			m[e.Name] = e.Value
		}
	}
	return m
}

// The link is cut (proxy Stop: FIN, dials refused) while keys change and
// the history is compacted. Raw clientv3 would close the channel with
// "mvcc: required revision has been compacted" and leave the caller to
// find out what changed. The watches must instead deliver Resync events
// that bring their subscribers to the exact current state, deletes
// included, then carry on.
func TestWatchResyncAfterCompaction(t *testing.T) {
	f := startFaulty(t, "resync")
	ctx := testContext(t, time.Minute)
	for _, n := range []string{"a", "b", "c", "d"} {
		f.wr.put("cfg/"+n, "1")
	}
	p := etcdkit.NewPrefix(f.c, "cfg", etcdkit.String())
	initial := collect(t, p.Watch(ctx, etcdkit.WithInitial()))
	fromNow := collect(t, p.Watch(ctx))
	keyA := collect(t, etcdkit.NewKey(f.c, "cfg/a", etcdkit.String()).Watch(ctx))
	keyB := collect(t, etcdkit.NewKey(f.c, "cfg/b", etcdkit.String()).Watch(ctx))
	for _, col := range []*collector{initial, fromNow, keyA, keyB} {
		waitSynced(t, col.w)
		untilState(t, "watch", col.w.State, etcdkit.WatchConnected)
	}
	rev := f.wr.put("cfg/a", "2")
	for _, col := range []*collector{initial, fromNow, keyA} {
		col.untilRev(t, rev)
	}
	seen := map[*collector]int{initial: len(initial.events()), fromNow: len(fromNow.events()), keyA: len(keyA.events()), keyB: 0}

	f.srv.Proxy().Stop()
	untilState(t, "watch", fromNow.w.State, etcdkit.WatchSuspended)
	f.wr.put("cfg/a", "3")
	f.wr.put("cfg/a", "4")
	aRev := f.wr.put("cfg/a", "5")
	f.wr.del("cfg/b")
	eRev := f.wr.put("cfg/e", "new")
	f.wr.del("cfg/c")
	cRev := f.wr.put("cfg/c", "again")
	compacted := f.srv.Compact(t)
	require.NoError(t, f.srv.Proxy().Start())

	wantPrefix := []change{
		{etcdkit.Put, "a", "5", aRev, true},
		{etcdkit.Put, "e", "new", eRev, true},
		{etcdkit.Put, "c", "again", cRev, true},
		{etcdkit.Delete, "b", "", 0, true},
	}
	check := func(col *collector, want []change) {
		t.Helper()
		evs := col.until(t, "resync events", func(evs []etcdkit.Event[string]) bool { return len(evs) >= seen[col]+len(want) })
		got := changesOf(evs[seen[col]:])
		for i := range got {
			if got[i].Type == etcdkit.Delete {
				assert.GreaterOrEqual(t, got[i].Rev, compacted, "a resync delete is stamped with the read revision")
				got[i].Rev = 0
			}
		}
		assert.Equal(t, want, got)
	}
	check(initial, wantPrefix)
	check(fromNow, wantPrefix)
	check(keyA, []change{{etcdkit.Put, "cfg/a", "5", aRev, true}})
	check(keyB, []change{{etcdkit.Delete, "cfg/b", "", 0, true}})

	last := f.wr.put("cfg/d", "2")
	evs := fromNow.untilRev(t, last)
	assert.Equal(t, change{etcdkit.Put, "d", "2", last, false}, changesOf(evs)[len(evs)-1], "then normal events")
	entries, _, err := p.List(ctx)
	require.NoError(t, err)
	want := map[string]string{}
	for _, e := range entries {
		want[e.Name] = e.Data
	}
	assert.Equal(t, want, model(initial.untilRev(t, last)), "WithInitial subscriber holds the current state")
	assert.GreaterOrEqual(t, f.m.get(etcdkit.MetricWatchResyncs), 3.0, "resyncs counted (one per shared stream)")
}

// sampleMaxQueued records the largest subscriber backlog of c until the
// test ends or the returned stop is called.
func sampleMaxQueued(t testing.TB, c *etcdkit.Client) (stop func() int) {
	var (
		mu   sync.Mutex
		most int
		done = make(chan struct{})
		wg   sync.WaitGroup
	)
	wg.Go(func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			n := etcdkit.MaxQueued(c)
			mu.Lock()
			most = max(most, n)
			mu.Unlock()
		}
	})
	var once sync.Once
	stop = func() int {
		once.Do(func() { close(done); wg.Wait() })
		mu.Lock()
		defer mu.Unlock()
		return most
	}
	t.Cleanup(func() { stop() })
	return stop
}

// A subscriber that does not read must not hold memory beyond its buffer,
// must not slow the others, and must get everything once it reads again.
// A raw clientv3 watch buffers without bound for a reader that does not
// read (and, shared on one gRPC stream, delays the others).
func TestWatchSlowConsumer(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "slow")
	wr := newWriter(t, srv.Client(t), "slow")
	p := etcdkit.NewPrefix(c, "q", etcdkit.String())
	ctx := testContext(t, 2*time.Minute)
	const buffer = 16

	start := currentRev(t, srv.Client(t))
	fast := collect(t, p.Watch(ctx, etcdkit.WithBufferSize(buffer)))
	slow := p.Watch(ctx, etcdkit.WithBufferSize(buffer))
	t.Cleanup(func() { _ = slow.Close() })
	waitSynced(t, fast.w)
	waitSynced(t, slow)
	stopSampling := sampleMaxQueued(t, c)

	var last int64
	for i := range 120 {
		last = wr.put(fmt.Sprintf("q/k%d", i%10), fmt.Sprint(i))
	}
	fast.untilRev(t, last)
	assert.Equal(t, wr.since(start, "q/"), changesOf(fast.events()), "the fast subscriber got everything, undelayed")
	assert.Equal(t, int64(1), etcdkit.EtcdWatches(c), "the unhooked subscriber holds no etcd watch while it does not read")

	// The slow subscriber reads now: its buffer first, then the rest
	// from history through its own watch, then it rejoins.
	slowCol := collect(t, slow)
	slowCol.untilRev(t, last)
	assert.Equal(t, wr.since(start, "q/"), changesOf(slowCol.events()))
	eventually(t, "rejoined the shared watch", func() bool { return etcdkit.EtcdWatches(c) == 1 })
	more := wr.put("q/k0", "more")
	slowCol.untilRev(t, more)
	fast.untilRev(t, more)
	assert.LessOrEqual(t, stopSampling(), buffer, "no subscriber ever held more than its buffer")
	assert.Equal(t, wr.since(start, "q/"), changesOf(slowCol.events()))
}

// A subscriber unhooked for being slow whose missing history is compacted
// before it reads again gets its buffer, then Resync events that bring it to
// the current state, deletes included.
func TestWatchSlowConsumerResync(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "slowc")
	wr := newWriter(t, srv.Client(t), "slowc")
	p := etcdkit.NewPrefix(c, "q", etcdkit.String())
	ctx := testContext(t, 2*time.Minute)
	for i := range 10 {
		wr.put(fmt.Sprintf("q/k%d", i), "seed")
	}
	slow := p.Watch(ctx, etcdkit.WithInitial(), etcdkit.WithBufferSize(8))
	t.Cleanup(func() { _ = slow.Close() })
	fast := collect(t, p.Watch(ctx))
	waitSynced(t, slow)
	waitSynced(t, fast.w)
	for i := range 100 {
		wr.put(fmt.Sprintf("q/k%d", i%10), fmt.Sprint(i))
		if i%7 == 0 {
			wr.del(fmt.Sprintf("q/k%d", (i+3)%10))
		}
	}
	last := wr.put("q/new", "x")
	fast.untilRev(t, last)
	compacted := srv.Compact(t)

	col := collect(t, slow)
	col.until(t, "resync", func(evs []etcdkit.Event[string]) bool {
		return len(evs) > 0 && evs[len(evs)-1].Resync
	})
	entries, _, err := p.List(ctx)
	require.NoError(t, err)
	want := map[string]string{}
	for _, e := range entries {
		want[e.Name] = e.Data
	}
	// Resync events of one read all arrive together; give the last ones a
	// moment by waiting for a fresh change after them.
	next := wr.put("q/k1", "after")
	want["k1"] = "after"
	evs := col.untilRev(t, next)
	assert.Equal(t, want, model(evs), "the subscriber holds the current state")
	var resyncs int
	for i, e := range evs {
		switch {
		case e.Initial:
		case e.Resync:
			resyncs++
			assert.GreaterOrEqual(t, e.Revision, evs[i-1].Revision, "revisions never decrease")
		default:
			assert.True(t, e.Revision < compacted || e.Revision == next, "history events only before the resync: %v", changesOf(evs[i:i+1]))
		}
	}
	assert.Positive(t, resyncs)
}
