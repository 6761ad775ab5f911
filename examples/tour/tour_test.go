package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/etcdkit/etcdkit/etcdtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.LeakOptions()...)
}

// TestTour runs the whole tour on its embedded cluster, as
// `go run ./examples/tour` does, and checks that every chapter finished.
func TestTour(t *testing.T) {
	var out bytes.Buffer
	if err := run("", 3*time.Minute, &out); err != nil {
		t.Fatalf("tour failed: %v\n%s", err, out.String())
	}
	for _, want := range []string{"Typed configuration", "Tour finished"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("tour output lacks %q:\n%s", want, out.String())
		}
	}
	if n := strings.Count(out.String(), "\n"); n < 20 {
		t.Errorf("tour printed %d lines, want a full narration", n)
	}
}
