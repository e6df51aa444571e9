package nodeboot

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/herdlab/herd/internal/atomicfile"
)

// LoopAttach attaches file read-only to a free loop device and returns the
// device path. It uses LOOP_CONFIGURE (one ioctl, Linux >= 5.8) and falls
// back to LOOP_SET_FD + LOOP_SET_STATUS64 on older kernels. Autoclear frees
// the device when its last user goes away, so the caller must keep the
// returned file open until the device is mounted, then close it.
// The device reads its file with direct I/O where the kernel allows it
// (the file's filesystem and the disk's logical block size permit it; else
// buffered, silently): a buffered loop device reads each request
// synchronously through the page cache of the file and keeps the image
// cached twice (file and device), which made a cached reboot's cold reads
// the slowest part of its start-up. What the device returns is still
// checked by dm-verity above it.
func LoopAttach(file string) (string, *os.File, error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return "", nil, fmt.Errorf("open /dev/loop-control (is the loop module loaded?): %w", err)
	}
	defer ctl.Close()
	backing, err := os.Open(file)
	if err != nil {
		return "", nil, fmt.Errorf("open %s: %w", file, err)
	}
	defer backing.Close()
	for try := 0; try < 8; try++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", nil, fmt.Errorf("LOOP_CTL_GET_FREE: %w", err)
		}
		dev := fmt.Sprintf("/dev/loop%d", n)
		lf, err := openLoop(dev)
		if err != nil {
			return "", nil, err
		}
		cfg := unix.LoopConfig{Fd: uint32(backing.Fd())}
		cfg.Info.Flags = unix.LO_FLAGS_READ_ONLY | unix.LO_FLAGS_AUTOCLEAR | unix.LO_FLAGS_DIRECT_IO
		copy(cfg.Info.File_name[:], file)
		err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY) {
			info := cfg.Info
			info.Flags &^= unix.LO_FLAGS_DIRECT_IO // not settable by LOOP_SET_STATUS64
			if err = legacyAttach(lf, backing, info); err == nil {
				unix.IoctlSetInt(int(lf.Fd()), unix.LOOP_SET_DIRECT_IO, 1) // best effort
			}
		}
		if errors.Is(err, unix.EBUSY) {
			lf.Close()
			continue // another process took this device between the two calls
		}
		if err != nil {
			lf.Close()
			return "", nil, fmt.Errorf("attach %s to %s: %w", file, dev, err)
		}
		return dev, lf, nil
	}
	return "", nil, fmt.Errorf("attach %s: no free loop device", file)
}

// openLoop opens a loop device node, waiting briefly for devtmpfs to create
// it after LOOP_CTL_GET_FREE added it.
func openLoop(dev string) (*os.File, error) {
	var err error
	for i := 0; i < 50; i++ {
		var f *os.File
		if f, err = os.OpenFile(dev, os.O_RDONLY, 0); err == nil {
			return f, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			break
		}
		unix.Nanosleep(&unix.Timespec{Nsec: 20e6}, nil)
	}
	return nil, fmt.Errorf("open %s: %w", dev, err)
}

func legacyAttach(lf, backing *os.File, info unix.LoopInfo64) error {
	if err := unix.IoctlSetInt(int(lf.Fd()), unix.LOOP_SET_FD, int(backing.Fd())); err != nil {
		return err
	}
	if err := unix.IoctlLoopSetStatus64(int(lf.Fd()), &info); err != nil {
		unix.IoctlSetInt(int(lf.Fd()), unix.LOOP_CLR_FD, 0)
		return err
	}
	return nil
}

// MountRoot mounts the squashfs image read-only at lower and an overlay of
// it with a tmpfs upper layer at root: the node sees a writable root whose
// writes live in RAM and vanish at reboot.
// image is a file (attached to a loop device) or a block device (the
// dm-verity mapping of the cached image), mounted as it is.
func MountRoot(image, lower, rw, root string) error {
	loop := image
	if st, err := os.Stat(image); err != nil {
		return fmt.Errorf("root image: %w", err)
	} else if st.Mode()&os.ModeDevice == 0 {
		var hold *os.File
		loop, hold, err = LoopAttach(image)
		if err != nil {
			return err
		}
		// Autoclear: once mounted, the mount holds the device; closing our
		// handle before that would detach it (a 0-byte device, EIO on mount).
		defer hold.Close()
	}
	for _, d := range []string{lower, rw, root} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("mkdir %s: %w", d, err)
		}
	}
	if err := mountSquashfs(loop, lower); err != nil {
		return fmt.Errorf("mount %s (%s) as squashfs on %s: %w", image, loop, lower, err)
	}
	if err := unix.Mount("herd-rw", rw, "tmpfs", unix.MS_NODEV|unix.MS_NOSUID, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", rw, err)
	}
	upper, work := filepath.Join(rw, "upper"), filepath.Join(rw, "work")
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("mkdir %s: %w", d, err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work)
	if err := unix.Mount("herd-root", root, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount overlay on %s (%s): %w", root, opts, err)
	}
	return nil
}

