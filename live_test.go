package etcdkit_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
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

// liveWait bounds every wait of the Live tests: generous, for a loaded
// machine under -race.
const liveWait = 30 * time.Second

// liveLimits is the configuration type of the Live tests.
type liveLimits struct {
	Rate  int    `json:"rate"`
	Burst int    `json:"burst"`
	Mode  string `json:"mode,omitempty"`
}

var defaultLimits = liveLimits{Rate: 10, Burst: 20, Mode: "default"}

// validLimits refuses a negative rate.
func validLimits(l liveLimits) error {
	if l.Rate < 0 {
		return fmt.Errorf("rate %d is negative", l.Rate)
	}
	return nil
}

// liveEnv is one member behind a proxy, a client through the proxy, and a
// raw client straight to the member that plays the operator writing
// configuration by hand.
type liveEnv struct {
	srv  *etcdtest.Server
	c    *etcdkit.Client
	raw  *clientv3.Client
	m    *metrics
	logs *observer.ObservedLogs
	ns   string
}

func startLiveEnv(t *testing.T, ns string) *liveEnv {
	t.Helper()
	srv := etcdtest.Start(t, etcdtest.WithProxy())
	m := newMetrics()
	core, logs := observer.New(zap.InfoLevel)
	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.ProxyEndpoint()}, Namespace: ns, Metrics: m,
		Logger: zap.New(core), StallTimeout: 500 * time.Millisecond})
	return &liveEnv{srv: srv, c: c, raw: srv.Client(t), m: m, logs: logs, ns: ns}
}

// put writes raw bytes under the namespace and returns the revision.
func (e *liveEnv) put(t testing.TB, name, value string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), liveWait)
	defer cancel()
	resp, err := e.raw.Put(ctx, e.c.KeyPrefix()+name, value)
	require.NoError(t, err)
	return resp.Header.Revision
}

func (e *liveEnv) del(t testing.TB, name string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), liveWait)
	defer cancel()
	resp, err := e.raw.Delete(ctx, e.c.KeyPrefix()+name)
	require.NoError(t, err)
	return resp.Header.Revision
}

// changeLog collects what an Events channel delivers until it closes.
type changeLog[T any] struct {
	mu   sync.Mutex
	all  []etcdkit.LiveEvent[T]
	done chan struct{}
}

func recordChanges[T any](t testing.TB, ch <-chan etcdkit.LiveEvent[T]) *changeLog[T] {
	l := &changeLog[T]{done: make(chan struct{})}
	stop := make(chan struct{})
	go func() {
		defer close(l.done)
		for {
			select {
			case c, ok := <-ch:
				if !ok {
					return
				}
				l.mu.Lock()
				l.all = append(l.all, c)
				l.mu.Unlock()
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-l.done })
	return l
}

func (l *changeLog[T]) list() []etcdkit.LiveEvent[T] {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]etcdkit.LiveEvent[T](nil), l.all...)
}

func (l *changeLog[T]) until(t testing.TB, n int) []etcdkit.LiveEvent[T] {
	t.Helper()
	require.Eventually(t, func() bool { return len(l.list()) >= n }, liveWait, 5*time.Millisecond,
		"want %d changes, got %+v", n, l.list())
	return l.list()
}

func waitLiveSynced(t testing.TB, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(liveWait):
		t.Fatalf("not synced within %v", liveWait)
	}
}

func untilGet[T comparable](t testing.TB, get func() T, want T) {
	t.Helper()
	require.Eventually(t, func() bool { return get() == want }, liveWait, 5*time.Millisecond,
		"Get never returned %+v; last %+v", want, get())
}

