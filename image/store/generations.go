package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/internal/fsutil"
)

// Promote makes an image current: the old current ID is appended to the
// history (for rollback) and <state>/current is replaced atomically, so the
// server sees the old or the new ID, never a mix. With requireTest it
// refuses an image without a recorded passing `herd image test`. It returns
// the full ID of the promoted image.
func (s *Store) Promote(ctx context.Context, id string, requireTest bool) (string, error) {
	unlock, err := s.Lock(ctx)
	if err != nil {
		return "", err
	}
	defer unlock()
	im, err := s.Get(id)
	if err != nil {
		return "", fmt.Errorf("promote: %w", err)
	}
	for _, a := range ArtifactsOf(im.Manifest) {
		st, err := os.Stat(filepath.Join(im.Dir, a))
		if err != nil {
			return "", fmt.Errorf("promote %s: %w", im.ID, err)
		}
		if want := im.Manifest.Artifacts[a].Size; st.Size() != want {
			return "", fmt.Errorf("promote %s: %s is %d bytes, its manifest says %d", im.ID, a, st.Size(), want)
		}
	}
	if requireTest {
		r, err := s.TestResult(im.ID)
		if err != nil {
			return "", fmt.Errorf("promote %s: %w", im.ID, err)
		}
		switch {
		case r == nil:
			return "", fmt.Errorf("promote %s: refused: the image has no test result (run `herd image test %s` first, or promote without --require-test)", im.ID, im.ID)
		case !r.Passed:
			return "", fmt.Errorf("promote %s: refused: its test at %s failed: %s", im.ID, r.Time.Format("2006-01-02 15:04:05Z07:00"), r.Summary)
		}
	}
	cur, err := s.Current()
	if err != nil {
		return "", err
	}
	if cur == im.ID {
		return im.ID, nil
	}
	if cur != "" {
		h, err := s.History()
		if err != nil {
			return "", err
		}
		// History first: a crash between the two writes leaves the old
		// current as the last history entry, which Rollback skips.
		if err := s.writeHistory(append(h, cur)); err != nil {
			return "", err
		}
	}
	if err := s.writeCurrent(im.ID); err != nil {
		return "", err
	}
	slog.Info("promoted image", "id", im.ID, "previous", cur)
	return im.ID, nil
}

// Rollback makes the previously current image current again and drops it
// from the history. Entries naming the current image or a removed image are
// skipped. It returns the ID now current.
func (s *Store) Rollback(ctx context.Context) (string, error) {
	unlock, err := s.Lock(ctx)
	if err != nil {
		return "", err
	}
	defer unlock()
	cur, err := s.Current()
	if err != nil {
		return "", err
	}
	h, err := s.History()
	if err != nil {
		return "", err
	}
	for len(h) > 0 {
		prev := h[len(h)-1]
		h = h[:len(h)-1]
		if prev == cur {
			continue
		}
		if _, err := os.Stat(filepath.Join(s.imagesDir(), prev, manifest.FileName)); err != nil {
			slog.Warn("skipping a removed image in the history", "id", prev)
			continue
		}
		// Current first: a crash before the history is trimmed leaves
		// prev as the last entry, equal to current, which is skipped.
		if err := s.writeCurrent(prev); err != nil {
			return "", err
		}
		if err := s.writeHistory(h); err != nil {
			return "", err
		}
		slog.Info("rolled back", "from", cur, "to", prev)
		return prev, nil
	}
	if cur == "" {
		return "", errors.New("rollback: no image is current and there is no previous one")
	}
	return "", fmt.Errorf("rollback: there is no previously current image to go back to (current is %s)", cur)
}

// PinnedBy reports which of the pins (image IDs or prefixes from the site
// config) name the image id.
func PinnedBy(id string, pins []string) bool {
	for _, p := range pins {
		if p != "" && strings.HasPrefix(id, p) {
			return true
		}
	}
	return false
}

// Remove deletes an image, refusing the current one and any a node is
// pinned to (pins: the site config's nodes[].image). It returns the full ID.
func (s *Store) Remove(ctx context.Context, id string, pins []string) (string, error) {
	unlock, err := s.Lock(ctx)
	if err != nil {
		return "", err
	}
	defer unlock()
	im, err := s.Get(id)
	if err != nil {
		return "", fmt.Errorf("rm: %w", err)
	}
	cur, err := s.Current()
	if err != nil {
		return "", err
	}
	if im.ID == cur {
		return "", fmt.Errorf("rm %s: refused: it is the current image (promote another one first)", im.ID)
	}
	if PinnedBy(im.ID, pins) {
		return "", fmt.Errorf("rm %s: refused: a node in the site config is pinned to it (nodes[].image)", im.ID)
	}
	if _, err := s.removeImage(im.ID); err != nil {
		return "", err
	}
	return im.ID, nil
}

