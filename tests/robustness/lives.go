package robustness

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/etcdkit/etcdkit"
)

// LiveDefault is the default value of the Lives workload's Live handles.
const LiveDefault = "-"

// LiveValid is the validator of the Lives workload's Live handles: it
// refuses the values that end in "3" (about one writer value in ten), so
// that refused values land among good ones under every fault.
func LiveValid(v string) error {
	if strings.HasSuffix(v, "3") {
		return errors.New("ends in 3")
	}
	return nil
}

// LiveRecord is what the readers of one Live saw.
type LiveRecord struct {
	Name string
	// Key is the key the Live follows, relative to the namespace.
	Key string
	// Readers holds, per reader goroutine, every state it read that
	// differed from its previous read, in order.
	Readers [][]LiveSeen
	// Final is the Live's state at the end; nil for a Live closed during
	// the schedule (a service restart), which has no final state to reach.
	Final *LiveSeen
	// Stuck is set when the Live did not reach its final state before the
	// settle deadline.
	Stuck string
}

// LiveSeen is one state read from a Live (Live.Current), or from one entry
// of a LiveMap (LiveMap.Lookup).
type LiveSeen struct {
	At       time.Duration
	Rev      int64
	Value    string
	Present  bool
	Snapshot bool // the state came from the snapshot file
	// MapRev is, for an entry of a LiveMap, the revision the map reflected
	// when the entry was read (LiveMap.Revision): the entry must be the
	// key's state there. 0 for a Live, and for a map not synced yet.
	MapRev int64
}

// String formats the state as "value"@rev, or absent("default")@rev, with
// " in map@rev" for an entry of a LiveMap.
func (s LiveSeen) String() string {
	out := fmt.Sprintf("%q@%d", s.Value, s.Rev)
	if !s.Present {
		out = fmt.Sprintf("absent(%q)@%d", s.Value, s.Rev)
	}
	if s.MapRev > 0 {
		out += fmt.Sprintf(" in map@%d", s.MapRev)
	}
	return out
}

// Live adds a Live record to the history.
func (r *Recorder) Live(l *LiveRecord) {
	r.update(func(h *History) { h.Lives = append(h.Lives, l) })
}

