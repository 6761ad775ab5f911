package etcdkit_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/proxy"
)

type flag struct {
	On      bool `json:"on"`
	Percent int  `json:"percent"`
}

func validFlag(f flag) error {
	if f.Percent < 0 || f.Percent > 100 {
		return assert.AnError
	}
	return nil
}

// Every entry of a LiveMap keeps its last good value through a bad JSON
// value and a validation failure written by a raw client, serves its
// default once deleted, and takes the next good write; names the prefix
// does not hold read as their per-name default, else the map's.
func TestLiveMapKeepsTheLastGoodValuePerEntry(t *testing.T) {
	e := startLiveEnv(t, "livemap")
	ctx := testContext(t, time.Minute)
	aRev := e.put(t, "flags/a", `{"on":true,"percent":10}`)
	e.put(t, "flags/b", `{"on":true`) // never good
	e.put(t, "other", `{"on":true}`)  // outside the prefix
	m := etcdkit.NewLiveMap(ctx, etcdkit.NewPrefix(e.c, "flags", etcdkit.JSON[flag]()),
		etcdkit.WithDefault(flag{Percent: 1}), etcdkit.WithDefaults(map[string]flag{"c": {On: true, Percent: 50}}),
		etcdkit.WithValidator(validFlag))
	t.Cleanup(func() { _ = m.Close() })
	changes := recordChanges(t, m.Events())
	waitLiveSynced(t, m.Synced())
	require.Eventually(t, func() bool { return !m.Stale() }, liveWait, 5*time.Millisecond)

	assert.Equal(t, flag{On: true, Percent: 10}, m.Get("a"))
	assert.Equal(t, flag{Percent: 1}, m.Get("b"), "undecodable from the start: the map's default")
	assert.Equal(t, flag{On: true, Percent: 50}, m.Get("c"), "the name's own default")
	assert.Equal(t, flag{Percent: 1}, m.Get("zzz"))
	assert.Equal(t, map[string]flag{"a": {On: true, Percent: 10}, "c": {On: true, Percent: 50}}, m.All())
	assert.Equal(t, []string{"a"}, m.Names())
	r, ok := m.Rejected()
	require.True(t, ok)
	assert.Equal(t, "b", r.Name)
	var de *etcdkit.DecodeError
	require.ErrorAs(t, r.Err, &de)
	assert.Equal(t, "flags/b", de.Key)

	bad := e.put(t, "flags/a", `{"on":false,"percent":500}`)
	require.Eventually(t, func() bool { r, _ := m.Rejected(); return r.Revision == bad }, liveWait, 5*time.Millisecond)
	r, _ = m.Rejected()
	var ve *etcdkit.ValidationError
	require.ErrorAs(t, r.Err, &ve)
	assert.Equal(t, flag{On: true, Percent: 10}, m.Get("a"), "the last good value")

	cRev := e.put(t, "flags/c", `{"on":false,"percent":5}`)
	untilGet(t, func() flag { return m.Get("c") }, flag{Percent: 5})
	v, held := m.Lookup("c")
	assert.True(t, held)
	assert.Equal(t, etcdkit.LiveValue[flag]{Data: flag{Percent: 5}, Present: true, Revision: cRev, Source: etcdkit.SourceCluster}, v)

	delRev := e.del(t, "flags/c")
	untilGet(t, func() flag { return m.Get("c") }, flag{On: true, Percent: 50})
	bRev := e.put(t, "flags/b", `{"on":true,"percent":100}`)
	untilGet(t, func() flag { return m.Get("b") }, flag{On: true, Percent: 100})

	got := changes.until(t, 4)
	assert.Equal(t, []etcdkit.LiveEvent[flag]{
		{Name: "a", Old: flag{Percent: 1}, New: flag{On: true, Percent: 10}, Revision: aRev},
		{Name: "c", Old: flag{On: true, Percent: 50}, New: flag{Percent: 5}, Revision: cRev},
		{Name: "c", Old: flag{Percent: 5}, New: flag{On: true, Percent: 50}, Deleted: true, Revision: delRev},
		{Name: "b", Old: flag{Percent: 1}, New: flag{On: true, Percent: 100}, Revision: bRev},
	}, got, "the first value, then each change; never a refused value")
	for _, ch := range got {
		assert.NotEqual(t, 500, ch.New.Percent)
	}
	assert.Equal(t, 2.0, e.m.get(etcdkit.MetricLiveRejections))
	require.NoError(t, m.Close())
	assert.ErrorIs(t, m.Err(), etcdkit.ErrClosed)
	assert.Equal(t, flag{On: true, Percent: 100}, m.Get("b"), "readable after the end")
}

