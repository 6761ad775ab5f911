package robustness

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/etcdkit/etcdkit"
)

// linearizabilityTimeout bounds porcupine's search on one key's history. The
// histories of a short schedule take milliseconds; a timeout is reported as
// a note, not a violation.
const linearizabilityTimeout = 20 * time.Second

// register is the model's state: one key of etcd as the writers see it.
type register struct {
	Exists bool
	Value  string
	// Rev is the key's mod revision, 0 when absent.
	Rev int64
	// Floor is the highest revision the key has had, deletes included as
	// far as they are known: revisions only grow.
	Floor int64
}

// regInput is an operation's input.
type regInput struct {
	Kind     OpKind
	Value    string
	Expected int64
}

// regOutput is an operation's result.
type regOutput struct {
	Outcome Outcome
	Found   bool
	Result  string
	Rev     int64
}

// tagOf returns the tag part of a stored value: the whole value for a put,
// the part before "^" for an update.
func tagOf(v string) string {
	tag, _, _ := strings.Cut(v, "^")
	return tag
}

// UpdateValue returns the value an Update with tag stores over cur (exists
// false: the key was absent). Writers and the model share it.
func UpdateValue(tag, cur string, exists bool) string {
	if !exists {
		return tag + "^"
	}
	return tag + "^" + tagOf(cur)
}

func expectedHolds(st register, expected int64) bool {
	if expected == 0 {
		return !st.Exists
	}
	return st.Exists && st.Rev == expected
}

// registerStep is the sequential specification of one key.
func registerStep(s, i, o any) (bool, any) {
	st, in, out := s.(register), i.(regInput), o.(regOutput)
	put := func(value string, rev int64) (bool, any) {
		if rev <= st.Floor {
			return false, st
		}
		return true, register{Exists: true, Value: value, Rev: rev, Floor: rev}
	}
	switch in.Kind {
	case OpPut:
		return put(in.Value, out.Rev)
	case OpCAS:
		if out.Outcome == Conflict {
			if expectedHolds(st, in.Expected) || st.Exists != out.Found {
				return false, st
			}
			return !out.Found || st.Value == out.Result && st.Rev == out.Rev, st
		}
		if !expectedHolds(st, in.Expected) {
			return false, st
		}
		return put(in.Value, out.Rev)
	case OpUpdate:
		if out.Result != UpdateValue(in.Value, st.Value, st.Exists) {
			return false, st
		}
		return put(out.Result, out.Rev)
	case OpGet:
		if !out.Found {
			return !st.Exists, st
		}
		return st.Exists && st.Value == out.Result && st.Rev == out.Rev, st
	case OpDelete:
		return true, register{Floor: st.Floor}
	}
	return false, st
}

func describeOp(i, o any) string {
	in, out := i.(regInput), o.(regOutput)
	var call string
	switch in.Kind {
	case OpPut:
		call = fmt.Sprintf("put(%q)", in.Value)
	case OpCAS:
		call = fmt.Sprintf("cas(%q, expect %d)", in.Value, in.Expected)
	case OpUpdate:
		call = fmt.Sprintf("update(tag %q)", in.Value)
	case OpGet:
		call = "get()"
	case OpDelete:
		call = "delete()"
	}
	switch {
	case out.Outcome == Unknown:
		return call + " -> unknown"
	case out.Outcome == Conflict && out.Found:
		return fmt.Sprintf("%s -> conflict, found %q@%d", call, out.Result, out.Rev)
	case out.Outcome == Conflict:
		return call + " -> conflict, absent"
	case in.Kind == OpGet && !out.Found:
		return call + " -> not found"
	case in.Kind == OpGet:
		return fmt.Sprintf("%s -> %q@%d", call, out.Result, out.Rev)
	case in.Kind == OpUpdate:
		return fmt.Sprintf("%s -> %q@%d", call, out.Result, out.Rev)
	case in.Kind == OpDelete:
		return call + " -> ok"
	}
	return fmt.Sprintf("%s -> @%d", call, out.Rev)
}

func describeRegister(s any) string {
	st := s.(register)
	if !st.Exists {
		return "absent"
	}
	return fmt.Sprintf("%q@%d", st.Value, st.Rev)
}

// registerModel is the porcupine model of one key.
var registerModel = porcupine.Model{
	Init:              func() any { return register{} },
	Step:              registerStep,
	DescribeOperation: describeOp,
	DescribeState:     describeRegister,
}

