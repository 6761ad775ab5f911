package robustness

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/etcdkit/etcdkit/proxy"
)

// FaultKind is a kind of fault a schedule injects.
type FaultKind int

// The faults. Proxy faults act on member i's client proxy, so they cut or
// slow the clients using that endpoint; member faults act on member i
// itself. Kinds with a duration are healed when it ends.
const (
	// ProxyStop stops the proxy (FIN, dials refused), then starts it again.
	ProxyStop FaultKind = iota + 1
	// ProxyCloseConns closes every connection with FIN (instant).
	ProxyCloseConns
	// ProxyResetConns aborts every connection with RST (instant).
	ProxyResetConns
	// ProxyBlackhole drops every byte in Dir silently, then heals.
	ProxyBlackhole
	// ProxyPause stops forwarding in Dir without loss, then resumes.
	ProxyPause
	// ProxyPauseAccept holds new connections, then forwards them.
	ProxyPauseAccept
	// ProxyLatency delays every chunk in Dir by Delay (+ Jitter).
	ProxyLatency
	// MemberStop stops the member gracefully (a leader hands over), then
	// restarts it.
	MemberStop
	// MemberKill stops the member abruptly, then restarts it.
	MemberKill
	// MemberPartition cuts the member off from its peers, then heals.
	MemberPartition
	// MoveLeader transfers leadership to the member (instant).
	MoveLeader
	// Compact compacts the cluster at its current revision (instant).
	Compact
)

var faultNames = map[FaultKind]string{
	ProxyStop: "proxy-stop", ProxyCloseConns: "close-conns", ProxyResetConns: "reset-conns",
	ProxyBlackhole: "blackhole", ProxyPause: "pause", ProxyPauseAccept: "pause-accept",
	ProxyLatency: "latency", MemberStop: "member-stop", MemberKill: "member-kill",
	MemberPartition: "partition", MoveLeader: "move-leader", Compact: "compact",
}

// String returns the fault's short name.
func (k FaultKind) String() string {
	if n, ok := faultNames[k]; ok {
		return n
	}
	return fmt.Sprintf("FaultKind(%d)", int(k))
}

// isMember reports whether the fault takes a member out of the quorum.
func (k FaultKind) isMember() bool {
	return k == MemberStop || k == MemberKill || k == MemberPartition
}

// silencesUpstream reports whether the fault leaves connections through the
// proxy open while dropping or holding what clients send.
func (f Fault) silencesUpstream() bool {
	return (f.Kind == ProxyBlackhole || f.Kind == ProxyPause) && f.Dir != proxy.Downstream
}

// lasting reports whether the fault has a duration and a heal.
func (k FaultKind) lasting() bool {
	switch k {
	case ProxyCloseConns, ProxyResetConns, MoveLeader, Compact:
		return false
	}
	return true
}

// Leader, as a Fault's Member, means the member that leads when the fault
// is injected (or, if that one is already faulted, another running one).
const Leader = -1

// Fault is one fault of a schedule.
type Fault struct {
	Kind FaultKind
	// Member is the member (or the member's proxy) the fault acts on,
	// 0-based, or Leader.
	Member int
	// Dir is the direction of blackholes, pauses and latency.
	Dir proxy.Direction
	// Delay and Jitter are a latency fault's.
	Delay, Jitter time.Duration
	// At is when the fault starts, relative to the start of the schedule;
	// For is how long it lasts (0 for an instant fault).
	At, For time.Duration
}

// String describes the fault, e.g. "blackhole p1 upstream +0.120s for 0.300s".
func (f Fault) String() string {
	var b strings.Builder
	b.WriteString(f.Kind.String())
	b.WriteByte(' ')
	b.WriteString(f.target())
	switch f.Kind {
	case ProxyBlackhole, ProxyPause:
		fmt.Fprintf(&b, " %v", f.Dir)
	case ProxyLatency:
		fmt.Fprintf(&b, " %v %v±%v", f.Dir, f.Delay, f.Jitter)
	}
	fmt.Fprintf(&b, " %s", fmtTime(f.At))
	if f.For > 0 {
		fmt.Fprintf(&b, " for %.3fs", f.For.Seconds())
	}
	return b.String()
}

