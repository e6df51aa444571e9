package build

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herdlab/herd/internal/testenv"
)

// Mounts made inside inMountNS (an overlay of two layers) are visible to
// Go code and to commands started there, and gone from the host afterwards.
func TestMountNamespaceIsPrivate(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "unshare")
	dir := t.TempDir()
	lower1, lower2, upper, work, merged := filepath.Join(dir, "l1"), filepath.Join(dir, "l2"), filepath.Join(dir, "u"), filepath.Join(dir, "w"), filepath.Join(dir, "m")
	for _, d := range []string{lower1, lower2, upper, work, merged} {
		os.Mkdir(d, 0o755)
	}
	os.WriteFile(filepath.Join(lower1, "a"), []byte("one"), 0o644)
	os.WriteFile(filepath.Join(lower2, "a"), []byte("two"), 0o644)
	os.WriteFile(filepath.Join(lower2, "b"), []byte("b"), 0o644)
	var out bytes.Buffer
	err := inMountNS(func() error {
		var m mounts
		defer m.unmountAll()
		if err := m.overlay([]string{lower2, lower1}, upper, work, merged); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(merged, "c"), []byte("new"), 0o644); err != nil {
			return err
		}
		if err := os.Remove(filepath.Join(merged, "b")); err != nil {
			return err
		}
		return run(command(context.Background(), &out, "cat", filepath.Join(merged, "a"), filepath.Join(merged, "c")))
	})
	if err != nil {
		t.Fatal(err, out.String())
	}
	if !strings.Contains(out.String(), "twonew") {
		t.Fatalf("command did not see the overlay: %q", out.String())
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), merged) {
		t.Fatalf("overlay leaked into the host namespace")
	}
	if data, _ := os.ReadFile(filepath.Join(upper, "c")); string(data) != "new" {
		t.Fatalf("upper layer lacks the new file: %q", data)
	}
	if fi, err := os.Lstat(filepath.Join(upper, "b")); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		t.Fatalf("upper layer lacks the whiteout for b: %v", err)
	}
}
