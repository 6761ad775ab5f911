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

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// Generous bounds for conditions on a loaded two-core machine under -race;
// the tests wait on conditions, never on fixed sleeps.
const (
	dsWait = 20 * time.Second
	dsTick = 10 * time.Millisecond
	dsTTL  = 2 * time.Second
)

// nodeMeta is what the test instances publish about themselves.
type nodeMeta struct {
	Zone    string `json:"zone"`
	Version int    `json:"version"`
}

func dsService(c *etcdkit.Client) *etcdkit.Service[nodeMeta] {
	return etcdkit.NewService(c, "svc", etcdkit.JSON[nodeMeta]())
}

func dsInstance(id string, port int) etcdkit.Instance[nodeMeta] {
	return etcdkit.Instance[nodeMeta]{ID: id, Addr: fmt.Sprintf("127.0.0.1:%d", port), Meta: nodeMeta{Zone: "z-" + id, Version: 1}}
}

// dsRegister registers inst for the test and closes the registration at
// cleanup.
func dsRegister[M any](t testing.TB, svc *etcdkit.Service[M], inst etcdkit.Instance[M]) *etcdkit.Registration[M] {
	t.Helper()
	r, err := svc.Register(testContext(t, time.Hour), inst, dsTTL)
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// dsTrack starts a tracker for the test, closed at cleanup, and waits until
// it is synced.
func dsTrack[M any](t testing.TB, svc *etcdkit.Service[M]) *etcdkit.Tracker[M] {
	t.Helper()
	tr, err := svc.Track(testContext(t, time.Hour))
	require.NoError(t, err)
	t.Cleanup(func() { _ = tr.Close() })
	select {
	case <-tr.Synced():
	case <-time.After(dsWait):
		t.Fatalf("tracker not synced within %v", dsWait)
	}
	return tr
}

func dsIDs[M any](list []etcdkit.Instance[M]) []string {
	ids := make([]string, len(list))
	for i, in := range list {
		ids[i] = in.ID
	}
	return ids
}

// dsWaitIDs waits until the tracker's view holds exactly ids, in order, and
// returns how long that took.
func dsWaitIDs[M any](t testing.TB, tr *etcdkit.Tracker[M], ids ...string) time.Duration {
	t.Helper()
	start := time.Now()
	if ids == nil {
		ids = []string{}
	}
	require.Eventually(t, func() bool { return slices.Equal(dsIDs(tr.Instances()), ids) }, dsWait, dsTick,
		"tracker view never became %v", ids)
	return time.Since(start)
}

// dsViews records every view a tracker sends on Updates, until it closes.
type dsViews struct {
	mu     sync.Mutex
	views  [][]etcdkit.Instance[nodeMeta]
	closed bool
}

func dsRecord(t testing.TB, tr *etcdkit.Tracker[nodeMeta]) *dsViews {
	v := &dsViews{}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case view, ok := <-tr.Updates():
				v.mu.Lock()
				if !ok {
					v.closed = true
					v.mu.Unlock()
					return
				}
				v.views = append(v.views, view)
				v.mu.Unlock()
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return v
}

func (v *dsViews) list() [][]etcdkit.Instance[nodeMeta] {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.views)
}

func (v *dsViews) last() ([]etcdkit.Instance[nodeMeta], bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.views) == 0 {
		return nil, false
	}
	return v.views[len(v.views)-1], true
}

