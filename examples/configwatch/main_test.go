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

// TestConfigWatch runs the demo and checks the service applied each value
// once, in order, with the compacted gap as a resync.
func TestConfigWatch(t *testing.T) {
	var out bytes.Buffer
	if err := run("", "configwatch", time.Minute, &out); err != nil {
		t.Fatalf("configwatch failed: %v\n%s", err, out.String())
	}
	var applied []string
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(line, "service: applies ") {
			applied = append(applied, strings.TrimPrefix(line, "service: applies "))
		}
	}
	want := []string{
		"{RateLimit:100 LogLevel:info} (initial value,",
		"{RateLimit:200 LogLevel:info} (change,",
		"{RateLimit:300 LogLevel:info} (change,",
		"{RateLimit:300 LogLevel:debug} (change,",
		"{RateLimit:75 LogLevel:warn} (resync after compaction,",
	}
	if len(applied) != len(want) {
		t.Fatalf("got %d applied values %q, want %d", len(applied), applied, len(want))
	}
	for i := range want {
		if !strings.HasPrefix(applied[i], want[i]) {
			t.Errorf("applied[%d] = %q, want prefix %q", i, applied[i], want[i])
		}
	}
}
