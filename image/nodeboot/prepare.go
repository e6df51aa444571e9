package nodeboot

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"
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
	if c.Blank {
		if err := writeGPT(dev); err != nil {
			return "", err
		}
	}
	part, err := waitPartition(ctx, dev)
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

func writeGPT(dev string) error {
	d, err := diskfs.Open(dev, diskfs.WithOpenMode(diskfs.ReadWriteExclusive))
	if err != nil {
		return fmt.Errorf("open %s for partitioning: %w", dev, err)
	}
	defer d.Close()
	sector := uint64(d.LogicalBlocksize)
	if sector == 0 {
		sector = 512
	}
	total := uint64(d.Size) / sector
	// Start at 1 MiB; end 1 MiB before the end (backup GPT + alignment).
	start := uint64(mib) / sector
	end := total - uint64(mib)/sector - 1
	table := &gpt.Table{
		LogicalSectorSize:  int(sector),
		PhysicalSectorSize: int(d.PhysicalBlocksize),
		ProtectiveMBR:      true,
		Partitions: []*gpt.Partition{{
			Start: start,
			End:   end,
			Type:  gpt.LinuxFilesystem,
			Name:  CacheLabel,
		}},
	}
	if table.PhysicalSectorSize == 0 {
		table.PhysicalSectorSize = int(sector)
	}
	if err := d.Partition(table); err != nil {
		return fmt.Errorf("write GPT on %s: %w", dev, err)
	}
	return nil
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

// waitPartition waits for the kernel (devtmpfs/udev) to create the
// partition's device node after the table was re-read.
func waitPartition(ctx context.Context, dev string) (string, error) {
	real, err := filepath.EvalSymlinks(dev)
	if err != nil {
		return "", err
	}
	part := PartitionDev(real)
	for i := 0; i < 100; i++ {
		if st, err := os.Stat(part); err == nil && st.Mode()&os.ModeDevice != 0 {
			return part, nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return "", fmt.Errorf("partition %s did not appear after writing the GPT on %s", part, dev)
}
