package robustness_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/tests/robustness"
)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func put(rev int64, key, value string) robustness.Change {
	return robustness.Change{Rev: rev, Type: etcdkit.Put, Key: key, Value: value}
}

func del(rev int64, key string) robustness.Change {
	return robustness.Change{Rev: rev, Type: etcdkit.Delete, Key: key}
}

// delivered turns changes into the events a subscriber received, 10 ms
// apart.
func delivered(cs ...robustness.Change) []robustness.Delivery {
	ds := make([]robustness.Delivery, len(cs))
	for i, c := range cs {
		ds[i] = robustness.Delivery{At: ms(10 * (i + 1)), Type: c.Type, Key: c.Key, Value: c.Value, Rev: c.Rev}
	}
	return ds
}

// validHistory is a small history every rule accepts: two writers on two
// keys, a prefix subscriber from revision 10 that saw everything, a cache,
// and two leaders whose guarded writes follow each other.
func validHistory() *robustness.History {
	changes := []robustness.Change{
		put(11, "data/k0", "w0.1"),
		put(12, "data/k1", "w1.1"),
		put(13, "data/k0", "w0.2"),
		del(14, "data/k1"),
		put(15, "data/k0", "w1.2^w0.2"),
	}
	return &robustness.History{
		Seed: 1, Namespace: "test", StartRev: 10, FinalRev: 15,
		Changes: changes,
		Ops: []robustness.Op{
			{Client: 0, Key: "data/k0", Kind: robustness.OpPut, Value: "w0.1", Invoke: ms(1), Return: ms(3), Outcome: robustness.OK, Rev: 11},
			{Client: 1, Key: "data/k1", Kind: robustness.OpPut, Value: "w1.1", Invoke: ms(2), Return: ms(5), Outcome: robustness.OK, Rev: 12},
			{Client: 0, Key: "data/k0", Kind: robustness.OpCAS, Value: "w0.2", Expected: 11, Invoke: ms(6), Return: ms(8), Outcome: robustness.OK, Rev: 13},
			{Client: 1, Key: "data/k0", Kind: robustness.OpGet, Invoke: ms(9), Return: ms(10), Outcome: robustness.OK, Found: true, Result: "w0.2", Rev: 13},
			{Client: 0, Key: "data/k1", Kind: robustness.OpDelete, Invoke: ms(9), Return: ms(12), Outcome: robustness.OK},
			// Its outcome is unknown, but its value is in the history.
			{Client: 1, Key: "data/k0", Kind: robustness.OpUpdate, Value: "w1.2", Invoke: ms(13), Return: ms(20), Outcome: robustness.Unknown, Err: "context deadline exceeded"},
			{Client: 0, Key: "data/k0", Kind: robustness.OpCAS, Value: "w0.3", Expected: 13, Invoke: ms(25), Return: ms(26), Outcome: robustness.Conflict, Found: true, Result: "w1.2^w0.2", Rev: 15},
		},
		Subscribers: []*robustness.Subscriber{{
			Name: "s0 prefix data/ after", Scope: "data/", Prefix: true, Start: robustness.StartAfter, After: 10,
			Events: delivered(changes...),
		}},
		Caches: []*robustness.CacheRecord{{
			Name: "c0", Prefix: "data/", Final: map[string]robustness.KV{"data/k0": {Value: "w1.2^w0.2", Rev: 15}},
		}},
		Guarded: []robustness.GuardedWrite{
			{Leader: "a", Token: 5, Rev: 20, Invoke: ms(1), Return: ms(2)},
			{Leader: "a", Token: 5, Rev: 21, Invoke: ms(3), Return: ms(4)},
			{Leader: "b", Token: 9, Rev: 22, Invoke: ms(5), Return: ms(6)},
		},
	}
}

