package build

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
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
	res := &resolution{pinned: recipe.Lock{}, base: map[string]string{}, users: map[string]string{}}
	for _, p := range r.AllPinned() {
		res.pinned[p.Name], res.base[p.Name] = "1.0", "1.0"
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

// A stage's key covers its own code and that of the stages it stands on:
// a change to the pack stage's code gives the pack stage a new key and keeps
// the others; a change to the join's changes join and pack; a change to code
// the bootstrap reaches (mirrorArgs) gives every stage built on it a new
// key; a comment keeps every key.
func TestStageKeyCoversItsCode(t *testing.T) {
	base := planKeys(t, nil)
	same := func(what string, got []string, changed ...string) {
		t.Helper()
		for i := range base {
			name := strings.SplitN(base[i], "=", 2)[0]
			want := slices.Contains(changed, name)
			if (got[i] != base[i]) != want {
				t.Errorf("%s: stage %s key changed=%v, want changed=%v", what, name, got[i] != base[i], want)
			}
		}
	}
	same("pack code", planKeys(t, sourcesWith(t, "stages.go",
		insertInto("func (b *builder) pack(ctx context.Context, out string, lowers []string) error", "_ = 0"))), "pack")
	same("join code", planKeys(t, sourcesWith(t, "join.go",
		insertInto("func planJoin(users, driver, base string) (*joinPlan, error)", "_ = 0"))), "join", "pack")
	tree := []string{"bootstrap", "packages", "join", "overlays", "initramfs", "pack"}
	same("mirrorArgs code (reached by the bootstrap)", planKeys(t, sourcesWith(t, "keyring.go",
		insertInto("func (b *builder) mirrorArgs() []string", "_ = 0"))), tree...)
	same("shared stage machinery", planKeys(t, sourcesWith(t, "stages.go",
		insertInto("func (s *stage) Verify() bool", "_ = 0"))), append(tree, "efi")...)
	same("a comment in the bootstrap", planKeys(t, sourcesWith(t, "stages.go",
		insertInto("func (b *builder) bootstrap(ctx context.Context, keyring string, pins []string, root string) error", "// only a comment\n"))))
	// And the embedded sources are this package's real files.
	if _, err := fs.Stat(sources, "stages.go"); err != nil {
		t.Fatal(err)
	}
}
