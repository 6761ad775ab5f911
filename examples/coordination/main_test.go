package main

import (
	"bytes"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/etcdkit/etcdkit/etcdtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.LeakOptions()...)
}

// TestCoordinationDemo runs the demo on its embedded member and checks its
// story: one instance migrates, the others find it done; five reindexers
// finish, never more than two at once.
func TestCoordinationDemo(t *testing.T) {
	var out bytes.Buffer
	if err := run("", 3, 5, &out); err != nil {
		t.Fatalf("demo failed: %v\n%s", err, out.String())
	}
	s := out.String()
	if n := strings.Count(s, ", migrating"); n != 1 {
		t.Errorf("%d instances migrated, want 1:\n%s", n, s)
	}
	if n := strings.Count(s, "the migration is already done"); n != 2 {
		t.Errorf("%d instances found the migration done, want 2:\n%s", n, s)
	}
	for _, want := range []string{"migration: version 2, run once, by instance-", "reindex: 5 shards done, at most 2 reindexers at once"} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
}
