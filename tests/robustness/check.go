package robustness

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/etcdkit/etcdkit"
)

// Violation is one broken guarantee found in a History.
type Violation struct {
	// Rule names the guarantee: "watch", "cache", "linearizability",
	// "durability", "fencing", "ephemeral", "tracker" or "live".
	Rule string
	// Who names the subscriber, key, owner or leader concerned.
	Who string
	// Msg says what was seen and what was expected.
	Msg string
	// Starved is set when the process's own scheduling stalls explain the
	// violation: a stall that overlaps its window and exceeds the margin
	// the rule relies on (no timer of the library, nor of the in-process
	// etcd members, fires in a frozen process). It gives that evidence.
	// Such a violation is reported as starvation, not as a failure.
	Starved string
}

// String formats the violation on one line, with the starvation evidence
// if there is any.
func (v Violation) String() string {
	if v.Starved != "" {
		return fmt.Sprintf("[%s] %s: %s [starvation: %s]", v.Rule, v.Who, v.Msg, v.Starved)
	}
	return fmt.Sprintf("[%s] %s: %s", v.Rule, v.Who, v.Msg)
}

// Failures returns the violations that starvation does not explain.
func Failures(vs []Violation) []Violation {
	var out []Violation
	for _, v := range vs {
		if v.Starved == "" {
			out = append(out, v)
		}
	}
	return out
}

// Check validates h against the guarantees and returns every violation it
// finds, at most one per subscriber, cache, key or owner. The namespace is
// assumed empty at h.StartRev, and h.Changes must hold every change in
// (StartRev, FinalRev] in revision order.
func Check(h *History) []Violation {
	var vs []Violation
	for _, s := range h.Subscribers {
		if v, bad := checkSubscriber(h, s); bad {
			vs = append(vs, v)
		}
	}
	for _, c := range h.Caches {
		if v, bad := checkCache(h, c); bad {
			vs = append(vs, v)
		}
	}
	vs = append(vs, checkDurability(h)...)
	vs = append(vs, CheckLinearizable(h)...)
	vs = append(vs, checkGuarded(h)...)
	vs = append(vs, checkElections(h)...)
	vs = append(vs, checkHoldings(h)...)
	vs = append(vs, checkTrackers(h)...)
	vs = append(vs, checkEphemerals(h)...)
	vs = append(vs, checkLives(h)...)
	return vs
}

// settled returns the revision every subscriber must reach.
func (h *History) settled() int64 {
	if h.SettledRev == 0 {
		return h.FinalRev
	}
	return h.SettledRev
}

// inScope reports whether key is the subscriber's key or under its prefix.
func inScope(key, scope string, prefix bool) bool {
	if prefix {
		return strings.HasPrefix(key, scope)
	}
	return key == scope
}

// scoped returns the changes within scope, in revision order.
func scoped(changes []Change, scope string, prefix bool) []Change {
	var out []Change
	for _, c := range changes {
		if inScope(c.Key, scope, prefix) {
			out = append(out, c)
		}
	}
	return out
}

// state is a name -> value state of some keys.
type state map[string]KV

func (st state) apply(typ etcdkit.EventType, key, value string, rev int64) {
	if typ == etcdkit.Delete {
		delete(st, key)
	} else {
		st[key] = KV{Value: value, Rev: rev}
	}
}

// String lists the state's keys in order, "{key=value@rev ...}".
func (st state) String() string {
	keys := slices.Sorted(maps.Keys(st))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + st[k].String()
	}
	return "{" + strings.Join(parts, " ") + "}"
}

// stateAt returns the state of the changes hs (in revision order) at rev.
func stateAt(hs []Change, rev int64) state {
	st := state{}
	for _, c := range hs {
		if c.Rev > rev {
			break
		}
		st.apply(c.Type, c.Key, c.Value, c.Rev)
	}
	return st
}

// nextIndex returns the index of the first change above rev.
func nextIndex(hs []Change, rev int64) int {
	return sort.Search(len(hs), func(i int) bool { return hs[i].Rev > rev })
}

