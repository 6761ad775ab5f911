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
	col := &collector{w: w, more: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(col.done)
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

func waitReady(t testing.TB, w interface{ Ready() <-chan struct{} }) {
	t.Helper()
	select {
	case <-w.Ready():
	case <-time.After(waitTimeout):
		t.Fatalf("watch not ready within %v", waitTimeout)
	}
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
	waitReady(t, w)
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
	waitReady(t, w)

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
	waitReady(t, ahead.w)

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
		_, open := <-w.Events()
		require.False(t, open, "Events is closed once the watch ended")
		require.Equal(t, etcdkit.WatchClosed, w.State())
		require.NoError(t, w.Close(), "Close after the end")
		require.ErrorIs(t, w.Err(), want, "Close keeps the first cause")
	}

	t.Run("ctx cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		w := k.Watch(ctx)
		waitReady(t, w)
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
		waitReady(t, w)
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
			waitReady(t, w)
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
	waitReady(t, w)

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
		waitReady(t, col.w)
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
	waitReady(t, fast.w)
	waitReady(t, slow)
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
	waitReady(t, slow)
	waitReady(t, fast.w)
	var last int64
	for i := range 100 {
		last = wr.put(fmt.Sprintf("q/k%d", i%10), fmt.Sprint(i))
		if i%7 == 0 {
			last = wr.del(fmt.Sprintf("q/k%d", (i+3)%10))
		}
	}
	last = wr.put("q/new", "x")
	fast.untilRev(t, last)
	compacted := srv.Compact(t)

	col := collect(t, slow)
	evs := col.until(t, "resync", func(evs []etcdkit.Event[string]) bool {
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
	evs = col.untilRev(t, next)
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