// TestServiceRegisterTrack registers, updates and deregisters instances
// one step at a time. The tracker's views come in the order of the steps
// (a fast reader may see every step, never one out of order), each with the
// instances' addresses and metadata, and Close withdraws an instance at
// once rather than a TTL later.
func TestServiceRegisterTrack(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "app")
	svc := dsService(c)
	tr := dsTrack(t, svc)
	views := dsRecord(t, tr)
	// The watch that follows the initial read may connect just after it.
	require.Eventually(t, func() bool { return tr.State() == etcdkit.WatchConnected && !tr.Stale() }, dsWait, dsTick,
		"tracker state %v", tr.State())

	a, b, cc := dsInstance("a", 1001), dsInstance("b", 1002), dsInstance("c", 1003)
	a2 := a
	a2.Meta.Version = 2
	steps := [][]etcdkit.Instance[nodeMeta]{{}, {a}, {a, b}, {a, b, cc}, {a, cc}, {a2, cc}, {cc}, {}}
	want := func(i int) {
		t.Helper()
		require.Eventually(t, func() bool { v, ok := views.last(); return ok && slices.Equal(v, steps[i]) }, dsWait, dsTick,
			"step %d: view never became %v; got %v", i, steps[i], tr.Instances())
		assert.Equal(t, steps[i], tr.Instances(), "step %d: Instances", i)
	}

	want(0)
	ra := dsRegister(t, svc, a)
	want(1)
	rb := dsRegister(t, svc, b)
	want(2)
	dsRegister(t, svc, cc)
	want(3)

	raw := srv.Client(t)
	resp, err := raw.Get(testContext(t, 5*time.Second), "app/_etcdkit/service/svc/a")
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	assert.JSONEq(t, `{"addr":"127.0.0.1:1001","meta":{"zone":"z-a","version":1}}`, string(resp.Kvs[0].Value))
	assert.Equal(t, resp.Kvs[0].Lease, int64(ra.Lease()), "the key's lease")

	closed := time.Now()
	require.NoError(t, rb.Close())
	want(4)
	t.Logf("deregistration seen %v after Close", time.Since(closed))
	assert.ErrorIs(t, rb.Err(), etcdkit.ErrClosed)

	require.NoError(t, ra.Update(testContext(t, 5*time.Second), a2.Meta))
	assert.Equal(t, a2, ra.Instance())
	want(5)
	require.NoError(t, ra.Close())
	want(6)
	list, rev, err := svc.List(testContext(t, 5*time.Second))
	require.NoError(t, err)
	assert.Equal(t, steps[6], list)
	assert.Positive(t, rev)

	// Every view is one of the steps, and they never go back.
	at := 0
	for _, v := range views.list() {
		i := slices.IndexFunc(steps[at:], func(s []etcdkit.Instance[nodeMeta]) bool { return slices.Equal(s, v) })
		require.GreaterOrEqual(t, i, 0, "view %v is not a step at or after step %d; views %v", v, at, views.list())
		at += i
	}
	assert.Positive(t, tr.Revision())
	assert.Empty(t, tr.Invalid())
}

// TestServiceDuplicateID: a second process registering an ID that a live
// one holds is refused with ErrExists, not allowed to overwrite the first
// (which a heartbeat Put would do silently, leaving two processes fighting
// over one key), and the first stays published. Once the first is gone the
// ID is free.
func TestServiceDuplicateID(t *testing.T) {
	srv := etcdtest.Start(t)
	c1 := testClient(t, []string{srv.Endpoint()}, "app")
	c2 := testClient(t, []string{srv.Endpoint()}, "app")
	first := dsRegister(t, dsService(c1), dsInstance("a", 1001))
	tr := dsTrack(t, dsService(c1))

	for _, c := range []*etcdkit.Client{c2, c1} {
		_, err := dsService(c).Register(testContext(t, 10*time.Second), dsInstance("a", 2002), dsTTL)
		require.ErrorIs(t, err, etcdkit.ErrExists)
		var ce *etcdkit.ConflictError[etcdkit.Instance[nodeMeta]]
		require.True(t, errors.As(err, &ce), "got %T, want a *ConflictError[Instance]", err)
		assert.Equal(t, dsInstance("a", 1001), ce.Current.Data)
		assert.Equal(t, int64(first.Lease()), ce.Current.Lease)
		assert.Contains(t, err.Error(), "127.0.0.1:1001")
	}
	assert.Equal(t, []etcdkit.Instance[nodeMeta]{dsInstance("a", 1001)}, tr.Instances())
	assert.Equal(t, etcdkit.SessionLive, first.State())

	require.NoError(t, first.Close())
	dsRegister(t, dsService(c2), dsInstance("a", 2002))
	require.Eventually(t, func() bool {
		return slices.Equal(tr.Instances(), []etcdkit.Instance[nodeMeta]{dsInstance("a", 2002)})
	}, dsWait, dsTick)
}

