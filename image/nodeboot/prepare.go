package nodeboot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
	"unsafe"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"golang.org/x/sys/unix"
)

// Prepare turns a blank disk (or one whose herd partition lost its
// filesystem) into herd's cache: a GPT with one partition named herd-cache
// spanning the disk, formatted ext4 with label herd-cache. It re-checks the
// disk first and refuses anything that is neither blank nor herd's, so a
// caller's stale decision can never cost data. It returns the partition's
// device node.
func Prepare(ctx context.Context, dev, mke2fs string) (string, error) {
	size, err := deviceSize(dev, "/sys")
	if err != nil {
		return "", fmt.Errorf("prepare %s: %w", dev, err)
	}
	c, err := inspectDevice(dev, size)
	if err != nil {
		return "", fmt.Errorf("prepare %s: %w", dev, err)
	}
	if !c.Blank && !c.Herd {
		return "", fmt.Errorf("prepare %s: refusing, it holds %s", dev, c.What)
	}
	start, psize := c.PartStart, c.PartSize
	if c.Blank {
		if start, psize, err = writeGPT(dev); err != nil {
			return "", err
		}
		// go-diskfs holds the disk open with O_EXCL while it asks the kernel
		// to re-read the table, and the kernel refuses (EBUSY) on a claimed
		// disk; ask again now that it is closed.
		if err := rereadPartitions(ctx, dev); err != nil {
			return "", err
		}
	}
	part, err := WaitPartition(ctx, dev, start, psize)
	if err != nil {
		return "", err
	}
	// -m 0: no root-reserved blocks on a pure cache. lazy init keeps the
	// format to seconds on large SSDs; ext4lazyinit finishes in the background.
	cmd := exec.CommandContext(ctx, mke2fs, "-t", "ext4", "-F", "-q", "-L", CacheLabel, "-m", "0",
		"-E", "lazy_itable_init=1,lazy_journal_init=1", part)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("mke2fs %s: %w: %s", part, err, strings.TrimSpace(string(out)))
	}
	return part, nil
}

// writeGPT writes herd's GPT and returns the partition's byte range.
func writeGPT(dev string) (start, size int64, err error) {
	d, err := diskfs.Open(dev, diskfs.WithOpenMode(diskfs.ReadWriteExclusive))
	if err != nil {
		return 0, 0, fmt.Errorf("open %s for partitioning: %w", dev, err)
	}
	defer d.Close()
	sector := uint64(d.LogicalBlocksize)
	if sector == 0 {
		sector = 512
	}
	total := uint64(d.Size) / sector
	// Start at 1 MiB; end 1 MiB before the end (backup GPT + alignment).
	first := uint64(mib) / sector
	end := total - uint64(mib)/sector - 1
	table := &gpt.Table{
		LogicalSectorSize:  int(sector),
		PhysicalSectorSize: int(d.PhysicalBlocksize),
		ProtectiveMBR:      true,
		Partitions: []*gpt.Partition{{
			Index: 1,
			Start: first,
			End:   end,
			Type:  gpt.LinuxFilesystem,
			Name:  CacheLabel,
		}},
	}
	if table.PhysicalSectorSize == 0 {
		table.PhysicalSectorSize = int(sector)
	}
	if err := d.Partition(table); err != nil {
		return 0, 0, fmt.Errorf("write GPT on %s: %w", dev, err)
	}
	return int64(first * sector), int64((end - first + 1) * sector), nil
}

// rereadPartitions asks the kernel to re-read dev's partition table
// (BLKRRPART), retrying while udev or blkid briefly hold the disk.
func rereadPartitions(ctx context.Context, dev string) error {
	f, err := os.Open(dev)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Mode()&os.ModeDevice == 0 {
		return err // a disk image file (tests): nothing to re-read
	}
	for i := 0; ; i++ {
		_, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKRRPART)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || i == 50 {
			return fmt.Errorf("re-read partition table of %s: %w", dev, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// PartitionDev names partition 1 of a whole-disk device the way the kernel
// does: nvme0n1 → nvme0n1p1, loop3 → loop3p1, sda → sda1.
func PartitionDev(dev string) string {
	base := filepath.Base(dev)
	if base != "" && base[len(base)-1] >= '0' && base[len(base)-1] <= '9' {
		return dev + "p1"
	}
	return dev + "1"
}

// WaitPartition returns the node of partition 1 of dev (at start, size
// bytes), waiting for the kernel and devtmpfs to create it. A kernel built
// without GPT support never does; then the partition is registered by hand
// (BLKPG_ADD_PARTITION, as partx -a does) from the range herd read itself.
func WaitPartition(ctx context.Context, dev string, start, size int64) (string, error) {
	real, err := filepath.EvalSymlinks(dev)
	if err != nil {
		return "", err
	}
	part := PartitionDev(real)
	for i := 0; i < 100; i++ {
		if st, err := os.Stat(part); err == nil && st.Mode()&os.ModeDevice != 0 {
			return part, nil
		}
		if i == 10 && start > 0 && size > 0 {
			if _, err := os.Stat(filepath.Join("/sys/class/block", filepath.Base(part))); err != nil {
				if err := addPartition(real, start, size); err != nil {
					return "", err
				}
			}
		}
		// Without devtmpfs/udev the kernel knows the partition (sysfs) but
		// nobody creates its node: make it from /sys/class/block/<p>/dev.
		if mm := readTrim(filepath.Join("/sys/class/block", filepath.Base(part), "dev")); mm != "" {
			var maj, mnr uint32
			if _, err := fmt.Sscanf(mm, "%d:%d", &maj, &mnr); err == nil {
				unix.Mknod(part, unix.S_IFBLK|0o660, int(unix.Mkdev(maj, mnr)))
			}
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return "", fmt.Errorf("partition %s did not appear after writing the GPT on %s", part, dev)
}

// addPartition registers partition 1 of dev with the kernel (BLKPG).
func addPartition(dev string, start, size int64) error {
	f, err := os.Open(dev)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	p := unix.BlkpgPartition{Start: start, Length: size, Pno: 1}
	arg := unix.BlkpgIoctlArg{Op: unix.BLKPG_ADD_PARTITION, Datalen: int32(unsafe.Sizeof(p)), Data: (*byte)(unsafe.Pointer(&p))}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKPG, uintptr(unsafe.Pointer(&arg))); e != 0 && e != unix.EBUSY {
		return fmt.Errorf("register partition 1 of %s with the kernel (BLKPG): %w", dev, e)
	}
	return nil
}
