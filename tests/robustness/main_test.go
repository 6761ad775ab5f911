package robustness_test

import (
	"flag"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/etcdkit/etcdkit/etcdtest"
)

var (
	seedFlag      = flag.Int64("seed", 0, "replay only the schedule of this seed")
	schedulesFlag = flag.Int("schedules", 120, "number of short schedules TestRobustness runs (the CI share; -soak runs more)")
	baseFlag      = flag.Int64("base", 0, "base seed of the run (default: random), to replay a whole run from its summary line")
	soakFlag      = flag.Duration("soak", 0, "run schedules for this long instead (also ETCDKIT_SOAK=30m)")
	lanesFlag     = flag.Int("lanes", 2, "clusters running schedules side by side")
	longFlag      = flag.Bool("long", false, "with -seed: replay the seed under the long profile")
	authFlag      = flag.Bool("auth", false, "run lane 1 with etcd auth on (a soak always does); with -seed: replay the seed on a cluster with auth on")
)

// soakDuration returns the soak duration asked for by -soak or
// ETCDKIT_SOAK, 0 for none.
func soakDuration(t *testing.T) time.Duration {
	if *soakFlag > 0 {
		return *soakFlag
	}
	if v := os.Getenv("ETCDKIT_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("ETCDKIT_SOAK=%q: %v", v, err)
		}
		return d
	}
	return 0
}

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.LeakOptions()...)
}