// CopyTree copies src onto dst keeping owners, modes and symlinks; existing
// files in dst are replaced. It is how the per-node runtime overlay
// (/herd/overlay from overlay.cpio) lands on the new root.
func CopyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st, _ := info.Sys().(*unix.Stat_t)
		if st == nil {
			var s unix.Stat_t
			if err := unix.Lstat(p, &s); err != nil {
				return err
			}
			st = &s
		}
		switch {
		case info.IsDir():
			if rel == "." {
				return nil
			}
			if err := os.Mkdir(target, 0o700); errors.Is(err, os.ErrExist) {
				return nil // a directory of the image (/etc, ...) keeps its own owner and mode
			} else if err != nil {
				return fmt.Errorf("overlay: mkdir %s: %w", target, err)
			}
		case info.Mode()&os.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			os.Remove(target)
			if err := os.Symlink(link, target); err != nil {
				return fmt.Errorf("overlay: symlink %s: %w", target, err)
			}
			if err := os.Lchown(target, int(st.Uid), int(st.Gid)); err != nil {
				return fmt.Errorf("overlay: chown %s: %w", target, err)
			}
			return nil
		case info.Mode().IsRegular():
			if err := atomicfile.Copy(p, target, 0o600); err != nil {
				return fmt.Errorf("overlay: %s: %w", target, err)
			}
		default:
			return fmt.Errorf("overlay: %s: unsupported file type %v", p, info.Mode().Type())
		}
		if err := os.Lchown(target, int(st.Uid), int(st.Gid)); err != nil {
			return fmt.Errorf("overlay: chown %s: %w", target, err)
		}
		// Chmod after chown: chown clears setuid/setgid bits.
		if err := os.Chmod(target, info.Mode()&(os.ModePerm|os.ModeSetuid|os.ModeSetgid|os.ModeSticky)); err != nil {
			return fmt.Errorf("overlay: chmod %s: %w", target, err)
		}
		return nil
	})
}

// MoveMount moves the mount at from to to (creating to), like mount --move.
func MoveMount(from, to string) error {
	if err := os.MkdirAll(to, 0o755); err != nil {
		return fmt.Errorf("mkdir %s: %w", to, err)
	}
	if err := unix.Mount(from, to, "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move mount %s to %s: %w", from, to, err)
	}
	return nil
}

// mountSquashfs mounts a squashfs read-only with parallel decompression
// (threads=multi). Ubuntu's kernel builds the single-decompressor mode as
// its default, so without the option every read of the root image, from
// every process of a booting system, waits for one zstd stream in turn.
// multi, not percpu: it makes decompressors as readers need them, where
// percpu allocates one per possible CPU at mount (hundreds on a large
// server). Kernels without the mount option
// (CONFIG_SQUASHFS_CHOICE_DECOMP_BY_MOUNT) refuse it with EINVAL; they get
// their built-in mode.
func mountSquashfs(dev, dir string) error {
	err := unix.Mount(dev, dir, "squashfs", unix.MS_RDONLY|unix.MS_NODEV, "threads=multi")
	if errors.Is(err, unix.EINVAL) {
		err = unix.Mount(dev, dir, "squashfs", unix.MS_RDONLY|unix.MS_NODEV, "")
	}
	if err != nil {
		return err
	}
	// squashfs widens every readahead to whole blocks (128 KiB): the page
	// cache's read-around window, 128 KiB around a faulting page, spans
	// two blocks and costs two decompressions for one page (the cached
	// reboot read a fifth more of the image with it). Without it a fault
	// decompresses its one block, which fills the page cache for all of
	// the block's pages. After the mount: newer kernels' squashfs sets
	// the device's readahead when it mounts.
	if f, err := os.Open(dev); err == nil {
		unix.IoctlSetInt(int(f.Fd()), unix.BLKRASET, 0) // best effort: only speed
		f.Close()
	}
	return nil
}