// Lives is the workload of runtime-configuration readers: one or two
// clients, each with a Live (String codec, LiveValid as validator,
// LiveDefault as default) on one of the writers' keys, read by a few
// goroutines that record every state they see. A Live with a snapshot
// file is closed once during the fault phase and made again from its
// snapshot, as a restarting service would, whatever the faults then.
type Lives struct {
	runs   []*liveRun
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

type liveRun struct {
	c        *etcdkit.Client
	key      *etcdkit.Key[string]
	snapshot string
	name     string

	mu  sync.Mutex
	cur *liveLife
}

// liveLife is one Live and its readers.
type liveLife struct {
	live *etcdkit.Live[string]
	rec  *LiveRecord
	stop chan struct{}
	wg   sync.WaitGroup
}

// Name returns "lives".
func (ls *Lives) Name() string { return "lives" }

// Start makes the Lives and their readers, and the restarts of those with
// a snapshot.
func (ls *Lives) Start(ctx context.Context, run *Run) error {
	rng := run.Rand("lives")
	tctx, cancel := context.WithCancel(ctx)
	ls.cancel = cancel
	for i := range 1 + rng.IntN(2) {
		c, err := run.Client(ctx, ClientOptions{Name: fmt.Sprintf("lv%d", i), Members: rotate(rng.IntN(3)),
			StallTimeout: rng.Duration(300*time.Millisecond, 2*time.Second)})
		if err != nil {
			return err
		}
		lr := &liveRun{c: c, key: etcdkit.NewKey(c, dataKey(rng.IntN(2)), etcdkit.String()), name: fmt.Sprintf("l%d", i)}
		if rng.Chance(0.5) {
			lr.snapshot = filepath.Join(run.t.TempDir(), "live.snapshot")
		}
		ls.runs = append(ls.runs, lr)
		lr.start(ctx, run, 0, 1+rng.IntN(2))
		if lr.snapshot != "" {
			after := rng.Duration(0, run.sched.Duration)
			readers := 1 + rng.IntN(2)
			ls.wg.Go(func() {
				t := time.NewTimer(after)
				defer t.Stop()
				select {
				case <-t.C:
					lr.restart(ctx, run, readers)
				case <-tctx.Done():
				}
			})
		}
	}
	return nil
}

// start makes generation gen of the run's Live with n readers.
func (lr *liveRun) start(ctx context.Context, run *Run, gen, n int) {
	var opts []etcdkit.LiveOption[string]
	opts = append(opts, etcdkit.WithDefault(LiveDefault), etcdkit.WithValidator(LiveValid))
	name := fmt.Sprintf("%s.%d live %s", lr.name, gen, lr.key.Name())
	if lr.snapshot != "" {
		opts = append(opts, etcdkit.WithSnapshot[string](lr.snapshot))
		name += " snapshot"
	}
	l := &liveLife{live: etcdkit.NewLive(ctx, lr.key, opts...), stop: make(chan struct{}),
		rec: &LiveRecord{Name: name, Key: lr.key.Name(), Readers: make([][]LiveSeen, n)}}
	run.Rec.Live(l.rec)
	for r := range n {
		l.wg.Go(func() { l.read(run.Rec, r) })
	}
	lr.mu.Lock()
	lr.cur = l
	lr.mu.Unlock()
}

// restart closes the run's Live and makes it again from its snapshot.
func (lr *liveRun) restart(ctx context.Context, run *Run, readers int) {
	lr.mu.Lock()
	old := lr.cur
	lr.mu.Unlock()
	old.end()
	run.Rec.Note("lives", "%s closed; a new Live starts from the snapshot", old.rec.Name)
	lr.start(ctx, run, 1, readers)
}

// read records every state the Live serves that differs from the
// previous one read, every 2ms, until the life ends.
func (l *liveLife) read(rec *Recorder, r int) {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	var prev LiveSeen
	first := true
	for {
		v := l.live.Current()
		s := LiveSeen{Rev: v.Revision, Value: v.Data, Present: v.Present, Snapshot: v.Source == etcdkit.SourceSnapshot}
		if first || s.Rev != prev.Rev || s.Value != prev.Value || s.Present != prev.Present {
			s.At = rec.Now()
			rec.update(func(*History) { l.rec.Readers[r] = append(l.rec.Readers[r], s) })
			prev, first = s, false
		}
		select {
		case <-t.C:
		case <-l.stop:
			return
		}
	}
}

// end stops the readers and closes the Live.
func (l *liveLife) end() {
	close(l.stop)
	l.wg.Wait()
	_ = l.live.Close()
}

// Quiesce stops the restarts.
func (ls *Lives) Quiesce(*Run) {
	if ls.cancel != nil {
		ls.cancel()
	}
	ls.wg.Wait()
}

// Settle does nothing: Lives only read.
func (ls *Lives) Settle(context.Context, *Run) error { return nil }

// Converge waits until every Live serves the state it must end at (see
// liveFinal), stops its readers and records its final state.
func (ls *Lives) Converge(ctx context.Context, run *Run) {
	for _, lr := range ls.runs {
		lr.mu.Lock()
		l := lr.cur
		lr.mu.Unlock()
		hs := scoped(run.Changes(), l.rec.Key, false)
		want, exact := liveFinal(hs, l.rec.Key, run.Rec.History().SettledRev)
		ok := waitFor(ctx, func() bool {
			if exact {
				v := l.live.Current()
				return v.Present == want.Present && v.Data == want.Value && (!want.Present || v.Revision == want.Rev)
			}
			r, _ := l.live.Rejected()
			return r.Revision == want.Rev && !l.live.Stale()
		}, l.live.Done())
		close(l.stop)
		l.wg.Wait()
		v := l.live.Current()
		run.Rec.update(func(*History) {
			l.rec.Final = &LiveSeen{At: run.Rec.Now(), Rev: v.Revision, Value: v.Data, Present: v.Present}
			if !ok {
				l.rec.Stuck = fmt.Sprintf("the Live serves %s, want %s (stale %v, err %v)", *l.rec.Final, want, l.live.Stale(), l.live.Err())
			}
		})
		_ = l.live.Close()
	}
}

// Close stops everything and closes the clients.
func (ls *Lives) Close() {
	ls.once.Do(func() {
		ls.Quiesce(nil)
		for _, lr := range ls.runs {
			lr.mu.Lock()
			l := lr.cur
			lr.mu.Unlock()
			select {
			case <-l.stop:
			default:
				close(l.stop)
			}
			l.wg.Wait()
			_ = l.live.Close()
			_ = lr.c.Close()
		}
	})
}

// liveFinal returns the state a Live on key must end at, given the key's
// changes hs: at revision rev the key is absent or holds a good value,
// and exact is true; or it holds a refused value, and the Live keeps the
// last good state it saw, which may be older than the last good value the
// cluster held (a compaction while its link was down hides those): then
// exact is false and the returned state is the refused value's.
func liveFinal(hs []Change, key string, rev int64) (LiveSeen, bool) {
	kv, ok := stateAt(hs, rev)[key]
	if !ok {
		return LiveSeen{Value: LiveDefault}, true
	}
	return LiveSeen{Rev: kv.Rev, Value: kv.Value, Present: true}, LiveValid(kv.Value) == nil
}
