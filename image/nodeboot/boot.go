package nodeboot

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/herdlab/herd/internal/tpmkey"
)

// System holds the paths and tools the agent uses; tests point them at
// temporary trees, the initramfs uses DefaultSystem.
type System struct {
	Cmdline    string // kernel command line file (/proc/cmdline)
	SysRoot    string // sysfs (/sys)
	DevRoot    string // device nodes (/dev)
	RunDir     string // agent's mounts (/run/herd); moved with /run into the new root
	OverlaySrc string // runtime overlay unpacked from the sealed answer (/herd/overlay, in RAM)
	CacheDir   string // the cache SSD in the booted system (/var/cache/herd)
	// TPMKey returns the node key held by a TPM 2.0; nil: no TPM support.
	TPMKey   func() (crypto.Signer, error)
	Mke2fs   string    // mke2fs binary
	Console  io.Writer // operator-facing messages (the kernel console)
	Client   *http.Client
	Download Downloader // retry policy template
	// RoundWait is the pause between rounds of download attempts when no
	// usable image exists; the agent never gives up (default 30 s).
	RoundWait time.Duration
	// Root is the booted system's root, where report-up finds
	// etc/herd/networks.json ("" means /).
	Root string
	// Reboot restarts the machine (secure boot key enrollment); nil:
	// reboot(2).
	Reboot func() error
}

func (s *System) root() string {
	if s.Root == "" {
		return "/"
	}
	return s.Root
}

// DefaultSystem is the initramfs environment.
func DefaultSystem() *System {
	mke2fs := "/sbin/mke2fs"
	if _, err := os.Stat(mke2fs); err != nil {
		if p, err := exec.LookPath("mke2fs"); err == nil {
			mke2fs = p
		}
	}
	return &System{
		Cmdline:    "/proc/cmdline",
		SysRoot:    "/sys",
		DevRoot:    "/dev",
		RunDir:     "/run/herd",
		OverlaySrc: "/herd/overlay",
		CacheDir:   "/var/cache/herd",
		Mke2fs:     mke2fs,
		TPMKey:     defaultTPMKey,
		Console:    os.Stderr,
		Client:     &http.Client{Transport: &http.Transport{ResponseHeaderTimeout: 20 * time.Second, IdleConnTimeout: 30 * time.Second}},
	}
}

// defaultTPMKey derives the node key in the machine's TPM 2.0 (package
// tpmkey); os.ErrNotExist when it has none.
func defaultTPMKey() (crypto.Signer, error) {
	k, err := tpmkey.OpenDefault()
	if err != nil {
		return nil, err
	}
	return k, nil
}

func (s *System) say(format string, args ...any) {
	if s.Console != nil {
		fmt.Fprintf(s.Console, "herd: "+format+"\n", args...)
	}
}