// TestServiceInvalidInput: bad names, IDs, addresses, TTLs and oversize
// metadata fail with clear errors before anything is written.
func TestServiceInvalidInput(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "app")
	svc := dsService(c)
	ctx := testContext(t, 30*time.Second)

	for _, id := range []string{"", "a/b", "..", ".", "x\x00y", "\xff"} {
		_, err := svc.Register(ctx, etcdkit.Instance[nodeMeta]{ID: id, Addr: "127.0.0.1:1"}, dsTTL)
		assert.ErrorIs(t, err, etcdkit.ErrInvalidInstance, "ID %q", id)
		assert.ErrorIs(t, err, etcdkit.ErrInvalidName, "ID %q", id)
	}
	for _, addr := range []string{"", "127.0.0.1", ":80", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:http", "a b:80", "h:8\n0", "[::1:80"} {
		_, err := svc.Register(ctx, etcdkit.Instance[nodeMeta]{ID: "a", Addr: addr}, dsTTL)
		assert.ErrorIs(t, err, etcdkit.ErrInvalidInstance, "address %q", addr)
		assert.NotErrorIs(t, err, etcdkit.ErrInvalidName, "address %q", addr)
	}
	_, err := svc.Register(ctx, dsInstance("a", 1), 500*time.Millisecond)
	assert.ErrorIs(t, err, etcdkit.ErrInvalidTTL)

	small := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, MaxValueSize: 64})
	big := dsInstance("a", 1)
	big.Meta.Zone = string(make([]byte, 100))
	_, err = dsService(small).Register(ctx, big, dsTTL)
	assert.ErrorIs(t, err, etcdkit.ErrTooLarge)

	for _, bad := range []*etcdkit.Service[nodeMeta]{
		etcdkit.NewService(c, "", etcdkit.JSON[nodeMeta]()),
		etcdkit.NewService(c, "a//b", etcdkit.JSON[nodeMeta]()),
		etcdkit.NewService[nodeMeta](c, "svc", nil),
		etcdkit.NewService(nil, "svc", etcdkit.JSON[nodeMeta]()),
	} {
		require.Error(t, bad.Validate(), "service %q", bad.Name())
		_, err := bad.Register(ctx, dsInstance("a", 1), dsTTL)
		assert.Equal(t, bad.Validate(), err)
		_, err = bad.Track(ctx)
		assert.Equal(t, bad.Validate(), err)
		_, _, err = bad.List(ctx)
		assert.Equal(t, bad.Validate(), err)
	}
	assert.ErrorIs(t, etcdkit.NewService(c, "a//b", etcdkit.JSON[nodeMeta]()).Validate(), etcdkit.ErrInvalidName)

	list, _, err := svc.List(ctx)
	require.NoError(t, err)
	assert.Empty(t, list, "something was registered")
}

