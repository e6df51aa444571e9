package build

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/herdlab/herd/image/recipe"
)

// sourcesWith copies the embedded sources, applying edit to file name.
func sourcesWith(t *testing.T, name string, edit func(string) string) fs.FS {
	t.Helper()
	m := fstest.MapFS{}
	names, err := fs.Glob(sources, "*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		b, err := fs.ReadFile(sources, n)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		if n == name {
			e := edit(s)
			if e == s {
				t.Fatalf("edit of %s changed nothing", name)
			}
			s = e
		}
		m[n] = &fstest.MapFile{Data: []byte(s)}
	}
	return m
}

// insertInto adds a statement at the top of the function whose header is head.
func insertInto(head, stmt string) func(string) string {
	return func(s string) string {
		return strings.Replace(s, head+" {\n", head+" {\n\t"+stmt+"\n", 1)
	}
}

// planKeys is the five stage keys of the test recipe, with code from fsys.
func planKeys(t *testing.T, fsys fs.FS) []string {
	t.Helper()
	setCodeFS(fsys)
	defer setCodeFS(nil)
	keyring := filepath.Join(t.TempDir(), "k.gpg")
	if err := os.WriteFile(keyring, []byte("key"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := recipe.Load("../../recipes/test-noble-minimal.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	res := &resolution{pinned: recipe.Lock{}, base: map[string]string{}, all: map[string]string{}}
	for _, p := range r.AllPinned() {
		res.pinned[p.Name], res.all[p.Name] = "1.0", "1.0"
	}
	ss, err := (&builder{recipe: r}).plan(keyring, res, emptySet{}, testAgent(t))
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, s := range ss {
		keys = append(keys, s.name+"="+s.key)
	}
	return keys
}

// A stage's key covers its own code: a change to the pack stage's code gives
// the pack stage a new key and keeps the others; a change to code the
// bootstrap reaches (mirrorArgs) gives every stage a new key; a comment
// keeps every key.
func TestStageKeyCoversItsCode(t *testing.T) {
	base := planKeys(t, nil)
	// Stages from index from on must change, those before it must not.
	index := func(stage string) int {
		for i, k := range base {
			if strings.HasPrefix(k, stage+"=") {
				return i
			}
		}
		t.Fatalf("no stage %s in %v", stage, base)
		return -1
	}
	same := func(what string, got []string, from int) {
		t.Helper()
		for i := range base {
			want := i < from
			if (got[i] == base[i]) != want {
				t.Errorf("%s: stage %s key changed=%v, want changed=%v", what, strings.SplitN(base[i], "=", 2)[0], got[i] != base[i], !want)
			}
		}
	}
	same("pack code", planKeys(t, sourcesWith(t, "stages.go",
		insertInto("func (b *builder) pack(ctx context.Context, out string, lowers []string) error", "_ = 0"))), index("pack"))
	same("mirrorArgs code (reached by the bootstrap)", planKeys(t, sourcesWith(t, "keyring.go",
		insertInto("func (b *builder) mirrorArgs() []string", "_ = 0"))), 0)
	same("shared stage machinery", planKeys(t, sourcesWith(t, "stages.go",
		insertInto("func (s *stage) Verify() bool", "_ = 0"))), 0)
	same("a comment in the bootstrap", planKeys(t, sourcesWith(t, "stages.go",
		insertInto("func (b *builder) bootstrap(ctx context.Context, keyring string, pins []string, root string) error", "// only a comment\n"))), len(base))
	// And the embedded sources are this package's real files.
	if _, err := fs.Stat(sources, "stages.go"); err != nil {
		t.Fatal(err)
	}
}