// A bad JSON value, a value the validator refuses and a delete, each
// written by a raw client (no etcdkit check on the way in): Get keeps the
// last good value through the first two, serves the default after the
// delete, and applies the next good write. Each rejection is visible with
// its error and revision, counted and logged; Events never carries it.
func TestLiveRejectsBadValuesAndKeepsTheLastGood(t *testing.T) {
	e := startLiveEnv(t, "live-bad")
	ctx := testContext(t, time.Minute)
	key := etcdkit.NewKey(e.c, "config/limits", etcdkit.JSON[liveLimits]())
	live := etcdkit.NewLive(ctx, key, etcdkit.WithDefault(defaultLimits), etcdkit.WithValidator(validLimits))
	t.Cleanup(func() { _ = live.Close() })
	changes := recordChanges(t, live.Events())

	waitLiveSynced(t, live.Synced())
	require.Equal(t, defaultLimits, live.Get(), "absent key: the default")
	cur := live.Current()
	assert.False(t, cur.Present)
	assert.Equal(t, etcdkit.SourceCluster, cur.Source)
	require.Eventually(t, func() bool { return !live.Stale() }, liveWait, 5*time.Millisecond)
	_, rejected := live.Rejected()
	require.False(t, rejected)

	good1 := e.put(t, "config/limits", `{"rate":1,"burst":2}`)
	untilGet(t, live.Get, liveLimits{Rate: 1, Burst: 2})

	badJSON := e.put(t, "config/limits", `{"rate":`)
	require.Eventually(t, func() bool { r, ok := live.Rejected(); return ok && r.Revision == badJSON }, liveWait, 5*time.Millisecond)
	r, _ := live.Rejected()
	var de *etcdkit.DecodeError
	require.ErrorAs(t, r.Err, &de, "bad JSON: %v", r.Err)
	assert.Equal(t, "config/limits", de.Key)
	assert.Equal(t, "config/limits", r.Name)
	assert.WithinDuration(t, time.Now(), r.At, liveWait)
	assert.Equal(t, liveLimits{Rate: 1, Burst: 2}, live.Get(), "after bad JSON: the last good value")
	assert.Equal(t, good1, live.Current().Revision)

	invalid := e.put(t, "config/limits", `{"rate":-5,"burst":2}`)
	require.Eventually(t, func() bool { r, ok := live.Rejected(); return ok && r.Revision == invalid }, liveWait, 5*time.Millisecond)
	r, _ = live.Rejected()
	var ve *etcdkit.ValidationError
	require.ErrorAs(t, r.Err, &ve)
	assert.Contains(t, ve.Error(), "rate -5 is negative")
	assert.Equal(t, invalid, ve.Revision)
	assert.Equal(t, liveLimits{Rate: 1, Burst: 2}, live.Get(), "after a validation failure: the last good value")
	assert.Equal(t, 2.0, e.m.get(etcdkit.MetricLiveRejections))
	assert.Equal(t, 2, e.logs.FilterMessage("live value rejected, keeping the last good one").Len())

	deleted := e.del(t, "config/limits")
	untilGet(t, live.Get, defaultLimits)
	assert.Equal(t, etcdkit.LiveValue[liveLimits]{Data: defaultLimits, Revision: deleted, Source: etcdkit.SourceCluster}, live.Current())

	good2 := e.put(t, "config/limits", `{"rate":3,"burst":4,"mode":"strict"}`)
	untilGet(t, live.Get, liveLimits{Rate: 3, Burst: 4, Mode: "strict"})

	got := changes.until(t, 3)
	assert.Equal(t, []etcdkit.LiveEvent[liveLimits]{
		{Name: "config/limits", Old: defaultLimits, New: liveLimits{Rate: 1, Burst: 2}, Revision: good1},
		{Name: "config/limits", Old: liveLimits{Rate: 1, Burst: 2}, New: defaultLimits, Deleted: true, Revision: deleted},
		{Name: "config/limits", Old: defaultLimits, New: liveLimits{Rate: 3, Burst: 4, Mode: "strict"}, Revision: good2},
	}, got)
	assert.Equal(t, 3.0, e.m.get(etcdkit.MetricLiveUpdates))

	require.NoError(t, live.Close())
	require.ErrorIs(t, live.Err(), etcdkit.ErrClosed)
	_, open := <-live.Events()
	assert.False(t, open, "Changes closed at the end")
	assert.Equal(t, liveLimits{Rate: 3, Burst: 4, Mode: "strict"}, live.Get(), "the last value stays readable")
	assert.True(t, live.Stale(), "an ended Live is stale")
}

