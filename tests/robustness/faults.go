package robustness

import (
	"context"
	"fmt"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/proxy"
)

// moveLeaderTimeout bounds a leadership transfer; one that does not finish
// is noted and the schedule goes on.
const moveLeaderTimeout = 5 * time.Second

// pathState is how well a client that uses only member i's proxy reaches
// the cluster.
type pathState int

const (
	pathUp pathState = iota
	// pathDoubtful: the path may or may not carry the client's traffic (a
	// one-way cut in the direction the server talks, held new connections).
	pathDoubtful
	// pathCut: nothing the client sends reaches a quorum.
	pathCut
)

// pathChange is a change of a path's state.
type pathChange struct {
	at    time.Duration
	state pathState
	why   string
}

// injector executes a schedule's steps on the cluster and tracks what is
// broken, so that it can heal everything and tell which client paths were
// cut when.
type injector struct {
	t       testing.TB
	env     *Env
	run     *Run
	members []*etcdtest.Server

	resolved map[int]int // fault index -> member it acted on
	// per member i: faults on its proxy and on the member itself
	stopped, blackholed, paused, accepting [3]bool
	blackholeDir, pauseDir                 [3]proxy.Direction
	down                                   [3]bool
	paths                                  [3][]pathChange
	injected                               int
}

func newInjector(t testing.TB, run *Run) *injector {
	in := &injector{t: t, env: run.env, run: run, members: run.env.cluster.Members(), resolved: map[int]int{}}
	for i := range in.paths {
		in.paths[i] = []pathChange{{at: 0, state: pathUp}}
	}
	return in
}

// quorum reports whether a majority of members is in.
func (in *injector) quorum() bool {
	n := 0
	for _, d := range in.down {
		if d {
			n++
		}
	}
	return n <= 1
}

// resolve returns the member fault i acts on: its own, or the leader (or
// the first member that is in, if the leader is out already), or -1 if no
// member may take it.
func (in *injector) resolve(i int, f Fault) int {
	if m, ok := in.resolved[i]; ok {
		return m
	}
	m := f.Member
	if m == Leader {
		// A member fault needs a member that is in.
		eligible := func(j int) bool { return !f.Kind.isMember() || !in.down[j] }
		m = -1
		if l := in.env.cluster.Leader(); l != nil && eligible(in.env.index(l)) {
			m = in.env.index(l)
		}
		for j := range in.members {
			if m < 0 && eligible(j) {
				m = j
			}
		}
	}
	in.resolved[i] = m
	return m
}