// Fault: the LiveMap's link is blackholed while entries are changed,
// deleted and refused, and the history is compacted; after the heal the
// map converges to the cluster's good state through the cache's resync,
// deletions included, and never serves the refused value.
func TestLiveMapSurvivesBlackholeAndCompaction(t *testing.T) {
	e := startLiveEnv(t, "livemap-cut")
	ctx := testContext(t, time.Minute)
	e.put(t, "f/a", `{"percent":1}`)
	e.put(t, "f/b", `{"percent":2}`)
	m := etcdkit.NewLiveMap(ctx, etcdkit.NewPrefix(e.c, "f", etcdkit.JSON[flag]()), etcdkit.WithValidator(validFlag))
	t.Cleanup(func() { _ = m.Close() })
	waitLiveSynced(t, m.Synced())
	require.Eventually(t, func() bool { return !m.Stale() }, liveWait, 5*time.Millisecond)

	e.srv.Proxy().Blackhole(proxy.Both)
	e.put(t, "f/a", `{"percent":-1}`)
	e.del(t, "f/b")
	last := e.put(t, "f/c", `{"percent":3}`)
	e.srv.Compact(t)
	require.Eventually(t, m.Stale, liveWait, 5*time.Millisecond, "Stale during the cut")
	e.srv.Proxy().Unblackhole()

	require.Eventually(t, func() bool { return m.Revision() >= last && !m.Stale() }, liveWait, 5*time.Millisecond)
	assert.Equal(t, map[string]flag{"a": {Percent: 1}, "c": {Percent: 3}}, m.All())
}