// withElection adds to the history an election where candidate a (token
// 16) leads, writes, steps down, and b (token 19) takes over and writes,
// then applies f.
func withElection(f func(h *robustness.History)) func(h *robustness.History) {
	return func(h *robustness.History) {
		cand := "_etcdkit/election/e/"
		h.Changes = append(h.Changes,
			robustness.Change{Rev: 16, Type: etcdkit.Put, Key: cand + "a", Value: "a", CreateRev: 16},
			robustness.Change{Rev: 17, Type: etcdkit.Put, Key: "fenced", Value: "a 16 1"},
			robustness.Change{Rev: 18, Type: etcdkit.Delete, Key: cand + "a"},
			robustness.Change{Rev: 19, Type: etcdkit.Put, Key: cand + "b", Value: "b", CreateRev: 19},
			robustness.Change{Rev: 20, Type: etcdkit.Put, Key: "fenced", Value: "b 19 1"},
		)
		h.FinalRev = 20
		h.Elections = []*robustness.ElectionRecord{{Name: "e", Candidates: cand, Fenced: "fenced",
			Leaderships: []robustness.LeaderRecord{
				{ID: "a", Token: 16, Won: ms(1), Lost: ms(100)},
				{ID: "b", Token: 19, Won: ms(200), Lost: ms(300)},
			}}}
		h.Guarded = []robustness.GuardedWrite{{Leader: "b", Token: 19, Key: "fenced", Value: "b 19 1", Rev: 20,
			Invoke: ms(210), Return: ms(220)}}
		f(h)
	}
}