// exec runs one step and records it.
func (in *injector) exec(s *Schedule, st Step) {
	f := s.Faults[st.Fault]
	m := in.resolve(st.Fault, f)
	if m < 0 {
		in.run.Rec.Fault(FaultRecord{At: in.run.Rec.Now(), Desc: fmt.Sprintf("%v on the leader skipped: no member may take it", f.Kind)})
		return
	}
	mem := in.members[m]
	p := mem.Proxy()
	start := in.run.Rec.Now()
	desc := ""
	verb := func(inject, heal string) string {
		if st.Heal {
			return heal
		}
		return inject
	}
	switch f.Kind {
	case ProxyStop:
		desc = fmt.Sprintf("%s p%d", verb("stop", "start"), m)
		if st.Heal {
			if err := p.Start(); err != nil {
				in.t.Fatalf("robustness: start proxy p%d: %v", m, err)
			}
		} else {
			p.Stop()
		}
		in.stopped[m] = !st.Heal
	case ProxyCloseConns:
		desc = fmt.Sprintf("close-conns p%d", m)
		p.CloseConns()
	case ProxyResetConns:
		desc = fmt.Sprintf("reset-conns p%d", m)
		p.ResetConns()
	case ProxyBlackhole:
		desc = fmt.Sprintf("%s p%d %v", verb("blackhole", "unblackhole"), m, f.Dir)
		if st.Heal {
			p.Unblackhole()
		} else {
			p.Blackhole(f.Dir)
		}
		in.blackholed[m], in.blackholeDir[m] = !st.Heal, f.Dir
	case ProxyPause:
		desc = fmt.Sprintf("%s p%d %v", verb("pause", "resume"), m, f.Dir)
		if st.Heal {
			p.Resume()
		} else {
			p.Pause(f.Dir)
		}
		in.paused[m], in.pauseDir[m] = !st.Heal, f.Dir
	case ProxyPauseAccept:
		desc = fmt.Sprintf("%s p%d", verb("pause-accept", "resume-accept"), m)
		if st.Heal {
			p.ResumeAccept()
		} else {
			p.PauseAccept()
		}
		in.accepting[m] = !st.Heal
	case ProxyLatency:
		if st.Heal {
			desc = fmt.Sprintf("latency p%d off", m)
			p.SetLatency(proxy.Both, 0, 0)
		} else {
			desc = fmt.Sprintf("latency p%d %v %v±%v", m, f.Dir, f.Delay, f.Jitter)
			p.SetLatency(f.Dir, f.Delay, f.Jitter)
		}
	case MemberStop, MemberKill:
		desc = fmt.Sprintf("%s m%d", verb(map[FaultKind]string{MemberStop: "stop", MemberKill: "kill"}[f.Kind], "restart"), m)
		switch {
		case st.Heal:
			if err := in.env.bounded(in.t, "restart "+mem.Name(), mem.Restart); err != nil {
				in.t.Fatalf("robustness: %v", err)
			}
		case f.Kind == MemberStop:
			_ = in.env.bounded(in.t, "stop "+mem.Name(), func() error { mem.Stop(); return nil })
		default:
			_ = in.env.bounded(in.t, "kill "+mem.Name(), func() error { mem.Kill(); return nil })
		}
		in.down[m] = !st.Heal
	case MemberPartition:
		desc = fmt.Sprintf("%s m%d", verb("partition", "heal"), m)
		if st.Heal {
			mem.Heal()
		} else {
			mem.Partition()
		}
		in.down[m] = !st.Heal
	case MoveLeader:
		desc = in.moveLeader(m)
	case Compact:
		desc = in.compact()
	}
	if !st.Heal {
		in.injected++
	}
	now := in.run.Rec.Now()
	in.run.Rec.Fault(FaultRecord{At: start, Took: now - start, Desc: desc})
	in.updatePaths(now, desc)
}

func (in *injector) moveLeader(m int) string {
	for j, d := range in.down {
		if d {
			return fmt.Sprintf("move-leader to m%d skipped: m%d is out", m, j)
		}
	}
	lead := in.env.cluster.Leader()
	to := in.members[m]
	if lead == nil {
		return fmt.Sprintf("move-leader to m%d skipped: no leader", m)
	}
	if lead == to {
		return fmt.Sprintf("move-leader to m%d: already leads", m)
	}
	e := lead.Etcd()
	if e == nil {
		return fmt.Sprintf("move-leader to m%d skipped: leader stopped", m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), moveLeaderTimeout)
	defer cancel()
	if err := e.Server.MoveLeader(ctx, lead.ID(), to.ID()); err != nil {
		return fmt.Sprintf("move-leader %s -> m%d failed: %v", lead.Name(), m, err)
	}
	return fmt.Sprintf("move-leader %s -> m%d", lead.Name(), m)
}

// compact archives the history up to the current revision and compacts
// there, so that the revisions it removes stay known to the checker.
func (in *injector) compact() string {
	if !in.quorum() {
		return "compact skipped: no quorum"
	}
	rev, err := in.run.archive(in.t)
	if err != nil {
		return fmt.Sprintf("compact skipped: %v", err)
	}
	cli := in.env.direct[in.env.index(in.env.cluster.WaitLeader(in.t))]
	ctx, cancel := context.WithTimeout(context.Background(), readTimeout)
	defer cancel()
	// Watches may see the compaction as soon as the request is applied, well
	// before the physical compaction this call waits for is done: it counts
	// from the moment the request is sent.
	at := in.run.Rec.Now()
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		return fmt.Sprintf("compact at %d failed: %v", rev, err)
	}
	in.run.Rec.Compaction(Compaction{Rev: rev, At: at})
	return fmt.Sprintf("compact at %d", rev)
}

