package robustness_test

import (
	"strings"
	"testing"

	"github.com/etcdkit/etcdkit/tests/robustness"
)

// TestCheckerLives checks the Live rule on forged histories: data/k0 gets
// a good value at 11, a refused one (ending in 3) at 12, good ones at 13,
// deleted at 14, good again at 15, and, in the "refused at the end"
// cases, a refused value at 16. The "map entry" cases are reads of a
// LiveMap's entry, with the revision the map reflected.
func TestCheckerLives(t *testing.T) {
	seen := func(rev int64, v string) robustness.LiveSeen {
		return robustness.LiveSeen{At: ms(int(rev)), Rev: rev, Value: v, Present: true}
	}
	absent := func(rev int64) robustness.LiveSeen {
		return robustness.LiveSeen{At: ms(int(rev)), Rev: rev, Value: robustness.LiveDefault}
	}
	final := func(s robustness.LiveSeen) *robustness.LiveSeen { return &s }
	// inMap is s read from a LiveMap's entry while the map reflected rev.
	inMap := func(s robustness.LiveSeen, rev int64) robustness.LiveSeen { s.MapRev = rev; return s }
	cases := []struct {
		name       string
		refusedEnd bool
		readers    [][]robustness.LiveSeen
		final      *robustness.LiveSeen
		want       string
	}{
		{name: "every state", readers: [][]robustness.LiveSeen{{absent(0), seen(11, "w0.1"), seen(13, "w1.2"), absent(14), seen(15, "w0.4")}},
			final: final(seen(15, "w0.4"))},
		{name: "states skipped, two readers", readers: [][]robustness.LiveSeen{{absent(0), seen(15, "w0.4")}, {seen(13, "w1.2")}},
			final: final(seen(15, "w0.4"))},
		{name: "closed during the schedule: no final", readers: [][]robustness.LiveSeen{{seen(11, "w0.1")}}},
		{name: "a refused value", readers: [][]robustness.LiveSeen{{seen(11, "w0.1"), seen(12, "w0.3")}},
			want: `read #1 at +0.012s: serves "w0.3" at revision 12, a value the validator refuses`},
		{name: "another revision's value", readers: [][]robustness.LiveSeen{{seen(11, "w1.2")}},
			want: `serves "w1.2" at revision 11, where the key was written "w0.1"`},
		{name: "a revision that did not write the key", readers: [][]robustness.LiveSeen{{seen(14, "w1.2")}},
			want: `serves "w1.2" at revision 14, where the key was not written`},
		{name: "back in time", readers: [][]robustness.LiveSeen{{seen(13, "w1.2"), seen(11, "w0.1")}},
			want: `revision went back from "w1.2"@13 to "w0.1"@11`},
		{name: "absent while present", readers: [][]robustness.LiveSeen{{absent(13)}},
			want: `serves the key as absent at revision 13, where it holds "w1.2"@13`},
		{name: "absent but not the default", readers: [][]robustness.LiveSeen{{{Rev: 14, Value: "w1.2"}}},
			want: `serves "w1.2" while the key is absent, not the default "-"`},
		{name: "stale at the end", readers: [][]robustness.LiveSeen{{seen(13, "w1.2")}}, final: final(seen(13, "w1.2")),
			want: `ends serving "w1.2"@13, the key's final state (revision 15) is "w0.4"@15`},
		{name: "map entry, every state", readers: [][]robustness.LiveSeen{{absent(0), inMap(seen(11, "w0.1"), 11),
			inMap(seen(13, "w1.2"), 13), inMap(absent(14), 14), inMap(seen(15, "w0.4"), 15)}},
			final: final(inMap(seen(15, "w0.4"), 15))},
		{name: "map entry kept after its deletion", readers: [][]robustness.LiveSeen{{inMap(seen(13, "w1.2"), 13), inMap(seen(13, "w1.2"), 14)}},
			want: `read #1 at +0.013s: serves "w1.2"@13 in map@14, where the key is absent`},
		{name: "map entry behind its map", readers: [][]robustness.LiveSeen{{inMap(seen(11, "w0.1"), 13)}},
			want: `serves "w0.1"@11 in map@13, where the key holds "w1.2"@13`},
		{name: "refused at the end: the last good kept", refusedEnd: true,
			readers: [][]robustness.LiveSeen{{seen(13, "w1.2")}}, final: final(seen(15, "w0.4"))},
		{name: "refused at the end: an older good than seen", refusedEnd: true,
			readers: [][]robustness.LiveSeen{{seen(15, "w0.4")}}, final: final(seen(13, "w1.2")),
			want: `ends serving "w1.2"@13, older than revision 15 a reader saw`},
		{name: "refused at the end: served", refusedEnd: true,
			readers: [][]robustness.LiveSeen{{seen(15, "w0.4")}}, final: final(seen(16, "w2.3")),
			want: `at the end: serves "w2.3" at revision 16, a value the validator refuses`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := &robustness.History{Seed: 4, StartRev: 10, FinalRev: 15, Changes: []robustness.Change{
				put(11, "data/k0", "w0.1"),
				put(12, "data/k0", "w0.3"),
				put(13, "data/k0", "w1.2"),
				del(14, "data/k0"),
				put(15, "data/k0", "w0.4"),
			}}
			if tc.refusedEnd {
				h.Changes = append(h.Changes, put(16, "data/k0", "w2.3"))
				h.FinalRev = 16
			}
			h.Lives = []*robustness.LiveRecord{{Name: "l0", Key: "data/k0", Readers: tc.readers, Final: tc.final}}
			vs := robustness.Check(h)
			switch {
			case tc.want == "" && len(vs) > 0:
				t.Fatalf("got %v, want none", vs)
			case tc.want != "" && (len(vs) != 1 || vs[0].Rule != "live" || !strings.Contains(vs[0].Msg, tc.want)):
				t.Fatalf("got %v, want one live violation containing %q", vs, tc.want)
			case tc.want != "":
				t.Logf("rejected: %v", vs[0])
			}
		})
	}
}