func (f Fault) target() string {
	if f.Kind == Compact {
		return "cluster"
	}
	p := "m"
	if !f.Kind.isMember() && f.Kind != MoveLeader {
		p = "p"
	}
	if f.Member == Leader {
		return p + "(leader)"
	}
	return fmt.Sprintf("%s%d", p, f.Member)
}

// Schedule is a reproducible fault schedule: everything about it follows
// from its seed.
type Schedule struct {
	Seed int64
	// Duration is the length of the fault phase; every fault is healed by
	// its end.
	Duration time.Duration
	Faults   []Fault
}

// Profile bounds what Generate draws.
type Profile struct {
	// MinDuration and MaxDuration bound the fault phase.
	MinDuration, MaxDuration time.Duration
	// MaxFaults bounds the number of faults drawn (at least one is), not
	// counting a long cut.
	MaxFaults int
	// QuorumLoss is the probability that a schedule lets two member faults
	// overlap, losing quorum for at most MaxQuorumLoss.
	QuorumLoss    float64
	MaxQuorumLoss time.Duration
	// LongCut is the probability that a schedule cuts one member's clients
	// off (a stopped or blackholed proxy, a partition) for most of its
	// duration, long enough for the leases of owners behind it to expire.
	LongCut float64
}

// ShortProfile is the profile of the schedules CI runs: a fraction of a
// second of one to four faults.
var ShortProfile = Profile{
	MinDuration: 250 * time.Millisecond, MaxDuration: 900 * time.Millisecond,
	MaxFaults: 4, QuorumLoss: 0.08, MaxQuorumLoss: 300 * time.Millisecond,
}

// LongProfile is for soak runs: seconds of up to eight faults, long enough
// for leases to expire while their owners are cut off.
var LongProfile = Profile{
	MinDuration: 3 * time.Second, MaxDuration: 8 * time.Second,
	MaxFaults: 8, QuorumLoss: 0.15, MaxQuorumLoss: 800 * time.Millisecond,
	LongCut: 0.5,
}

// faultWeights is how often each kind is drawn.
var faultWeights = []struct {
	kind   FaultKind
	weight int
}{
	{ProxyStop, 8}, {ProxyCloseConns, 7}, {ProxyResetConns, 7}, {ProxyBlackhole, 12},
	{ProxyPause, 8}, {ProxyPauseAccept, 3}, {ProxyLatency, 7},
	{MemberStop, 4}, {MemberKill, 5}, {MemberPartition, 8},
	{MoveLeader, 5}, {Compact, 12},
}

// NewRand returns the random source of a seed, with stream separating the
// users of one seed (the schedule, each workload).
func NewRand(seed int64, stream string) *rand.Rand {
	var h uint64 = 14695981039346656037
	for i := 0; i < len(stream); i++ {
		h = (h ^ uint64(stream[i])) * 1099511628211
	}
	return rand.New(rand.NewPCG(uint64(seed), h))
}