// MergeDefault: fields a stored JSON value leaves out take the default's
// values, and decoding over the default never changes the default itself.
func TestLiveMergeDefaultFillsMissingFields(t *testing.T) {
	e := startLiveEnv(t, "live-merge")
	ctx := testContext(t, time.Minute)
	type cfg struct {
		Rate int            `json:"rate"`
		Tags map[string]int `json:"tags"`
	}
	def := cfg{Rate: 7, Tags: map[string]int{"a": 1}}
	key := etcdkit.NewKey(e.c, "merge", etcdkit.JSON[cfg]())
	e.put(t, "merge", `{"tags":{"b":2}}`)
	live := etcdkit.NewLive(ctx, key, etcdkit.WithDefault(def), etcdkit.MergeDefault[cfg]())
	t.Cleanup(func() { _ = live.Close() })
	waitLiveSynced(t, live.Synced())
	assert.Equal(t, cfg{Rate: 7, Tags: map[string]int{"a": 1, "b": 2}}, live.Get())
	assert.Equal(t, map[string]int{"a": 1}, def.Tags, "the default is not modified")

	without := etcdkit.NewLive(ctx, key, etcdkit.WithDefault(def))
	t.Cleanup(func() { _ = without.Close() })
	waitLiveSynced(t, without.Synced())
	assert.Equal(t, cfg{Tags: map[string]int{"b": 2}}, without.Get(), "without MergeDefault, missing fields are zero")
}

// Fault: the Live's link is blackholed (proxy Blackhole) while an operator
// writes a value the validator refuses and then a good one, and compacts
// the history; then the link heals. Stale must turn true during the cut
// (the stall is noticed), and after the heal the Live converges to the
// latest value through the watch's resync without ever applying the
// refused one. A raw clientv3 watch would sit silent through the cut and
// then fail with a compaction error.
func TestLiveSurvivesBlackholeWritesAndCompaction(t *testing.T) {
	for _, tc := range []struct {
		name      string
		writes    []string
		want      liveLimits
		wantRejOK bool // the last write is the refused one
	}{
		{name: "refused then good", writes: []string{`{"rate":-1}`, `{"rate":2,"burst":2}`}, want: liveLimits{Rate: 2, Burst: 2}},
		{name: "good then refused", writes: []string{`{"rate":2,"burst":2}`, `{"rate":-1}`}, want: liveLimits{Rate: 1, Burst: 1}, wantRejOK: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startLiveEnv(t, "live-cut")
			ctx := testContext(t, time.Minute)
			first := e.put(t, "cfg", `{"rate":1,"burst":1}`)
			live := etcdkit.NewLive(ctx, etcdkit.NewKey(e.c, "cfg", etcdkit.JSON[liveLimits]()), etcdkit.WithValidator(validLimits))
			t.Cleanup(func() { _ = live.Close() })
			changes := recordChanges(t, live.Events())
			waitLiveSynced(t, live.Synced())
			changes.until(t, 1)
			require.Equal(t, liveLimits{Rate: 1, Burst: 1}, live.Get())
			require.Eventually(t, func() bool { return !live.Stale() }, liveWait, 5*time.Millisecond)

			e.srv.Proxy().Blackhole(proxy.Both)
			var last int64
			for _, w := range tc.writes {
				last = e.put(t, "cfg", w)
			}
			e.srv.Compact(t)
			require.Eventually(t, live.Stale, liveWait, 5*time.Millisecond, "Stale during the cut")
			assert.Equal(t, liveLimits{Rate: 1, Burst: 1}, live.Get(), "during the cut: the value before it")
			e.srv.Proxy().Unblackhole()

			if tc.wantRejOK {
				require.Eventually(t, func() bool { r, ok := live.Rejected(); return ok && r.Revision == last }, liveWait, 5*time.Millisecond)
				require.Eventually(t, func() bool { return !live.Stale() }, liveWait, 5*time.Millisecond)
				assert.Equal(t, tc.want, live.Get(), "the refused latest value is not applied")
				assert.Equal(t, first, live.Current().Revision)
				assert.Equal(t, []etcdkit.LiveEvent[liveLimits]{{Name: "cfg", New: liveLimits{Rate: 1, Burst: 1}, Revision: first}},
					changes.list(), "nothing applied after the first value")
				return
			}
			untilGet(t, live.Get, tc.want)
			require.Eventually(t, func() bool { return !live.Stale() }, liveWait, 5*time.Millisecond)
			assert.Equal(t, last, live.Current().Revision)
			assert.Equal(t, []etcdkit.LiveEvent[liveLimits]{
				{Name: "cfg", New: liveLimits{Rate: 1, Burst: 1}, Revision: first},
				{Name: "cfg", Old: liveLimits{Rate: 1, Burst: 1}, New: tc.want, Revision: last},
			}, changes.until(t, 2), "only the latest value, never the refused one")
			_, rejected := live.Rejected()
			assert.False(t, rejected, "the compacted refused value was never seen")
		})
	}
}