// Mountroot is `herd-boot mountroot ROOTMNT`: it leaves the node's root
// mounted at rootmnt, the runtime overlay copied onto it and the cache SSD
// (if any) moved to rootmnt/var/cache/herd. It only returns an error when
// the command line is unusable or mounting a verified image fails; network
// and server trouble are retried for ever with a message on the console.
func Mountroot(ctx context.Context, s *System, rootmnt string) error {
	p, err := ReadCmdline(s.Cmdline)
	if err != nil {
		s.say("cannot boot: %v", err)
		return err
	}
	mac, ifname := PrimaryMAC()
	sb := s.SecureBootState()
	s.say("%s", sb)
	// A signed UKI's command line names no node: ask for the hints.
	if h := s.fetchHints(ctx, p, mac); h != nil && len(h.Enroll) > 0 {
		s.enrollAndReboot(ctx, p.Server, h.Enroll)
	}
	// Events wait in memory until the node key is enrolled, then go signed.
	rep := &Reporter{Server: p.Server, Node: p.Node, MAC: mac, Image: p.ID, Console: s.Console, Hold: true}
	if ifname == "" {
		rep.Report(ctx, StageNetwork, 0, "no interface got an IPv4 address from DHCP; check the cable, the switch port and herd's DHCP (herd serve)")
	} else {
		rep.Report(ctx, StageNetwork, 0, "%s (%s) is up; image %s; %s", ifname, mac, p.Image, sb)
	}

	cacheMnt := filepath.Join(s.RunDir, "cache")
	dir, onSSD := s.setupCache(ctx, p, rep, cacheMnt)
	if !onSSD {
		ram := filepath.Join(s.RunDir, "ram")
		if err := os.MkdirAll(ram, 0o755); err != nil {
			return fmt.Errorf("mkdir %s: %w", ram, err)
		}
		// The image lives in this tmpfs for the whole uptime: that is the
		// RAM cost of a node without a cache SSD.
		if err := unix.Mount("herd-ram", ram, "tmpfs", unix.MS_NODEV|unix.MS_NOSUID, "mode=0755,size=90%"); err != nil {
			return fmt.Errorf("mount tmpfs for the image on %s: %w", ram, err)
		}
		dir = ImageDir{Dir: ram}
	}

	ident := s.identity(ctx, p, rep, cacheMnt, onSSD)
	if ident == nil {
		rep.Drop()
	}

	img, err := s.obtain(ctx, p, rep, dir, onSSD)
	if err != nil {
		return err
	}

	lower := filepath.Join(s.RunDir, "lower")
	rw := filepath.Join(s.RunDir, "rw")
	if err := MountRoot(img, lower, rw, rootmnt); err != nil {
		rep.Report(ctx, StageError, 0, "mount: %v", err)
		return err
	}
	rep.Report(ctx, StageMount, 0, "root image %s mounted read-only at %s with a RAM overlay", filepath.Base(img), rootmnt)

	if ident != nil && ident.Overlay != nil {
		if err := UnpackOverlay(ident.Overlay, s.OverlaySrc); err != nil {
			rep.Report(ctx, StageError, 0, "runtime overlay: %v", err)
			return err
		}
	}
	if _, err := os.Stat(s.OverlaySrc); err == nil {
		if err := CopyTree(s.OverlaySrc, rootmnt); err != nil {
			rep.Report(ctx, StageError, 0, "runtime overlay: %v", err)
			return err
		}
		s.say("runtime overlay %s copied onto the new root", s.OverlaySrc)
	} else {
		s.say("no runtime overlay (see the identity messages above): the node has no per-node secrets")
	}

	if onSSD {
		if removed, err := dir.Prune(p.Keep, p.SHA256); err != nil {
			s.say("cache retention: %v", err)
		} else if len(removed) > 0 {
			s.say("cache retention (keep %d): removed %s", p.Keep, strings.Join(removed, ", "))
		}
		if err := MoveMount(cacheMnt, filepath.Join(rootmnt, "var/cache/herd")); err != nil {
			rep.Report(ctx, StageError, 0, "cache SSD: %v", err)
			return err
		}
	}
	rep.Report(ctx, StageSwitchRoot, 0, "switching to the new root (cache: %s)", map[bool]string{true: "SSD at /var/cache/herd", false: "none, image in RAM"}[onSSD])
	return nil
}

// setupCache applies herd.cache and mounts the cache partition; false means
// run from RAM (no disk, disk refused, or preparing/mounting failed).
func (s *System) setupCache(ctx context.Context, p *Params, rep *Reporter, mnt string) (ImageDir, bool) {
	var ch Choice
	switch p.Cache {
	case "none":
		rep.Report(ctx, StageDisk, 0, "herd.cache=none: running from RAM")
		return ImageDir{}, false
	case "auto":
		disks, err := Disks(s.SysRoot, s.DevRoot)
		if err != nil {
			rep.Report(ctx, StageDisk, 0, "cannot list disks (%v): running from RAM", err)
			return ImageDir{}, false
		}
		ch = ChooseAuto(disks)
	default:
		ch = ChooseExplicit(p.Cache, s.SysRoot)
	}
	for _, n := range ch.Notes {
		s.say("disk %s", n)
	}
	if ch.Disk == nil {
		why := "no disk found"
		if ch.Refused {
			why = "no blank or herd-labelled disk; disks holding data are never written (" + strings.Join(ch.Notes, "; ") + "). To give a disk to herd, blank its first and last MiB (e.g. blkdiscard)"
		} else if len(ch.Notes) > 0 {
			why = strings.Join(ch.Notes, "; ")
		}
		rep.Report(ctx, StageDisk, 0, "no cache disk, running from RAM: %s", why)
		return ImageDir{}, false
	}
	part := ""
	if ch.Prepare {
		rep.Report(ctx, StageDisk, 0, "preparing %s as the herd cache (GPT + ext4 %s)", ch.Disk.Dev, CacheLabel)
		var err error
		part, err = Prepare(ctx, ch.Disk.Dev, s.Mke2fs)
		if err != nil {
			rep.Report(ctx, StageError, 0, "cache disk %s: %v; running from RAM", ch.Disk.Dev, err)
			return ImageDir{}, false
		}
	} else {
		var err error
		part, err = WaitPartition(ctx, ch.Disk.Dev, ch.Disk.Content.PartStart, ch.Disk.Content.PartSize)
		if err != nil {
			rep.Report(ctx, StageError, 0, "cache disk %s: %v; running from RAM", ch.Disk.Dev, err)
			return ImageDir{}, false
		}
	}
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		rep.Report(ctx, StageError, 0, "cache disk: %v; running from RAM", err)
		return ImageDir{}, false
	}
	if err := unix.Mount(part, mnt, "ext4", unix.MS_NODEV|unix.MS_NOSUID, ""); err != nil {
		// Our own partition with a damaged filesystem: it holds only caches,
		// so re-create it rather than run without a cache for ever.
		rep.Report(ctx, StageDisk, 0, "mounting %s failed (%v): re-formatting herd's own cache partition", part, err)
		if _, perr := Prepare(ctx, ch.Disk.Dev, s.Mke2fs); perr != nil {
			rep.Report(ctx, StageError, 0, "cache disk %s: %v; running from RAM", ch.Disk.Dev, perr)
			return ImageDir{}, false
		}
		if err := unix.Mount(part, mnt, "ext4", unix.MS_NODEV|unix.MS_NOSUID, ""); err != nil {
			rep.Report(ctx, StageError, 0, "cache disk %s: mount %s: %v; running from RAM", ch.Disk.Dev, part, err)
			return ImageDir{}, false
		}
	}
	for _, d := range []string{"images", "fscache", "scratch"} {
		if err := os.MkdirAll(filepath.Join(mnt, d), 0o755); err != nil {
			rep.Report(ctx, StageError, 0, "cache disk: %v; running from RAM", err)
			unix.Unmount(mnt, 0)
			return ImageDir{}, false
		}
	}
	rep.Report(ctx, StageDisk, 0, "cache SSD %s (%s) mounted", part, human(ch.Disk.Size))
	return ImageDir{Dir: filepath.Join(mnt, "images")}, true
}