// TestCheckerRejects feeds the checker histories with one defect each and
// checks that it is found, with a message that says what went wrong, while
// the history without the defect passes.
func TestCheckerRejects(t *testing.T) {
	sub := func(h *robustness.History) *robustness.Subscriber { return h.Subscribers[0] }
	cases := []struct {
		name   string
		break_ func(h *robustness.History)
		rule   string
		want   string
	}{
		{"valid history", func(*robustness.History) {}, "", ""},
		{"resync after a compaction", func(h *robustness.History) {
			h.Compactions = []robustness.Compaction{{Rev: 14, At: ms(20)}}
			s := sub(h)
			s.Events = append(s.Events[:2:2], robustness.Delivery{At: ms(30), Type: etcdkit.Put, Key: "data/k0", Value: "w1.2^w0.2", Rev: 15, Resync: true},
				robustness.Delivery{At: ms(30), Type: etcdkit.Delete, Key: "data/k1", Rev: 15, Resync: true})
		}, "", ""},
		{"two resyncs in a row", func(h *robustness.History) {
			h.Compactions = []robustness.Compaction{{Rev: 12, At: ms(15)}, {Rev: 14, At: ms(30)}}
			s := sub(h)
			s.Events = []robustness.Delivery{
				{At: ms(20), Type: etcdkit.Put, Key: "data/k1", Value: "w1.1", Rev: 12, Resync: true},
				{At: ms(20), Type: etcdkit.Put, Key: "data/k0", Value: "w0.2", Rev: 13, Resync: true},
				{At: ms(40), Type: etcdkit.Put, Key: "data/k0", Value: "w1.2^w0.2", Rev: 15, Resync: true},
				{At: ms(40), Type: etcdkit.Delete, Key: "data/k1", Rev: 15, Resync: true},
			}
		}, "", ""},
		{"resync through a shared stream that comes back later", func(h *robustness.History) {
			// One compaction while the subscriber was at 10: it resyncs on
			// its own, then again when the stream it rejoined resyncs.
			h.Compactions = []robustness.Compaction{{Rev: 12, At: ms(15)}}
			s := sub(h)
			s.Events = []robustness.Delivery{
				{At: ms(20), Type: etcdkit.Put, Key: "data/k1", Value: "w1.1", Rev: 12, Resync: true},
				{At: ms(20), Type: etcdkit.Put, Key: "data/k0", Value: "w0.2", Rev: 13, Resync: true},
				{At: ms(40), Type: etcdkit.Put, Key: "data/k0", Value: "w1.2^w0.2", Rev: 15, Resync: true},
				{At: ms(40), Type: etcdkit.Delete, Key: "data/k1", Rev: 15, Resync: true},
			}
		}, "", ""},
		{"a write of unknown outcome lands after the settle", func(h *robustness.History) {
			h.Ops = append(h.Ops, robustness.Op{Client: 1, Key: "data/k1", Kind: robustness.OpPut, Value: "w1.9",
				Invoke: ms(14), Return: ms(30), Outcome: robustness.Unknown, Err: "context canceled"})
			h.Changes = append(h.Changes, put(16, "data/k1", "w1.9"))
			h.SettledRev, h.FinalRev = 15, 16
		}, "", ""},
		{"a write that failed without etcdkit.ErrUnknownOutcome applied", func(h *robustness.History) {
			// The Update of unknown outcome above, had the library said it
			// did not apply: the write in the history is then no call's.
			h.Ops[5].Outcome = robustness.Failed
		}, "linearizability", "not linearizable"},
		{"initial state", func(h *robustness.History) {
			s := sub(h)
			s.Start, s.After = robustness.StartInitial, 12
			s.Events = []robustness.Delivery{
				{At: ms(1), Type: etcdkit.Put, Key: "data/k0", Value: "w0.2", Rev: 13, Initial: true},
				{At: ms(1), Type: etcdkit.Put, Key: "data/k1", Value: "w1.1", Rev: 12, Initial: true},
				{At: ms(2), Type: etcdkit.Delete, Key: "data/k1", Rev: 14},
				{At: ms(3), Type: etcdkit.Put, Key: "data/k0", Value: "w1.2^w0.2", Rev: 15},
			}
		}, "", ""},
		{"an election", withElection(func(*robustness.History) {}), "", ""},
		{"guarded write by a deposed leader", withElection(func(h *robustness.History) {
			h.Changes = append(h.Changes, robustness.Change{Rev: 21, Type: etcdkit.Put, Key: "fenced", Value: "a 16 2"})
			h.FinalRev = 21
		}), "fencing", `guarded write "a 16 2" applied at revision 21 with token 16, but the leader key at that revision had token 19`},
		{"guarded writes of two leaders interleave", withElection(func(h *robustness.History) {
			h.Changes = append(h.Changes, robustness.Change{Rev: 21, Type: etcdkit.Put, Key: "fenced", Value: "a 16 2"})
			h.FinalRev = 21
		}), "fencing", "two leaders' guarded writes interleave: a (token 16) wrote at revision 21 after b (token 19) wrote at revision 20"},
		{"two leaders at once", withElection(func(h *robustness.History) {
			h.Elections[0].Leaderships[0].Lost = ms(500)
		}), "fencing", "two leaders at once: b (token 19) won at +0.200s, while a (token 16, won at +0.001s) was told it lost leadership only at +0.500s"},
		{"lost event", func(h *robustness.History) {
			s := sub(h)
			s.Events = slices.Delete(s.Events, 2, 3) // the put at 13
		}, "watch", `lost event: the cluster made Put data/k0="w0.2" @13, but the subscriber's next event after revision 12 was #2 Delete data/k1 @14`},
		{"resync that finds nothing changed", func(h *robustness.History) {
			// k1 comes and goes in revisions a compaction at 17 removes
			// while the subscriber is at 15: its resync finds the state it
			// holds and delivers nothing, and the next change follows.
			h.Changes = append(h.Changes, put(16, "data/k1", "w1.9"), del(17, "data/k1"), put(18, "data/k0", "w0.9"))
			h.FinalRev = 18
			h.Compactions = []robustness.Compaction{{Rev: 17, At: ms(55)}}
			h.Caches[0].Final = map[string]robustness.KV{"data/k0": {Value: "w0.9", Rev: 18}}
			s := sub(h)
			s.Events = append(s.Events, robustness.Delivery{At: ms(70), Type: etcdkit.Put, Key: "data/k0", Value: "w0.9", Rev: 18})
		}, "", ""},
		{"gap over a compaction that changed the state", func(h *robustness.History) {
			// As above, but k1 is still there at 17: a resync had to
			// deliver it.
			h.Changes = append(h.Changes, put(16, "data/k1", "w1.9"), put(17, "data/k0", "w0.8"), put(18, "data/k0", "w0.9"))
			h.FinalRev = 18
			h.Compactions = []robustness.Compaction{{Rev: 17, At: ms(55)}}
			s := sub(h)
			s.Events = append(s.Events, robustness.Delivery{At: ms(70), Type: etcdkit.Put, Key: "data/k0", Value: "w0.9", Rev: 18})
		}, "watch", `lost event: the cluster made Put data/k1="w1.9" @16, but the subscriber's next event after revision 15 was #5 Put data/k0="w0.9" @18`},
		{"gap without a compaction", func(h *robustness.History) {
			h.Changes = append(h.Changes, put(16, "data/k1", "w1.9"), del(17, "data/k1"), put(18, "data/k0", "w0.9"))
			h.FinalRev = 18
			s := sub(h)
			s.Events = append(s.Events, robustness.Delivery{At: ms(70), Type: etcdkit.Put, Key: "data/k0", Value: "w0.9", Rev: 18})
		}, "watch", `lost event: the cluster made Put data/k1="w1.9" @16, but the subscriber's next event after revision 15 was #5 Put data/k0="w0.9" @18`},
		{"watch from now that starts late enough", func(h *robustness.History) {
			// A read returned revision 12 before Watch; Synced closed at 14:
			// starting with the change at 13 is allowed.
			s := sub(h)
			s.Start, s.Before, s.After = robustness.StartNow, 12, 14
			s.Events = s.Events[2:]
		}, "", ""},
		{"watch from now rolls back what the caller read", func(h *robustness.History) {
			// The caller read revision 13 (k0 = "w0.2") before calling
			// Watch; the watch then hands it the change at 12 and that
			// very value again.
			s := sub(h)
			s.Start, s.Before, s.After = robustness.StartNow, 13, 14
			s.Events = s.Events[1:]
		}, "watch", `a watch from now delivered #0 Put data/k1="w1.1" @12, a change at or below revision 13, which a read returned before Watch was called`},
		{"lost last event", func(h *robustness.History) {
			s := sub(h)
			s.Events = s.Events[:4]
		}, "watch", `lost event: the cluster made Put data/k0="w1.2^w0.2" @15, but the subscriber's events end at revision 14`},
		{"duplicate event", func(h *robustness.History) {
			s := sub(h)
			s.Events = slices.Insert(s.Events, 2, s.Events[1])
		}, "watch", `duplicate event: #2 Put data/k1="w1.1" @12 delivers the change of #1 again`},
		{"reordered events", func(h *robustness.History) {
			s := sub(h)
			s.Events[1], s.Events[2] = s.Events[2], s.Events[1]
		}, "watch", `reordered events: #2 Put data/k1="w1.1" @12 came after #1 Put data/k0="w0.2" @13`},
		{"event before the start", func(h *robustness.History) {
			sub(h).After = 11
		}, "watch", `event #0 Put data/k0="w0.1" @11 is not in the cluster's history: after revision 11 the next change was Put data/k1="w1.1" @12`},
		{"wrong value", func(h *robustness.History) {
			sub(h).Events[2].Value = "w9.9"
		}, "watch", `event #2 Put data/k0="w9.9" @13 does not match the cluster's change Put data/k0="w0.2" @13`},
		{"resync without compaction", func(h *robustness.History) {
			s := sub(h)
			s.Events = append(s.Events[:2:2], robustness.Delivery{At: ms(30), Type: etcdkit.Put, Key: "data/k0", Value: "w1.2^w0.2", Rev: 15, Resync: true},
				robustness.Delivery{At: ms(30), Type: etcdkit.Delete, Key: "data/k1", Rev: 15, Resync: true})
		}, "watch", "Resync events #2..#3 (Put data/k0=\"w1.2^w0.2\" @15 resync ...) without a compaction of revisions the subscriber had not yet received (it was at revision 12)"},
		{"resync to a state the cluster never had", func(h *robustness.History) {
			h.Compactions = []robustness.Compaction{{Rev: 14, At: ms(20)}}
			s := sub(h)
			s.Events = append(s.Events[:2:2], robustness.Delivery{At: ms(30), Type: etcdkit.Put, Key: "data/k0", Value: "w1.2^w0.2", Rev: 15, Resync: true})
		}, "watch", "Resync events #2..#2 leave the subscriber with {data/k0=\"w1.2^w0.2\"@15 data/k1=\"w1.1\"@12}, which is not the state of data/ at any revision in [15, 15]"},
		{"two resyncs back to back", func(h *robustness.History) {
			// Compactions at 12 and 15 close together: the first resync
			// brings the subscriber from 11 to 12 (k1 created), the second
			// from 12 to 15 (k0 changed, k1 deleted). The events cannot say
			// where the first batch ends; a key named again says it ends
			// before that key's second mention.
			h.Compactions = []robustness.Compaction{{Rev: 12, At: ms(20)}, {Rev: 15, At: ms(35)}}
			s := sub(h)
			s.Events = append(s.Events[:1:1],
				robustness.Delivery{At: ms(30), Type: etcdkit.Put, Key: "data/k1", Value: "w1.1", Rev: 12, Resync: true},
				robustness.Delivery{At: ms(40), Type: etcdkit.Put, Key: "data/k0", Value: "w1.2^w0.2", Rev: 15, Resync: true},
				robustness.Delivery{At: ms(40), Type: etcdkit.Delete, Key: "data/k1", Rev: 15, Resync: true})
		}, "", ""},
		{"two resyncs back to back, the second missing a delete", func(h *robustness.History) {
			h.Compactions = []robustness.Compaction{{Rev: 12, At: ms(20)}, {Rev: 15, At: ms(35)}}
			s := sub(h)
			s.Events = append(s.Events[:1:1],
				robustness.Delivery{At: ms(30), Type: etcdkit.Put, Key: "data/k1", Value: "w1.1", Rev: 12, Resync: true},
				robustness.Delivery{At: ms(40), Type: etcdkit.Put, Key: "data/k0", Value: "w1.2^w0.2", Rev: 15, Resync: true})
		}, "watch", `Resync events #1..#2 leave the subscriber with {data/k0="w1.2^w0.2"@15 data/k1="w1.1"@12}, which is not the state of data/ at any revision in [15, 15]`},
		{"watch ended by itself", func(h *robustness.History) {
			sub(h).Ended = "the watch ended by itself before the run closed it: etcdkit: watch: permission denied"
		}, "watch", "the watch ended by itself before the run closed it: etcdkit: watch: permission denied"},
		{"prefix watch ended with ErrCompacted after a compaction passed it", func(h *robustness.History) {
			h.Compactions = []robustness.Compaction{{Rev: 14, At: ms(25)}}
			s := sub(h)
			s.Events = s.Events[:2]
			s.Compacted, s.CompactedAt = "etcdkit: revision compacted: ...", ms(30)
		}, "", ""},
		{"prefix watch ended with ErrCompacted, no compaction", func(h *robustness.History) {
			s := sub(h)
			s.Events = s.Events[:2]
			s.Compacted, s.CompactedAt = "etcdkit: revision compacted", ms(30)
		}, "watch", `ended with "etcdkit: revision compacted" at +30ms, but no compaction had passed its position (revision 12)`},
		{"WithInitial watch ended with ErrCompacted", func(h *robustness.History) {
			h.Compactions = []robustness.Compaction{{Rev: 14, At: ms(25)}}
			s := sub(h)
			s.Start, s.After = robustness.StartInitial, 10
			s.Events = nil
			s.Compacted, s.CompactedAt = "etcdkit: revision compacted", ms(30)
		}, "watch", `a data/ watch ended with "etcdkit: revision compacted"; only a Prefix watch without WithInitial may`},
		{"stale cache", func(h *robustness.History) {
			h.Caches[0].Final["data/k1"] = robustness.KV{Value: "w1.1", Rev: 12}
		}, "cache", `ends with {data/k0="w1.2^w0.2"@15 data/k1="w1.1"@12}, the cluster's final state (revision 15) is {data/k0="w1.2^w0.2"@15}`},
		{"double leader", func(h *robustness.History) {
			h.Guarded = append(h.Guarded, robustness.GuardedWrite{Leader: "a", Token: 5, Rev: 23, Invoke: ms(5), Return: ms(7)})
		}, "fencing", "two leaders' guarded writes interleave: a (token 5) wrote at revision 23 after b (token 9) wrote at revision 22"},
		{"stale read", func(h *robustness.History) {
			// Reads the value the CAS at 13 replaced, after the CAS returned.
			h.Ops[3].Result, h.Ops[3].Rev = "w0.1", 11
		}, "linearizability", `not linearizable: at most 2 of 5 operations can be ordered; after 2 of them the key is "w0.2"@13 ` +
			`(last: cas("w0.2", expect 11) -> @13 by w0 at +0.006s); none of these can come next: [w1 get() -> "w0.1"@11, +0.009s..+0.010s]`},
		{"lost update", func(h *robustness.History) {
			// Two CAS expecting the same revision both succeed.
			h.Ops = append(h.Ops, robustness.Op{Client: 2, Key: "data/k0", Kind: robustness.OpCAS, Value: "w2.1", Expected: 11,
				Invoke: ms(6), Return: ms(8), Outcome: robustness.OK, Rev: 16})
			h.Changes = append(h.Changes, put(16, "data/k0", "w2.1"))
		}, "linearizability", `not linearizable: at most 2 of 6 operations can be ordered; after 2 of them the key is "w0.2"@13 ` +
			`(last: cas("w0.2", expect 11) -> @13 by w0 at +0.006s); none of these can come next: [w2 cas("w2.1", expect 11) -> @16, +0.006s..+0.008s]`},
		{"acknowledged write lost", func(h *robustness.History) {
			h.Ops[1].Rev = 14
		}, "durability", `w1's put of "w1.1" was acknowledged at revision 14, but the cluster's history has [Delete data/k1 @14] there`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := validHistory()
			tc.break_(h)
			vs := robustness.Check(h)
			if tc.rule == "" {
				if len(vs) > 0 {
					t.Fatalf("got violations %v, want none", vs)
				}
				return
			}
			for _, v := range vs {
				if v.Rule == tc.rule && strings.Contains(v.Msg, tc.want) {
					t.Logf("rejected: %v", v)
					return
				}
			}
			t.Fatalf("got violations %v, want a %q violation containing %q", vs, tc.rule, tc.want)
		})
	}
}

