package robustness

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/etcdkit/etcdkit"
)

// Tolerances of the ephemeral-key rules. A cut-off owner's key must be gone
// within its TTL plus ExpiryGrace (an election, which renews every lease,
// plus the scheduling noise of a loaded machine); an owner whose path came
// back gets its TTL plus RecoveryGrace to notice, re-grant and restore.
const (
	// ExpiryGrace is added to a cut-off owner's TTL before its key must be
	// gone.
	ExpiryGrace = 3 * time.Second
	// RecoveryGrace is added to an owner's TTL after its path came back,
	// before its key must be present again.
	RecoveryGrace = 3 * time.Second
)

// expiryDeadline is when the key of an owner cut off at from must be gone:
// its TTL plus ExpiryGrace after the cut, or after the last fault step on a
// member that can change the leader (stop, kill, restart, partition, heal,
// move-leader) made before that deadline: a new leader renews every lease
// for a full TTL, so each election in the outage starts the count again.
func expiryDeadline(h *History, from, ttl time.Duration) time.Duration {
	deadline := from + ttl + ExpiryGrace
	for moved := true; moved; {
		moved = false
		for _, f := range h.Faults {
			if f.At < from || f.At >= deadline || !changesLeader(f.Desc) {
				continue
			}
			if d := f.At + f.Took + ttl + ExpiryGrace; d > deadline {
				deadline, moved = d, true
			}
		}
	}
	return deadline
}

// changesLeader reports whether a fault step, by its description, acts on
// a member in a way that can elect a new leader. Skipped steps do not.
func changesLeader(desc string) bool {
	if strings.Contains(desc, "skipped") || strings.Contains(desc, "already leads") {
		return false
	}
	for _, verb := range []string{"stop m", "kill m", "restart m", "partition m", "heal m", "move-leader "} {
		if strings.HasPrefix(desc, verb) {
			return true
		}
	}
	return false
}

// revClock bounds when a revision was committed, from the writes whose
// revision and call times are known: a revision is committed after the
// invoke of every write at or below it, and before the return of every
// write at or above it.
type revClock struct {
	revs []int64
	lo   []time.Duration // max invoke of writes with revision <= revs[i]
	hi   []time.Duration // min return of writes with revision >= revs[i]
}

func newRevClock(h *History) *revClock {
	type w struct {
		rev             int64
		invoke, return_ time.Duration
	}
	var ws []w
	for _, op := range h.Ops {
		if op.Outcome == OK && op.Kind != OpGet && op.Kind != OpDelete {
			ws = append(ws, w{op.Rev, op.Invoke, op.Return})
		}
	}
	for _, g := range h.Guarded {
		ws = append(ws, w{g.Rev, g.Invoke, g.Return})
	}
	slices.SortFunc(ws, func(a, b w) int { return cmp.Compare(a.rev, b.rev) })
	rc := &revClock{}
	for _, x := range ws {
		rc.revs = append(rc.revs, x.rev)
		rc.lo = append(rc.lo, x.invoke)
		rc.hi = append(rc.hi, x.return_)
	}
	for i := 1; i < len(rc.lo); i++ {
		rc.lo[i] = max(rc.lo[i], rc.lo[i-1])
	}
	for i := len(rc.hi) - 2; i >= 0; i-- {
		rc.hi[i] = min(rc.hi[i], rc.hi[i+1])
	}
	return rc
}

// bounds returns the interval within which rev was committed.
func (rc *revClock) bounds(rev int64) (lo, hi time.Duration) {
	i, _ := slices.BinarySearch(rc.revs, rev+1) // first write above rev
	if i > 0 {
		lo = rc.lo[i-1]
	}
	hi = math.MaxInt64
	if j, _ := slices.BinarySearch(rc.revs, rev); j < len(rc.revs) {
		hi = rc.hi[j]
	}
	return lo, hi
}

