package robustness

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/etcdkit/etcdkit"
)

// LeadershipTolerance is how late the record of a leadership's end may be:
// the time is taken by a callback on the leadership's Context, which runs
// on a goroutine of its own.
const LeadershipTolerance = 100 * time.Millisecond

// checkElections checks every election against the cluster's history: each
// write to the fenced key was made with the token of the candidate that led
// at that revision, tokens never go back, and no leadership began before
// the one with the previous token had ended.
func checkElections(h *History) []Violation {
	var vs []Violation
	for _, e := range h.Elections {
		vs = append(vs, checkElection(h, e)...)
	}
	return vs
}

func checkElection(h *History, e *ElectionRecord) []Violation {
	var vs []Violation
	fail := func(who, format string, args ...any) {
		vs = append(vs, Violation{Rule: "fencing", Who: who, Msg: fmt.Sprintf(format, args...)})
	}
	// Candidate key -> create revision, as of the change being looked at.
	cands := map[string]int64{}
	leader := func() int64 {
		var min int64
		for _, cr := range cands {
			if min == 0 || cr < min {
				min = cr
			}
		}
		return min
	}
	var last struct {
		id    string
		token int64
		rev   int64
	}
	for _, c := range h.Changes {
		if e.Candidates != "" && strings.HasPrefix(c.Key, e.Candidates) {
			if c.Type == etcdkit.Delete {
				delete(cands, c.Key)
			} else {
				cands[c.Key] = c.CreateRev
			}
			continue
		}
		if c.Key != e.Fenced || c.Type != etcdkit.Put {
			continue
		}
		f := strings.Fields(c.Value)
		if len(f) != 3 {
			fail(e.Name, "the fenced key holds %q at revision %d, not \"<id> <token> <seq>\"", c.Value, c.Rev)
			continue
		}
		token, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			fail(e.Name, "the fenced key holds %q at revision %d: bad token: %v", c.Value, c.Rev, err)
			continue
		}
		if e.Candidates != "" {
			if cur := leader(); cur != token {
				fail(f[0], "guarded write %q applied at revision %d with token %d, but the leader key at that revision "+
					"had token %d (0: no candidate)", c.Value, c.Rev, token, cur)
			}
		}
		if token < last.token {
			fail(f[0], "two leaders' guarded writes interleave: %s (token %d) wrote at revision %d after %s (token %d) wrote at revision %d",
				f[0], token, c.Rev, last.id, last.token, last.rev)
		}
		last.id, last.token, last.rev = f[0], token, c.Rev
	}
	ls := slices.Clone(e.Leaderships)
	slices.SortStableFunc(ls, func(a, b LeaderRecord) int { return cmp.Compare(a.Token, b.Token) })
	for i := 1; i < len(ls); i++ {
		prev, cur := ls[i-1], ls[i]
		if prev.Token == cur.Token {
			fail(cur.ID, "two leaderships with token %d: %s won at %s and %s at %s",
				cur.Token, prev.ID, fmtTime(prev.Won), cur.ID, fmtTime(cur.Won))
			continue
		}
		if prev.Lost == 0 || prev.Lost > cur.Won+LeadershipTolerance {
			end := "never"
			if prev.Lost != 0 {
				end = fmtTime(prev.Lost)
			}
			fail(cur.ID, "two leaders at once: %s (token %d) won at %s, while %s (token %d, won at %s) was told it lost "+
				"leadership only at %s", cur.ID, cur.Token, fmtTime(cur.Won), prev.ID, prev.Token, fmtTime(prev.Won), end)
		}
	}
	return vs
}
