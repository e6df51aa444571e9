package nodeboot_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

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

// TestMountRootNoReadAround: the squashfs's device has no page-cache
// read-around (read_ahead_kb 0), so a page fault decompresses one block,
// and the root still reads the image's files.
func TestMountRootNoReadAround(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "mksquashfs")
	dir, err := os.MkdirTemp("/var/tmp", "herd-mountroot-test-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	tree := filepath.Join(dir, "tree")
	data := make([]byte, 1<<20)
	rand.Read(data)
	if err := os.MkdirAll(filepath.Join(tree, "usr/lib"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "usr/lib/lib.so"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	sq := filepath.Join(dir, "rootfs.squashfs")
	if out, err := exec.Command("mksquashfs", tree, sq, "-comp", "zstd", "-noappend", "-no-progress").CombinedOutput(); err != nil {
		t.Fatalf("mksquashfs: %v %s", err, out)
	}
	lower, rw, root := filepath.Join(dir, "lower"), filepath.Join(dir, "rw"), filepath.Join(dir, "root")
	if err := nodeboot.MountRoot(sq, lower, rw, root); err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, m := range []string{root, rw, lower} {
			if err := unix.Unmount(m, 0); err != nil {
				t.Errorf("umount %s: %v", m, err)
			}
		}
	}()
	var st unix.Stat_t
	if err := unix.Stat(lower, &st); err != nil {
		t.Fatal(err)
	}
	q := fmt.Sprintf("/sys/dev/block/%d:%d/queue/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	ra, err := os.ReadFile(q)
	if err != nil || strings.TrimSpace(string(ra)) != "0" {
		t.Errorf("%s = %q (%v), want 0", q, ra, err)
	}
	got, err := os.ReadFile(filepath.Join(root, "usr/lib/lib.so"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("file through the root: %d bytes (%v), want the image's %d", len(got), err, len(data))
	}
}
