package etcdkit_test

import (
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// TestRootPackageDependencies checks that a service importing etcdkit does not
// pull in what only the tests need: the etcd server (embedded by etcdtest),
// porcupine (the robustness suite's linearizability checker) or testify.
func TestRootPackageDependencies(t *testing.T) {
	deps := strings.Fields(string(runGo(t, "list", "-deps", "github.com/etcdkit/etcdkit")))

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

// TestRootModuleRequirements checks that the root go.mod does not require
// what only the robustness suite needs: that suite is the module in tests/,
// with its own go.mod, so that a service requiring etcdkit does not get
// porcupine in its module graph.
func TestRootModuleRequirements(t *testing.T) {
	var mod struct {
		Module  struct{ Path string }
		Require []struct{ Path string }
	}
	out := runGo(t, "mod", "edit", "-json")
	if err := json.Unmarshal(out, &mod); err != nil {
		t.Fatalf("go mod edit -json: %v\n%s", err, out)
	}
	if mod.Module.Path != "github.com/etcdkit/etcdkit" {
		t.Fatalf("go mod edit -json read module %q; want github.com/etcdkit/etcdkit", mod.Module.Path)
	}
	for _, r := range mod.Require {
		if r.Path == "github.com/anishathalye/porcupine" {
			t.Errorf("the root go.mod requires %s; want it only in tests/go.mod", r.Path)
		}
	}
}

// runGo runs the go command of the toolchain that the go on PATH belongs to
// (so that the answer is the one its own go binary computes) in the root
// package's folder, and returns its standard output.
func runGo(t *testing.T, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(goCommand(t), args...).Output()
	if err != nil {
		var stderr string
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return out
}