// findState returns the largest revision R in [lo, hi] at which the state of
// hs equals want, trying only R == exact when exact > 0.
func findState(hs []Change, want state, lo, hi, exact int64) (int64, bool) {
	if exact > 0 {
		if exact < lo || exact > hi {
			return 0, false
		}
		return exact, maps.Equal(stateAt(hs, exact), want)
	}
	if lo > hi {
		return 0, false
	}
	st := stateAt(hs, lo)
	found, best := maps.Equal(st, want), lo
	for i := nextIndex(hs, lo); i < len(hs) && hs[i].Rev <= hi; i++ {
		st.apply(hs[i].Type, hs[i].Key, hs[i].Value, hs[i].Rev)
		if i+1 < len(hs) && hs[i+1].Rev == hs[i].Rev {
			continue
		}
		if maps.Equal(st, want) {
			found, best = true, hs[i].Rev
		}
	}
	return best, found
}

// String formats the event, e.g. `Put data/k0="w0.1" @12 resync`.
func (d Delivery) String() string {
	flags := ""
	if d.Initial {
		flags += " initial"
	}
	if d.Resync {
		flags += " resync"
	}
	if d.Type == etcdkit.Delete {
		return fmt.Sprintf("Delete %s @%d%s", d.Key, d.Rev, flags)
	}
	return fmt.Sprintf("Put %s=%q @%d%s", d.Key, d.Value, d.Rev, flags)
}

// String formats the change, e.g. `Delete data/k0 @13`.
func (c Change) String() string {
	if c.Type == etcdkit.Delete {
		return fmt.Sprintf("Delete %s @%d", c.Key, c.Rev)
	}
	return fmt.Sprintf("Put %s=%q @%d", c.Key, c.Value, c.Rev)
}

func (d Delivery) matches(c Change) bool {
	return d.Type == c.Type && d.Key == c.Key && d.Rev == c.Rev && (d.Type == etcdkit.Delete || d.Value == c.Value)
}