// TestServiceUndecodable writes keys under the service that are not valid
// instances (another tool, an older version): not JSON, metadata of the
// wrong type, a bad address, a nested name. None of them hides the valid
// instance or panics; the tracker reports each, and List returns the valid
// one with an error per bad key.
func TestServiceUndecodable(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "app")
	svc := dsService(c)
	dsRegister(t, svc, dsInstance("good", 1001))
	raw := srv.Client(t)
	ctx := testContext(t, 30*time.Second)
	bad := map[string]string{
		"garbage":  "not json",
		"badmeta":  `{"addr":"127.0.0.1:9","meta":"a string, not an object"}`,
		"badaddr":  `{"addr":"nowhere"}`,
		"nested/x": `{"addr":"127.0.0.1:9","meta":{}}`,
	}
	for name, v := range bad {
		_, err := raw.Put(ctx, "app/_etcdkit/service/svc/"+name, v)
		require.NoError(t, err)
	}
	tr := dsTrack(t, svc)
	views := dsRecord(t, tr)
	wantKeys := []string{"_etcdkit/service/svc/badaddr", "_etcdkit/service/svc/badmeta", "_etcdkit/service/svc/garbage", "_etcdkit/service/svc/nested/x"}
	keys := func() []string {
		var ks []string
		for _, e := range tr.Invalid() {
			ks = append(ks, e.Key)
		}
		return ks
	}
	require.Eventually(t, func() bool { return slices.Equal(keys(), wantKeys) }, dsWait, dsTick, "Invalid: %v", keys())
	assert.Equal(t, []string{"good"}, dsIDs(tr.Instances()))

	list, _, err := svc.List(ctx)
	assert.Equal(t, []string{"good"}, dsIDs(list))
	var de *etcdkit.DecodeError
	require.True(t, errors.As(err, &de), "List error %v", err)
	for _, k := range wantKeys {
		assert.Contains(t, err.Error(), k)
	}

	// Repairs and removals are seen.
	_, err = raw.Put(ctx, "app/_etcdkit/service/svc/badaddr", `{"addr":"127.0.0.1:9"}`)
	require.NoError(t, err)
	_, err = raw.Delete(ctx, "app/_etcdkit/service/svc/garbage")
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(keys()) == 2 }, dsWait, dsTick, "Invalid: %v", keys())
	dsWaitIDs(t, tr, "badaddr", "good")
	// The recorder reads Updates on a goroutine of its own: wait for it to
	// have the view Instances already shows.
	require.Eventually(t, func() bool {
		v, ok := views.last()
		return ok && slices.Equal(dsIDs(v), []string{"badaddr", "good"})
	}, dsWait, dsTick, "last view sent on Updates")
	v, _ := views.last()
	assert.Equal(t, nodeMeta{}, v[0].Meta, "no meta stored: the codec's zero value")
}

// TestServiceMetaRoundTrip stores metadata whose encoding is JSON (kept as
// it is under "meta") and whose encoding is not (base64 under "metaBytes"),
// including values JSON would normalise: each comes back byte for byte.
func TestServiceMetaRoundTrip(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "")
	svc := etcdkit.NewService(c, "strings", etcdkit.String())
	metas := []string{"", "plain text", " 1", "1 ", "null", `{"a": 1,  "b":[2]}`, `"<&>"`, "{", "ünïcode"}
	var want []etcdkit.Instance[string]
	for i, m := range metas {
		in := etcdkit.Instance[string]{ID: fmt.Sprintf("i%d", i), Addr: fmt.Sprintf("host-%d.example:%d", i, 1000+i), Meta: m}
		dsRegister(t, svc, in)
		want = append(want, in)
	}
	list, _, err := svc.List(testContext(t, 5*time.Second))
	require.NoError(t, err)
	assert.Equal(t, want, list)
	tr := dsTrack(t, svc)
	assert.Equal(t, want, tr.Instances())

	resp, err := srv.Client(t).Get(testContext(t, 5*time.Second), "_etcdkit/service/strings/i5")
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	assert.Equal(t, `{"addr":"host-5.example:1005","meta":{"a": 1,  "b":[2]}}`, string(resp.Kvs[0].Value))
	resp, err = srv.Client(t).Get(testContext(t, 5*time.Second), "_etcdkit/service/strings/i1")
	require.NoError(t, err)
	assert.Equal(t, `{"addr":"host-1.example:1001","metaBytes":"cGxhaW4gdGV4dA=="}`, string(resp.Kvs[0].Value))
	resp, err = srv.Client(t).Get(testContext(t, 5*time.Second), "_etcdkit/service/strings/i0")
	require.NoError(t, err)
	assert.Equal(t, `{"addr":"host-0.example:1000","metaBytes":""}`, string(resp.Kvs[0].Value))
}