// removeImage moves an image out of images/ in one rename (so no reader
// sees half of it), then deletes it; it returns the bytes freed.
func (s *Store) removeImage(id string) (int64, error) {
	src := filepath.Join(s.imagesDir(), id)
	if err := os.MkdirAll(s.tmpDir(), 0o755); err != nil {
		return 0, fmt.Errorf("remove image %s: %w", id, err)
	}
	// The directory is read-only (immutable image); moving it to another
	// parent and emptying it needs write access.
	if err := os.Chmod(src, 0o755); err != nil {
		return 0, fmt.Errorf("remove image %s: %w", id, err)
	}
	dst, err := os.MkdirTemp(s.tmpDir(), "removing-"+id+"-")
	if err != nil {
		return 0, fmt.Errorf("remove image %s: %w", id, err)
	}
	dst = filepath.Join(dst, id)
	if err := os.Rename(src, dst); err != nil {
		return 0, fmt.Errorf("remove image %s: %w", id, err)
	}
	if err := syncFile(s.imagesDir()); err != nil {
		return 0, err
	}
	hook("rm-renamed")
	freed := freedBytes([]string{dst})
	if err := fsutil.RemoveTree(filepath.Dir(dst)); err != nil {
		return 0, fmt.Errorf("remove image %s: %w", id, err)
	}
	if err := os.Remove(s.testPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("remove image %s: test result: %w", id, err)
	}
	h, err := s.History()
	if err != nil {
		return 0, err
	}
	kept := h[:0]
	for _, x := range h {
		if x != id {
			kept = append(kept, x)
		}
	}
	if len(kept) != len(h) {
		if err := s.writeHistory(kept); err != nil {
			return 0, err
		}
	}
	slog.Info("removed image", "id", id, "freed", freed)
	return freed, nil
}

// GCReport says what a garbage collection removed.
type GCReport struct {
	Images     []string `json:"images"`
	Stages     []string `json:"stages"`
	Staging    []string `json:"staging"`
	BytesFreed int64    `json:"bytes_freed"`
	Kept       []string `json:"kept"`
}

// GC removes images beyond the newest keep that nothing references (never
// the current image, the previously current one, or one a node is pinned
// to), the stage caches no remaining image's manifest names, and staging
// directories killed builds left in tmp/. It reports the bytes freed.
func (s *Store) GC(ctx context.Context, keep int, pins []string) (*GCReport, error) {
	if keep < 0 {
		return nil, fmt.Errorf("gc: keep must be 0 or more, not %d", keep)
	}
	unlock, err := s.Lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	rep := &GCReport{Images: []string{}, Stages: []string{}, Staging: []string{}, Kept: []string{}}
	// Staging first: nothing under tmp/ is live while we hold the lock.
	freed, names, err := s.cleanTmp()
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	rep.BytesFreed += freed
	rep.Staging = append(rep.Staging, names...)

	imgs, err := s.List()
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	cur, err := s.Current()
	if err != nil {
		return nil, err
	}
	h, err := s.History()
	if err != nil {
		return nil, err
	}
	prev := ""
	for i := len(h) - 1; i >= 0; i-- {
		if h[i] != cur {
			prev = h[i]
			break
		}
	}
	stagesKept := map[string]bool{}
	for i, im := range imgs { // newest first
		if i < keep || im.ID == cur || im.ID == prev || PinnedBy(im.ID, pins) {
			rep.Kept = append(rep.Kept, im.ID)
			for _, st := range im.Manifest.Stages {
				stagesKept[st.Key] = true
			}
			continue
		}
		n, err := s.removeImage(im.ID)
		if err != nil {
			return rep, fmt.Errorf("gc: %w", err)
		}
		rep.BytesFreed += n
		rep.Images = append(rep.Images, im.ID)
	}

	ents, err := os.ReadDir(s.stagesDir())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return rep, fmt.Errorf("gc: %w", err)
	}
	var drop []string
	for _, e := range ents {
		if !stagesKept[e.Name()] {
			drop = append(drop, filepath.Join(s.stagesDir(), e.Name()))
			rep.Stages = append(rep.Stages, e.Name())
		}
	}
	// Counted together: stage outputs and images share hard links.
	rep.BytesFreed += freedBytes(drop)
	for _, d := range drop {
		if err := fsutil.RemoveTree(d); err != nil {
			return rep, fmt.Errorf("gc: stage cache: %w", err)
		}
	}
	return rep, nil
}

// cleanTmp empties tmp/ (the caller holds the lock, so nothing there is live).
func (s *Store) cleanTmp() (int64, []string, error) {
	ents, err := os.ReadDir(s.tmpDir())
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, fmt.Errorf("clean %s: %w", s.tmpDir(), err)
	}
	var paths, names []string
	for _, e := range ents {
		paths = append(paths, filepath.Join(s.tmpDir(), e.Name()))
		names = append(names, e.Name())
	}
	freed := freedBytes(paths)
	for _, p := range paths {
		if err := fsutil.RemoveTree(p); err != nil {
			return 0, nil, fmt.Errorf("remove stale staging: %w", err)
		}
	}
	if len(names) > 0 {
		slog.Info("removed stale staging directories", "dirs", names, "freed", freed)
	}
	return freed, names, nil
}

// freedBytes is how much removing the trees frees: an inode counts only
// when every one of its hard links lies inside them (images hard-link
// their artifacts to the build's stage outputs).
func freedBytes(roots []string) int64 {
	type ino struct{ dev, ino uint64 }
	type seen struct {
		size  int64
		nlink uint64
		links uint64
	}
	inodes := map[ino]*seen{}
	for _, root := range roots {
		rst, err := os.Lstat(root)
		if err != nil {
			continue
		}
		rdev := rst.Sys().(*syscall.Stat_t).Dev
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			info, err := d.Info()
			if err != nil {
				return nil
			}
			st := info.Sys().(*syscall.Stat_t)
			if st.Dev != rdev {
				if d.IsDir() {
					return fs.SkipDir
				}
				return nil
			}
			k := ino{uint64(st.Dev), st.Ino}
			e := inodes[k]
			if e == nil {
				e = &seen{size: st.Blocks * 512, nlink: uint64(st.Nlink)}
				inodes[k] = e
			}
			e.links++
			return nil
		})
	}
	var n int64
	for _, e := range inodes {
		if e.links >= e.nlink {
			n += e.size
		}
	}
	return n
}