// ephemeralHistory is a history whose revision r was committed at r×100ms
// (a writer puts at every revision but the ephemeral key's), where owner o0
// creates eph/o0 at revision 12 (1.2s) and closes it at 8s; its key is
// deleted at revision deleted (none if 0), and the owner is cut off during
// outage (none if zero).
func ephemeralHistory(deleted int64, outage robustness.Outage) *robustness.History {
	h := &robustness.History{Seed: 2, Namespace: "test", StartRev: 10, FinalRev: 80}
	for rev := int64(11); rev <= 80; rev++ {
		switch rev {
		case 12:
			h.Changes = append(h.Changes, robustness.Change{Rev: rev, Type: etcdkit.Put, Key: "eph/o0", Value: "o0.0", Lease: 7})
		case deleted:
			h.Changes = append(h.Changes, del(rev, "eph/o0"))
		default:
			v := fmt.Sprintf("w0.%d", rev)
			h.Changes = append(h.Changes, put(rev, "data/k0", v))
			h.Ops = append(h.Ops, robustness.Op{Key: "data/k0", Kind: robustness.OpPut, Value: v, Outcome: robustness.OK, Rev: rev,
				Invoke: ms(int(rev) * 100), Return: ms(int(rev) * 100)})
		}
	}
	e := &robustness.EphemeralRecord{Owner: "o0 via m0", Key: "eph/o0", TTL: time.Second, Created: ms(1250), Closed: ms(8000)}
	if outage.To > 0 {
		e.Outages = []robustness.Outage{outage}
	}
	h.Ephemerals = []*robustness.EphemeralRecord{e}
	return h
}