// obtain returns what to mount: the cached image mapped through dm-verity
// (its block device) when the command line carries herd.verity, else a
// file whose full sha256 matched (cached, or downloaded). It loops until it
// has one. A cached file is never used unverified.
func (s *System) obtain(ctx context.Context, p *Params, rep *Reporter, dir ImageDir, onSSD bool) (string, error) {
	if onSSD {
		if img, ok := s.cached(ctx, p, rep, dir); ok {
			if _, err := os.Stat(dir.IndexPath(p.SHA256)); p.Index != "" && err != nil {
				// Cached before it had an index kept (an older agent): keep
				// one now, so the next generation is fetched as a delta.
				ictx, cancel := context.WithTimeout(ctx, 30*time.Second)
				if err := SaveIndex(ictx, s.Client, p.Index, p.IndexSHA256, p.SHA256, dir); err != nil {
					s.say("chunk index not kept (the next update downloads whole): %v", err)
				}
				cancel()
			}
			return img, nil
		}
	}
	img, err := s.download(ctx, p, rep, dir, onSSD)
	if err != nil || !onSSD || p.Verity == nil {
		return img, err
	}
	// Fresh and checked by its sha256; reads from the SSD during the uptime
	// go through dm-verity all the same.
	dev, err := MapVerity(s.DevRoot, img, p.Verity)
	if err != nil {
		rep.Report(ctx, StageError, 0, "the downloaded image (sha256 verified) cannot be mapped through dm-verity with herd.verity=%s: %v; booting the verified file without per-read checks", p.Verity, err)
		return img, nil
	}
	return dev, nil
}

// cached returns the cached image if it verifies: through dm-verity when
// the image has a hash tree (reads checked as they happen, the metadata
// read now), else by hashing the whole file. A file that fails is removed.
func (s *System) cached(ctx context.Context, p *Params, rep *Reporter, dir ImageDir) (string, bool) {
	if _, err := os.Stat(dir.Path(p.SHA256)); err != nil {
		s.say("image %s is not in the cache: downloading", p.SHA256)
		return "", false
	}
	if p.Verity != nil {
		start := time.Now()
		dev, err := MapVerity(s.DevRoot, dir.Path(p.SHA256), p.Verity)
		switch {
		case err == nil:
			dir.Touch(p.SHA256)
			rep.Report(ctx, StageVerify, 100, "cached image mapped through dm-verity (root hash %s) in %.1fs: booting it without downloading; every block is checked when read", p.Verity.RootHash, time.Since(start).Seconds())
			return dev, true
		case errors.Is(err, ErrCorrupt):
			UnmapVerity()
			if rerr := dir.Drop(p.SHA256); rerr != nil {
				rep.Report(ctx, StageError, 0, "%v; removing it failed: %v; downloading it again", err, rerr)
			} else {
				rep.Report(ctx, StageError, 0, "%v: removed, downloading it again", err)
			}
			return "", false
		default:
			rep.Report(ctx, StageVerify, 0, "dm-verity unavailable (%v): checking the cached image by its full sha256 instead", err)
		}
	}
	rep.Report(ctx, StageVerify, 0, "checking the cached image %s.squashfs (full sha256)", p.SHA256)
	start := time.Now()
	ok, err := dir.Verify(p.SHA256, nil)
	switch {
	case ok:
		dir.Touch(p.SHA256)
		rep.Report(ctx, StageVerify, 100, "cached image verified in %.1fs: booting it without downloading", time.Since(start).Seconds())
		return dir.Path(p.SHA256), true
	case errors.Is(err, ErrNotCached):
		s.say("image %s is not in the cache: downloading", p.SHA256)
	case err != nil:
		rep.Report(ctx, StageError, 0, "cached image unreadable, downloading it again: %v", err)
	default:
		rep.Report(ctx, StageError, 0, "cached image %s.squashfs failed its sha256 check (corrupt or truncated): removed, downloading it again", p.SHA256)
	}
	return "", false
}