// Cold start: a service restarts while every member of a 3-member cluster
// is stopped. NewLive, over a client that does not wait for the cluster,
// returns at once (well within its ctx) serving the snapshot of the
// previous run, Stale and not Synced. When the members start, it
// converges to the value written while the service was away, and the
// snapshot follows.
func TestLiveColdStartFromSnapshotWithEveryMemberDown(t *testing.T) {
	cl := etcdtest.StartCluster(t, 3, etcdtest.WithProxy())
	dir := t.TempDir()
	snap := filepath.Join(dir, "limits.snapshot")
	raw := cl.Client(t)
	ctx := testContext(t, 2*time.Minute)

	// The previous run: it writes the snapshot.
	c1 := testClientConfig(t, etcdkit.Config{Endpoints: cl.Endpoints(), Namespace: "cold"})
	key1 := etcdkit.NewKey(c1, "limits", etcdkit.JSON[liveLimits]())
	v1rev, err := key1.Put(ctx, liveLimits{Rate: 1, Burst: 1})
	require.NoError(t, err)
	prev := etcdkit.NewLive(ctx, key1, etcdkit.WithSnapshot[liveLimits](snap))
	waitLiveSynced(t, prev.Synced())
	require.Equal(t, liveLimits{Rate: 1, Burst: 1}, prev.Get())
	require.NoError(t, prev.Close())
	_, err = os.Stat(snap)
	require.NoError(t, err, "the snapshot is written")

	// While the service is away, the configuration changes.
	_, err = raw.Put(ctx, "unrelated", "x")
	require.NoError(t, err)
	v2rev, err := key1.Put(ctx, liveLimits{Rate: 2, Burst: 2})
	require.NoError(t, err)
	require.Greater(t, v2rev, v1rev+1)

	for _, m := range cl.Members() {
		m.Stop()
	}
	// A client that does not wait for the cluster, as a service starting
	// during an outage makes it.
	rawDown, err := clientv3.New(clientv3.Config{Endpoints: cl.Endpoints()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = rawDown.Close() })
	m := newMetrics()
	c2, err := etcdkit.Wrap(rawDown, etcdkit.Config{Namespace: "cold", Metrics: m, StallTimeout: 500 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c2.Close() })

	nctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	start := time.Now()
	live := etcdkit.NewLive(nctx, etcdkit.NewKey(c2, "limits", etcdkit.JSON[liveLimits]()), etcdkit.WithSnapshot[liveLimits](snap))
	t.Cleanup(func() { _ = live.Close() })
	took := time.Since(start)
	t.Logf("NewLive returned after %v with every member down", took)
	assert.Less(t, took, time.Second, "NewLive does not wait for the cluster")
	assert.Equal(t, etcdkit.LiveValue[liveLimits]{Data: liveLimits{Rate: 1, Burst: 1}, Present: true, Revision: v1rev, Source: etcdkit.SourceSnapshot},
		live.Current(), "the snapshot is served")
	assert.True(t, live.Stale())
	select {
	case <-live.Synced():
		t.Fatal("synced while every member is down")
	default:
	}

	ms := cl.Members()
	require.NoError(t, ms[0].Restart())
	require.NoError(t, ms[1].Restart())
	cl.WaitLeader(t)
	require.NoError(t, ms[2].Restart())
	waitLiveSynced(t, live.Synced())
	untilGet(t, live.Get, liveLimits{Rate: 2, Burst: 2})
	require.Eventually(t, func() bool { return !live.Stale() }, liveWait, 5*time.Millisecond)
	assert.Equal(t, v2rev, live.Current().Revision)
	assert.Equal(t, etcdkit.SourceCluster, live.Current().Source)
	require.NoError(t, live.Close())

	// The snapshot now holds the newer value: a third run reads it.
	after := etcdkit.NewLive(ctx, etcdkit.NewKey(c2, "limits", etcdkit.JSON[liveLimits]()), etcdkit.WithSnapshot[liveLimits](snap))
	t.Cleanup(func() { _ = after.Close() })
	assert.Equal(t, v2rev, after.Current().Revision)
	assert.Equal(t, liveLimits{Rate: 2, Burst: 2}, after.Get())
	assert.Zero(t, m.get(etcdkit.MetricLiveSnapshotErrors))
}