// withFaults adds fault steps to h.
func withFaults(h *robustness.History, fs ...robustness.FaultRecord) *robustness.History {
	h.Faults = append(h.Faults, fs...)
	return h
}

// TestCheckerEphemerals checks the ephemeral-key rules on forged histories.
func TestCheckerEphemerals(t *testing.T) {
	cut := robustness.Outage{From: ms(1500), To: ms(6000), Why: "p0 stopped"}
	cases := []struct {
		name string
		h    *robustness.History
		want string // "" for none
	}{
		{"connected, never deleted", ephemeralHistory(0, robustness.Outage{}), ""},
		{"cut off, deleted in time", ephemeralHistory(30, cut), ""},
		{"cut off past TTL and grace, never deleted", ephemeralHistory(0, cut),
			"the owner was cut off from +1.500s to +6.000s (p0 stopped), longer than its TTL 1s + 3s (past +5.500s, after the elections in it), but its key eph/o0 written at revision 12 was not deleted until after +6.000s"},
		{"cut off past TTL and grace, elections renewed the lease", withFaults(ephemeralHistory(0, cut),
			robustness.FaultRecord{At: ms(2000), Took: ms(50), Desc: "kill m1"},
			robustness.FaultRecord{At: ms(4000), Took: ms(100), Desc: "move-leader m0 -> m2"}), ""},
		{"cut off past TTL and grace, an election too early to matter", withFaults(ephemeralHistory(0, cut),
			robustness.FaultRecord{At: ms(1000), Took: ms(50), Desc: "kill m1"},
			robustness.FaultRecord{At: ms(1600), Took: ms(50), Desc: "move-leader to m2 skipped: no leader"},
			robustness.FaultRecord{At: ms(1700), Took: ms(50), Desc: "blackhole p1 both"}),
			"longer than its TTL 1s + 3s (past +5.500s, after the elections in it)"},
		{"cut off past TTL and grace, deleted too late", ephemeralHistory(70, cut),
			"its key eph/o0 written at revision 12 was not deleted until after +6.000s"},
		{"deleted while connected", ephemeralHistory(30, robustness.Outage{}),
			"its key eph/o0 was deleted at revision 30 (between +2.900s and +3.100s) while the owner was connected (+1.250s to +8.000s)"},
		{"short cut, deleted long after it", ephemeralHistory(75, robustness.Outage{From: ms(1500), To: ms(2000), Why: "p0 paused"}),
			"its key eph/o0 was deleted at revision 75 (between +7.400s and +7.600s) while the owner was connected (+6.000s to +8.000s)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got []robustness.Violation
			for _, v := range robustness.Check(tc.h) {
				if v.Rule == "ephemeral" {
					got = append(got, v)
				}
			}
			switch {
			case tc.want == "" && len(got) > 0:
				t.Fatalf("got %v, want no ephemeral violation", got)
			case tc.want != "" && (len(got) != 1 || !strings.Contains(got[0].Msg, tc.want)):
				t.Fatalf("got %v, want one containing %q", got, tc.want)
			case tc.want != "":
				t.Logf("rejected: %v", got[0])
			}
		})
	}
}

