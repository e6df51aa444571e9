package nodeboot_test

import (
	"bytes"
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herdlab/herd/image/nodeboot"
	"github.com/herdlab/herd/internal/testenv"
)

// TestLoopAttachDirectIO: a loop device over a file on a disk filesystem
// reads it with direct I/O (sysfs loop/dio is 1), read-only, and returns
// the file's bytes.
func TestLoopAttachDirectIO(t *testing.T) {
	testenv.RequireRoot(t)
	dir, err := os.MkdirTemp("/var/tmp", "herd-loop-test-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	data := make([]byte, 4<<20)
	rand.Read(data)
	file := filepath.Join(dir, "image")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	dev, hold, err := nodeboot.LoopAttach(file)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(dev)
	hold.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close() // the last user: autoclear detaches the device
	got, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("%s: read %d bytes (%v), want the file's %d", dev, len(got), err, len(data))
	}
	sys := filepath.Join("/sys/block", filepath.Base(dev))
	ro, _ := os.ReadFile(filepath.Join(sys, "ro"))
	dio, err := os.ReadFile(filepath.Join(sys, "loop/dio"))
	if strings.TrimSpace(string(ro)) != "1" || err != nil || strings.TrimSpace(string(dio)) != "1" {
		t.Errorf("%s: ro=%q dio=%q (%v), want read-only with direct I/O", dev, ro, dio, err)
	}
}