// A snapshot written against one cluster is ahead of a cluster restored
// from a backup (lower revisions): the older cluster value is refused with
// ErrOlderThanSnapshot, the snapshot stays served and Stale, until the
// cluster's history passes the snapshot's revision; then its values apply
// again.
func TestLiveKeepsASnapshotNewerThanTheCluster(t *testing.T) {
	a := startLiveEnv(t, "restored")
	ctx := testContext(t, time.Minute)
	snap := filepath.Join(t.TempDir(), "snap")
	for i := range 30 {
		a.put(t, "pad", fmt.Sprint(i))
	}
	aRev := a.put(t, "cfg", `{"rate":9}`)
	la := etcdkit.NewLive(ctx, etcdkit.NewKey(a.c, "cfg", etcdkit.JSON[liveLimits]()), etcdkit.WithSnapshot[liveLimits](snap))
	waitLiveSynced(t, la.Synced())
	require.NoError(t, la.Close())

	b := startLiveEnv(t, "restored") // the "restored" cluster: same key, fewer revisions
	old := b.put(t, "cfg", `{"rate":1}`)
	require.Less(t, old, aRev)
	lb := etcdkit.NewLive(ctx, etcdkit.NewKey(b.c, "cfg", etcdkit.JSON[liveLimits]()), etcdkit.WithSnapshot[liveLimits](snap))
	t.Cleanup(func() { _ = lb.Close() })
	require.Eventually(t, func() bool { r, ok := lb.Rejected(); return ok && r.Revision == old }, liveWait, 5*time.Millisecond)
	r, _ := lb.Rejected()
	require.ErrorIs(t, r.Err, etcdkit.ErrOlderThanSnapshot)
	assert.Equal(t, liveLimits{Rate: 9}, lb.Get())
	assert.True(t, lb.Stale())
	assert.Equal(t, 1.0, b.m.get(etcdkit.MetricLiveRejections))

	for i := range 40 {
		b.put(t, "pad", fmt.Sprint(i))
	}
	newer := b.put(t, "cfg", `{"rate":3}`)
	require.Greater(t, newer, aRev)
	untilGet(t, lb.Get, liveLimits{Rate: 3})
	waitLiveSynced(t, lb.Synced())
	require.Eventually(t, func() bool { return !lb.Stale() }, liveWait, 5*time.Millisecond)
}

