package robustness_test

import (
	"reflect"
	"testing"
	"time"

	"github.com/etcdkit/etcdkit/proxy"
	"github.com/etcdkit/etcdkit/tests/robustness"
)

// TestGenerate checks the schedule rules on many seeds: the same seed gives
// the same schedule, every fault ends within the schedule, and at most one
// member is out at a time except for one short quorum loss. It also checks
// that schedules explore stopping a member while its proxy silences what
// clients send.
func TestGenerate(t *testing.T) {
	for _, p := range []robustness.Profile{robustness.ShortProfile, robustness.LongProfile} {
		losses, silencedStops := 0, 0
		for seed := int64(1); seed <= 2000; seed++ {
			s := robustness.Generate(seed, p)
			if again := robustness.Generate(seed, p); !reflect.DeepEqual(s, again) {
				t.Fatalf("seed %d: got %v, then %v; want the same schedule", seed, s, again)
			}
			if s.Duration < p.MinDuration || s.Duration > p.MaxDuration {
				t.Fatalf("seed %d: duration %v outside [%v, %v]", seed, s.Duration, p.MinDuration, p.MaxDuration)
			}
			maxFaults := p.MaxFaults
			if p.LongCut > 0 {
				maxFaults++
			}
			if len(s.Faults) == 0 || len(s.Faults) > maxFaults {
				t.Fatalf("seed %d: %d faults, want 1 to %d", seed, len(s.Faults), maxFaults)
			}
			var members []robustness.Fault
			silencedStop := false
			for _, f := range s.Faults {
				if f.At+f.For > s.Duration {
					t.Fatalf("seed %d: %v ends after the schedule's %v", seed, f, s.Duration)
				}
				stops := f.Kind == robustness.MemberStop || f.Kind == robustness.MemberKill
				for _, g := range s.Faults {
					silences := (g.Kind == robustness.ProxyBlackhole || g.Kind == robustness.ProxyPause) && g.Dir != proxy.Downstream
					if stops && silences && g.Member == f.Member && g.At <= f.At && f.At <= g.At+g.For {
						silencedStop = true
					}
				}
				switch f.Kind {
				case robustness.MemberStop, robustness.MemberKill, robustness.MemberPartition:
					members = append(members, f)
				}
			}
			overlap := time.Duration(0)
			for i := range members {
				for j := i + 1; j < len(members); j++ {
					a, b := members[i], members[j]
					if o := min(a.At+a.For, b.At+b.For) - max(a.At, b.At); o >= 0 {
						if overlap > 0 {
							t.Fatalf("seed %d: more than one quorum loss: %v", seed, s)
						}
						overlap = max(o, 1)
					}
				}
			}
			if overlap > p.MaxQuorumLoss {
				t.Fatalf("seed %d: quorum lost for %v, more than %v: %v", seed, overlap, p.MaxQuorumLoss, s)
			}
			if overlap > 0 {
				losses++
			}
			if silencedStop {
				silencedStops++
			}
		}
		if losses == 0 {
			t.Errorf("profile %+v: no schedule of 2000 loses quorum", p)
		}
		if silencedStops == 0 {
			t.Errorf("profile %+v: no schedule of 2000 stops a member while its proxy silences its clients", p)
		}
		t.Logf("profile %v-%v: %d schedules of 2000 lose quorum, %d stop a member behind its silent proxy",
			p.MinDuration, p.MaxDuration, losses, silencedStops)
	}
}