// checkEphemerals checks that each ephemeral key existed while its owner
// was connected and disappeared once the owner had been cut off for longer
// than its TTL. Only what the revision clock proves is reported: a change
// whose commit time is uncertain never makes a violation.
func checkEphemerals(h *History) []Violation {
	if len(h.Ephemerals) == 0 {
		return nil
	}
	rc := newRevClock(h)
	var vs []Violation
	for _, e := range h.Ephemerals {
		if v, bad := checkEphemeral(h, rc, e); bad {
			vs = append(vs, v)
		}
	}
	return vs
}

func checkEphemeral(h *History, rc *revClock, e *EphemeralRecord) (Violation, bool) {
	fail := func(format string, args ...any) (Violation, bool) {
		return Violation{Rule: "ephemeral", Who: e.Owner, Msg: fmt.Sprintf(format, args...)}, true
	}
	if e.Lost != "" {
		return fail("%s", e.Lost)
	}
	hs := scoped(h.Changes, e.Key, false)
	// Gone in time: a certain outage longer than TTL + grace must see the
	// key deleted. The key certainly existed all through [deadline, To] if
	// a put committed before To is followed by no change until after To.
	for _, o := range e.Outages {
		deadline := expiryDeadline(h, o.From, e.TTL)
		if o.Doubtful || o.To <= deadline {
			continue
		}
		for i, c := range hs {
			if c.Type != etcdkit.Put {
				continue
			}
			if _, hi := rc.bounds(c.Rev); hi > o.From {
				continue
			}
			nextLo := time.Duration(math.MaxInt64)
			if i+1 < len(hs) {
				nextLo, _ = rc.bounds(hs[i+1].Rev)
			}
			if nextLo > o.To {
				v, bad := fail("the owner was cut off from %s to %s (%s), longer than its TTL %v + %v (past %s, after the elections in it), but its key %s "+
					"written at revision %d was not deleted until after %s", fmtTime(o.From), fmtTime(o.To), o.Why,
					e.TTL, ExpiryGrace, fmtTime(deadline), e.Key, c.Rev, fmtTime(o.To))
				// The members' lessors run in this process: while it is
				// frozen, no lease expires. The key was late by o.To -
				// deadline at most.
				if ss, total := stalled(h, o.From, o.To); total >= o.To-deadline {
					v.Starved = fmt.Sprintf("the process stalled %.3fs in all within the outage, more than the %.3fs by which the expiry was late: %s",
						total.Seconds(), (o.To - deadline).Seconds(), fmtStalls(ss))
				}
				return v, bad
			}
		}
	}
	// Present while connected: no delete may fall for sure inside a window
	// where the owner's path was up, from Created (or an outage's end plus
	// the recovery allowance) to the next outage or Closed.
	type window struct{ from, to time.Duration }
	var ws []window
	from := e.Created
	for _, o := range e.Outages {
		if o.From > from {
			ws = append(ws, window{from, o.From})
		}
		from = max(from, o.To+e.TTL+RecoveryGrace)
	}
	if e.Closed > from {
		ws = append(ws, window{from, e.Closed})
	}
	for _, c := range hs {
		if c.Type != etcdkit.Delete {
			continue
		}
		lo, hi := rc.bounds(c.Rev)
		for _, w := range ws {
			if lo >= w.from && hi <= w.to {
				v, bad := fail("its key %s was deleted at revision %d (between %s and %s) while the owner was connected (%s to %s)",
					e.Key, c.Rev, fmtTime(lo), fmtTime(hi), fmtTime(w.from), fmtTime(w.to))
				v.Starved = starvedLease(h, e, lo, hi)
				return v, bad
			}
		}
	}
	return Violation{}, false
}

