package robustness

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"
)

// fmtTime formats a time relative to the start of the schedule: "+1.234s".
func fmtTime(d time.Duration) string { return fmt.Sprintf("+%.3fs", d.Seconds()) }

// line is one line of a timeline.
type line struct {
	at   time.Duration
	who  string
	text string
}

// describe formats an operation for the timeline.
func (op Op) describe() string {
	var call string
	switch op.Kind {
	case OpPut:
		call = fmt.Sprintf("put %s %q", op.Key, op.Value)
	case OpCAS:
		call = fmt.Sprintf("cas %s %q expect %d", op.Key, op.Value, op.Expected)
	case OpUpdate:
		call = fmt.Sprintf("update %s tag %q", op.Key, op.Value)
	case OpGet:
		call = "get " + op.Key
	case OpDelete:
		call = "delete " + op.Key
	}
	var res string
	switch {
	case op.Outcome == Unknown || op.Outcome == Failed:
		res = fmt.Sprintf("%v (%s)", op.Outcome, op.Err)
	case op.Outcome == Conflict && op.Found:
		res = fmt.Sprintf("conflict, found %q@%d", op.Result, op.Rev)
	case op.Outcome == Conflict:
		res = "conflict, absent"
	case op.Kind == OpGet && !op.Found:
		res = "not found"
	case op.Kind == OpGet || op.Kind == OpUpdate:
		res = fmt.Sprintf("%q@%d", op.Result, op.Rev)
	case op.Kind == OpDelete:
		res = "ok"
	default:
		res = fmt.Sprintf("@%d", op.Rev)
	}
	return fmt.Sprintf("%s -> %s (returned %s)", call, res, fmtTime(op.Return))
}

// Timeline formats the history as lines ordered by time: fault steps,
// notes, calls (at their invoke time, with their return time), and the
// events received by the subscribers named in focus (all subscribers if
// focus is empty and they received few events). The cluster's real
// history follows, one change per line.
func Timeline(h *History, focus ...string) string {
	var ls []line
	for _, f := range h.Faults {
		text := f.Desc
		if f.Took >= time.Millisecond {
			text += fmt.Sprintf(" (took %.3fs)", f.Took.Seconds())
		}
		ls = append(ls, line{f.At, "fault", text})
	}
	for _, n := range h.Notes {
		ls = append(ls, line{n.At, n.Who, n.Text})
	}
	for _, c := range h.Raft {
		ls = append(ls, line{c.At, "raft", c.String()})
	}
	for _, st := range h.Stalls {
		if st.Len() >= timelineStall {
			ls = append(ls, line{st.From, "stall", fmt.Sprintf("the process did not run a due goroutine for %.3fs (until %s)", st.Len().Seconds(), fmtTime(st.To))})
		}
	}
	for _, op := range h.Ops {
		ls = append(ls, line{op.Invoke, fmt.Sprintf("w%d", op.Client), op.describe()})
	}
	total := 0
	for _, s := range h.Subscribers {
		total += len(s.Events)
	}
	for _, s := range h.Subscribers {
		if len(focus) > 0 && !slices.Contains(focus, s.Name) || len(focus) == 0 && total > 300 {
			continue
		}
		who, _, _ := strings.Cut(s.Name, " ")
		for i, e := range s.Events {
			ls = append(ls, line{e.At, who, fmt.Sprintf("#%d %v", i, e)})
		}
	}
	slices.SortStableFunc(ls, func(a, b line) int { return cmp.Compare(a.at, b.at) })
	var b strings.Builder
	fmt.Fprintf(&b, "timeline of seed %d (namespace %s, revisions %d..%d, settled at %d):\n",
		h.Seed, h.Namespace, h.StartRev, h.FinalRev, h.SettledRev)
	fmt.Fprintf(&b, "  process stalls: %v\n", h.StallSummary())
	for _, s := range h.Subscribers {
		fmt.Fprintf(&b, "  subscriber %s: %d events\n", s.Name, len(s.Events))
	}
	for _, l := range ls {
		fmt.Fprintf(&b, "  %s %-7s %s\n", fmtTime(l.at), l.who, l.text)
	}
	b.WriteString("cluster history:\n")
	for _, c := range h.Changes {
		lease := ""
		if c.Lease != 0 {
			lease = fmt.Sprintf(" lease %x", c.Lease)
		}
		fmt.Fprintf(&b, "  %v%s\n", c, lease)
	}
	for _, c := range h.Compactions {
		fmt.Fprintf(&b, "  compacted at %d (%s)\n", c.Rev, fmtTime(c.At))
	}
	return b.String()
}

// timelineStall is the shortest stall of the process a timeline shows.
const timelineStall = 100 * time.Millisecond

// Report formats a schedule whose history has violations: the seed, how to
// replay it (replay is the command line), the violations (those explained
// by starvation with their evidence), the process's stalls and the
// timeline focused on the subscribers they name.
func Report(r *Result, vs []Violation, replay string) string {
	var b strings.Builder
	starved := len(vs) - len(Failures(vs))
	fmt.Fprintf(&b, "seed %d: %d violation(s), %d of them explained by starvation; replay with: %s\n",
		r.Schedule.Seed, len(vs), starved, replay)
	fmt.Fprintf(&b, "process stalls: %v\n", r.History.StallSummary())
	var focus []string
	for _, v := range vs {
		fmt.Fprintf(&b, "  %v\n", v)
		if v.Rule == "watch" {
			focus = append(focus, v.Who)
		}
	}
	b.WriteString(r.Schedule.String())
	b.WriteByte('\n')
	if len(focus) == 0 {
		focus = []string{"-"}
	}
	b.WriteString(Timeline(r.History, focus...))
	return b.String()
}
