package robustness_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/etcdkit/etcdkit/etcdtest"
	"github.com/etcdkit/etcdkit/tests/robustness"
)

// TestHoldingsUnderSchedules runs the Mutexes and Semaphores workloads
// alone under a few generated short schedules, and checks their histories:
// no overlapping holdings, guarded writes only by holders at their
// revision, counters equal to the updates that applied. TestRobustness runs
// the same workloads beside all the others.
func TestHoldingsUnderSchedules(t *testing.T) {
	c := etcdtest.StartCluster(t, 3, etcdtest.WithProxy())
	env := robustness.NewEnv(t, c)
	base := time.Now().UnixNano() & (1<<40 - 1)
	for i := range int64(3) {
		seed := base + i
		s := robustness.Generate(seed, robustness.ShortProfile)
		r := env.Run(t, s, []robustness.Workload{&robustness.Mutexes{}, &robustness.Semaphores{}})
		if vs := robustness.Check(r.History); len(vs) > 0 {
			t.Errorf("%s", robustness.Report(r, vs, "rerun TestHoldingsUnderSchedules (workloads alone)"))
		}
		for _, hr := range r.History.Holdings {
			assert.NotEmpty(t, hr.Holdings, "seed %d: %s %q was never held", seed, hr.Kind, hr.Name)
			t.Logf("seed %d: %s: %d holdings, %d acknowledged and %d unknown guarded updates", seed, hr.Kind, len(hr.Holdings), hr.Acked, hr.Unknown)
		}
	}
}
