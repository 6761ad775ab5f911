package main

import (
	"bytes"
	"fmt"
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
	if !strings.Contains(s, "migration: version 2, run once, by instance-") {
		t.Errorf("output lacks the migration's result:\n%s", s)
	}
	// How many ran at once depends on timing; more than the limit never.
	var shards, most int
	i := strings.Index(s, "reindex: ")
	if i < 0 {
		t.Fatalf("output lacks the reindex summary:\n%s", s)
	}
	if _, err := fmt.Sscanf(s[i:], "reindex: %d shards done, at most %d reindexers at once", &shards, &most); err != nil {
		t.Fatalf("reindex summary: %v\n%s", err, s)
	}
	if shards != 5 || most < 1 || most > 2 {
		t.Errorf("%d shards done, at most %d at once; want 5, and 1 or 2 at once:\n%s", shards, most, s)
	}
}
