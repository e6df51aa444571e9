package nodeboot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The cached image is read by dm-verity through a device-mapper linear
// table over the extents its file occupies on the cache partition, rather
// than through a loop device: a loop device hands every read to a worker
// thread that reads the file through ext4 (its extent lookup, its direct
// I/O path) before the disk sees it; the linear table sends each read to
// the partition directly. Android maps files as block devices the same way
// (libfiemap). A file whose bytes on the disk are not what reading it
// returns (unwritten or delayed extents, holes, inline or encrypted data)
// is refused, and the caller falls back to the loop device.
//
// The file stays referenced by a loop device that nothing reads (no
// autoclear, detached only at power-off): if the file is deleted during
// the uptime (herd-verity.service removes a corrupt image; an admin), ext4
// keeps its blocks allocated while that reference lasts, so they are never
// handed to another file under the running system's root.

// VerityDataName is the device-mapper name of the linear table the verity
// device reads (the image file's extents on the cache partition).
const VerityDataName = "herd-root-data"

// FIEMAP (linux/fiemap.h), written out: golang.org/x/sys has no wrapper.
const (
	fsIocFiemap      = 0xC020660B // _IOWR('f', 11, struct fiemap)
	fiemapFlagSync   = 0x1        // FIEMAP_FLAG_SYNC: write dirty data first
	fiemapHeaderSize = 32         // sizeof(struct fiemap)
	fiemapExtentSize = 56         // sizeof(struct fiemap_extent)
	fiemapBatch      = 256
	fiemapExtentLast = 0x1
	// UNKNOWN, DELALLOC, ENCODED, DATA_ENCRYPTED, NOT_ALIGNED, DATA_INLINE,
	// DATA_TAIL, UNWRITTEN: the device's bytes are not the file's bytes.
	fiemapExtentNotRaw = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800
	// maxLinearExtents bounds the table; a file in more pieces than this
	// (a badly fragmented cache) is read through the loop device instead.
	maxLinearExtents = 4096
)

// FileExtent is one contiguous run of a file on its filesystem's device,
// in bytes.
type FileExtent struct {
	Logical, Physical, Length uint64
}

// FileExtents returns where the first size bytes of f lie on the block
// device holding its filesystem, merged where they are contiguous, after
// writing out any dirty data. It fails unless every byte up to size is on
// the device as stored (no holes, unwritten, delayed, inline, encoded or
// encrypted extents) and every run is whole 512-byte sectors.
func FileExtents(f *os.File, size int64) ([]FileExtent, error) {
	if size <= 0 || size%512 != 0 {
		return nil, fmt.Errorf("%s: size %d is not a whole number of sectors", f.Name(), size)
	}
	var out []FileExtent
	var next uint64 // the next logical byte to account for
	buf := make([]byte, fiemapHeaderSize+fiemapBatch*fiemapExtentSize)
	flags := uint32(fiemapFlagSync)
	for next < uint64(size) {
		clear(buf)
		binary.NativeEndian.PutUint64(buf[0:], next)
		binary.NativeEndian.PutUint64(buf[8:], uint64(size)-next)
		binary.NativeEndian.PutUint32(buf[16:], flags)
		binary.NativeEndian.PutUint32(buf[24:], fiemapBatch)
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0]))); errno != 0 {
			return nil, fmt.Errorf("%s: FIEMAP: %w", f.Name(), errno)
		}
		flags = 0 // synced once
		n := int(binary.NativeEndian.Uint32(buf[20:]))
		if n == 0 {
			return nil, fmt.Errorf("%s: bytes %d-%d are a hole", f.Name(), next, size)
		}
		last := false
		for i := 0; i < n && !last; i++ {
			e := buf[fiemapHeaderSize+i*fiemapExtentSize:]
			x := FileExtent{
				Logical:  binary.NativeEndian.Uint64(e[0:]),
				Physical: binary.NativeEndian.Uint64(e[8:]),
				Length:   binary.NativeEndian.Uint64(e[16:]),
			}
			fl := binary.NativeEndian.Uint32(e[40:])
			last = fl&fiemapExtentLast != 0
			if x.Logical >= uint64(size) {
				last = true
				break
			}
			switch {
			case fl&fiemapExtentNotRaw != 0:
				return nil, fmt.Errorf("%s: the extent at byte %d is not stored as plain data (FIEMAP flags %#x)", f.Name(), x.Logical, fl)
			case x.Logical != next:
				return nil, fmt.Errorf("%s: bytes %d-%d are a hole", f.Name(), next, x.Logical)
			case x.Length == 0 || x.Logical%512 != 0 || x.Physical%512 != 0 || x.Length%512 != 0:
				return nil, fmt.Errorf("%s: the extent at byte %d (%d bytes at %d) is not whole sectors", f.Name(), x.Logical, x.Length, x.Physical)
			}
			x.Length = min(x.Length, uint64(size)-x.Logical)
			next = x.Logical + x.Length
			if k := len(out) - 1; k >= 0 && out[k].Physical+out[k].Length == x.Physical {
				out[k].Length += x.Length
			} else {
				out = append(out, x)
			}
			if len(out) > maxLinearExtents {
				return nil, fmt.Errorf("%s: more than %d extents", f.Name(), maxLinearExtents)
			}
		}
		if last && next < uint64(size) {
			return nil, fmt.Errorf("%s: its extents end at byte %d of %d", f.Name(), next, size)
		}
	}
	return out, nil
}

// linearTable is the device-mapper table that reads extents of the block
// device majmin as one device.
func linearTable(majmin string, exts []FileExtent) []dmTarget {
	t := make([]dmTarget, 0, len(exts))
	for _, x := range exts {
		t = append(t, dmTarget{Start: x.Logical / 512, Length: x.Length / 512, Type: "linear",
			Params: fmt.Sprintf("%s %d", majmin, x.Physical/512)})
	}
	return t
}

// pinnedLoop is the loop device that keeps the mapped file referenced
// (MapVerity in this process); UnmapVerity detaches it.
var pinnedLoop string

// mapFileExtents maps the first size bytes of path as the device-mapper
// device VerityDataName (a linear table over its extents) and returns its
// "major:minor". The file is pinned by a loop device first.
func mapFileExtents(ctl *os.File, path string, size int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return "", fmt.Errorf("stat %s: %w", path, err)
	}
	// tmpfs, overlayfs, btrfs subvolumes: no single block device (major 0).
	if unix.Major(st.Dev) == 0 {
		return "", fmt.Errorf("%s is not on a block device", path)
	}
	pin, lf, err := loopAttach(path, false)
	if err != nil {
		return "", fmt.Errorf("pin %s: %w", path, err)
	}
	lf.Close()
	pinnedLoop = pin
	exts, err := FileExtents(f, size)
	if err != nil {
		unpinLoop()
		return "", err
	}
	majmin := fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
	dev, err := dmCreateTable(ctl, VerityDataName, linearTable(majmin, exts))
	if err != nil {
		unpinLoop()
		return "", err
	}
	return fmt.Sprintf("%d:%d", unix.Major(dev), unix.Minor(dev)), nil
}

// unpinLoop detaches the loop device that pins the mapped file, if any.
func unpinLoop() error {
	if pinnedLoop == "" {
		return nil
	}
	lf, err := os.OpenFile(pinnedLoop, os.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("detach %s: %w", pinnedLoop, err)
	}
	defer lf.Close()
	err = unix.IoctlSetInt(int(lf.Fd()), unix.LOOP_CLR_FD, 0)
	if err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("detach %s: %w", pinnedLoop, err)
	}
	pinnedLoop = ""
	return nil
}
