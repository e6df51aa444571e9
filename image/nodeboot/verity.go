package nodeboot

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/herdlab/herd/image/verity"
	"golang.org/x/sys/unix"

	"github.com/herdlab/herd/internal/nodeauth"
)

// VerityName is the device-mapper name of the node's verified root image.
const VerityName = "herd-root"

// ErrCorrupt means a cached image failed its dm-verity check (or is not the
// size its hash tree says); the caller removes it and downloads it again.
var ErrCorrupt = errors.New("cached image failed dm-verity verification")

// MapVerity maps the image file through dm-verity with the root hash from
// the command line and returns the block device to mount: every block the
// system reads from it is hashed and checked against the tree, whose root
// is that hash, so a changed byte anywhere fails that read with EIO. Before
// returning it reads the squashfs superblock and metadata tables (inodes,
// directories, fragments, ids, xattrs: what mounting and walking the tree
// read) through the mapping, so corruption there is found now, while the
// agent can still fetch a good copy. Errors wrapping ErrCorrupt condemn the
// file; any other error means dm-verity could not be set up (no
// device-mapper or verity target in this kernel): the caller falls back to
// hashing the file whole.
func MapVerity(devRoot, path string, v *verity.Params) (string, error) {
	st, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", ErrNotCached
	}
	if err != nil {
		return "", fmt.Errorf("stat cached image: %w", err)
	}
	if st.Size() != v.FileSize() {
		return "", fmt.Errorf("%w: %s is %d bytes, its hash tree says %d", ErrCorrupt, path, st.Size(), v.FileSize())
	}
	ctl, err := openDMControl()
	if err != nil {
		return "", err
	}
	defer ctl.Close()
	dmRemove(ctl, VerityName) // left over from an earlier attempt in this boot
	loop, hold, err := LoopAttach(path)
	if err != nil {
		return "", err
	}
	// dm opens the loop device when the table is loaded; until then our
	// handle keeps the autoclear loop device alive.
	defer hold.Close()
	var lst unix.Stat_t
	if err := unix.Stat(loop, &lst); err != nil {
		return "", fmt.Errorf("stat %s: %w", loop, err)
	}
	majmin := fmt.Sprintf("%d:%d", unix.Major(lst.Rdev), unix.Minor(lst.Rdev))
	// try_verify_in_tasklet: a read whose hash blocks are already cached
	// is checked in the I/O completion (softirq) instead of a hop through
	// the kverityd workqueue; most reads of a booting system are such
	// reads, and each hop is latency the reading process waits out. The
	// check itself is the same. Kernels before 6.0 refuse the argument:
	// they get the plain table.
	target := dmTarget{Length: uint64(v.DataBlocks) * verity.BlockSize / 512, Type: "verity", Params: v.Table(majmin, "try_verify_in_tasklet")}
	devnum, err := dmCreate(ctl, VerityName, target)
	if err != nil {
		target.Params = v.Table(majmin)
		devnum, err = dmCreate(ctl, VerityName, target)
	}
	if err != nil {
		return "", err
	}
	dev, err := blockDevNode(devRoot, "dm-", devnum)
	if err != nil {
		dmRemove(ctl, VerityName)
		return "", err
	}
	if err := preRead(dev, v.HashOffset()); err != nil {
		dmRemove(ctl, VerityName)
		return "", fmt.Errorf("%w: %s: %v", ErrCorrupt, path, err)
	}
	return dev, nil
}

// UnmapVerity removes the dm-verity mapping (before its file is deleted).
func UnmapVerity() error {
	ctl, err := openDMControl()
	if err != nil {
		return err
	}
	defer ctl.Close()
	return dmRemove(ctl, VerityName)
}

// squashfs superblock fields preRead uses (little-endian).
const (
	sqMagic           = 0x73717368
	sqOffBytesUsed    = 40
	sqOffIDTable      = 48
	sqOffXattrTable   = 56
	sqOffInodeTable   = 64
	sqMetadataMaxRead = 256 << 20
)

