package etcdtest

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"testing"
)

// New starts one member like Start, for programs that are not tests:
// examples, demos, a local playground. The caller must Close it, which also
// removes its data. Methods that take a testing.TB need one; pass nil only
// where documented.
func New(opts ...Option) (*Server, error) {
	g, err := startStandalone(1, opts)
	if err != nil {
		return nil, err
	}
	return g.members[0], nil
}

// NewCluster starts n members like StartCluster, for programs that are not
// tests. The caller must Close it, which also removes the members' data.
func NewCluster(n int, opts ...Option) (*Cluster, error) {
	if n < 1 {
		return nil, fmt.Errorf("etcdtest: NewCluster with %d members, want at least 1", n)
	}
	g, err := startStandalone(n, opts)
	if err != nil {
		return nil, err
	}
	return &Cluster{g: g}, nil
}

// startStandalone runs the test harness's start-up with a stand-in for
// testing.TB and turns its fatal failures into an error.
func startStandalone(n int, opts []Option) (*group, error) {
	tb := &standaloneTB{}
	var g *group
	done := make(chan struct{})
	go func() {
		// Fatalf ends this goroutine with runtime.Goexit, as in a test.
		defer close(done)
		g = startGroup(tb, n, buildOptions(tb, opts))
	}()
	<-done
	if g == nil {
		tb.runCleanups()
		return nil, tb.err()
	}
	g.mu.Lock()
	g.release = tb.runCleanups
	g.mu.Unlock()
	return g, nil
}

// standaloneTB implements the part of testing.TB the harness uses. The
// embedded interface is nil: calling any other method panics, which only a
// change to this package could do.
type standaloneTB struct {
	testing.TB

	mu       sync.Mutex
	cleanups []func()
	fatal    []string
}

func (t *standaloneTB) Helper()      {}
func (t *standaloneTB) Name() string { return "etcdtest" }

func (t *standaloneTB) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.fatal) > 0
}

func (t *standaloneTB) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}

func (t *standaloneTB) Log(args ...any)                 {}
func (t *standaloneTB) Logf(format string, args ...any) {}

func (t *standaloneTB) Fatal(args ...any) {
	t.mu.Lock()
	t.fatal = append(t.fatal, fmt.Sprint(args...))
	t.mu.Unlock()
	runtime.Goexit()
}

func (t *standaloneTB) Fatalf(format string, args ...any) { t.Fatal(fmt.Sprintf(format, args...)) }

func (t *standaloneTB) TempDir() string {
	dir, err := os.MkdirTemp("", "etcdtest-")
	if err != nil {
		t.Fatalf("etcdtest: temp dir: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// runCleanups runs the registered cleanups, last first, once.
func (t *standaloneTB) runCleanups() {
	t.mu.Lock()
	fs := t.cleanups
	t.cleanups = nil
	t.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}

func (t *standaloneTB) err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.fatal) == 0 {
		return errors.New("etcdtest: start failed")
	}
	return errors.New(t.fatal[0])
}
