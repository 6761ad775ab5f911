package etcdtest_test

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/etcdkit/etcdkit/etcdtest"
)

// exampleT is the smallest testing.TB an example can run with. In a real
// test, pass the *testing.T instead.
type exampleT struct {
	testing.TB
	cleanups []func()
	failed   bool
}

func (t *exampleT) Helper()                           {}
func (t *exampleT) Name() string                      { return "Example" }
func (t *exampleT) Failed() bool                      { return t.failed }
func (t *exampleT) Cleanup(f func())                  { t.cleanups = append(t.cleanups, f) }
func (t *exampleT) Log(args ...any)                   { fmt.Fprintln(os.Stderr, args...) }
func (t *exampleT) Logf(format string, args ...any)   { fmt.Fprintf(os.Stderr, format+"\n", args...) }
func (t *exampleT) Fatal(args ...any)                 { t.failed = true; panic(fmt.Sprint(args...)) }
func (t *exampleT) Fatalf(format string, args ...any) { t.Fatal(fmt.Sprintf(format, args...)) }

func (t *exampleT) TempDir() string {
	dir, err := os.MkdirTemp("", "etcdtest-example")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// finish runs the cleanups last registered first, as testing does.
func (t *exampleT) finish() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}

func ExampleStart() {
	t := &exampleT{}
	defer t.finish()

	srv := etcdtest.Start(t)
	cli := srv.Client(t)

	ctx := context.Background()
	if _, err := cli.Put(ctx, "config/greeting", "hello"); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "config/greeting")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("%s=%s\n", resp.Kvs[0].Key, resp.Kvs[0].Value)
	// Output: config/greeting=hello
}

func ExampleStartCluster() {
	t := &exampleT{}
	defer t.finish()

	c := etcdtest.StartCluster(t, 3, etcdtest.WithProxy())
	cli := c.Client(t)
	ctx := context.Background()

	old := c.WaitLeader(t)
	old.Kill()
	next := c.WaitLeader(t)
	fmt.Println("new leader:", next != old)

	if _, err := cli.Put(ctx, "written-after-failover", "yes"); err != nil {
		t.Fatal(err)
	}
	if err := old.Restart(); err != nil {
		t.Fatal(err)
	}
	fmt.Println("members:", len(c.Members()), "proxied endpoints:", len(c.Endpoints()))
	// Output:
	// new leader: true
	// members: 3 proxied endpoints: 3
}