// A snapshot that is truncated, has a flipped byte, was written for
// another type or another key, is garbage or cannot be read is refused:
// a warning with the reason, a count, and the default is served while the
// cluster cannot be reached (its proxy is stopped). Nothing crashes.
func TestLiveRefusesBadSnapshots(t *testing.T) {
	e := startLiveEnv(t, "badsnap")
	ctx := testContext(t, 2*time.Minute)
	good := filepath.Join(t.TempDir(), "good")
	e.put(t, "cfg", `{"rate":5}`)
	l := etcdkit.NewLive(ctx, etcdkit.NewKey(e.c, "cfg", etcdkit.JSON[liveLimits]()), etcdkit.WithSnapshot[liveLimits](good))
	waitLiveSynced(t, l.Synced())
	require.NoError(t, l.Close())
	data, err := os.ReadFile(good)
	require.NoError(t, err)

	e.srv.Proxy().Stop() // the cluster is unreachable from now on
	type other struct{ Rate string }
	for _, tc := range []struct {
		name   string
		write  func(path string)
		open   func(path string) (etcdkit.LiveValue[liveLimits], func())
		reason string
	}{
		{name: "truncated", write: func(p string) { require.NoError(t, os.WriteFile(p, data[:len(data)/2], 0o600)) }, reason: "checksum"},
		{name: "flipped byte", write: func(p string) {
			b := append([]byte(nil), data...)
			b[len(b)/3] ^= 0x01
			require.NoError(t, os.WriteFile(p, b, 0o600))
		}, reason: "checksum mismatch"},
		{name: "empty", write: func(p string) { require.NoError(t, os.WriteFile(p, nil, 0o600)) }, reason: "truncated"},
		{name: "garbage", write: func(p string) { require.NoError(t, os.WriteFile(p, []byte(strings.Repeat("x", 500)), 0o600)) }, reason: "no checksum line"},
		{name: "a directory", write: func(p string) { require.NoError(t, os.Mkdir(p, 0o700)) }, reason: "not a regular file"},
		{name: "another key", write: func(p string) { require.NoError(t, os.WriteFile(p, data, 0o600)) }, reason: `"badsnap/other"`,
			open: func(p string) (etcdkit.LiveValue[liveLimits], func()) {
				l := etcdkit.NewLive(ctx, etcdkit.NewKey(e.c, "other", etcdkit.JSON[liveLimits]()), etcdkit.WithSnapshot[liveLimits](p))
				return l.Current(), func() { _ = l.Close() }
			}},
		{name: "another type", write: func(p string) { require.NoError(t, os.WriteFile(p, data, 0o600)) }, reason: "not for key",
			open: func(p string) (etcdkit.LiveValue[liveLimits], func()) {
				l := etcdkit.NewLive(ctx, etcdkit.NewKey(e.c, "cfg", etcdkit.JSON[other]()), etcdkit.WithSnapshot[other](p))
				cur := l.Current()
				return etcdkit.LiveValue[liveLimits]{Present: cur.Present, Revision: cur.Revision, Source: cur.Source}, func() { _ = l.Close() }
			}},
		// An intact snapshot whose value a stricter validator refuses is a
		// snapshot error, not a Rejection: the handle starts as without one.
		{name: "refused by the validator", write: func(p string) { require.NoError(t, os.WriteFile(p, data, 0o600)) }, reason: "too slow",
			open: func(p string) (etcdkit.LiveValue[liveLimits], func()) {
				l := etcdkit.NewLive(ctx, etcdkit.NewKey(e.c, "cfg", etcdkit.JSON[liveLimits]()), etcdkit.WithSnapshot[liveLimits](p),
					etcdkit.WithValidator(func(v liveLimits) error {
						if v.Rate < 10 {
							return errors.New("too slow")
						}
						return nil
					}))
				_, rejected := l.Rejected()
				assert.False(t, rejected, "no Rejection for a snapshot's value")
				return l.Current(), func() { _ = l.Close() }
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "snap")
			tc.write(p)
			before := e.m.get(etcdkit.MetricLiveSnapshotErrors)
			e.logs.TakeAll()
			var cur etcdkit.LiveValue[liveLimits]
			if tc.open != nil {
				var stop func()
				cur, stop = tc.open(p)
				defer stop()
			} else {
				l := etcdkit.NewLive(ctx, etcdkit.NewKey(e.c, "cfg", etcdkit.JSON[liveLimits]()), etcdkit.WithSnapshot[liveLimits](p),
					etcdkit.WithDefault(defaultLimits))
				defer l.Close()
				cur = l.Current()
				assert.True(t, l.Stale())
			}
			assert.False(t, cur.Present, "nothing from the snapshot is served")
			assert.Equal(t, etcdkit.SourceDefault, cur.Source)
			if tc.open == nil {
				assert.Equal(t, defaultLimits, cur.Data)
			}
			assert.Equal(t, before+1, e.m.get(etcdkit.MetricLiveSnapshotErrors))
			warned := e.logs.FilterMessage("live snapshot ignored").All()
			require.Len(t, warned, 1)
			assert.Contains(t, fmt.Sprint(warned[0].ContextMap()["error"]), tc.reason)
		})
	}
}

