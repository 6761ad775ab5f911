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

// TestDiscoveryDemo runs the demo on its embedded cluster and checks the
// story's turns: the silent node dropped, the new node served, the clean
// shutdown seen at once.
func TestDiscoveryDemo(t *testing.T) {
	var out bytes.Buffer
	if err := run("", "discovery-test", 2*time.Second, time.Minute, &out); err != nil {
		t.Fatalf("demo failed: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"gateway: live nodes [node-1(v1,zone-1) node-2(v1,zone-2) node-3(v1,zone-3)]",
		"the gateway dropped node-3",
		"gateway: live nodes [node-1(v1,zone-1) node-2(v1,zone-2) node-4(v1,zone-4)]",
		"node-4×",
		"gateway: live nodes [node-2(v1,zone-2) node-4(v1,zone-4)]",
		"done",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "request failed") {
		t.Errorf("a request found no live node:\n%s", out.String())
	}
}
