package nodeboot

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"unicode/utf16"
)

// CacheLabel is the GPT partition name and ext4 label of herd's cache SSD.
const CacheLabel = "herd-cache"

const mib = 1 << 20

// Content is what Inspect found on a disk.
type Content struct {
	// Blank: the first and the last MiB are all zero bytes.
	Blank bool
	// Herd: a GPT whose only partition is named herd-cache.
	Herd bool
	// HerdFormatted: that partition also holds ext4 labelled herd-cache.
	HerdFormatted bool
	// PartStart and PartSize locate herd's partition in bytes.
	PartStart, PartSize int64
	// What describes a non-blank, non-herd disk for the console and events.
	What string
}

// Inspect reads the first and last MiB of a disk of size bytes and decides
// whether herd may use it.
//
// The rule for "blank" is deliberately stricter than a list of magics: both
// ends must be entirely zero. A signature list (ext*, xfs, btrfs, swap, LVM,
// LUKS, ZFS, ...) can never be complete — a raw database volume, a plain
// dm-crypt device or a half-wiped disk carries no known magic — and a false
// "blank" destroys someone's data, while a false "not blank" only costs the
// cache. New and TRIMmed/blkdiscard'ed SSDs read back zeros, so real blank
// disks pass. The magics are still checked, to tell the admin what is there.
func Inspect(r io.ReaderAt, size int64) (Content, error) {
	var c Content
	if size < 4*mib {
		return c, fmt.Errorf("disk of %d bytes is too small for a cache", size)
	}
	head := make([]byte, mib)
	if _, err := r.ReadAt(head, 0); err != nil {
		return c, fmt.Errorf("read first MiB: %w", err)
	}
	tail := make([]byte, mib)
	if _, err := r.ReadAt(tail, size-mib); err != nil {
		return c, fmt.Errorf("read last MiB: %w", err)
	}
	if allZero(head) && allZero(tail) {
		c.Blank = true
		return c, nil
	}
	for _, sector := range []int64{512, 4096} {
		if p, size, ok := herdPartition(r, head, sector); ok {
			c.Herd, c.PartStart, c.PartSize = true, p, size
			sb := make([]byte, 1024)
			if _, err := r.ReadAt(sb, p+1024); err == nil && isExt(sb) && extLabel(sb) == CacheLabel {
				c.HerdFormatted = true
			}
			return c, nil
		}
	}
	c.What = describe(head, tail)
	return c, nil
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// herdPartition parses a GPT (header at LBA 1) and returns the byte offset
// and size of its partition when the table holds exactly one partition,
// named herd-cache. Anything else — more partitions, another name — is foreign.
func herdPartition(r io.ReaderAt, head []byte, sector int64) (start, size int64, ok bool) {
	h := head[sector : sector+92]
	if string(h[:8]) != "EFI PART" {
		return 0, 0, false
	}
	entLBA := int64(binary.LittleEndian.Uint64(h[72:]))
	n := int64(binary.LittleEndian.Uint32(h[80:]))
	esz := int64(binary.LittleEndian.Uint32(h[84:]))
	if esz < 128 || esz > 4096 || n < 1 || n > 1024 {
		return 0, 0, false
	}
	ents := make([]byte, n*esz)
	if _, err := r.ReadAt(ents, entLBA*sector); err != nil {
		return 0, 0, false
	}
	used := 0
	for i := int64(0); i < n; i++ {
		e := ents[i*esz : (i+1)*esz]
		if allZero(e[:16]) { // unused entry: zero type GUID
			continue
		}
		used++
		if gptName(e[56:128]) == CacheLabel {
			start = int64(binary.LittleEndian.Uint64(e[32:])) * sector
			size = (int64(binary.LittleEndian.Uint64(e[40:]))+1)*sector - start
		}
	}
	return start, size, used == 1 && start > 0 && size > 0
}

func gptName(b []byte) string {
	u := make([]uint16, 0, 36)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

// isExt checks the ext2/3/4 magic 0xEF53 in a superblock (read from byte
// 1024 of the filesystem).
func isExt(sb []byte) bool { return len(sb) >= 0x88 && sb[0x38] == 0x53 && sb[0x39] == 0xEF }

func extLabel(sb []byte) string { return string(bytes.TrimRight(sb[0x78:0x88], "\x00")) }

// describe names the signatures found in the first and last MiB, so the
// console says what herd refused to overwrite.
func describe(head, tail []byte) string {
	var found []string
	add := func(s string) { found = append(found, s) }
	at := func(b []byte, off int, magic string) bool {
		return off >= 0 && off+len(magic) <= len(b) && string(b[off:off+len(magic)]) == magic
	}
	switch {
	case at(head, 512, "EFI PART") || at(head, 4096, "EFI PART"):
		add("GPT partition table")
	case head[510] == 0x55 && head[511] == 0xAA:
		if at(head, 54, "FAT1") || at(head, 82, "FAT32") {
			add("FAT filesystem")
		} else {
			add("MBR partition table")
		}
	}
	if at(tail, mib-512, "EFI PART") || at(tail, mib-4096, "EFI PART") {
		add("backup GPT header")
	}
	if isExt(head[1024:]) {
		l := extLabel(head[1024:])
		if l != "" {
			add(fmt.Sprintf("ext2/3/4 filesystem labelled %q", l))
		} else {
			add("ext2/3/4 filesystem")
		}
	}
	if at(head, 0, "XFSB") {
		add("XFS filesystem")
	}
	if at(head, 65536+64, "_BHRfS_M") {
		add("btrfs filesystem")
	}
	for _, ps := range []int{4096, 8192, 16384, 65536} {
		if at(head, ps-10, "SWAPSPACE2") || at(head, ps-10, "SWAP-SPACE") {
			add("swap space")
			break
		}
	}
	for s := 0; s < 4; s++ {
		if at(head, s*512, "LABELONE") {
			add("LVM physical volume")
			break
		}
	}
	if at(head, 0, "LUKS\xba\xbe") || at(head, 0, "SKUL\xba\xbe") {
		add("LUKS encrypted volume")
	}
	if at(head, 32769, "CD001") {
		add("ISO 9660 filesystem")
	}
	if at(head, 0, "hsqs") || at(head, 0, "sqsh") {
		add("squashfs image")
	}
	if zfsLabel(head[:256*1024]) || zfsLabel(tail[mib-512*1024:]) {
		add("ZFS pool member")
	}
	if len(found) == 0 {
		return "unrecognised non-zero data in its first or last MiB"
	}
	return strings.Join(found, ", ")
}

// zfsLabel looks for the ZFS uberblock magic 0x00bab10c (either byte order)
// in the uberblock ring (second half of a 256 KiB vdev label), 1 KiB aligned.
func zfsLabel(label []byte) bool {
	if len(label) < 256*1024 {
		return false
	}
	for off := 128 * 1024; off+8 <= 256*1024; off += 1024 {
		le := binary.LittleEndian.Uint64(label[off:])
		be := binary.BigEndian.Uint64(label[off:])
		if le == 0x00bab10c || be == 0x00bab10c {
			return true
		}
	}
	return false
}
