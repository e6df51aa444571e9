package nodeboot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Device-mapper through its ioctl interface (linux/dm-ioctl.h), written out
// here rather than taken from a library: the agent needs four calls (create,
// load, resume, status, plus remove) and must stay a small static binary;
// dmsetup/libdevmapper would add a C library and udev expectations to the
// initramfs.

const (
	dmIoctlSize      = 312 // sizeof(struct dm_ioctl)
	dmTargetSpecSize = 40  // sizeof(struct dm_target_spec)
	dmReadonlyFlag   = 1 << 0
	dmStatusTable    = 1 << 4 // DM_STATUS_TABLE_FLAG: table, not status
	dmBufferFull     = 1 << 8
	dmControl        = "/dev/mapper/control"
	dmControlMinor   = 236 // MAPPER_CTRL_MINOR (misc major 10)
)

// ioctl numbers: _IOWR(0xfd, nr, struct dm_ioctl).
func dmCmd(nr uintptr) uintptr { return 3<<30 | dmIoctlSize<<16 | 0xfd<<8 | nr }

var (
	dmDevCreate   = dmCmd(3)
	dmDevRemove   = dmCmd(4)
	dmDevSuspend  = dmCmd(6)
	dmTableLoad   = dmCmd(9)
	dmTableStatus = dmCmd(12)
)

// dmHeader is struct dm_ioctl.
type dmHeader struct {
	Version     [3]uint32
	DataSize    uint32
	DataStart   uint32
	TargetCount uint32
	OpenCount   int32
	Flags       uint32
	EventNr     uint32
	Padding     uint32
	Dev         uint64
	Name        [128]byte
	UUID        [129]byte
	Data        [7]byte
}

// dmTargetSpec is struct dm_target_spec; its parameter string follows it.
type dmTargetSpec struct {
	SectorStart uint64
	Length      uint64
	Status      int32
	Next        uint32
	TargetType  [16]byte
}

// dmTarget is one line of a device-mapper table.
type dmTarget struct {
	Start, Length uint64 // in 512-byte sectors
	Type, Params  string
}

// openDMControl opens /dev/mapper/control, creating the node when devtmpfs
// has not (an initramfs without udev).
func openDMControl() (*os.File, error) {
	f, err := os.OpenFile(dmControl, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		os.MkdirAll(filepath.Dir(dmControl), 0o755)
		if merr := unix.Mknod(dmControl, unix.S_IFCHR|0o600, int(unix.Mkdev(10, dmControlMinor))); merr != nil {
			return nil, fmt.Errorf("open %s (is dm_mod loaded?): %w; mknod: %v", dmControl, err, merr)
		}
		f, err = os.OpenFile(dmControl, os.O_RDWR, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s (is dm_mod loaded?): %w", dmControl, err)
	}
	return f, nil
}

// dmIoctl runs one device-mapper ioctl for the device name with payload
// after the header, and returns the header and data the kernel wrote back.
func dmIoctl(ctl *os.File, cmd uintptr, name string, flags uint32, targets uint32, payload []byte, room int) (*dmHeader, []byte, error) {
	for {
		size := max(dmIoctlSize+len(payload), dmIoctlSize+room)
		h := dmHeader{Version: [3]uint32{4, 0, 0}, DataSize: uint32(size), DataStart: dmIoctlSize, TargetCount: targets, Flags: flags}
		copy(h.Name[:len(h.Name)-1], name)
		var hb bytes.Buffer
		binary.Write(&hb, binary.NativeEndian, &h)
		buf := make([]byte, size)
		copy(buf, hb.Bytes())
		copy(buf[dmIoctlSize:], payload)
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, ctl.Fd(), cmd, uintptr(unsafe.Pointer(&buf[0])))
		if errno != 0 {
			return nil, nil, errno
		}
		var out dmHeader
		if err := binary.Read(bytes.NewReader(buf[:dmIoctlSize]), binary.NativeEndian, &out); err != nil {
			return nil, nil, err
		}
		if out.Flags&dmBufferFull != 0 && room < 1<<20 {
			room = max(room*4, 16384)
			continue
		}
		end := min(int(out.DataSize), len(buf))
		if int(out.DataStart) > end {
			return &out, nil, nil
		}
		return &out, buf[out.DataStart:end], nil
	}
}

// dmCreate creates the device name with one read-only table and activates
// it; it returns the new device's number.
func dmCreate(ctl *os.File, name string, t dmTarget) (uint64, error) {
	h, _, err := dmIoctl(ctl, dmDevCreate, name, 0, 0, nil, 0)
	if err != nil {
		return 0, fmt.Errorf("device-mapper create %s: %w", name, err)
	}
	spec := dmTargetSpec{SectorStart: t.Start, Length: t.Length}
	copy(spec.TargetType[:len(spec.TargetType)-1], t.Type)
	params := append([]byte(t.Params), 0)
	n := dmTargetSpecSize + len(params)
	n = (n + 7) &^ 7
	spec.Next = uint32(n)
	var pb bytes.Buffer
	binary.Write(&pb, binary.NativeEndian, &spec)
	payload := make([]byte, n)
	copy(payload, pb.Bytes())
	copy(payload[dmTargetSpecSize:], params)
	if _, _, err := dmIoctl(ctl, dmTableLoad, name, dmReadonlyFlag, 1, payload, 0); err != nil {
		dmRemove(ctl, name)
		return 0, fmt.Errorf("device-mapper load %s table %q: %w", t.Type, t.Params, err)
	}
	if _, _, err := dmIoctl(ctl, dmDevSuspend, name, 0, 0, nil, 0); err != nil { // no suspend flag: resume
		dmRemove(ctl, name)
		return 0, fmt.Errorf("device-mapper resume %s: %w", name, err)
	}
	return h.Dev, nil
}

// dmRemove removes the device name (ENXIO when there is none).
func dmRemove(ctl *os.File, name string) error {
	_, _, err := dmIoctl(ctl, dmDevRemove, name, 0, 0, nil, 0)
	return err
}

// dmStatus returns the status line of the device's first target (for
// verity: "V" while every block read matched, "C" once one did not).
func dmStatus(ctl *os.File, name string) (string, error) {
	h, data, err := dmIoctl(ctl, dmTableStatus, name, 0, 0, nil, 4096)
	if err != nil {
		return "", err
	}
	if h.TargetCount == 0 || len(data) < dmTargetSpecSize {
		return "", fmt.Errorf("device-mapper %s has no active table", name)
	}
	s := data[dmTargetSpecSize:]
	if i := bytes.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	return string(s), nil
}

// blockDevNode returns /dev/dm-N style path for a device number, waiting
// for devtmpfs and creating the node itself if it does not appear.
func blockDevNode(devRoot, base string, dev uint64) (string, error) {
	p := filepath.Join(devRoot, fmt.Sprintf("%s%d", base, unix.Minor(dev)))
	for i := 0; i < 50; i++ {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Rdev == dev {
			return p, nil
		}
		unix.Nanosleep(&unix.Timespec{Nsec: 20e6}, nil)
	}
	os.Remove(p)
	if err := unix.Mknod(p, unix.S_IFBLK|0o600, int(dev)); err != nil {
		return "", fmt.Errorf("device node for %d:%d: %w", unix.Major(dev), unix.Minor(dev), err)
	}
	return p, nil
}
