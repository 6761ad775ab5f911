package robustness

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// checkTrackers checks every tracker: each view it delivered is the state
// its service had at some revision, no earlier than the previous view's,
// and its last view is the service's final state.
func checkTrackers(h *History) []Violation {
	var vs []Violation
	for _, tr := range h.Trackers {
		if v, bad := checkTracker(h, tr); bad {
			vs = append(vs, v)
		}
	}
	return vs
}

func checkTracker(h *History, tr *TrackerRecord) (Violation, bool) {
	fail := func(format string, args ...any) (Violation, bool) {
		return Violation{Rule: "tracker", Who: tr.Name, Msg: fmt.Sprintf(format, args...)}, true
	}
	hs := scoped(h.Changes, tr.Prefix, true)
	// The service's view after each revision that changed it, from the
	// (empty) view at StartRev on.
	type point struct {
		rev  int64
		view map[string]string
	}
	points := []point{{h.StartRev, map[string]string{}}}
	st := state{}
	for i, c := range hs {
		st.apply(c.Type, c.Key, c.Value, c.Rev)
		if i+1 < len(hs) && hs[i+1].Rev == c.Rev {
			continue
		}
		v, err := serviceState(st, tr.Prefix)
		if err != nil {
			return fail("the service's keys at revision %d do not decode: %v", c.Rev, err)
		}
		points = append(points, point{c.Rev, v})
	}
	// Views may skip states (a newer view replaces one not yet read), never
	// go back: match each with the first state at or after the previous
	// match.
	at := 0
	for i, view := range tr.Views {
		k := slices.IndexFunc(points[at:], func(p point) bool { return maps.Equal(p.view, view.Instances) })
		if k < 0 {
			from := points[at]
			return fail("view #%d %s received at %s is not a state the service had at or after revision %d (then %s)",
				i, fmtView(view.Instances), fmtTime(view.At), from.rev, fmtView(from.view))
		}
		at += k
	}
	want := points[0].view
	for _, p := range points {
		if p.rev <= h.settled() {
			want = p.view
		}
	}
	if tr.Final != nil && !maps.Equal(tr.Final, want) {
		msg := fmt.Sprintf("ends with %s, the service's final state (revision %d) is %s", fmtView(tr.Final), h.settled(), fmtView(want))
		if tr.Stuck != "" {
			msg += " (" + tr.Stuck + ")"
		}
		return fail("%s", msg)
	}
	return Violation{}, false
}

// fmtView formats a tracker view, "{i0=addr meta ...}".
func fmtView(v map[string]string) string {
	ids := slices.Sorted(maps.Keys(v))
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = id + "=" + v[id]
	}
	return "{" + strings.Join(parts, ", ") + "}"
}
