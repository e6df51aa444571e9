package atomicfile

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteReplacesOrLeavesOld(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := WriteFile(p, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	err := Write(p, 0o600, func(w io.Writer) error {
		w.Write([]byte("partial"))
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	got, _ := os.ReadFile(p)
	if string(got) != "one" {
		t.Fatalf("failed write changed the file: %q", got)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("temp file left behind: %v", ents)
	}
	if err := WriteFile(p, []byte("two"), 0o640); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(p)
	got, _ = os.ReadFile(p)
	if string(got) != "two" || st.Mode().Perm() != 0o640 {
		t.Fatalf("got %q mode %v", got, st.Mode())
	}
}

func TestCopyReplacesSymlink(t *testing.T) {
	dir := t.TempDir()
	src, victim, dst := filepath.Join(dir, "src"), filepath.Join(dir, "victim"), filepath.Join(dir, "dst")
	if err := os.WriteFile(src, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(victim, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, dst); err != nil {
		t.Fatal(err)
	}
	if err := Copy(src, dst, 0o600); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep" {
		t.Fatalf("copy wrote through the symlink: victim now %q", b)
	}
	fi, err := os.Lstat(dst)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Fatalf("dst: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "new" {
		t.Fatalf("dst holds %q", b)
	}
}

// WriteNew creates a missing file whole, and refuses (fs.ErrExist) to touch
// an existing one, leaving no temp file behind either way.
func TestWriteNewNeverReplaces(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "herd.yaml")
	if err := WriteNew(p, []byte("first\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := WriteNew(p, []byte("second\n"), 0o640); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("WriteNew over an existing file: %v, want fs.ErrExist", err)
	}
	data, err := os.ReadFile(p)
	if err != nil || string(data) != "first\n" {
		t.Fatalf("after a refused WriteNew: %q %v", data, err)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", st.Mode().Perm())
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("temp files left behind: %v", ents)
	}
}