// Generate draws the schedule of seed under profile p. Faults overlap
// freely, except that at most one member is out of the quorum at a time
// unless the schedule drew a quorum loss (then a second member fault starts
// inside the first and lasts at most p.MaxQuorumLoss), that a leadership
// move happens only while every member is in, that a compaction never
// happens while quorum is lost, and that two faults of one kind never
// overlap on one proxy.
func Generate(seed int64, p Profile) *Schedule {
	rng := NewRand(seed, "schedule")
	s := &Schedule{Seed: seed}
	s.Duration = p.MinDuration + time.Duration(rng.Int64N(int64(p.MaxDuration-p.MinDuration)+1))
	n := 1 + rng.IntN(p.MaxFaults)
	quorumLoss := rng.Float64() < p.QuorumLoss
	total := 0
	for _, w := range faultWeights {
		total += w.weight
	}
	ms := func(d time.Duration) time.Duration { return d.Truncate(time.Millisecond) }
	for attempt := 0; len(s.Faults) < n && attempt < 20*n; attempt++ {
		pick := rng.IntN(total)
		var kind FaultKind
		for _, w := range faultWeights {
			if pick < w.weight {
				kind = w.kind
				break
			}
			pick -= w.weight
		}
		f := Fault{Kind: kind, Member: rng.IntN(3)}
		// The last fifth of the schedule is left for faults to end in.
		f.At = ms(time.Duration(rng.Int64N(int64(s.Duration) * 4 / 5)))
		if kind.lasting() {
			lo := 50 * time.Millisecond
			f.For = ms(lo + time.Duration(rng.Int64N(int64(s.Duration-f.At-lo)+1)))
		}
		switch kind {
		case ProxyBlackhole, ProxyPause, ProxyLatency:
			f.Dir = proxy.Direction(rng.IntN(3))
		}
		if kind == ProxyLatency {
			f.Delay = ms(5*time.Millisecond + time.Duration(rng.Int64N(int64(100*time.Millisecond))))
			f.Jitter = ms(time.Duration(rng.Int64N(int64(f.Delay/2) + 1)))
		}
		if kind.isMember() && rng.IntN(5) < 2 {
			f.Member = Leader
		}
		if kind == MoveLeader && rng.IntN(3) == 0 {
			f.Member = Leader // a no-op move: the leader stays
		}
		if !s.admits(&f, quorumLoss, p.MaxQuorumLoss) {
			continue
		}
		s.Faults = append(s.Faults, f)
	}
	if rng.Float64() < p.LongCut {
		kinds := []FaultKind{ProxyStop, ProxyBlackhole, ProxyPause, MemberPartition}
		f := Fault{Kind: kinds[rng.IntN(len(kinds))], Member: rng.IntN(3), Dir: proxy.Both}
		f.At = ms(time.Duration(rng.Int64N(int64(s.Duration) / 10)))
		f.For = ms(time.Duration(float64(s.Duration) * (0.55 + 0.35*rng.Float64())))
		f.For = min(f.For, s.Duration-f.At)
		if s.admits(&f, quorumLoss, p.MaxQuorumLoss) {
			s.Faults = append(s.Faults, f)
		}
	}
	slices.SortStableFunc(s.Faults, func(a, b Fault) int { return cmp.Compare(a.At, b.At) })
	return s
}

// admits reports whether f fits the schedule's rules, shortening a second
// member fault to the allowed quorum loss.
func (s *Schedule) admits(f *Fault, quorumLoss bool, maxLoss time.Duration) bool {
	end := func(g Fault) time.Duration { return g.At + g.For }
	overlaps := func(g Fault) bool { return f.At <= end(g) && g.At <= end(*f) }
	var members []Fault
	for _, g := range s.Faults {
		if g.Kind.isMember() {
			members = append(members, g)
		}
		if g.Kind == f.Kind && f.Kind.lasting() && !f.Kind.isMember() && g.Member == f.Member && overlaps(g) {
			return false
		}
	}
	switch {
	case f.Kind.isMember():
		var over []Fault
		for _, g := range members {
			if overlaps(g) {
				over = append(over, g)
			}
		}
		if len(over) == 0 {
			return true
		}
		if !quorumLoss || len(over) > 1 || len(members) > 1 {
			return false
		}
		g := over[0]
		if f.Member != Leader && f.Member == g.Member || f.At <= g.At || f.At >= end(g) {
			return false
		}
		f.For = min(f.For, maxLoss)
		return true
	case f.Kind == MoveLeader:
		for _, g := range members {
			// A margin on both sides: a restarted member needs a moment
			// before it can take over.
			if f.At+100*time.Millisecond >= g.At && g.At+g.For+300*time.Millisecond >= f.At {
				return false
			}
		}
	case f.Kind == Compact:
		if len(members) == 2 && members[0].At <= f.At && f.At <= end(members[1]) {
			return false
		}
	}
	return true
}

// Steps returns the schedule's injections and heals in time order.
func (s *Schedule) Steps() []Step {
	var steps []Step
	for i, f := range s.Faults {
		steps = append(steps, Step{At: f.At, Fault: i})
		if f.Kind.lasting() {
			steps = append(steps, Step{At: f.At + f.For, Fault: i, Heal: true})
		}
	}
	slices.SortStableFunc(steps, func(a, b Step) int { return cmp.Compare(a.At, b.At) })
	return steps
}

// Step is one injection or heal of a schedule's fault.
type Step struct {
	At time.Duration
	// Fault is the index of the fault in Schedule.Faults.
	Fault int
	Heal  bool
}

// String lists the faults, one per line.
func (s *Schedule) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "schedule seed=%d duration=%.3fs faults=%d", s.Seed, s.Duration.Seconds(), len(s.Faults))
	for _, f := range s.Faults {
		b.WriteString("\n  ")
		b.WriteString(f.String())
	}
	return b.String()
}