// preRead reads the superblock and the metadata area through the verity
// device; a corrupt block there makes the read fail with EIO.
func preRead(dev string, size int64) error {
	f, err := os.Open(dev)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	sb := make([]byte, 4096)
	if _, err := io.ReadFull(f, sb); err != nil {
		return fmt.Errorf("read superblock: %w", err)
	}
	if binary.LittleEndian.Uint32(sb) != sqMagic {
		return fmt.Errorf("no squashfs superblock")
	}
	used := int64(binary.LittleEndian.Uint64(sb[sqOffBytesUsed:]))
	start := int64(binary.LittleEndian.Uint64(sb[sqOffInodeTable:]))
	if used <= 0 || used > size || start <= 0 || start > used {
		return fmt.Errorf("squashfs superblock: bytes used %d, inode table at %d, device %d bytes", used, start, size)
	}
	if used-start > sqMetadataMaxRead {
		start = used - sqMetadataMaxRead
	}
	start &^= verity.BlockSize - 1
	if _, err := io.Copy(io.Discard, io.NewSectionReader(f, start, used-start)); err != nil {
		return fmt.Errorf("read squashfs metadata (bytes %d-%d): %w", start, used, err)
	}
	return nil
}

// BootedCacheImages is where the booted system sees the cache SSD's images.
const BootedCacheImages = "/var/cache/herd/images"

// VerityWatch is `herd-boot verity-watch` (herd-verity.service): while the
// node runs from a cached image mapped through dm-verity it polls the
// mapping's status; once a block has failed its check (a read returned EIO
// to some program) it reports the corruption to the server and deletes the
// cached copy, so the next boot downloads the image again instead of
// failing on the same block. The running system keeps its open file.
func VerityWatch(ctx context.Context, s *System, imagesDir string, every time.Duration) error {
	p, err := s.Params()
	if err != nil {
		return err
	}
	if p.Verity == nil {
		s.say("verity-watch: the image has no hash tree (no herd.verity); nothing to watch")
		return nil
	}
	ctl, err := openDMControl()
	if err != nil {
		s.say("verity-watch: %v; the root is not mapped through dm-verity", err)
		return nil
	}
	defer ctl.Close()
	mac, _ := PrimaryMAC()
	rep := &Reporter{Server: p.Server, Node: p.Node, MAC: mac, Image: p.ID, Console: s.Console, Timeout: 5 * time.Second}
	// The server records only events signed by the node's enrolled key.
	if key, _, err := LoadBootedKey(s); err == nil {
		rep.SetSigner(ctx, &nodeauth.Client{Base: p.Server, Node: p.Node, Key: key})
	} else {
		s.say("verity-watch: %v: error events cannot be signed and would not be recorded", err)
	}
	for {
		st, err := dmStatus(ctl, VerityName)
		if errors.Is(err, unix.ENXIO) {
			s.say("verity-watch: no %s mapping (RAM mode or full-hash boot); nothing to watch", VerityName)
			return nil
		}
		if err != nil {
			return fmt.Errorf("verity-watch: status of %s: %w", VerityName, err)
		}
		if len(st) > 0 && st[0] == 'C' {
			dir := ImageDir{Dir: imagesDir}
			file := dir.Path(p.SHA256)
			what := "removed " + file + ": the next boot downloads the image again"
			if rerr := dir.Drop(p.SHA256); rerr != nil {
				what = "could not remove " + file + ": " + rerr.Error()
			}
			rep.Report(ctx, StageError, 0, "dm-verity: a block of the cached image %s.squashfs failed its check when read (the SSD returned changed data; the read failed with an I/O error, nothing unverified was used); %s", p.SHA256, what)
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(every):
		}
	}
}

// verityWatchInterval is how often herd-verity.service polls.
const verityWatchInterval = 5 * time.Second

// DefaultVerityWatch runs VerityWatch with the booted system's paths.
func DefaultVerityWatch(ctx context.Context) error {
	return VerityWatch(ctx, DefaultSystem(), BootedCacheImages, verityWatchInterval)
}