// TestTrackerSlowReader makes twenty changes while nobody reads Updates.
// The reader then gets one view, the latest, and nothing else is waiting:
// no backlog of stale views, and the tracker never waited for the reader.
func TestTrackerSlowReader(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "app")
	svc := dsService(c)
	tr, err := svc.Track(testContext(t, time.Hour))
	require.NoError(t, err)
	t.Cleanup(func() { _ = tr.Close() })
	var ids []string
	for i := range 20 {
		in := dsInstance(fmt.Sprintf("n%02d", i), 2000+i)
		dsRegister(t, svc, in)
		ids = append(ids, in.ID)
	}
	dsWaitIDs(t, tr, ids...)
	select {
	case v := <-tr.Updates():
		assert.Equal(t, ids, dsIDs(v), "the view waiting on Updates")
	case <-time.After(dsWait):
		t.Fatal("no view on Updates")
	}
	select {
	case v := <-tr.Updates():
		t.Fatalf("a second view was waiting: %v", dsIDs(v))
	default:
	}
}

// TestTrackerEndsBeforeSync closes a tracker whose cluster never answered:
// its link is silent from the start (proxy Blackhole(Both) before Track), so
// it never syncs. A caller waiting on Synced, as one waits on Watch.Synced,
// must be released when the tracker ends, and find Err saying why; before,
// Synced stayed open for good and such a caller hung.
func TestTrackerEndsBeforeSync(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(tr *etcdkit.Tracker[nodeMeta], cancel context.CancelFunc)
		want error
	}{
		{"Close", func(tr *etcdkit.Tracker[nodeMeta], _ context.CancelFunc) { _ = tr.Close() }, etcdkit.ErrClosed},
		{"ctx cancelled", func(_ *etcdkit.Tracker[nodeMeta], cancel context.CancelFunc) { cancel() }, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := etcdtest.Start(t, etcdtest.WithProxy())
			c := testClient(t, []string{srv.ProxyEndpoint()}, "app")
			srv.Proxy().Blackhole(proxy.Both)
			t.Cleanup(srv.Proxy().Unblackhole)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			tr, err := dsService(c).Track(ctx)
			require.NoError(t, err)
			t.Cleanup(func() { _ = tr.Close() })
			select {
			case <-tr.Synced():
				t.Fatal("Synced closed while the link was silent")
			default:
			}

			tc.end(tr, cancel)
			select {
			case <-tr.Synced():
			case <-time.After(dsWait):
				t.Fatalf("Synced still open %v after the tracker was ended", dsWait)
			}
			assert.ErrorIs(t, tr.Err(), tc.want, "Err once Synced is closed by the end")
			assert.Empty(t, tr.Instances())
			assert.True(t, tr.Stale(), "Stale after ending unsynced")
		})
	}
}

