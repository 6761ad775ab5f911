package etcdkit_test

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestRootPackageDependencies checks that a service importing etcdkit does not
// pull in what only the tests need: the etcd server (embedded by etcdtest),
// porcupine (the robustness suite's linearizability checker) or testify.
func TestRootPackageDependencies(t *testing.T) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command: %v", err)
	}
	// Ask the toolchain that the go on PATH belongs to, so that the list is
	// the one its own go binary computes.
	out, err := exec.Command(goCmd, "env", "GOROOT").Output()
	if err != nil {
		t.Fatalf("go env GOROOT: %v", err)
	}
	goBin := filepath.Join(strings.TrimSpace(string(out)), "bin", "go")

	cmd := exec.Command(goBin, "list", "-deps", "github.com/etcdkit/etcdkit")
	out, err = cmd.Output()
	if err != nil {
		var stderr string
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("go list -deps: %v\n%s", err, stderr)
	}
	deps := strings.Fields(string(out))

	forbidden := []string{
		"go.etcd.io/etcd/server",
		"github.com/anishathalye/porcupine",
		"github.com/stretchr/testify",
	}
	var sawClient bool
	for _, dep := range deps {
		if strings.HasPrefix(dep, "go.etcd.io/etcd/client/v3") {
			sawClient = true
		}
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, f+"/") {
				t.Errorf("the root package depends on %s; got it in go list -deps, want only test code to import %s", dep, f)
			}
		}
	}
	// An empty or truncated list would pass the check above vacuously.
	if !sawClient {
		t.Errorf("go list -deps lists %d packages without go.etcd.io/etcd/client/v3; want the etcd client among them", len(deps))
	}
}
