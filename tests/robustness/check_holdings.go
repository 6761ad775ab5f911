package robustness

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/etcdkit/etcdkit"
)

// checkHoldings checks every mutex and semaphore against the cluster's
// history and against what their holders saw.
func checkHoldings(h *History) []Violation {
	var vs []Violation
	for _, hr := range h.Holdings {
		vs = append(vs, checkHolding(h, hr)...)
	}
	return vs
}

// checkHolding verifies, for one mutex or semaphore:
//   - every guarded write carries the token of a key that was among the
//     Limit oldest holder keys at its revision (in the cluster's history);
//   - the counter goes up by one at each write, and ends between the
//     acknowledged updates and those plus the unknown ones;
//   - no more than Limit holdings were live at once as their holders saw
//     them: a holding won while others held counts those whose Context was
//     not yet cancelled (within LeadershipTolerance).
func checkHolding(h *History, hr *HoldingRecord) []Violation {
	var vs []Violation
	rule := hr.Kind
	fail := func(who, format string, args ...any) {
		vs = append(vs, Violation{Rule: rule, Who: who, Msg: fmt.Sprintf(format, args...)})
	}
	keys := map[string]int64{} // holder key -> create revision
	holders := func() []int64 {
		var crs []int64
		for _, cr := range keys {
			crs = append(crs, cr)
		}
		slices.Sort(crs)
		return crs[:min(len(crs), hr.Limit)]
	}
	counter, writes := 0, 0
	for _, c := range h.Changes {
		switch {
		case hr.Holders != "" && strings.HasPrefix(c.Key, hr.Holders):
			if c.Type == etcdkit.Delete {
				delete(keys, c.Key)
			} else {
				keys[c.Key] = c.CreateRev
			}
		case c.Key == hr.Counter && c.Type == etcdkit.Put:
			n, err := strconv.Atoi(c.Value)
			if err != nil || n != counter+1 {
				fail(hr.Name, "the counter went from %d to %q at revision %d", counter, c.Value, c.Rev)
			}
			counter = n
			writes++
		case c.Key == hr.Last && c.Type == etcdkit.Put:
			f := strings.Fields(c.Value)
			if len(f) != 3 {
				fail(hr.Name, "%s holds %q at revision %d, not \"<id> <token> <counter>\"", hr.Last, c.Value, c.Rev)
				continue
			}
			token, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				fail(f[0], "%s holds %q at revision %d: bad token", hr.Last, c.Value, c.Rev)
				continue
			}
			if cur := holders(); !slices.Contains(cur, token) {
				fail(f[0], "guarded write %q applied at revision %d with token %d, but the holders at that revision had tokens %v",
					c.Value, c.Rev, token, cur)
			}
		}
	}
	if counter < hr.Acked || counter > hr.Acked+hr.Unknown {
		fail(hr.Name, "the counter ends at %d after %d acknowledged and %d unknown guarded updates", counter, hr.Acked, hr.Unknown)
	}

	ls := slices.Clone(hr.Holdings)
	slices.SortStableFunc(ls, func(a, b LeaderRecord) int { return cmp.Compare(a.Won, b.Won) })
	for i, cur := range ls {
		var live []string
		for _, o := range ls[:i+1] {
			if o.Lost == 0 || o.Lost > cur.Won+LeadershipTolerance || o.Token == cur.Token {
				live = append(live, fmt.Sprintf("%s (token %d, won at %s, lost at %s)", o.ID, o.Token, fmtTime(o.Won), fmtTime(o.Lost)))
			}
		}
		if len(live) > hr.Limit {
			fail(cur.ID, "%d holdings at once when %s won at %s, limit %d: %s", len(live), cur.ID, fmtTime(cur.Won), hr.Limit,
				strings.Join(live, "; "))
		}
	}
	return vs
}