// Concurrency: 8 readers call Get and Current while 1,000 writes land,
// every tenth of them refused by the validator. Every value a reader sees
// is one written as good at the revision it comes with (or the default
// before the first), the revisions one reader sees never go back, and
// every reader ends at the final good value. Run with -race.
func TestLiveConcurrentReadersSeeOnlyGoodValuesInOrder(t *testing.T) {
	e := startLiveEnv(t, "live-conc")
	ctx := testContext(t, 3*time.Minute)
	key := etcdkit.NewKey(e.c, "n", etcdkit.JSON[liveLimits]())
	live := etcdkit.NewLive(ctx, key, etcdkit.WithValidator(validLimits))
	t.Cleanup(func() { _ = live.Close() })
	waitLiveSynced(t, live.Synced())

	var (
		mu   sync.Mutex
		good = map[int64]liveLimits{} // revision -> value written there, good ones only
	)
	const writes, readers = 1000, 8
	stop := make(chan struct{})
	type seen struct {
		v   etcdkit.LiveValue[liveLimits]
		got liveLimits
	}
	logs := make([][]seen, readers)
	final := make([]etcdkit.LiveValue[liveLimits], readers)
	var wg sync.WaitGroup
	for r := range readers {
		wg.Go(func() {
			var prev int64 = -1
			for {
				select {
				case <-stop:
					final[r] = live.Current()
					return
				default:
				}
				v, got := live.Current(), live.Get()
				// Record what changed only, so that spinning readers do
				// not fill memory; Get is checked on every read.
				if v.Revision != prev || got != v.Data {
					logs[r] = append(logs[r], seen{v: v, got: got})
					prev = v.Revision
				}
				runtime.Gosched()
			}
		})
	}
	var lastGood int64
	var lastVal liveLimits
	for i := 1; i <= writes; i++ {
		v := liveLimits{Rate: i, Burst: i}
		if i%10 == 0 {
			v.Rate = -i
		}
		rev, err := key.Put(ctx, v)
		require.NoError(t, err)
		if v.Rate >= 0 {
			mu.Lock()
			good[rev] = v
			mu.Unlock()
			lastGood, lastVal = rev, v
		}
	}
	require.Eventually(t, func() bool { return live.Current().Revision == lastGood }, liveWait, 5*time.Millisecond)
	close(stop)
	wg.Wait()
	goodValues := map[liveLimits]bool{{}: true}
	for _, v := range good {
		goodValues[v] = true
	}
	for r, l := range logs {
		require.NotEmpty(t, l)
		var prev int64
		for i, s := range l {
			require.GreaterOrEqual(t, s.v.Revision, prev, "reader %d, read %d: revision went back", r, i)
			prev = s.v.Revision
			if s.v.Present {
				want, ok := good[s.v.Revision]
				require.True(t, ok, "reader %d saw revision %d, which holds no good value", r, s.v.Revision)
				require.Equal(t, want, s.v.Data)
			}
			require.True(t, goodValues[s.got], "reader %d: Get returned %+v, never written as good", r, s.got)
		}
		t.Logf("reader %d saw %d distinct states", r, len(l))
		assert.Equal(t, lastGood, final[r].Revision, "reader %d ends at the final good value", r)
		assert.Equal(t, lastVal, final[r].Data)
	}
	assert.Equal(t, lastVal, live.Get())
	assert.Equal(t, float64(writes/10), e.m.get(etcdkit.MetricLiveRejections))
}