// TestCheckerTrackers checks the tracker rules on a forged history: i0
// registers at 11, i1 at 12, i0 updates its metadata at 13 and withdraws at
// 14.
func TestCheckerTrackers(t *testing.T) {
	rec := func(addr, meta string) string { return fmt.Sprintf(`{"addr":%q,"meta":%q}`, addr, meta) }
	base := func() *robustness.History {
		p := "_etcdkit/service/svc/"
		return &robustness.History{Seed: 3, StartRev: 10, FinalRev: 14, Changes: []robustness.Change{
			put(11, p+"i0", rec("127.0.0.1:9000", "a")),
			put(12, p+"i1", rec("127.0.0.1:9001", "b")),
			put(13, p+"i0", rec("127.0.0.1:9000", "c")),
			del(14, p+"i0"),
		}}
	}
	view := func(at int, kv ...string) robustness.TrackerView {
		v := robustness.TrackerView{At: ms(at), Instances: map[string]string{}}
		for i := 0; i < len(kv); i += 2 {
			v.Instances[kv[i]] = kv[i+1]
		}
		return v
	}
	i0a, i0c, i1 := "127.0.0.1:9000 a", "127.0.0.1:9000 c", "127.0.0.1:9001 b"
	cases := []struct {
		name  string
		views []robustness.TrackerView
		final map[string]string
		want  string
	}{
		{"every state", []robustness.TrackerView{view(1), view(2, "i0", i0a), view(3, "i0", i0a, "i1", i1),
			view(4, "i0", i0c, "i1", i1), view(5, "i1", i1)}, map[string]string{"i1": i1}, ""},
		{"states skipped", []robustness.TrackerView{view(1), view(5, "i1", i1)}, map[string]string{"i1": i1}, ""},
		{"a state the service never had", []robustness.TrackerView{view(1), view(2, "i0", i0c)}, nil,
			"view #1 {i0=127.0.0.1:9000 c} received at +0.002s is not a state the service had at or after revision 10"},
		{"back in time", []robustness.TrackerView{view(1, "i0", i0c, "i1", i1), view(2, "i0", i0a, "i1", i1)}, nil,
			"view #1 {i0=127.0.0.1:9000 a, i1=127.0.0.1:9001 b} received at +0.002s is not a state the service had at or after revision 13"},
		{"stale at the end", []robustness.TrackerView{view(1)}, map[string]string{"i0": i0c, "i1": i1},
			"ends with {i0=127.0.0.1:9000 c, i1=127.0.0.1:9001 b}, the service's final state (revision 14) is {i1=127.0.0.1:9001 b}"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := base()
			h.Trackers = []*robustness.TrackerRecord{{Name: "t0", Prefix: "_etcdkit/service/svc/", Views: tc.views, Final: tc.final}}
			vs := robustness.Check(h)
			switch {
			case tc.want == "" && len(vs) > 0:
				t.Fatalf("got %v, want none", vs)
			case tc.want != "" && (len(vs) != 1 || vs[0].Rule != "tracker" || !strings.Contains(vs[0].Msg, tc.want)):
				t.Fatalf("got %v, want one tracker violation containing %q", vs, tc.want)
			case tc.want != "":
				t.Logf("rejected: %v", vs[0])
			}
		})
	}
}
