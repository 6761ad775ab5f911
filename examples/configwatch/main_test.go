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

// TestConfigWatch runs the demo and checks what the service did, in order:
// it applied each good value once, rejected the bad JSON and the invalid
// value while keeping the last good one, took missing fields from the
// default, kept serving through the blackhole, and started from its
// snapshot while the member was down, then converged.
func TestConfigWatch(t *testing.T) {
	var out bytes.Buffer
	if err := demo("configwatch", time.Minute, &out); err != nil {
		t.Fatalf("configwatch failed: %v\n%s", err, out.String())
	}
	var service []string
	for _, line := range strings.Split(out.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, "service: "); ok {
			service = append(service, rest)
		}
	}
	want := []string{
		"applies {RateLimit:100 LogLevel:info}",
		"rejects revision ",
		"rejects revision ",
		"applies {RateLimit:300 LogLevel:info}",
		"notices the silence (Stale) and keeps serving {RateLimit:300 LogLevel:info}",
		"applies {RateLimit:400 LogLevel:debug}",
		"stops",
		"starts while etcd is down and serves {RateLimit:400 LogLevel:debug} from its snapshot",
		"stays in rotation while etcd is down: readiness 200, liveness 200",
		"applies {RateLimit:450 LogLevel:debug}",
	}
	if len(service) != len(want) {
		t.Fatalf("got %d service lines, want %d:\n%s", len(service), len(want), out.String())
	}
	for i := range want {
		if !strings.HasPrefix(service[i], want[i]) {
			t.Errorf("service line %d = %q, want prefix %q", i, service[i], want[i])
		}
	}
	for i, reason := range []string{"json", "rate_limit -1 must be positive"} {
		if !strings.Contains(service[1+i], "keeps {RateLimit:100 LogLevel:info}") || !strings.Contains(service[1+i], reason) {
			t.Errorf("rejection %d = %q, want the last good value kept and %q", i, service[1+i], reason)
		}
	}
	if !strings.Contains(service[7], "(stale true)") {
		t.Errorf("cold start = %q, want stale", service[7])
	}
}
