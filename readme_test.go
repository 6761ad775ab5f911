package etcdkit_test

import (
	"bufio"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// readmeBlock is a ```go block of README.md: its lines, trimmed, blank lines
// left out, and the README line its code starts on.
type readmeBlock struct {
	line  int
	lines []string
}

// readmeGoBlocks returns the ```go blocks of the Markdown file at path.
func readmeGoBlocks(t *testing.T, path string) []readmeBlock {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		blocks []readmeBlock
		cur    *readmeBlock
		n      int
	)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n++
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		switch {
		case cur == nil && trimmed == "```go":
			cur = &readmeBlock{line: n + 1}
		case cur != nil && trimmed == "```":
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil && trimmed != "":
			cur.lines = append(cur.lines, trimmed)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("%s:%d: a ```go block is never closed", path, cur.line-1)
	}
	return blocks
}

// trimmedLines returns the lines of text, trimmed, blank lines left out.
func trimmedLines(text string) []string {
	var out []string
	for line := range strings.Lines(text) {
		if l := strings.TrimSpace(line); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// containsRun reports whether run appears in lines as a contiguous run.
func containsRun(lines, run []string) bool {
	for i := 0; i+len(run) <= len(lines); i++ {
		if slices.Equal(lines[i:i+len(run)], run) {
			return true
		}
	}
	return false
}

// TestREADMEExamplesCompile checks that every ```go block of README.md is
// compiled code: its lines (trimmed, blank lines ignored) must appear, as a
// contiguous run, in one of the repository's *_test.go files or in a Go
// file under examples/. Code shown in the README therefore compiles with
// the API it documents, and `go vet` or the examples' tests run it.
func TestREADMEExamplesCompile(t *testing.T) {
	blocks := readmeGoBlocks(t, "README.md")
	if len(blocks) == 0 {
		t.Fatal("got no ```go block in README.md, want the quick start's at least")
	}
	var sources [][]string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != "." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		inExamples := strings.HasPrefix(filepath.ToSlash(path), "examples/")
		if path == "readme_test.go" || !strings.HasSuffix(path, ".go") ||
			!(strings.HasSuffix(path, "_test.go") || inExamples) {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		sources = append(sources, trimmedLines(string(b)))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range blocks {
		if len(b.lines) == 0 {
			t.Errorf("README.md:%d: got an empty ```go block, want compiled code", b.line)
			continue
		}
		if !slices.ContainsFunc(sources, func(src []string) bool { return containsRun(src, b.lines) }) {
			t.Errorf("README.md:%d: the ```go block starting %q is in no *_test.go file nor under examples/, word for word: put it in an example (example_*_test.go) so that it compiles", b.line, b.lines[0])
		}
	}
}