// TestServiceNodeBlackholed cuts one node's link silently (proxy
// Blackhole(Both)): no FIN, no error, the process does not Close. A
// heartbeat-key scheme notices only when the key's TTL runs out too; here
// the node is gone from the tracker within its TTL (plus the server's
// expiry sweep), the other node stays, the node itself is told Lost before
// that, and it is back in the view right after the heal.
func TestServiceNodeBlackholed(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	nodeClient := testClient(t, []string{srv.ProxyEndpoint()}, "app")
	c := testClient(t, []string{srv.Endpoint()}, "app")
	cut := dsRegister(t, dsService(nodeClient), dsInstance("cut", 1001))
	dsRegister(t, dsService(c), dsInstance("ok", 1002))
	tr := dsTrack(t, dsService(c))
	states := recordStates(t, cut.States())
	dsWaitIDs(t, tr, "cut", "ok")
	states.settled(t, etcdkit.SessionLive, dsWait)

	start := time.Now()
	srv.Proxy().Blackhole(proxy.Both)
	gone := dsWaitIDs(t, tr, "ok")
	lost := states.waitFor(t, etcdkit.SessionLost, time.Time{}, dsWait)
	t.Logf("blackholed node gone from the view %v after the cut (TTL %v); it declared SessionLost after %v",
		gone, dsTTL, lost.Sub(start))
	assert.Less(t, gone, dsTTL+etcdtest.DefaultElection+2*time.Second, "removal after the cut")
	assert.Less(t, lost.Sub(start), gone, "the node must know before the others")

	mark := time.Now()
	srv.Proxy().Unblackhole()
	back := dsWaitIDs(t, tr, "cut", "ok")
	t.Logf("back in the view %v after the heal", back)
	states.waitFor(t, etcdkit.SessionRecovered, mark, dsWait)
	require.Eventually(t, func() bool { return cut.State() == etcdkit.SessionLive }, dsWait, dsTick)
	assert.Equal(t, dsInstance("cut", 1001), tr.Instances()[0])
}

// TestServiceEtcdRestart restarts the only member, at once and after an
// outage longer than the TTL. Registrations and the tracker recover on
// their own: the view is fresh again, holds every live instance, and
// follows changes made after the restart.
func TestServiceEtcdRestart(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "app")
	other := testClient(t, []string{srv.Endpoint()}, "app")
	svc := dsService(c)
	a := dsRegister(t, svc, dsInstance("a", 1001))
	states := recordStates(t, a.States())
	tr := dsTrack(t, dsService(other))
	dsWaitIDs(t, tr, "a")

	require.NoError(t, srv.Restart())
	b := dsRegister(t, svc, dsInstance("b", 1002))
	dsWaitIDs(t, tr, "a", "b")
	require.Eventually(t, func() bool { return !tr.Stale() }, dsWait, dsTick, "tracker state %v", tr.State())
	states.settled(t, etcdkit.SessionLive, dsWait)

	mark := time.Now()
	srv.Stop()
	require.Eventually(t, tr.Stale, dsWait, dsTick, "tracker not stale while the member is down")
	states.waitFor(t, etcdkit.SessionLost, mark, dsWait)
	mark = time.Now()
	restart := time.Now()
	require.NoError(t, srv.Restart())
	states.waitFor(t, etcdkit.SessionRecovered, mark, dsWait)
	require.Eventually(t, func() bool { return !tr.Stale() }, dsWait, dsTick, "tracker state %v", tr.State())
	dsWaitIDs(t, tr, "a", "b")
	require.NoError(t, b.Close())
	dsWaitIDs(t, tr, "a")
	require.Eventually(t, func() bool { return a.State() == etcdkit.SessionLive }, dsWait, dsTick)
	t.Logf("outage: registration recovered %v after the restart", time.Since(restart))
}

// TestServiceTrackerCompaction cuts the tracker's link (proxy
// Blackhole(Both)) while instances come, change and go, then compacts the
// history before healing. A raw watch resumed after the heal fails with
// "required revision has been compacted" and a hand-rolled gateway keeps
// routing to the instances that left. The tracker says it is stale while
// cut off, then converges: exactly the live instances, with their current
// metadata.
func TestServiceTrackerCompaction(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	c := testClient(t, []string{srv.Endpoint()}, "app")
	svc := dsService(c)
	tr := dsTrack(t, dsService(testClient(t, []string{srv.ProxyEndpoint()}, "app")))
	views := dsRecord(t, tr)
	a := dsRegister(t, svc, dsInstance("a", 1001))
	b := dsRegister(t, svc, dsInstance("b", 1002))
	dsWaitIDs(t, tr, "a", "b")

	srv.Proxy().Blackhole(proxy.Both)
	require.Eventually(t, tr.Stale, dsWait, dsTick, "tracker not stale on a silent link")
	assert.Equal(t, etcdkit.WatchSuspended, tr.State())
	require.NoError(t, b.Close())
	dsRegister(t, svc, dsInstance("c", 1003))
	d := dsRegister(t, svc, dsInstance("d", 1004))
	require.NoError(t, d.Close())
	a2 := dsInstance("a", 1001)
	a2.Meta.Version = 7
	require.NoError(t, a.Update(testContext(t, 5*time.Second), a2.Meta))
	srv.Compact(t)
	assert.Equal(t, []string{"a", "b"}, dsIDs(tr.Instances()), "view while cut off")

	srv.Proxy().Unblackhole()
	want := []etcdkit.Instance[nodeMeta]{a2, dsInstance("c", 1003)}
	require.Eventually(t, func() bool { v, ok := views.last(); return ok && slices.Equal(v, want) }, dsWait, dsTick,
		"view after the heal: %v", tr.Instances())
	assert.Equal(t, want, tr.Instances())
	require.Eventually(t, func() bool { return !tr.Stale() }, dsWait, dsTick)
}

