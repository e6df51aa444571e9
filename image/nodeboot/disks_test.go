package nodeboot

import (
	"crypto/rand"
	"encoding/binary"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unicode/utf16"
)

// fakeMachine builds a /sys and /dev tree in a temp dir. Disk "devices" are
// sparse regular files; /sys/block entries link into /sys/devices like the
// kernel's, with USB disks below a usbN/N-M path.
type fakeMachine struct {
	t        *testing.T
	sys, dev string
}

func newFakeMachine(t *testing.T) *fakeMachine {
	root := t.TempDir()
	m := &fakeMachine{t: t, sys: filepath.Join(root, "sys"), dev: filepath.Join(root, "dev")}
	for _, d := range []string{filepath.Join(m.sys, "block"), m.dev} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

type diskOpt struct {
	removable, usb bool
	partitions     int
}

func (m *fakeMachine) add(name string, size int64, o diskOpt) string {
	m.t.Helper()
	path := "devices/pci0000:00/0000:00:01.0/host0/block/" + name
	if o.usb {
		path = "devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/block/" + name
	}
	dir := filepath.Join(m.sys, path)
	must(m.t, os.MkdirAll(dir, 0o755))
	must(m.t, os.Symlink(filepath.Join("..", path), filepath.Join(m.sys, "block", name)))
	rem := "0"
	if o.removable {
		rem = "1"
	}
	must(m.t, os.WriteFile(filepath.Join(dir, "removable"), []byte(rem+"\n"), 0o644))
	must(m.t, os.WriteFile(filepath.Join(dir, "ro"), []byte("0\n"), 0o644))
	must(m.t, os.WriteFile(filepath.Join(dir, "size"), []byte(strconv.FormatInt(size/512, 10)+"\n"), 0o644))
	f, err := os.Create(filepath.Join(m.dev, name))
	must(m.t, err)
	must(m.t, f.Truncate(size))
	must(m.t, f.Close())
	return filepath.Join(m.dev, name)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func writeAt(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	must(t, err)
	if off < 0 {
		st, _ := f.Stat()
		off += st.Size()
	}
	_, err = f.WriteAt(b, off)
	must(t, err)
	must(t, f.Close())
}

// writeGPTHeader writes a minimal GPT (header at LBA 1, entries at LBA 2)
// with the given partition names, enough for Inspect's parser.
func writeGPTHeader(t *testing.T, path string, names ...string) {
	h := make([]byte, 92)
	copy(h, "EFI PART")
	binary.LittleEndian.PutUint64(h[72:], 2)
	binary.LittleEndian.PutUint32(h[80:], 128)
	binary.LittleEndian.PutUint32(h[84:], 128)
	writeAt(t, path, 512, h)
	for i, n := range names {
		e := make([]byte, 128)
		e[0] = 0xAF // non-zero type GUID
		binary.LittleEndian.PutUint64(e[32:], 2048)
		binary.LittleEndian.PutUint64(e[40:], 2048+100000)
		for j, u := range utf16.Encode([]rune(n)) {
			binary.LittleEndian.PutUint16(e[56+2*j:], u)
		}
		writeAt(t, path, 1024+int64(i)*128, e)
	}
}

func extSuperblock(label string) []byte {
	sb := make([]byte, 1024)
	sb[0x38], sb[0x39] = 0x53, 0xEF
	copy(sb[0x78:], label)
	return sb
}

const gib = 1 << 30

func TestChooseAutoRules(t *testing.T) {
	m := newFakeMachine(t)
	m.add("sda", 500*gib, diskOpt{})                 // blank, smaller
	big := m.add("sdb", 2000*gib, diskOpt{})         // holds ext4: never taken
	m.add("sdc", 4000*gib, diskOpt{removable: true}) // removable
	m.add("sdd", 8000*gib, diskOpt{usb: true})       // USB
	m.add("loop0", 9000*gib, diskOpt{})              // virtual
	rnd := m.add("nvme1n1", 3000*gib, diskOpt{})     // random header
	tail := m.add("nvme2n1", 3500*gib, diskOpt{})    // data only in its last MiB
	m.add("nvme0n1", 1000*gib, diskOpt{})            // blank, largest eligible blank
	writeAt(t, big, 1024, extSuperblock("data"))
	junk := make([]byte, 4096)
	rand.Read(junk)
	writeAt(t, rnd, 0, junk)
	writeAt(t, tail, -4096, junk)

	disks, err := Disks(m.sys, m.dev)
	must(t, err)
	ch := ChooseAuto(disks)
	if ch.Disk == nil || ch.Disk.Name != "nvme0n1" || !ch.Prepare {
		t.Fatalf("chose %+v, want blank nvme0n1 to prepare; notes: %v", ch.Disk, ch.Notes)
	}
	notes := strings.Join(ch.Notes, "\n")
	for _, want := range []string{"sdb: not touched, it holds ext2/3/4 filesystem labelled \"data\"", "sdc: skipped (removable)",
		"sdd: skipped (USB-attached)", "nvme1n1: not touched, it holds unrecognised", "nvme2n1: not touched"} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes lack %q:\n%s", want, notes)
		}
	}
	if !ch.Refused {
		t.Error("Refused not set although foreign disks were seen")
	}

	// A herd-labelled disk wins over a larger blank one.
	h := m.add("sde", 200*gib, diskOpt{})
	writeGPTHeader(t, h, CacheLabel)
	disks, err = Disks(m.sys, m.dev)
	must(t, err)
	ch = ChooseAuto(disks)
	if ch.Disk == nil || ch.Disk.Name != "sde" || !ch.Prepare {
		t.Fatalf("chose %+v, want herd disk sde (unformatted → prepare)", ch.Disk)
	}
	// With its ext4 labelled herd-cache at the partition start it is used as is.
	writeAt(t, h, 2048*512+1024, extSuperblock(CacheLabel))
	disks, _ = Disks(m.sys, m.dev)
	ch = ChooseAuto(disks)
	if ch.Disk == nil || ch.Disk.Name != "sde" || ch.Prepare {
		t.Fatalf("chose %+v prepare=%v, want formatted herd disk sde as is", ch.Disk, ch.Prepare)
	}
}