// Bad input ends the Live at once with a clear error; Get serves the
// default (or the zero value) and nothing panics.
func TestLiveInvalidInput(t *testing.T) {
	e := startLiveEnv(t, "live-inv")
	ctx := testContext(t, time.Minute)
	key := etcdkit.NewKey(e.c, "k", etcdkit.JSON[liveLimits]())
	ended, cancel := context.WithCancel(ctx)
	cancel()
	for _, tc := range []struct {
		name string
		live *etcdkit.Live[liveLimits]
		want string
	}{
		{"nil key", etcdkit.NewLive[liveLimits](ctx, nil), "nil key"},
		{"invalid key", etcdkit.NewLive(ctx, etcdkit.NewKey(e.c, "../x", etcdkit.JSON[liveLimits]())), "invalid name"},
		{"nil option", etcdkit.NewLive(ctx, key, nil), "nil option"},
		{"nil validator", etcdkit.NewLive(ctx, key, etcdkit.WithValidator[liveLimits](nil)), "nil function"},
		{"empty snapshot path", etcdkit.NewLive(ctx, key, etcdkit.WithSnapshot[liveLimits]("")), "empty path"},
		{"option twice", etcdkit.NewLive(ctx, key, etcdkit.WithSnapshot[liveLimits]("a"), etcdkit.WithSnapshot[liveLimits]("b")), "given twice"},
		{"MergeDefault without a default", etcdkit.NewLive(ctx, key, etcdkit.MergeDefault[liveLimits]()), "needs WithDefault"},
		{"ended ctx", etcdkit.NewLive(ended, key, etcdkit.WithDefault(defaultLimits)), "context canceled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			select {
			case <-tc.live.Done():
			default:
				t.Fatal("not ended")
			}
			require.ErrorContains(t, tc.live.Err(), tc.want)
			<-tc.live.Synced()
			assert.True(t, tc.live.Stale())
			_, open := <-tc.live.Events()
			assert.False(t, open)
			assert.NoError(t, tc.live.Close())
		})
	}
	sk := etcdkit.NewKey(e.c, "s", etcdkit.String())
	l := etcdkit.NewLive(ctx, sk, etcdkit.WithDefault("d"), etcdkit.MergeDefault[string]())
	require.ErrorContains(t, l.Err(), "needs the JSON codec")
	assert.Equal(t, "d", l.Get())
}

// A Live ends with its ctx's cause, or with ErrClosed when its Client is
// closed; Synced closes for a waiter either way.
func TestLiveEndsWithCtxAndClient(t *testing.T) {
	e := startLiveEnv(t, "live-end")
	ctx, cancel := context.WithCancel(testContext(t, time.Minute))
	key := etcdkit.NewKey(e.c, "k", etcdkit.JSON[liveLimits]())
	l1 := etcdkit.NewLive(ctx, key)
	waitLiveSynced(t, l1.Synced())
	cancel()
	<-l1.Done()
	require.ErrorIs(t, l1.Err(), context.Canceled)

	c := testClientConfig(t, etcdkit.Config{Endpoints: []string{e.srv.ProxyEndpoint()}})
	e.srv.Proxy().Stop() // never synced
	l2 := etcdkit.NewLive(testContext(t, time.Minute), etcdkit.NewKey(c, "k", etcdkit.JSON[liveLimits]()))
	require.NoError(t, c.Close())
	<-l2.Done()
	require.True(t, errors.Is(l2.Err(), etcdkit.ErrClosed), "got %v", l2.Err())
	<-l2.Synced()
	after := etcdkit.NewLive(testContext(t, time.Minute), etcdkit.NewKey(c, "k", etcdkit.JSON[liveLimits]()))
	require.ErrorIs(t, after.Err(), etcdkit.ErrClosed)
}
