package etcdkit_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"go/types"
	"strings"
	"testing"
)

// TestOptionsOfAnotherHandleDoNotCompile type-checks calls that give a
// handle an option of another value type, or one that does not apply to
// it: each must be a compile error, and the same call with the right
// option must compile.
func TestOptionsOfAnotherHandleDoNotCompile(t *testing.T) {
	imp := exportImporter(t, "github.com/etcdkit/etcdkit", "context", "time")
	const decls = `
type Limits struct{ MaxConns int }
var (
	ctx context.Context
	c   *etcdkit.Client
	fk  = etcdkit.NewKey(c, "f", etcdkit.JSON[float64]())
	lk  = etcdkit.NewKey(c, "l", etcdkit.JSON[Limits]())
	fp  = etcdkit.NewPrefix(c, "p", etcdkit.JSON[float64]())
	_   = time.Second
)
`
	for _, tc := range []struct {
		name, good, bad, want string
	}{
		{"default of another type", `etcdkit.NewLive(ctx, fk, etcdkit.WithDefault(1.5))`,
			`etcdkit.NewLive(ctx, fk, etcdkit.WithDefault(1))`, "does not match"},
		{"default of a pointer type", `etcdkit.NewLive(ctx, lk, etcdkit.WithDefault(Limits{}))`,
			`etcdkit.NewLive(ctx, lk, etcdkit.WithDefault(&Limits{}))`, "does not match"},
		{"validator of another type", `etcdkit.NewLive(ctx, fk, etcdkit.WithValidator(func(float64) error { return nil }))`,
			`etcdkit.NewLive(ctx, fk, etcdkit.WithValidator(func(string) error { return nil }))`, "does not match"},
		{"snapshot of another type", `etcdkit.NewLive(ctx, fk, etcdkit.WithSnapshot[float64]("s"))`,
			`etcdkit.NewLive(ctx, fk, etcdkit.WithSnapshot[int]("s"))`, "does not match"},
		{"per-name defaults on a Live", `etcdkit.NewLiveMap(ctx, fp, etcdkit.WithDefaults(map[string]float64{"a": 1}))`,
			`etcdkit.NewLive(ctx, fk, etcdkit.WithDefaults(map[string]float64{"a": 1}))`, "does not implement"},
		{"per-name defaults of another type", `etcdkit.NewLiveMap(ctx, fp, etcdkit.WithDefault(2.5), etcdkit.WithDefaults(map[string]float64{"a": 1}))`,
			`etcdkit.NewLiveMap(ctx, fp, etcdkit.WithDefaults(map[string]int{"a": 1}))`, "does not match"},
		{"create-only on a Session", `etcdkit.NewEphemeral(ctx, fk, 1, time.Second, etcdkit.WithCreateOnly())`,
			`c.NewSession(ctx, time.Second, etcdkit.WithCreateOnly())`, "WithCreateOnly"},
		{"step-down margin on a Session", `etcdkit.NewElection(c, "e", time.Second, etcdkit.WithStepDownMargin(time.Second))`,
			`c.NewSession(ctx, time.Second, etcdkit.WithStepDownMargin(time.Second))`, "WithStepDownMargin"},
		{"holder id on an Election", `etcdkit.NewMutex(c, "m", time.Second, etcdkit.WithHolderID("a"))`,
			`etcdkit.NewElection(c, "e", time.Second, etcdkit.WithHolderID("a"))`, "WithHolderID"},
		{"AfterRevision on a subscription", `(*etcdkit.Cache[float64])(nil).Subscribe(etcdkit.WithInitial(), etcdkit.WithBufferSize(8))`,
			`(*etcdkit.Cache[float64])(nil).Subscribe(etcdkit.AfterRevision(3))`, "AfterRevision"},
		{"session options on a Semaphore", `etcdkit.NewSemaphore(c, "s", 2, time.Second, etcdkit.WithKeepAliveInterval(time.Second), etcdkit.WithStepDownMargin(time.Second))`,
			`etcdkit.NewSemaphore(c, "s", 2, time.Second, etcdkit.WithDefault(1))`, "WithDefault"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := checkSnippet(imp, decls, tc.good); err != nil {
				t.Fatalf("the right option does not compile: %s: %v", tc.good, err)
			}
			err := checkSnippet(imp, decls, tc.bad)
			if err == nil {
				t.Fatalf("compiles: %s", tc.bad)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%s: error %q, want it to mention %q", tc.bad, err, tc.want)
			}
		})
	}
}

// checkSnippet type-checks expr as a statement of a function in a file
// that imports etcdkit, context and time, after decls.
func checkSnippet(imp types.Importer, decls, expr string) error {
	src := "package p\nimport (\n\"context\"\n\"time\"\n\"github.com/etcdkit/etcdkit\"\n)\n" + decls +
		"\nfunc f() { _, _ = two(" + expr + ") }\nfunc two(...any) (int, int) { return 0, 0 }\n"
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "snippet.go", src, 0)
	if err != nil {
		return err
	}
	var first error
	conf := types.Config{Importer: imp, Error: func(err error) {
		if first == nil {
			first = err
		}
	}}
	_, _ = conf.Check("p", fset, []*ast.File{f}, nil)
	return first
}
