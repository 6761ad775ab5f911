package robustness_test

import (
	"strings"
	"testing"
	"time"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/tests/robustness"
)

// starvedHistory is a history where a connected owner's key (TTL 2s, its
// keepalive attempts bounded by a 300ms StallTimeout) is deleted by its
// lease's expiry between +4.0s and +5.2s, then changed by f.
func starvedHistory(f func(h *robustness.History)) *robustness.History {
	h := &robustness.History{
		Seed: 1, Namespace: "test", StartRev: 9, FinalRev: 13, SettledRev: 13,
		Changes: []robustness.Change{
			put(10, "data/k0", "w0.1"),
			{Rev: 11, Type: etcdkit.Put, Key: "eph/o0", Value: "o0.0", Lease: 7},
			del(12, "eph/o0"),
			put(13, "data/k0", "w0.2"),
		},
		Ops: []robustness.Op{
			{Client: 0, Key: "data/k0", Kind: robustness.OpPut, Value: "w0.1", Invoke: ms(4000), Return: ms(4100), Outcome: robustness.OK, Rev: 10},
			{Client: 0, Key: "data/k0", Kind: robustness.OpPut, Value: "w0.2", Invoke: ms(5000), Return: ms(5200), Outcome: robustness.OK, Rev: 13},
		},
		Ephemerals: []*robustness.EphemeralRecord{{
			Owner: "o0 via m1", Key: "eph/o0", TTL: 2 * time.Second, Member: 1, StallTimeout: ms(300),
			Created: ms(100), Closed: ms(10000),
		}},
	}
	f(h)
	return h
}

// slowProbes returns probes of member m, back to back from from to to,
// each taking took.
func slowProbes(m int, from, to, took time.Duration) []robustness.Probe {
	var ps []robustness.Probe
	for at := from; at+took <= to; at += took {
		ps = append(ps, robustness.Probe{Member: m, At: at, Took: took})
	}
	return ps
}

// leaderAll is the raft log of three members that all follow leader from
// at on.
func leaderAll(leader int, at time.Duration) []robustness.RaftChange {
	var cs []robustness.RaftChange
	for m := range 3 {
		cs = append(cs, robustness.RaftChange{At: at, Member: m, Term: 2, Leader: leader})
	}
	return cs
}

// TestCheckEphemeralStarvation: a connected owner's key that went with its
// lease is a failure, unless the process stalled for the lease's margin
// (TTL minus the keepalive interval) within the TTL before the delete, or
// the probes of the owner's member outlasted its keepalive attempts for
// that long while the process stalled and the owner had been told Lost
// before the delete.
func TestCheckEphemeralStarvation(t *testing.T) {
	for _, tc := range []struct {
		name    string
		f       func(h *robustness.History)
		starved string // a part of the evidence; "" for a failure
	}{
		{"no stall", func(*robustness.History) {}, ""},
		{"short stalls", func(h *robustness.History) {
			h.Stalls = []robustness.Stall{{From: ms(3000), To: ms(3500)}, {From: ms(3600), To: ms(4200)}}
		}, ""},
		{"a stall as long as the margin", func(h *robustness.History) {
			h.Stalls = []robustness.Stall{{From: ms(2500), To: ms(3900)}}
		}, "the process stalled for 1.400s"},
		{"a stall before the TTL preceding the delete", func(h *robustness.History) {
			h.Stalls = []robustness.Stall{{From: ms(200), To: ms(1900)}}
		}, ""},
		{"slow cluster, stalls, told Lost first", func(h *robustness.History) {
			h.Stalls = []robustness.Stall{{From: ms(3000), To: ms(3100)}}
			h.Probes = slowProbes(1, ms(2500), ms(4500), ms(500))
			h.Ephemerals[0].LostAt = []time.Duration{ms(3900)}
		}, "every probe of m1 took at least"},
		{"slow cluster, stalls, Lost after the delete", func(h *robustness.History) {
			h.Stalls = []robustness.Stall{{From: ms(3000), To: ms(3100)}}
			h.Probes = slowProbes(1, ms(2500), ms(4500), ms(500))
			h.Ephemerals[0].LostAt = []time.Duration{ms(5300)}
		}, ""},
		{"slow cluster, no stall", func(h *robustness.History) {
			h.Probes = slowProbes(1, ms(2500), ms(4500), ms(500))
			h.Ephemerals[0].LostAt = []time.Duration{ms(3900)}
		}, ""},
		{"slow cluster for less than the margin", func(h *robustness.History) {
			h.Stalls = []robustness.Stall{{From: ms(3000), To: ms(3100)}}
			h.Probes = append(slowProbes(1, ms(2500), ms(3500), ms(500)), robustness.Probe{Member: 1, At: ms(3500), Took: ms(20)})
			h.Ephemerals[0].LostAt = []time.Duration{ms(3900)}
		}, ""},
		{"the leader slow, the owner's member not", func(h *robustness.History) {
			h.Stalls = []robustness.Stall{{From: ms(3000), To: ms(3100)}}
			h.Raft = leaderAll(2, 0)
			h.Probes = slowProbes(2, ms(2500), ms(4500), ms(500))
			h.Ephemerals[0].LostAt = []time.Duration{ms(3900)}
		}, "every probe of m2 (the leader) took at least"},
		{"a member slow that led before the TTL preceding the delete", func(h *robustness.History) {
			h.Stalls = []robustness.Stall{{From: ms(3000), To: ms(3100)}}
			h.Raft = append(leaderAll(2, 0), leaderAll(0, ms(1000))...)
			h.Probes = slowProbes(2, ms(2500), ms(4500), ms(500))
			h.Ephemerals[0].LostAt = []time.Duration{ms(3900)}
		}, ""},
		{"the leader slow, Lost after the delete", func(h *robustness.History) {
			h.Stalls = []robustness.Stall{{From: ms(3000), To: ms(3100)}}
			h.Raft = leaderAll(2, 0)
			h.Probes = slowProbes(2, ms(2500), ms(4500), ms(500))
			h.Ephemerals[0].LostAt = []time.Duration{ms(5300)}
		}, ""},
		{"another member slow", func(h *robustness.History) {
			h.Stalls = []robustness.Stall{{From: ms(3000), To: ms(3100)}}
			h.Probes = slowProbes(2, ms(2500), ms(4500), ms(500))
			h.Ephemerals[0].LostAt = []time.Duration{ms(3900)}
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []robustness.Violation
			for _, v := range robustness.Check(starvedHistory(tc.f)) {
				if v.Rule == "ephemeral" {
					got = append(got, v)
				}
			}
			if len(got) != 1 || !strings.Contains(got[0].Msg, "was deleted at revision 12") {
				t.Fatalf("got violations %v, want one: the key deleted at revision 12 while connected", got)
			}
			switch v := got[0]; {
			case tc.starved == "" && v.Starved != "":
				t.Fatalf("got %v classed as starvation, want a failure", v)
			case tc.starved != "" && !strings.Contains(v.Starved, tc.starved):
				t.Fatalf("got starvation evidence %q, want it to contain %q", v.Starved, tc.starved)
			}
			if n := len(robustness.Failures(got)); (n == 0) != (tc.starved != "") {
				t.Fatalf("got %d failures among %v", n, got)
			}
		})
	}
}