// delta assembles the image from chunks of cached images plus the chunks
// it fetches; false means download it whole.
func (s *System) delta(ctx context.Context, p *Params, rep *Reporter, dir ImageDir) (string, bool) {
	rep.Report(ctx, StageDownload, 0, "assembling %s from the cached images' chunks (index %s)", p.SHA256, p.Index)
	last := -1
	res, err := FetchDelta(ctx, s.Client, p.Index, p.IndexSHA256, p.Server+"/chunks", p.SHA256, dir, func(done, total int) {
		if pct := done * 100 / total; pct/10*10 > last {
			last = pct / 10 * 10
			rep.Report(ctx, StageDownload, max(pct, 1), "%d of %d missing chunks", done, total)
		}
	})
	switch {
	case err == nil:
		how := "sha256 " + p.SHA256
		if p.IndexSHA256 != "" {
			how = "every chunk against the index of sha256 " + p.IndexSHA256
		}
		rep.Report(ctx, StageVerify, 100, "delta download verified (%s): fetched %d KiB (%.2f%% of %d MiB) in %d of %d chunks, the rest from cached images",
			how, res.Fetched>>10, 100*float64(res.Fetched)/float64(max(res.Size, 1)), res.Size/mib, res.FetchedChunks, res.Chunks)
		return dir.Path(p.SHA256), true
	case errors.Is(err, errNoSeed):
		s.say("no cached image to assemble %s from: downloading it whole", p.SHA256)
	default:
		// Not an error stage: the whole download that follows still boots
		// the node; the reason is in the message.
		rep.Report(ctx, StageDownload, 0, "delta download failed (%v): downloading the image whole", err)
	}
	return "", false
}

// download fetches the image into dir, checked against its sha256, retrying
// for ever.
func (s *System) download(ctx context.Context, p *Params, rep *Reporter, dir ImageDir, onSSD bool) (string, error) {
	d := s.Download
	d.Client = s.Client
	d.Progress = func(pct int, done, total int64) {
		rep.Report(ctx, StageDownload, pct, "%d of %d MiB", done/mib, total/mib)
	}
	d.Retry = func(attempt int, wait time.Duration, err error) {
		if errors.Is(err, ErrChecksum) {
			// Not the image the command line names (a swapped or corrupt
			// download): refused, and the server hears of it.
			rep.Report(ctx, StageError, 0, "image refused: %v; retrying in %s", err, wait)
			return
		}
		s.say("download attempt %d failed: %v; retrying in %s", attempt, err, wait)
	}
	roundWait := s.RoundWait
	if roundWait <= 0 {
		roundWait = 30 * time.Second
	}
	if onSSD && p.Index != "" && p.Server != "" {
		if img, ok := s.delta(ctx, p, rep, dir); ok {
			return img, nil
		}
	}
	for round := 1; ; round++ {
		rep.Report(ctx, StageDownload, 0, "downloading %s", p.Image)
		err := d.Fetch(ctx, p.Image, p.SHA256, dir)
		if err == nil {
			rep.Report(ctx, StageVerify, 100, "download verified (sha256 %s)", p.SHA256)
			if onSSD && p.Index != "" {
				// Kept so the next generation is fetched as a delta.
				if err := SaveIndex(ctx, s.Client, p.Index, p.IndexSHA256, p.SHA256, dir); err != nil {
					s.say("chunk index not kept (the next update downloads whole): %v", err)
				}
			}
			return dir.Path(p.SHA256), nil
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		others := ""
		if onSSD {
			if shas, _ := dir.Cached(); len(shas) > 0 {
				others = fmt.Sprintf(" The cache holds other images (%s), but only the requested sha256 %s is acceptable.", strings.Join(shas, ", "), p.SHA256)
			}
		}
		rep.Report(ctx, StageError, 0, "cannot get the root image: %v. Check that the herd server (%s) is running and serves %s, and the network between this node and it.%s Retrying in %s (round %d).",
			err, p.Server, p.Image, others, roundWait, round)
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(roundWait):
		}
	}
}