// checkSubscriber replays a subscriber's events against the cluster's
// history and reports the first way they depart from it.
func checkSubscriber(h *History, s *Subscriber) (Violation, bool) {
	fail := func(format string, args ...any) (Violation, bool) {
		return Violation{Rule: "watch", Who: s.Name, Msg: fmt.Sprintf(format, args...)}, true
	}
	if s.Ended != "" {
		return fail("%s", s.Ended)
	}
	evs := s.Events
	// Order and uniqueness, independently of the history.
	type revKey struct {
		rev int64
		key string
	}
	seen := map[revKey]int{}
	for i, e := range evs {
		if !inScope(e.Key, s.Scope, s.Prefix) {
			return fail("event #%d %v is outside the watched %s", i, e, s.Scope)
		}
		// Initial events come sorted by name, not revision.
		if i > 0 && e.Rev < evs[i-1].Rev && !(e.Initial && evs[i-1].Initial) {
			return fail("reordered events: #%d %v came after #%d %v, revisions must not decrease", i, e, i-1, evs[i-1])
		}
		if e.Initial && (s.Start != StartInitial || i > 0 && !evs[i-1].Initial) {
			return fail("event #%d %v is flagged Initial but does not belong to the initial state", i, e)
		}
		if e.Resync || e.Initial {
			continue
		}
		k := revKey{e.Rev, e.Key}
		if j, dup := seen[k]; dup {
			return fail("duplicate event: #%d %v delivers the change of #%d again", i, e, j)
		}
		seen[k] = i
	}

	hs := scoped(h.Changes, s.Scope, s.Prefix)
	i := 0
	var pos int64
	switch s.Start {
	case StartAfter:
		pos = s.After
	case StartNow:
		pos = s.After
		if len(evs) > 0 && !evs[0].Resync && evs[0].Rev <= s.After {
			// Changes between Watch and Synced may or may not be delivered,
			// but once one is, every later one must be. A change the caller
			// could have read before calling Watch must not be.
			if evs[0].Rev <= s.Before {
				return fail("a watch from now delivered #0 %v, a change at or below revision %d, which a read returned before Watch was called",
					evs[0], s.Before)
			}
			pos = evs[0].Rev - 1
		}
	case StartInitial:
		n := 0
		for n < len(evs) && evs[n].Initial {
			n++
		}
		lo, hi := h.StartRev, h.FinalRev
		if s.After > lo {
			lo = s.After
		}
		got := state{}
		for _, e := range evs[:n] {
			lo = max(lo, e.Rev)
			got.apply(e.Type, e.Key, e.Value, e.Rev)
		}
		if n < len(evs) {
			hi = evs[n].Rev
			if !evs[n].Resync {
				hi--
			}
		}
		r, ok := findState(hs, got, lo, hi, 0)
		if !ok {
			return fail("the initial events %v are not the state of %s at any revision in [%d, %d] (at %d it was %v)",
				got, s.Scope, lo, hi, hi, stateAt(hs, hi))
		}
		pos, i = r, n
	default:
		return fail("unknown start mode %v", s.Start)
	}
	view := stateAt(hs, pos)
	idx := nextIndex(hs, pos)
	// synced records when the subscriber reached each position, so that a
	// resync can be matched with a compaction that removed history it still
	// needed at the time.
	type mark struct {
		at  time.Duration
		pos int64
	}
	synced := []mark{{0, pos}}
	posAt := func(t time.Duration) int64 {
		k := sort.Search(len(synced), func(k int) bool { return synced[k].at > t })
		return synced[max(k-1, 0)].pos
	}

	for i < len(evs) {
		e := evs[i]
		if e.Resync {
			j, earliest := resyncBatchEnd(evs, i)
			batch := evs[i:j]
			// The compaction must have removed revisions the subscriber had
			// not received when it happened. Its watch may resync later than
			// that, and more than once, e.g. when its shared stream, cut off
			// at the time, comes back.
			var just *Compaction
			for k := range h.Compactions {
				c := &h.Compactions[k]
				if c.At <= batch[0].At && c.Rev > posAt(c.At) && (just == nil || c.Rev < just.Rev) {
					just = c
				}
			}
			if just == nil {
				return fail("Resync events #%d..#%d (%v ...) without a compaction of revisions the subscriber had not yet "+
					"received (it was at revision %d): its history was never gone", i, j-1, batch[0], pos)
			}
			// Where the batch ends is known only up to earliest when a key
			// comes again (see resyncBatchEnd): the first end that leaves
			// a state the cluster had is taken.
			var after state
			var r int64
			ok := false
			for end := j; end >= earliest && !ok; end-- {
				after, r, ok = resyncState(hs, h, evs, view, i, end, just.Rev)
				if ok {
					j = end
				}
			}
			if !ok {
				after, _, _ = resyncState(hs, h, evs, view, i, j, just.Rev)
				hi := h.FinalRev
				if j < len(evs) {
					hi = evs[j].Rev
				}
				return fail("Resync events #%d..#%d leave the subscriber with %v, which is not the state of %s at any revision in [%d, %d] "+
					"(at %d it was %v)", i, j-1, after, s.Scope, max(just.Rev, evs[j-1].Rev), hi, hi, stateAt(hs, hi))
			}
			batch = evs[i:j]
			for _, b := range batch {
				if b.Type == etcdkit.Put {
					if want, ok := after[b.Key]; !ok || want.Value != b.Value || want.Rev != b.Rev {
						return fail("Resync event %v is overwritten within its own resync", b)
					}
				}
			}
			view, pos, idx, i = after, r, nextIndex(hs, r), j
			synced = append(synced, mark{batch[len(batch)-1].At, pos})
			continue
		}
		if idx >= len(hs) {
			return fail("event #%d %v is not in the cluster's history after revision %d (history ends at %d)", i, e, pos, h.FinalRev)
		}
		want := hs[idx]
		switch {
		case e.Rev < want.Rev:
			return fail("event #%d %v is not in the cluster's history: after revision %d the next change was %v", i, e, pos, want)
		case e.Rev > want.Rev:
			if r, ok := quietResync(hs, h.Compactions, view, posAt, e); ok {
				pos, idx = r, nextIndex(hs, r)
				synced = append(synced, mark{e.At, pos})
				continue
			}
			return fail("lost event: the cluster made %v, but the subscriber's next event after revision %d was #%d %v",
				want, pos, i, e)
		case !e.matches(want):
			return fail("event #%d %v does not match the cluster's change %v", i, e, want)
		}
		view.apply(e.Type, e.Key, e.Value, e.Rev)
		pos, idx, i = e.Rev, idx+1, i+1
		synced = append(synced, mark{e.At, pos})
	}
	if s.Compacted != "" {
		// Only a Prefix watch that had to resync from a state it never
		// held may end so: one not started WithInitial, whose position
		// some compaction before the end had passed.
		if !s.Prefix || s.Start == StartInitial {
			return fail("a %s watch ended with %q; only a Prefix watch without WithInitial may", s.Scope, s.Compacted)
		}
		for _, c := range h.Compactions {
			if c.At <= s.CompactedAt && c.Rev > posAt(c.At) {
				return Violation{}, false
			}
		}
		return fail("ended with %q at +%v, but no compaction had passed its position (revision %d)",
			s.Compacted, s.CompactedAt.Round(time.Millisecond), pos)
	}
	if s.Stuck != "" {
		return fail("did not catch up: %s", s.Stuck)
	}
	if idx < len(hs) && hs[idx].Rev <= h.settled() {
		return fail("lost event: the cluster made %v, but the subscriber's events end at revision %d (%d changes missing)",
			hs[idx], pos, len(hs)-idx)
	}
	return Violation{}, false
}