func TestChooseAutoNothingUsable(t *testing.T) {
	m := newFakeMachine(t)
	d := m.add("sda", 100*gib, diskOpt{})
	// A GPT with herd's name next to another partition is not herd's.
	writeGPTHeader(t, d, CacheLabel, "EFI system")
	m.add("sdb", 100*gib, diskOpt{usb: true})
	disks, err := Disks(m.sys, m.dev)
	must(t, err)
	ch := ChooseAuto(disks)
	if ch.Disk != nil {
		t.Fatalf("chose %s", ch.Disk.Name)
	}
	if !strings.Contains(strings.Join(ch.Notes, "\n"), "sda: not touched, it holds GPT partition table") {
		t.Errorf("notes: %v", ch.Notes)
	}
	// No disks at all.
	ch = ChooseAuto(nil)
	if ch.Disk != nil || ch.Refused {
		t.Errorf("empty machine: %+v", ch)
	}
}

func TestChooseExplicit(t *testing.T) {
	m := newFakeMachine(t)
	blank := m.add("sda", gib, diskOpt{})
	byID := filepath.Join(m.dev, "disk/by-id")
	must(t, os.MkdirAll(byID, 0o755))
	must(t, os.Symlink(blank, filepath.Join(byID, "nvme-good")))
	ch := ChooseExplicit(filepath.Join(byID, "nvme-good"), m.sys)
	if ch.Disk == nil || !ch.Prepare || ch.Disk.Size != gib {
		t.Fatalf("blank explicit disk: %+v %v", ch.Disk, ch.Notes)
	}
	swap := m.add("sdb", gib, diskOpt{})
	writeAt(t, swap, 4096-10, []byte("SWAPSPACE2"))
	must(t, os.Symlink(swap, filepath.Join(byID, "nvme-swap")))
	ch = ChooseExplicit(filepath.Join(byID, "nvme-swap"), m.sys)
	if ch.Disk != nil || !ch.Refused || !strings.Contains(strings.Join(ch.Notes, ""), "swap space") {
		t.Fatalf("swap disk: %+v %v", ch.Disk, ch.Notes)
	}
	ch = ChooseExplicit(filepath.Join(byID, "nvme-missing"), m.sys)
	if ch.Disk != nil || !strings.Contains(strings.Join(ch.Notes, ""), "not found") {
		t.Fatalf("missing disk: %+v", ch)
	}
}

func TestInspectNamesSignatures(t *testing.T) {
	cases := []struct {
		name string
		off  int64
		data string
		want string
	}{
		{"xfs", 0, "XFSB", "XFS"},
		{"btrfs", 65536 + 64, "_BHRfS_M", "btrfs"},
		{"lvm", 512, "LABELONE", "LVM"},
		{"luks", 0, "LUKS\xba\xbe", "LUKS"},
		{"iso", 32769, "CD001", "ISO 9660"},
		{"squashfs", 0, "hsqs", "squashfs"},
		{"zfs", 128*1024 + 3*1024, "\x0c\xb1\xba\x00\x00\x00\x00\x00", "ZFS"},
		{"mbr", 510, "\x55\xaa", "MBR"},
		{"fat", 82, "FAT32", "FAT"},
		{"backup-gpt", -512, "EFI PART", "backup GPT"},
	}
	m := newFakeMachine(t)
	for _, c := range cases {
		p := m.add("d"+c.name, 64*mib, diskOpt{})
		if c.name == "fat" {
			writeAt(t, p, 510, []byte{0x55, 0xaa})
		}
		writeAt(t, p, c.off, []byte(c.data))
		f, err := os.Open(p)
		must(t, err)
		got, err := Inspect(f, 64*mib)
		f.Close()
		must(t, err)
		if got.Blank || got.Herd || !strings.Contains(got.What, c.want) {
			t.Errorf("%s: %+v, want What containing %q", c.name, got, c.want)
		}
	}
}