// PorcupineOps turns the recorded operations on key into porcupine
// operations. Calls whose outcome is unknown are settled with the cluster's
// history where it can: a write whose unique value appears in the history
// applied, at the revision the history shows, and gets an open return (it may
// have taken effect any time after its invoke); one whose value never appears
// never applied and is left out, as are failed calls and reads without a
// result. An unknown Delete stays in with an open return.
func PorcupineOps(h *History, key string) []porcupine.Operation {
	puts := map[string]Change{}
	for _, c := range h.Changes {
		if c.Key == key && c.Type == etcdkit.Put {
			puts[tagOf(c.Value)] = c
		}
	}
	var ops []porcupine.Operation
	for _, op := range h.Ops {
		if op.Key != key {
			continue
		}
		in := regInput{Kind: op.Kind, Value: op.Value, Expected: op.Expected}
		out := regOutput{Outcome: op.Outcome, Found: op.Found, Result: op.Result, Rev: op.Rev}
		ret := int64(op.Return)
		switch op.Outcome {
		case Failed:
			continue
		case Unknown:
			switch op.Kind {
			case OpGet:
				continue
			case OpDelete:
				ret = math.MaxInt64
			default:
				c, ok := puts[op.Value]
				if !ok {
					continue
				}
				out = regOutput{Outcome: OK, Result: c.Value, Rev: c.Rev}
				ret = math.MaxInt64
			}
		}
		ops = append(ops, porcupine.Operation{ClientId: op.Client, Input: in, Output: out, Call: int64(op.Invoke), Return: ret})
	}
	return ops
}

// CheckLinearizable checks, key by key, that the writers' operations are
// linearizable against a register with revisions (see PorcupineOps), and
// reports each key whose history is not.
func CheckLinearizable(h *History) []Violation {
	keys := map[string]bool{}
	for _, op := range h.Ops {
		keys[op.Key] = true
	}
	var vs []Violation
	for _, key := range slices.Sorted(maps.Keys(keys)) {
		ops := PorcupineOps(h, key)
		res, info := porcupine.CheckOperationsVerbose(registerModel, ops, linearizabilityTimeout)
		switch res {
		case porcupine.Illegal:
			vs = append(vs, Violation{Rule: "linearizability", Who: key, Msg: explainIllegal(ops, info)})
		case porcupine.Unknown:
			vs = append(vs, Violation{Rule: "linearizability", Who: key, Msg: fmt.Sprintf(
				"porcupine could not decide within %v on %d operations (not a proof of a bug; rerun the seed)",
				linearizabilityTimeout, len(ops))})
		}
	}
	return vs
}

// explainIllegal describes a non-linearizable history: the longest prefix
// porcupine could linearize, the state it leads to, and the operations that
// could come next but contradict it.
func explainIllegal(ops []porcupine.Operation, info porcupine.LinearizationInfo) string {
	var longest []int
	for _, part := range info.PartialLinearizations() {
		for _, l := range part {
			// The first in operation order among the longest, so that the
			// explanation does not depend on the search's scheduling.
			if len(l) > len(longest) || len(l) == len(longest) && slices.Compare(l, longest) < 0 {
				longest = l
			}
		}
	}
	st := registerModel.Init()
	done := map[int]bool{}
	var b strings.Builder
	fmt.Fprintf(&b, "not linearizable: at most %d of %d operations can be ordered", len(longest), len(ops))
	for _, id := range longest {
		_, st = registerStep(st, ops[id].Input, ops[id].Output)
		done[id] = true
	}
	fmt.Fprintf(&b, "; after %d of them the key is %s", len(longest), describeRegister(st))
	if n := len(longest); n > 0 {
		last := ops[longest[n-1]]
		fmt.Fprintf(&b, " (last: %s by w%d at %s)", describeOp(last.Input, last.Output), last.ClientId, fmtTime(time.Duration(last.Call)))
	}
	// The candidates for the next step: pending operations invoked before
	// the earliest return among them.
	var pending []int
	for id := range ops {
		if !done[id] {
			pending = append(pending, id)
		}
	}
	slices.SortFunc(pending, func(a, b int) int { return cmp.Compare(ops[a].Call, ops[b].Call) })
	minRet := int64(math.MaxInt64)
	for _, id := range pending {
		minRet = min(minRet, ops[id].Return)
	}
	b.WriteString("; none of these can come next:")
	for _, id := range pending {
		op := ops[id]
		if op.Call > minRet {
			break
		}
		ret := "open"
		if op.Return != math.MaxInt64 {
			ret = fmtTime(time.Duration(op.Return))
		}
		fmt.Fprintf(&b, " [w%d %s, %s..%s]", op.ClientId, describeOp(op.Input, op.Output), fmtTime(time.Duration(op.Call)), ret)
	}
	return b.String()
}