// resyncBatchEnd returns the end of the resync batch starting at i, and
// the earliest end it may have. A batch is its puts, sorted by revision and
// name, then its deletes, sorted by name, which all carry the revision the
// state was read at; it names a key at most once. An event that breaks this
// order starts the next batch: the end is known. A key named again also
// starts a later batch, but that batch may have begun anywhere after the
// key's first mention, when the two resyncs came back to back (two
// compactions close together): the end is then known only to lie between
// that mention and the repeat. Batches that cannot be told apart are
// checked as one, against the state after the last.
func resyncBatchEnd(evs []Delivery, i int) (end, earliest int) {
	keys := map[string]int{}
	j := i
	for ; j < len(evs) && evs[j].Resync; j++ {
		e := evs[j]
		if first, ok := keys[e.Key]; ok {
			return j, first + 1
		}
		if j > i {
			p := evs[j-1]
			switch {
			case e.Type == etcdkit.Put && p.Type == etcdkit.Delete,
				e.Type == p.Type && e.Rev == p.Rev && e.Key < p.Key,
				e.Type == etcdkit.Delete && p.Type == etcdkit.Delete && e.Rev != p.Rev:
				return j, j
			}
		}
		keys[e.Key] = j
	}
	return j, j
}

// quietResync explains a gap before event e by a resync that had nothing
// to deliver: a compaction, before e, removed revisions the subscriber had
// not received (posAt says where it was when), and at some revision at or
// above the compaction, after which e is the next change, the cluster held
// the subscriber's view. It returns that revision.
func quietResync(hs []Change, compactions []Compaction, view state, posAt func(time.Duration) int64, e Delivery) (int64, bool) {
	var just *Compaction
	for k := range compactions {
		c := &compactions[k]
		if c.At <= e.At && c.Rev > posAt(c.At) && (just == nil || c.Rev < just.Rev) {
			just = c
		}
	}
	if just == nil {
		return 0, false
	}
	r, ok := findState(hs, view, just.Rev, e.Rev-1, 0)
	if !ok {
		return 0, false
	}
	if k := nextIndex(hs, r); k >= len(hs) || hs[k].Rev != e.Rev {
		return 0, false
	}
	return r, true
}