// TestServiceErrors: ended contexts and closed clients give errors, never
// hangs: at the call, and for running handles through Done and Err.
func TestServiceErrors(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "app")
	watcher := dsTrack(t, dsService(testClient(t, []string{srv.Endpoint()}, "app")))
	svc := dsService(c)

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := svc.Register(cancelled, dsInstance("a", 1001), dsTTL)
	assert.ErrorIs(t, err, context.Canceled)
	_, err = svc.Track(cancelled)
	assert.ErrorIs(t, err, context.Canceled)

	// A tracker and a registration whose ctx ends.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tr, err := svc.Track(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tr.Close() })
	r, err := svc.Register(ctx, dsInstance("a", 1001), dsTTL)
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close() })
	dsWaitIDs(t, watcher, "a")
	cancel()
	ended := func(done <-chan struct{}, what string) {
		t.Helper()
		select {
		case <-done:
		case <-time.After(dsWait):
			t.Fatalf("%s still running after its ctx ended", what)
		}
	}
	ended(tr.Done(), "tracker")
	ended(r.Done(), "registration")
	assert.ErrorIs(t, tr.Err(), context.Canceled)
	assert.ErrorIs(t, r.Err(), context.Canceled)
	assert.Equal(t, etcdkit.WatchClosed, tr.State())
	assert.True(t, tr.Stale())
	for range tr.Updates() {
	}
	dsWaitIDs(t, watcher)

	// Close, twice.
	tr2, err := svc.Track(testContext(t, time.Hour))
	require.NoError(t, err)
	require.NoError(t, tr2.Close())
	require.NoError(t, tr2.Close())
	assert.ErrorIs(t, tr2.Err(), etcdkit.ErrClosed)

	// The client closes under a tracker and a registration.
	tr3 := dsTrack(t, svc)
	r3 := dsRegister(t, svc, dsInstance("b", 1002))
	dsWaitIDs(t, watcher, "b")
	require.NoError(t, c.Close())
	for _, done := range []<-chan struct{}{tr3.Done(), r3.Done()} {
		select {
		case <-done:
		default:
			t.Fatal("handle still running after Client.Close returned")
		}
	}
	assert.ErrorIs(t, tr3.Err(), etcdkit.ErrClosed)
	assert.ErrorIs(t, r3.Err(), etcdkit.ErrClosed)
	dsWaitIDs(t, watcher)
	assert.ErrorIs(t, r3.Update(context.Background(), nodeMeta{}), etcdkit.ErrClosed)

	_, err = svc.Register(context.Background(), dsInstance("c", 1003), dsTTL)
	assert.ErrorIs(t, err, etcdkit.ErrClosed)
	_, err = svc.Track(context.Background())
	assert.ErrorIs(t, err, etcdkit.ErrClosed)
	_, _, err = svc.List(context.Background())
	assert.ErrorIs(t, err, etcdkit.ErrClosed)
}
