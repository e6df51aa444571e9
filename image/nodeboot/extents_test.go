package nodeboot

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/herdlab/herd/internal/testenv"
)

// ext4Disk makes an ext4 file system on a fresh loop disk of size bytes,
// mounts it and returns the disk device and the mount point.
func ext4Disk(t *testing.T, size int64) (disk, mnt string) {
	t.Helper()
	disk, _ = loopDisk(t, size, nil)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", disk).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	mnt = t.TempDir()
	must(t, unix.Mount(disk, mnt, "ext4", 0, ""))
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("umount %s: %v", mnt, err)
		}
	})
	return disk, mnt
}

// rawAt reads n bytes of the disk at off, bypassing its page cache.
func rawAt(t *testing.T, disk string, off int64, n int) []byte {
	t.Helper()
	f, err := os.OpenFile(disk, os.O_RDONLY|unix.O_DIRECT, 0)
	must(t, err)
	defer f.Close()
	buf, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE) // page-aligned
	must(t, err)
	defer unix.Munmap(buf)
	if _, err := f.ReadAt(buf, off); err != nil {
		t.Fatalf("read %s at %d: %v", disk, off, err)
	}
	return append([]byte(nil), buf...)
}

// TestFileExtentsAreTheFilesBytes: on an ext4 cache disk, the extents
// FileExtents returns hold the file's bytes on the disk, in order (what the
// node's linear table reads instead of the file); while a loop device pins
// the file, deleting it and filling the disk leaves those bytes alone; a
// file with a hole or an unwritten (fallocated) range is refused.
// The device-mapper table over them is exercised by the QEMU boots
// (TestQEMUCacheLifecycle): this host's kernel has no device-mapper.
func TestFileExtentsAreTheFilesBytes(t *testing.T) {
	testenv.RequireRoot(t)
	disk, mnt := ext4Disk(t, 64<<20)
	// Two files written in turns, each step synced: the image's blocks
	// are not all in one run.
	img, other := filepath.Join(mnt, "image"), filepath.Join(mnt, "other")
	fi, err := os.Create(img)
	must(t, err)
	fo, err := os.Create(other)
	must(t, err)
	want := make([]byte, 8<<20)
	rand.Read(want)
	for off := 0; off < len(want); off += 1 << 20 {
		_, err := fi.Write(want[off : off+1<<20])
		must(t, err)
		must(t, fi.Sync())
		_, err = fo.Write(bytes.Repeat([]byte{0x11}, 256<<10))
		must(t, err)
		must(t, fo.Sync())
	}
	fo.Close()
	exts, err := FileExtents(fi, int64(len(want)))
	fi.Close()
	must(t, err)
	t.Logf("%d extents", len(exts))
	var next uint64
	for _, x := range exts {
		if x.Logical != next {
			t.Fatalf("extents %+v: a gap before byte %d", exts, x.Logical)
		}
		next += x.Length
		if got := rawAt(t, disk, int64(x.Physical), int(x.Length)); !bytes.Equal(got, want[x.Logical:x.Logical+x.Length]) {
			t.Errorf("disk bytes %d+%d are not the file's %d+%d", x.Physical, x.Length, x.Logical, x.Length)
		}
	}
	if next != uint64(len(want)) {
		t.Fatalf("extents cover %d bytes, want %d", next, len(want))
	}

	// Pinned, deleted, the disk filled: the blocks stay the image's.
	pin, lf, err := loopAttach(img, false)
	must(t, err)
	lf.Close()
	pinnedLoop = pin
	t.Cleanup(func() { unpinLoop() })
	must(t, os.Remove(img))
	must(t, os.Remove(other))
	fill, err := os.Create(filepath.Join(mnt, "fill"))
	must(t, err)
	chunk := bytes.Repeat([]byte{0xee}, 1<<20)
	for {
		if _, err := fill.Write(chunk); err != nil {
			if !errors.Is(err, unix.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	must(t, fill.Sync())
	fill.Close()
	for _, x := range exts {
		if got := rawAt(t, disk, int64(x.Physical), int(x.Length)); !bytes.Equal(got, want[x.Logical:x.Logical+x.Length]) {
			t.Errorf("pinned: disk bytes %d+%d were reused after the file was deleted", x.Physical, x.Length)
		}
	}
	must(t, unpinLoop())
	if b, err := os.ReadFile("/sys/block/" + filepath.Base(pin) + "/loop/backing_file"); err == nil && len(bytes.TrimSpace(b)) > 0 {
		t.Errorf("%s still backed by %q after unpinLoop", pin, b)
	}
	must(t, os.Remove(filepath.Join(mnt, "fill")))

	// A hole, then an unwritten range: refused.
	for name, make := range map[string]func(f *os.File){
		"hole": func(f *os.File) {
			_, err := f.WriteAt(want[:1<<20], 2<<20)
			must(t, err)
		},
		"unwritten": func(f *os.File) {
			_, err := f.Write(want[:1<<20])
			must(t, err)
			must(t, unix.Fallocate(int(f.Fd()), 0, 1<<20, 2<<20))
		},
	} {
		p := filepath.Join(mnt, name)
		f, err := os.Create(p)
		must(t, err)
		make(f)
		if _, err := FileExtents(f, 3<<20); err == nil {
			t.Errorf("%s: FileExtents accepted a file with a %s", p, name)
		} else {
			t.Logf("%s: %v", name, err)
		}
		f.Close()
	}
}

// TestLinearTable: one linear line per extent, in sectors, on the device.
func TestLinearTable(t *testing.T) {
	got := linearTable("253:1", []FileExtent{{0, 1 << 20, 4096}, {4096, 8192, 1 << 20}})
	want := []dmTarget{
		{Start: 0, Length: 8, Type: "linear", Params: "253:1 2048"},
		{Start: 8, Length: 2048, Type: "linear", Params: "253:1 16"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("linearTable = %+v, want %+v", got, want)
	}
}
