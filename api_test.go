package etcdkit_test

import (
	"bytes"
	"encoding/json"
	goflag "flag"
	"fmt"
	"go/importer"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var updateAPI = goflag.Bool("update-api", false, "rewrite the files in api/ from the packages' exports")

// apiPackages are the packages whose exported surface is written down in
// api/, one file each.
var apiPackages = map[string]string{
	"github.com/etcdkit/etcdkit":          "etcdkit.txt",
	"github.com/etcdkit/etcdkit/proxy":    "proxy.txt",
	"github.com/etcdkit/etcdkit/etcdtest": "etcdtest.txt",
}

// TestAPI checks that every exported identifier of the public packages, with
// its signature, is the one written in api/: a change to the public API is a
// visible diff of those files. After an intended change, rewrite them with
//
//	go test -run '^TestAPI$' -update-api .
//
// and list the change in CHANGELOG.md.
func TestAPI(t *testing.T) {
	paths := slices.Sorted(func(yield func(string) bool) {
		for p := range apiPackages {
			if !yield(p) {
				return
			}
		}
	})
	pkgs := loadTypes(t, paths)
	for _, path := range paths {
		got := apiOf(pkgs[path])
		file := filepath.Join("api", apiPackages[path])
		if *updateAPI {
			if err := os.MkdirAll("api", 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(file, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("%v (write it with go test -run '^TestAPI$' -update-api .)", err)
		}
		if diff := lineDiff(string(want), got); diff != "" {
			t.Errorf("the exports of %s differ from %s (- written, + exported); if the change is intended, run go test -run '^TestAPI$' -update-api . and add it to CHANGELOG.md:\n%s", path, file, diff)
		}
	}
}

// loadTypes type-checks the packages from the export data the go command
// builds for them (go list -export), so that the signatures are the
// compiler's.
func loadTypes(t *testing.T, paths []string) map[string]*types.Package {
	t.Helper()
	imp := exportImporter(t, paths...)
	pkgs := map[string]*types.Package{}
	for _, p := range paths {
		pkg, err := imp.Import(p)
		if err != nil {
			t.Fatalf("import %s: %v", p, err)
		}
		pkgs[p] = pkg
	}
	return pkgs
}

// exportImporter imports the packages at paths, and everything they
// depend on, from the export data go list -export builds.
func exportImporter(t *testing.T, paths ...string) types.Importer {
	t.Helper()
	out := runGo(t, append([]string{"list", "-export", "-deps", "-json=ImportPath,Export"}, paths...)...)
	exports := map[string]string{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct{ ImportPath, Export string }
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("go list -export output: %v", err)
		}
		exports[p.ImportPath] = p.Export
	}
	return importer.ForCompiler(token.NewFileSet(), "gc", func(path string) (io.ReadCloser, error) {
		f, ok := exports[path]
		if !ok || f == "" {
			return nil, fmt.Errorf("no export data for %s", path)
		}
		return os.Open(f)
	})
}

// goCommand is the go binary of the toolchain that runs the test.
func goCommand(t *testing.T) string {
	t.Helper()
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("no go command on PATH: %v", err)
	}
	out, err := exec.Command(goCmd, "env", "GOROOT").Output()
	if err != nil {
		t.Fatalf("go env GOROOT: %v", err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "bin", "go")
}

// apiOf lists the exported surface of pkg, one sorted line per identifier,
// field or method, in the spirit of Go's own api/ files.
func apiOf(pkg *types.Package) string {
	qual := func(p *types.Package) string {
		if p == pkg {
			return ""
		}
		return p.Path()
	}
	ts := func(t types.Type) string { return types.TypeString(t, qual) }
	var lines []string
	add := func(format string, args ...any) {
		lines = append(lines, "pkg "+pkg.Name()+", "+fmt.Sprintf(format, args...))
	}
	scope := pkg.Scope()
	for _, name := range scope.Names() {
		obj := scope.Lookup(name)
		if !obj.Exported() {
			continue
		}
		switch o := obj.(type) {
		case *types.Const:
			add("const %s %s = %s", name, ts(o.Type()), o.Val().ExactString())
		case *types.Var:
			add("var %s %s", name, ts(o.Type()))
		case *types.Func:
			sig := o.Type().(*types.Signature)
			add("func %s%s", name, strings.TrimPrefix(ts(sig), "func"))
		case *types.TypeName:
			apiOfType(o, ts, add)
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n") + "\n"
}

func apiOfType(o *types.TypeName, ts func(types.Type) string, add func(string, ...any)) {
	name := o.Name()
	if o.IsAlias() {
		add("type %s = %s", name, ts(types.Unalias(o.Type())))
		return
	}
	named := o.Type().(*types.Named)
	head := name + typeParams(named.TypeParams(), ts)
	under := named.Underlying()
	switch u := under.(type) {
	case *types.Struct:
		add("type %s struct", head)
		for i := range u.NumFields() {
			if f := u.Field(i); f.Exported() {
				if f.Embedded() {
					add("type %s struct, embedded %s", head, ts(f.Type()))
				} else {
					add("type %s struct, %s %s", head, f.Name(), ts(f.Type()))
				}
			}
		}
	case *types.Interface:
		add("type %s interface", head)
		for i := range u.NumMethods() {
			m := u.Method(i)
			if m.Exported() {
				add("type %s interface, %s%s", head, m.Name(), strings.TrimPrefix(ts(m.Type()), "func"))
			} else {
				add("type %s interface, unexported methods", head)
			}
		}
		for i := range u.NumEmbeddeds() {
			add("type %s interface, embedded %s", head, ts(u.EmbeddedType(i)))
		}
	default:
		add("type %s %s", head, ts(under))
	}
	// The methods a value of the type has, and those only its pointer has,
	// promoted ones included.
	recv := name
	if tp := named.TypeParams(); tp.Len() > 0 {
		var ps []string
		for i := range tp.Len() {
			ps = append(ps, tp.At(i).Obj().Name())
		}
		recv += "[" + strings.Join(ps, ", ") + "]"
	}
	seen := map[string]bool{}
	for _, ptr := range []bool{false, true} {
		var t types.Type = named
		r := recv
		if ptr {
			t, r = types.NewPointer(named), "*"+recv
		}
		if _, ok := under.(*types.Interface); ok {
			break
		}
		ms := types.NewMethodSet(t)
		for i := range ms.Len() {
			m := ms.At(i).Obj()
			if !m.Exported() || seen[m.Name()] {
				continue
			}
			seen[m.Name()] = true
			add("method (%s) %s%s", r, m.Name(), strings.TrimPrefix(ts(m.Type()), "func"))
		}
	}
}

func typeParams(tp *types.TypeParamList, ts func(types.Type) string) string {
	if tp.Len() == 0 {
		return ""
	}
	var ps []string
	for i := range tp.Len() {
		p := tp.At(i)
		ps = append(ps, p.Obj().Name()+" "+ts(p.Constraint()))
	}
	return "[" + strings.Join(ps, ", ") + "]"
}

// lineDiff lists the lines only in want (-) and only in got (+).
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	inW, inG := map[string]bool{}, map[string]bool{}
	for _, l := range w {
		inW[l] = true
	}
	for _, l := range g {
		inG[l] = true
	}
	var b strings.Builder
	for _, l := range w {
		if !inG[l] {
			fmt.Fprintf(&b, "-%s\n", l)
		}
	}
	for _, l := range g {
		if !inW[l] {
			fmt.Fprintf(&b, "+%s\n", l)
		}
	}
	return b.String()
}