// starvedLease returns the evidence that starvation explains the expiry
// of a connected owner's lease, committed between lo and hi, or "" if
// nothing does. The owner sends a keepalive every third of the TTL (the
// library's default), so its lease lives a TTL minus that interval, its
// margin, past the last keepalive before trouble. Two kinds of starvation
// can eat that margin however well the library behaves, within the TTL
// before the delete:
//
//   - the process stalled (no goroutine that was due ran) for at least the
//     margin: no keepalive could be sent;
//   - for at least the margin, every latency probe of the owner's member,
//     or of a member that led the cluster meanwhile, took longer than the
//     owner's keepalive attempts may (its StallTimeout, at most the
//     interval: the library's documented bound on one attempt), while the
//     process stalled: the in-process cluster, starved of CPU with the rest
//     of the process, answered too late for any keepalive to count. The
//     leader counts because the lease lives there: it renews a lease only
//     once its apply loop has caught up, which a linearizable read on it
//     waits for too, so a leader too slow for a read is too slow for a
//     renewal whichever member forwarded it. Without a stall of the process beside it,
//     a slow cluster proves nothing, nor does it when the owner was not
//     told Lost before the delete (the library promises Lost first).
//
// Anything shorter is the library's to survive.
func starvedLease(h *History, e *EphemeralRecord, lo, hi time.Duration) string {
	ttl := e.TTL
	interval := ttl / 3
	margin := ttl - interval
	ss, total := stalled(h, lo-ttl, hi)
	for _, s := range ss {
		if s.Len() >= margin {
			return fmt.Sprintf("the process stalled for %v (until %s), at least the lease's margin of %.3fs (TTL %v minus the keepalive interval), "+
				"within the TTL before the delete; stalls then: %s", s, fmtTime(s.To), margin.Seconds(), ttl, fmtStalls(ss))
		}
	}
	if e.StallTimeout == 0 || len(ss) == 0 {
		return ""
	}
	// The library promises Lost before the earliest expiry: a Lost that
	// came after the delete is the library's failure, however slow the
	// cluster.
	told := slices.IndexFunc(e.LostAt, func(at time.Duration) bool { return at >= lo-ttl && at <= hi })
	if told < 0 {
		return ""
	}
	attempt := min(e.StallTimeout, interval)
	slow, ps := slowCluster(h, e.Member, attempt, lo-ttl, hi)
	who := fmt.Sprintf("m%d", e.Member)
	for _, m := range leadersIn(h, lo-ttl, hi) {
		if m == e.Member {
			continue
		}
		if s, p := slowCluster(h, m, attempt, lo-ttl, hi); s.Len() > slow.Len() {
			slow, ps, who = s, p, fmt.Sprintf("m%d (the leader)", m)
		}
	}
	if slow.Len() < margin {
		return ""
	}
	var took []string
	for _, p := range ps {
		took = append(took, fmt.Sprintf("%.3fs", p.Took.Seconds()))
	}
	return fmt.Sprintf("from %s to %s (%.3fs, at least the lease's margin of %.3fs) every probe of %s took at least the owner's %v keepalive attempt "+
		"(StallTimeout %v) to answer (%s), while the process stalled %.3fs in all within the TTL before the delete (%s); the owner was told Lost at %s",
		fmtTime(slow.From), fmtTime(slow.To), slow.Len().Seconds(), margin.Seconds(), who, attempt, e.StallTimeout,
		strings.Join(took, " "), total.Seconds(), fmtStalls(ss), fmtTime(e.LostAt[told]))
}

// leadersIn returns the members that some member followed as its leader at
// some time between from and to, as the raft log saw them.
func leadersIn(h *History, from, to time.Duration) []int {
	var out []int
	add := func(m int) {
		if m >= 0 && !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	before := map[int]int{} // member -> leader it followed at from
	for _, c := range h.Raft {
		switch {
		case c.At <= from:
			before[c.Member] = c.Leader
		case c.At <= to:
			add(c.Leader)
		}
	}
	for _, l := range before {
		add(l)
	}
	slices.Sort(out)
	return out
}

// fmtStalls lists stalls, the longest first, at most five.
func fmtStalls(ss []Stall) string {
	ss = slices.Clone(ss)
	slices.SortStableFunc(ss, func(a, b Stall) int { return cmp.Compare(b.Len(), a.Len()) })
	var parts []string
	for i, s := range ss {
		if i == 5 {
			parts = append(parts, fmt.Sprintf("and %d more", len(ss)-i))
			break
		}
		parts = append(parts, s.String())
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
