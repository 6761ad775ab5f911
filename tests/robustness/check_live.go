package robustness

import (
	"fmt"

	"github.com/etcdkit/etcdkit"
)

// checkLives checks every Live's readers: each state a reader saw is one
// the cluster held (a good value at the revision of its write, or the key
// absent, served as the default), in revision order, and the Live ends at
// the key's final state (see liveFinal). An entry of a LiveMap is checked
// as a Live of its key, and a present entry must also still be the key's
// state at the revision the map reflected when it was read (MapRev): a
// map that has passed a key's deletion no longer serves it. That rule
// takes every value written as one the map must serve, which holds for
// keys written only good values (see Fresh).
func checkLives(h *History) []Violation {
	var vs []Violation
	for _, l := range h.Lives {
		if v, bad := checkLive(h, l); bad {
			vs = append(vs, v)
		}
	}
	return vs
}

func checkLive(h *History, l *LiveRecord) (Violation, bool) {
	fail := func(format string, args ...any) (Violation, bool) {
		return Violation{Rule: "live", Who: l.Name, Msg: fmt.Sprintf(format, args...)}, true
	}
	hs := scoped(h.Changes, l.Key, false)
	puts := map[int64]string{}
	for _, c := range hs {
		if c.Type == etcdkit.Put {
			puts[c.Rev] = c.Value
		}
	}
	// valid says what is wrong with a state a Live served, or "".
	valid := func(s LiveSeen) string {
		if !s.Present {
			if s.Value != LiveDefault {
				return fmt.Sprintf("serves %q while the key is absent, not the default %q", s.Value, LiveDefault)
			}
			if kv, ok := stateAt(hs, s.Rev)[l.Key]; ok && s.Rev > h.StartRev {
				return fmt.Sprintf("serves the key as absent at revision %d, where it holds %s", s.Rev, kv)
			}
			return ""
		}
		v, ok := puts[s.Rev]
		switch {
		case !ok:
			return fmt.Sprintf("serves %q at revision %d, where the key was not written", s.Value, s.Rev)
		case v != s.Value:
			return fmt.Sprintf("serves %q at revision %d, where the key was written %q", s.Value, s.Rev, v)
		case LiveValid(v) != nil:
			return fmt.Sprintf("serves %q at revision %d, a value the validator refuses (%v)", v, s.Rev, LiveValid(v))
		}
		if s.MapRev > 0 {
			switch kv, ok := stateAt(hs, s.MapRev)[l.Key]; {
			case !ok:
				return fmt.Sprintf("serves %s, where the key is absent", s)
			case kv.Rev != s.Rev:
				return fmt.Sprintf("serves %s, where the key holds %s", s, kv)
			}
		}
		return ""
	}
	var last int64
	for r, seen := range l.Readers {
		var prev LiveSeen
		for i, s := range seen {
			if msg := valid(s); msg != "" {
				return fail("reader %d, read #%d at %s: %s", r, i, fmtTime(s.At), msg)
			}
			if i > 0 && s.Rev < prev.Rev {
				return fail("reader %d, read #%d at %s: revision went back from %s to %s", r, i, fmtTime(s.At), prev, s)
			}
			prev = s
		}
		if len(seen) > 0 {
			last = max(last, prev.Rev)
		}
	}
	if l.Final == nil {
		return Violation{}, false
	}
	f := *l.Final
	want, exact := liveFinal(hs, l.Key, h.settled())
	switch {
	case exact && (f.Present != want.Present || f.Value != want.Value || (want.Present && f.Rev != want.Rev)):
		msg := fmt.Sprintf("ends serving %s, the key's final state (revision %d) is %s", f, h.settled(), want)
		if l.Stuck != "" {
			msg += " (" + l.Stuck + ")"
		}
		return fail("%s", msg)
	case !exact:
		if msg := valid(f); msg != "" {
			return fail("at the end: %s", msg)
		}
		if f.Rev < last {
			return fail("ends serving %s, older than revision %d a reader saw", f, last)
		}
	}
	return Violation{}, false
}