// Cold start of a LiveMap: its snapshot is served at once, Stale, while
// the cluster cannot be reached (the proxy is stopped); once it can, the
// map converges to what changed meanwhile, deletions included, and the
// snapshot follows. A Live's snapshot is refused by a LiveMap (another
// kind), with a logged reason.
func TestLiveMapColdStartFromSnapshot(t *testing.T) {
	e := startLiveEnv(t, "livemap-cold")
	ctx := testContext(t, time.Minute)
	snap := filepath.Join(t.TempDir(), "flags")
	p := etcdkit.NewPrefix(e.c, "flags", etcdkit.JSON[flag]())
	e.put(t, "flags/a", `{"percent":1}`)
	e.put(t, "flags/b", `{"percent":2}`)
	first := etcdkit.NewLiveMap(ctx, p, etcdkit.WithSnapshot[flag](snap))
	waitLiveSynced(t, first.Synced())
	require.NoError(t, first.Close()) // writes the snapshot

	e.del(t, "flags/b")
	last := e.put(t, "flags/c", `{"percent":3}`)
	e.srv.Proxy().Stop()

	m := etcdkit.NewLiveMap(ctx, p, etcdkit.WithSnapshot[flag](snap))
	t.Cleanup(func() { _ = m.Close() })
	assert.Equal(t, map[string]flag{"a": {Percent: 1}, "b": {Percent: 2}}, m.All(), "the snapshot, at once")
	v, _ := m.Lookup("a")
	assert.Equal(t, etcdkit.SourceSnapshot, v.Source)
	assert.True(t, m.Stale())
	v, ok := m.Lookup("c")
	assert.False(t, ok)
	assert.Equal(t, etcdkit.LiveValue[flag]{Revision: v.Revision, Source: etcdkit.SourceSnapshot}, v,
		"a name the snapshot lacks: absent according to the snapshot")

	require.NoError(t, e.srv.Proxy().Start())
	waitLiveSynced(t, m.Synced())
	require.Eventually(t, func() bool { return m.Revision() >= last }, liveWait, 5*time.Millisecond)
	assert.Equal(t, map[string]flag{"a": {Percent: 1}, "c": {Percent: 3}}, m.All())
	v, _ = m.Lookup("a")
	assert.Equal(t, etcdkit.SourceCluster, v.Source, "confirmed by the cluster")
	v, ok = m.Lookup("b")
	assert.False(t, ok)
	assert.Equal(t, etcdkit.LiveValue[flag]{Revision: v.Revision, Source: etcdkit.SourceCluster}, v,
		"a deleted name: absent according to the cluster, as a synced Live reports an absent key")
	require.NoError(t, m.Close())

	again := etcdkit.NewLiveMap(ctx, p, etcdkit.WithSnapshot[flag](snap))
	t.Cleanup(func() { _ = again.Close() })
	assert.Equal(t, map[string]flag{"a": {Percent: 1}, "c": {Percent: 3}}, again.All(), "the snapshot followed")
	assert.Zero(t, e.m.get(etcdkit.MetricLiveSnapshotErrors))

	e.logs.TakeAll()
	single := etcdkit.NewLive(ctx, etcdkit.NewKey(e.c, "flags", etcdkit.JSON[flag]()), etcdkit.WithSnapshot[flag](snap))
	t.Cleanup(func() { _ = single.Close() })
	assert.Equal(t, etcdkit.SourceDefault, single.Current().Source)
	assert.Equal(t, 1.0, e.m.get(etcdkit.MetricLiveSnapshotErrors))
	warned := e.logs.FilterMessage("live snapshot ignored").All()
	require.Len(t, warned, 1)
	assert.Contains(t, warned[0].ContextMap()["error"], "written for prefix")
}

// Bad input ends a LiveMap at once with a clear error; its defaults are
// still served and nothing panics.
func TestLiveMapInvalidInput(t *testing.T) {
	e := startLiveEnv(t, "livemap-inv")
	ctx := testContext(t, time.Minute)
	p := etcdkit.NewPrefix(e.c, "f", etcdkit.JSON[flag]())
	for _, tc := range []struct {
		name string
		m    *etcdkit.LiveMap[flag]
		want string
	}{
		{"nil prefix", etcdkit.NewLiveMap[flag](ctx, nil), "nil prefix"},
		{"invalid prefix", etcdkit.NewLiveMap(ctx, etcdkit.NewPrefix(e.c, "a//b", etcdkit.JSON[flag]())), "invalid name"},
		{"invalid default name", etcdkit.NewLiveMap(ctx, p, etcdkit.WithDefault(flag{Percent: 7}),
			etcdkit.WithDefaults(map[string]flag{"../x": {}})), "invalid name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			<-tc.m.Done()
			require.ErrorContains(t, tc.m.Err(), tc.want)
			<-tc.m.Synced()
			assert.True(t, tc.m.Stale())
			assert.Empty(t, tc.m.All())
			assert.NoError(t, tc.m.Close())
		})
	}
	m := etcdkit.NewLiveMap(ctx, p, etcdkit.WithDefault(flag{Percent: 7}), etcdkit.WithDefaults(map[string]flag{"x": {On: true}}),
		etcdkit.MergeDefault[flag](), etcdkit.WithValidator[flag](nil))
	require.ErrorContains(t, m.Err(), "nil function")
	assert.Equal(t, flag{Percent: 7}, m.Get("any"), "the valid default is still served")
	assert.Equal(t, flag{On: true}, m.Get("x"))
}
