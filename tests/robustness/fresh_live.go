package robustness

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/etcdkit/etcdkit"
)

// freshMap is the Fresh workload's LiveMap on FreshPrefix, made before the
// first key exists, and the goroutine that reads its entries: one
// LiveRecord per key the writer uses, checked by the Live rule (see
// checkLives).
type freshMap struct {
	lm    *etcdkit.LiveMap[string]
	names []string      // the entries read, relative to FreshPrefix
	recs  []*LiveRecord // one per name
	stop  chan struct{} // ends the reader
	done  chan struct{} // closed when the reader has returned
	once  sync.Once     // closes stop
}

// newMap makes a LiveMap of FreshPrefix on c, with LiveDefault as
// default, and starts recording its entries; names are the entries the
// writer uses. It returns at once, the LiveMap syncing on its own.
func newMap(ctx context.Context, run *Run, c *etcdkit.Client, name string, names []string) *freshMap {
	m := &freshMap{names: names, stop: make(chan struct{}), done: make(chan struct{})}
	m.lm = etcdkit.NewLiveMap(ctx, etcdkit.NewPrefix(c, FreshPrefix, etcdkit.String()), etcdkit.WithDefault(LiveDefault))
	for _, n := range names {
		rec := &LiveRecord{Name: fmt.Sprintf("%s livemap %s/ entry %s", name, FreshPrefix, n), Key: FreshPrefix + "/" + n,
			Readers: make([][]LiveSeen, 1)}
		m.recs = append(m.recs, rec)
		run.Rec.Live(rec)
	}
	go m.read(run.Rec)
	return m
}

// waitSynced waits until the LiveMap is synced, within the start budget.
func (m *freshMap) waitSynced(ctx context.Context, run *Run) error {
	sctx, cancel := run.startContext(ctx)
	defer cancel()
	select {
	case <-m.lm.Synced():
	case <-sctx.Done():
	}
	select {
	case <-m.lm.Done():
		return fmt.Errorf("%s: the LiveMap ended before it synced: %w", m.recs[0].Name, m.lm.Err())
	default:
	}
	if sctx.Err() != nil {
		return fmt.Errorf("%s: the LiveMap did not sync within the start budget", m.recs[0].Name)
	}
	return nil
}

// lookup reads entry name with the revision the map reflects. A change
// applied between the reads of the two moves the revision: it reports
// false then, and the caller reads again later.
func (m *freshMap) lookup(name string) (LiveSeen, bool) {
	before := m.lm.Revision()
	v, _ := m.lm.Lookup(name)
	if m.lm.Revision() != before {
		return LiveSeen{}, false
	}
	return LiveSeen{Rev: v.Revision, Value: v.Data, Present: v.Present, MapRev: before}, true
}

// read records, every 2ms until stop is closed, each entry's state when it
// differs from the one read before, or, for a present entry, when the
// map's revision has moved: a map that has passed the entry's deletion
// and still serves it is caught by the reads that follow.
func (m *freshMap) read(rec *Recorder) {
	defer close(m.done)
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	prev := make([]LiveSeen, len(m.names))
	first := make([]bool, len(m.names))
	for i := range first {
		first[i] = true
	}
	for {
		for i, n := range m.names {
			s, ok := m.lookup(n)
			if !ok {
				continue
			}
			p := prev[i]
			if first[i] || s.Rev != p.Rev || s.Value != p.Value || s.Present != p.Present || (s.Present && s.MapRev != p.MapRev) {
				s.At = rec.Now()
				rec.update(func(*History) { m.recs[i].Readers[0] = append(m.recs[i].Readers[0], s) })
				prev[i], first[i] = s, false
			}
		}
		select {
		case <-t.C:
		case <-m.stop:
			return
		}
	}
}

// converge waits until every entry is its key's state at the settled
// revision (liveFinal: the writer writes only good values), stops the
// reader and records each entry's final state.
func (m *freshMap) converge(ctx context.Context, run *Run) {
	changes, settled := run.Changes(), run.Rec.History().SettledRev
	want := make([]LiveSeen, len(m.recs))
	for i, rec := range m.recs {
		want[i], _ = liveFinal(scoped(changes, rec.Key, false), rec.Key, settled)
	}
	matches := func(i int, s LiveSeen) bool {
		return s.Present == want[i].Present && s.Value == want[i].Value && (!s.Present || s.Rev == want[i].Rev)
	}
	ok := waitFor(ctx, func() bool {
		for i, n := range m.names {
			if s, ok := m.lookup(n); !ok || !matches(i, s) {
				return false
			}
		}
		return true
	}, m.lm.Done())
	m.end()
	for i, n := range m.names {
		v, _ := m.lm.Lookup(n)
		f := LiveSeen{At: run.Rec.Now(), Rev: v.Revision, Value: v.Data, Present: v.Present}
		run.Rec.update(func(*History) {
			m.recs[i].Final = &f
			if !ok && !matches(i, f) {
				m.recs[i].Stuck = fmt.Sprintf("the LiveMap serves %s at revision %d, want %s (stale %v, err %v)",
					f, m.lm.Revision(), want[i], m.lm.Stale(), m.lm.Err())
			}
		})
	}
	if ok {
		run.Rec.Note("fresh", "the LiveMap holds the final state (revision %d, entries %v)", m.lm.Revision(), m.lm.Names())
	}
}

// end stops the reader and waits for it.
func (m *freshMap) end() {
	m.once.Do(func() { close(m.stop) })
	<-m.done
}

// close stops the reader and closes the LiveMap.
func (m *freshMap) close() {
	m.end()
	_ = m.lm.Close()
}