// resyncState applies the resync events evs[i:end] to view and looks for
// the revision, at or after the compaction at compacted, where the cluster
// held the state they leave, before the next event's.
func resyncState(hs []Change, h *History, evs []Delivery, view state, i, end int, compacted int64) (state, int64, bool) {
	lo, hi := compacted, h.FinalRev
	var exact int64
	after := maps.Clone(view)
	for _, b := range evs[i:end] {
		lo = max(lo, b.Rev)
		if b.Type == etcdkit.Delete {
			exact = b.Rev
		}
		after.apply(b.Type, b.Key, b.Value, b.Rev)
	}
	if end < len(evs) {
		hi = evs[end].Rev
		if !evs[end].Resync {
			hi--
		}
	}
	r, ok := findState(hs, after, lo, hi, exact)
	return after, r, ok
}

// checkCache compares a cache's final contents with the cluster's final
// state.
func checkCache(h *History, c *CacheRecord) (Violation, bool) {
	fail := func(format string, args ...any) (Violation, bool) {
		return Violation{Rule: "cache", Who: c.Name, Msg: fmt.Sprintf(format, args...)}, true
	}
	hs := scoped(h.Changes, c.Prefix, true)
	got := state(c.Final)
	if got == nil {
		got = state{}
	}
	// A write whose outcome was unknown may land after the cache was
	// compared, and the cache may or may not have applied it.
	if _, ok := findState(hs, got, h.settled(), h.FinalRev, 0); !ok {
		want := stateAt(hs, h.settled())
		msg := fmt.Sprintf("ends with %v, the cluster's final state (revision %d) is %v", got, h.settled(), want)
		if c.Stuck != "" {
			msg += " (" + c.Stuck + ")"
		}
		return fail("%s", msg)
	}
	return Violation{}, false
}

// checkDurability reports acknowledged writes missing from the cluster's
// history: a write that returned a revision must be the change at that
// revision.
func checkDurability(h *History) []Violation {
	byRev := map[int64][]Change{}
	for _, c := range h.Changes {
		byRev[c.Rev] = append(byRev[c.Rev], c)
	}
	var vs []Violation
	for _, op := range h.Ops {
		if op.Outcome != OK || op.Kind == OpGet || op.Kind == OpDelete {
			continue
		}
		value := op.Value
		if op.Kind == OpUpdate {
			value = op.Result
		}
		found := false
		for _, c := range byRev[op.Rev] {
			if c.Key == op.Key && c.Type == etcdkit.Put && c.Value == value {
				found = true
			}
		}
		if !found {
			vs = append(vs, Violation{Rule: "durability", Who: op.Key, Msg: fmt.Sprintf(
				"w%d's %s of %q was acknowledged at revision %d, but the cluster's history has %v there",
				op.Client, op.Kind, value, op.Rev, byRev[op.Rev])})
		}
	}
	for _, g := range h.Guarded {
		if g.Key == "" {
			continue
		}
		if !slices.ContainsFunc(byRev[g.Rev], func(c Change) bool { return c.Key == g.Key && c.Type == etcdkit.Put && c.Value == g.Value }) {
			vs = append(vs, Violation{Rule: "durability", Who: g.Leader, Msg: fmt.Sprintf(
				"guarded put of %q was acknowledged at revision %d, but the cluster's history has %v there",
				g.Value, g.Rev, byRev[g.Rev])})
		}
	}
	return vs
}

// checkGuarded reports guarded writes whose tokens go backwards in commit
// order: an older leader wrote after a newer one had.
func checkGuarded(h *History) []Violation {
	gs := slices.Clone(h.Guarded)
	slices.SortStableFunc(gs, func(a, b GuardedWrite) int { return cmp.Compare(a.Rev, b.Rev) })
	for i := 1; i < len(gs); i++ {
		if gs[i].Token < gs[i-1].Token {
			return []Violation{{Rule: "fencing", Who: gs[i].Leader, Msg: fmt.Sprintf(
				"two leaders' guarded writes interleave: %s (token %d) wrote at revision %d after %s (token %d) wrote at revision %d",
				gs[i].Leader, gs[i].Token, gs[i].Rev, gs[i-1].Leader, gs[i-1].Token, gs[i-1].Rev)}}
		}
	}
	return nil
}
