package nodeboot

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herdlab/herd/internal/testenv"
)

// loopDisk creates a sparse disk image of size bytes and attaches it with
// partition scanning (losetup -P), as a real disk with a partition table
// behaves. The device is detached when the test ends.
func loopDisk(t *testing.T, size int64, fill func(path string)) (dev, file string) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "losetup", "mkfs.ext4", "blkid")
	file = filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(file)
	must(t, err)
	must(t, f.Truncate(size))
	must(t, f.Close())
	if fill != nil {
		fill(file)
	}
	out, err := exec.Command("losetup", "--find", "--show", "--partscan", file).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev, file
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	must(t, err)
	defer f.Close()
	h := sha256.New()
	_, err = io.Copy(h, f)
	must(t, err)
	return hex.EncodeToString(h.Sum(nil))
}

func mke2fsPath(t *testing.T) string {
	testenv.RequireCommands(t, "mke2fs")
	p, err := exec.LookPath("mke2fs")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPrepareBlankLoopDisk(t *testing.T) {
	dev, _ := loopDisk(t, 128*mib, nil)
	ch := ChooseExplicit(dev, "/sys")
	if ch.Disk == nil || !ch.Prepare {
		t.Fatalf("blank loop disk not chosen: %v", ch.Notes)
	}
	part, err := Prepare(context.Background(), dev, mke2fsPath(t))
	if err != nil {
		t.Fatal(err)
	}
	if part != dev+"p1" {
		t.Errorf("partition %s, want %sp1", part, dev)
	}
	// blkid (util-linux) is the independent judge of what was written.
	out, err := exec.Command("blkid", "-p", "-o", "export", part).CombinedOutput()
	if err != nil {
		t.Fatalf("blkid %s: %v: %s", part, err, out)
	}
	for _, want := range []string{"TYPE=ext4", "LABEL=herd-cache", "PART_ENTRY_NAME=herd-cache", "PART_ENTRY_SCHEME=gpt"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("blkid lacks %s:\n%s", want, out)
		}
	}
	// Next boot: recognised as herd's, used without preparing again.
	ch = ChooseExplicit(dev, "/sys")
	if ch.Disk == nil || ch.Prepare {
		t.Fatalf("prepared disk: chosen=%v prepare=%v notes=%v", ch.Disk != nil, ch.Prepare, ch.Notes)
	}
}

func TestForeignDisksAreNeverWritten(t *testing.T) {
	cases := map[string]func(path string){
		"ext4": func(p string) {
			if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "data", p).CombinedOutput(); err != nil {
				t.Fatalf("mkfs.ext4: %v: %s", err, out)
			}
		},
		"random-header": func(p string) {
			b := make([]byte, 4096)
			rand.Read(b)
			writeAt(t, p, 0, b)
		},
		"data-at-end": func(p string) {
			writeAt(t, p, -100, []byte("the last bytes of someone's data"))
		},
		"gpt-with-other-partition": func(p string) {
			cmd := exec.Command("sfdisk", "-q", p)
			cmd.Stdin = strings.NewReader("label: gpt\n,,L,\n")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("sfdisk: %v: %s", err, out)
			}
		},
	}
	for name, fill := range cases {
		t.Run(name, func(t *testing.T) {
			dev, file := loopDisk(t, 64*mib, fill)
			before := fileSHA(t, file)
			ch := ChooseExplicit(dev, "/sys")
			if ch.Disk != nil || !ch.Refused {
				t.Fatalf("foreign disk chosen: %v", ch.Notes)
			}
			if _, err := Prepare(context.Background(), dev, mke2fsPath(t)); err == nil || !strings.Contains(err.Error(), "refusing") {
				t.Fatalf("Prepare on foreign disk: %v", err)
			}
			exec.Command("sync").Run()
			if after := fileSHA(t, file); after != before {
				t.Fatalf("foreign disk changed: sha256 %s → %s", before, after)
			}
			t.Logf("%s: %s", name, strings.Join(ch.Notes, "; "))
		})
	}
}
