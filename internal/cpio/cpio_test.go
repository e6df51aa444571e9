package cpio

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herdlab/herd/internal/testenv"
)

func sample(t *testing.T) []byte {
	t.Helper()
	var b bytes.Buffer
	w := NewWriter(&b)
	add := func(h Header, data string) {
		h.Size = int64(len(data))
		if err := w.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write([]byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	add(Header{Name: "herd", Mode: FileMode(fs.ModeDir | 0o755)}, "")
	add(Header{Name: "herd/overlay", Mode: FileMode(fs.ModeDir | 0o755)}, "")
	add(Header{Name: "herd/overlay/secret", Mode: FileMode(0o600), UID: 0, GID: 0}, "key material\n")
	add(Header{Name: "herd/overlay/owned", Mode: FileMode(0o640), UID: 990, GID: 27}, "x")
	add(Header{Name: "herd/overlay/suid", Mode: FileMode(fs.ModeSetuid | 0o755)}, "#!/bin/sh\n")
	add(Header{Name: "herd/overlay/link", Mode: FileMode(fs.ModeSymlink | 0o777)}, "secret")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestRoundTrip reads back what the writer wrote.
func TestRoundTrip(t *testing.T) {
	es, err := ReadAll(bytes.NewReader(sample(t)))
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 6 {
		t.Fatalf("%d entries, want 6", len(es))
	}
	if e := es[2]; e.Name != "herd/overlay/secret" || e.Mode != TypeReg|0o600 || string(e.Data) != "key material\n" {
		t.Errorf("secret entry = %+v", e)
	}
	if e := es[3]; e.UID != 990 || e.GID != 27 {
		t.Errorf("owned entry = %+v", e.Header)
	}
	if e := es[4]; e.Mode != TypeReg|0o4755 {
		t.Errorf("suid mode = %o", e.Mode)
	}
	if e := es[5]; e.Mode&typeMask != TypeLink || string(e.Data) != "secret" {
		t.Errorf("link entry = %+v", e)
	}
}

// TestGNUCpioExtracts unpacks the archive with GNU cpio (the format the
// kernel's initramfs unpacker shares) and checks modes, owners and links.
func TestGNUCpioExtracts(t *testing.T) {
	testenv.RequireRoot(t) // to keep owners
	testenv.RequireCommands(t, "cpio")
	dir := t.TempDir()
	cmd := exec.Command("cpio", "-idm", "--quiet", "--no-absolute-filenames")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(sample(t))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v: %s", err, out)
	}
	st, err := os.Lstat(filepath.Join(dir, "herd/overlay/secret"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("secret mode %v", st.Mode())
	}
	st, _ = os.Lstat(filepath.Join(dir, "herd/overlay/suid"))
	if st.Mode()&fs.ModeSetuid == 0 {
		t.Errorf("suid lost: %v", st.Mode())
	}
	out, _ := exec.Command("stat", "-c", "%u:%g", filepath.Join(dir, "herd/overlay/owned")).Output()
	if strings.TrimSpace(string(out)) != "990:27" {
		t.Errorf("owner = %s, want 990:27", out)
	}
	if l, err := os.Readlink(filepath.Join(dir, "herd/overlay/link")); err != nil || l != "secret" {
		t.Errorf("link = %q, %v", l, err)
	}
}

func TestWriterRefusesBadInput(t *testing.T) {
	w := NewWriter(&bytes.Buffer{})
	if err := w.WriteHeader(&Header{Name: "/abs", Mode: TypeReg}); err == nil {
		t.Error("absolute name accepted")
	}
	if err := w.WriteHeader(&Header{Name: "a", Mode: TypeReg, Size: 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("toolong")); err == nil {
		t.Error("overlong write accepted")
	}
	if err := w.WriteHeader(&Header{Name: "b", Mode: TypeReg}); err == nil {
		t.Error("short entry not detected")
	}
}
