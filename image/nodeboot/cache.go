package nodeboot

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/herdlab/herd/internal/atomicfile"
)

// ImageDir holds verified images as <sha256>.squashfs and downloads in
// progress as <sha256>.partial (kept across reboots so a download resumes).
type ImageDir struct{ Dir string }

// Path is where the verified image with this sha256 lives.
func (c ImageDir) Path(sha string) string { return filepath.Join(c.Dir, sha+".squashfs") }

// Partial is the resumable download file for this sha256.
func (c ImageDir) Partial(sha string) string { return filepath.Join(c.Dir, sha+".partial") }

// Drop deletes the cached image with this sha256 and fsyncs the directory,
// so the removal survives a reset that follows at once (an admin
// power-cycling a node that just reported a corrupt copy must not boot the
// same copy again: ext4 commits an unlink only every few seconds). A file
// already gone is not an error.
func (c ImageDir) Drop(sha string) error {
	if err := os.Remove(c.Path(sha)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return atomicfile.SyncDir(c.Dir)
}

// ErrNotCached means no file exists for the requested image.
var ErrNotCached = errors.New("image not cached")

// Verify hashes the cached image in full and compares it with sha. A file
// that does not match is deleted, so it can never be booted.
//
// Why a full sha256 and not fs-verity/dm-verity: the expected value on the
// command line is the plain sha256 of rootfs.squashfs, which the server
// already has; fs-verity would need a second digest carried next to it, and
// both verity schemes detect a corrupt block only when it is read — after
// switch_root, as an I/O error in a running system — instead of before the
// boot, when the agent can still fetch a good copy. A full read also
// establishes the length (a truncated file fails) and warms the page cache
// for the first reads from the mounted image. The cost is measured in the
// report (bench/boot.sh): one sequential read of the image.
func (c ImageDir) Verify(sha string, progress func(done, total int64)) (bool, error) {
	p := c.Path(sha)
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return false, ErrNotCached
	}
	if err != nil {
		return false, fmt.Errorf("open cached image: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("stat cached image: %w", err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, &progressReader{r: f, total: st.Size(), fn: progress}); err != nil {
		// A read error is a damaged file or disk: same verdict as a mismatch.
		c.Drop(sha)
		return false, fmt.Errorf("read cached image %s: %w (removed)", p, err)
	}
	if hex.EncodeToString(h.Sum(nil)) != sha {
		if err := c.Drop(sha); err != nil {
			return false, fmt.Errorf("remove corrupt cached image %s: %w", p, err)
		}
		return false, nil
	}
	return true, nil
}

// Touch marks an image as just used, for retention by use.
func (c ImageDir) Touch(sha string) {
	now := time.Now()
	os.Chtimes(c.Path(sha), now, now)
}

// Cached lists the sha256 of every image file present (verified or not),
// newest use first.
func (c ImageDir) Cached() ([]string, error) {
	ents, err := os.ReadDir(c.Dir)
	if err != nil {
		return nil, fmt.Errorf("list cached images: %w", err)
	}
	type img struct {
		sha string
		mt  time.Time
	}
	var imgs []img
	for _, e := range ents {
		sha, ok := strings.CutSuffix(e.Name(), ".squashfs")
		if !ok || !isSHA(sha) {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		imgs = append(imgs, img{sha, info.ModTime()})
	}
	sort.SliceStable(imgs, func(i, j int) bool { return imgs[i].mt.After(imgs[j].mt) })
	out := make([]string, len(imgs))
	for i, m := range imgs {
		out[i] = m.sha
	}
	return out, nil
}

// Prune keeps current and the newest keep-1 other images, deletes older
// images, partial downloads of other images, and stray temp files.
func (c ImageDir) Prune(keep int, current string) ([]string, error) {
	if keep < 1 {
		keep = 1
	}
	shas, err := c.Cached()
	if err != nil {
		return nil, err
	}
	kept := map[string]bool{current: true}
	for _, s := range shas {
		if len(kept) >= keep {
			break
		}
		kept[s] = true
	}
	var removed []string
	ents, err := os.ReadDir(c.Dir)
	if err != nil {
		return nil, fmt.Errorf("list cached images: %w", err)
	}
	for _, e := range ents {
		name := e.Name()
		var sha string
		switch {
		case strings.HasSuffix(name, ".squashfs"):
			sha = strings.TrimSuffix(name, ".squashfs")
		case strings.HasSuffix(name, ".index"):
			sha = strings.TrimSuffix(name, ".index")
		case strings.HasSuffix(name, ".delta"):
			sha = "" // an unfinished delta assembly is never kept
		case strings.HasSuffix(name, ".partial"):
			sha = strings.TrimSuffix(name, ".partial")
			if sha == current {
				continue
			}
			sha = "" // a partial of another image is never kept
		default:
			continue
		}
		if sha != "" && kept[sha] {
			continue
		}
		if err := os.Remove(filepath.Join(c.Dir, name)); err != nil {
			return removed, fmt.Errorf("prune %s: %w", name, err)
		}
		removed = append(removed, name)
	}
	return removed, nil
}

func isSHA(s string) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == 32 && strings.ToLower(s) == s
}

// progressReader calls fn as bytes go through.
type progressReader struct {
	r     io.Reader
	done  int64
	total int64
	fn    func(done, total int64)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.done += int64(n)
	if p.fn != nil && n > 0 {
		p.fn(p.done, p.total)
	}
	return n, err
}