// updatePaths records the state of every member's path after a step.
func (in *injector) updatePaths(now time.Duration, desc string) {
	q := in.quorum()
	for i := range in.paths {
		st, why := pathUp, []string{}
		cut := func(s pathState, w string) {
			st = max(st, s)
			why = append(why, w)
		}
		if !q {
			cut(pathCut, "no quorum")
		}
		if in.down[i] {
			cut(pathCut, fmt.Sprintf("m%d out", i))
		}
		if in.stopped[i] {
			cut(pathCut, fmt.Sprintf("p%d stopped", i))
		}
		if in.blackholed[i] {
			if in.blackholeDir[i] == proxy.Downstream {
				cut(pathDoubtful, fmt.Sprintf("p%d blackholed downstream", i))
			} else {
				cut(pathCut, fmt.Sprintf("p%d blackholed", i))
			}
		}
		if in.paused[i] {
			if in.pauseDir[i] == proxy.Downstream {
				cut(pathDoubtful, fmt.Sprintf("p%d paused downstream", i))
			} else {
				cut(pathCut, fmt.Sprintf("p%d paused", i))
			}
		}
		if in.accepting[i] {
			cut(pathDoubtful, fmt.Sprintf("p%d holds new connections", i))
		}
		last := in.paths[i][len(in.paths[i])-1]
		w := strings.Join(why, ", ")
		if st != last.state || w != last.why {
			in.paths[i] = append(in.paths[i], pathChange{at: now, state: st, why: w})
		}
	}
}

// outages returns the intervals within [from, to] during which member i's
// path was not up, doubtful ones included (see Outage).
func (in *injector) outages(i int, from, to time.Duration) []Outage {
	var out []Outage
	changes := in.paths[i]
	for k, c := range changes {
		if c.state == pathUp {
			continue
		}
		end := to
		if k+1 < len(changes) {
			end = changes[k+1].at
		}
		if end < from || c.at > to {
			continue
		}
		o := Outage{From: max(c.at, from), To: min(end, to), Why: c.why, Doubtful: c.state == pathDoubtful}
		if n := len(out); n > 0 && out[n-1].To == o.From && out[n-1].Doubtful == o.Doubtful {
			out[n-1].To, out[n-1].Why = o.To, out[n-1].Why+"; "+o.Why
			continue
		}
		out = append(out, o)
	}
	return out
}

// heal undoes every fault, whatever the schedule did: it starts and clears
// every proxy, heals every partition and restarts every stopped member. It
// is safe to call at any time, also after a failure, and returns the first
// error met.
func (env *Env) heal() error {
	var first error
	for _, m := range env.cluster.Members() {
		p := m.Proxy()
		if err := p.Start(); err != nil && first == nil {
			first = fmt.Errorf("start proxy of %s: %w", m.Name(), err)
		}
		p.Unblackhole()
		p.Resume()
		p.ResumeAccept()
		p.SetLatency(proxy.Both, 0, 0)
		m.Heal()
	}
	for _, m := range env.cluster.Members() {
		if !m.Running() {
			if err := m.Restart(); err != nil && first == nil {
				first = err
			}
		}
	}
	return first
}

// memberOpTimeout bounds stopping or restarting a member: it takes well
// under a second, or, when a member was caught in a bad moment, 5s plus two
// election timeouts of etcd's own shutdown timeout.
const memberOpTimeout = 60 * time.Second

// bounded runs a member operation, failing the test with every goroutine's
// stack if it does not return within memberOpTimeout: a stuck etcd member
// is a failure of the environment, not of the library, and must say so
// rather than run into the test binary's timeout.
func (env *Env) bounded(t testing.TB, what string, op func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- op() }()
	timer := time.NewTimer(memberOpTimeout)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		var b strings.Builder
		_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
		t.Fatalf("robustness: etcdtest: %s did not return within %v; goroutines:\n%s", what, memberOpTimeout, b.String())
		return nil
	}
}

// healAll heals everything and waits until the members agree on a leader.
func (env *Env) healAll(t testing.TB) {
	t.Helper()
	if err := env.bounded(t, "heal", env.heal); err != nil {
		t.Fatalf("robustness: heal: %v", err)
	}
	env.cluster.WaitLeader(t)
}
