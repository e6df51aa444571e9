// Package store keeps herd's built images under <state>/images/<id>: it
// publishes a staged build atomically, lists and resolves images, and keeps
// the generations (current, history) that promote and rollback move between.
// Images are immutable once published, so a server handing out image A
// while B is promoted always serves a consistent set of files. Every
// mutation happens under an flock(2) on <state>/lock, shared with builds.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/internal/atomicfile"
	"github.com/herdlab/herd/internal/fsutil"
)

// Artifacts are the files every image holds besides its manifest.
var Artifacts = []string{manifest.Kernel, manifest.Initrd, manifest.Rootfs}

// OptionalArtifacts are files an image holds when its build made them (the
// Secure Boot chain: shim, GRUB, systemd-stub); Publish hashes each one present.
var OptionalArtifacts = []string{manifest.Shim, manifest.Grub, manifest.Stub}

// ArtifactsOf lists the artifacts m records: Artifacts plus the optional ones
// it has, in that order.
func ArtifactsOf(m *manifest.Manifest) []string {
	out := append([]string(nil), Artifacts...)
	for _, a := range OptionalArtifacts {
		if _, ok := m.Artifacts[a]; ok {
			out = append(out, a)
		}
	}
	return out
}

// Store is the image store inside one state directory.
type Store struct {
	state string
}

// Image is one published image.
type Image struct {
	ID       string
	Dir      string
	Manifest *manifest.Manifest // shared with the store's cache: read, never modify
	Current  bool
}

// hook lets tests stop a publish at a named point (see export_test.go).
var hook = func(point string) {}

// Open prepares the store in stateDir (creating images/ and tmp/) and, when
// no build or other mutation holds the lock, removes staging directories a
// killed build left behind.
func Open(stateDir string) (*Store, error) {
	if stateDir == "" {
		return nil, errors.New("open image store: empty state directory")
	}
	s := &Store{state: stateDir}
	for _, d := range []string{s.state, s.imagesDir(), s.tmpDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("open image store: %w", err)
		}
	}
	f, ok, err := s.tryLock()
	if err != nil {
		return nil, fmt.Errorf("open image store: %w", err)
	}
	if ok {
		_, _, err := s.cleanTmp()
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("open image store: %w", err)
		}
	}
	return s, nil
}

// ReadOnly gives a view of the store in stateDir for commands that only
// read (list, show, diff, inspect): it creates nothing and cleans nothing.
func ReadOnly(stateDir string) *Store { return &Store{state: stateDir} }

// StateDir is the state directory the store lives in.
func (s *Store) StateDir() string { return s.state }

func (s *Store) imagesDir() string { return filepath.Join(s.state, "images") }
func (s *Store) tmpDir() string    { return filepath.Join(s.state, "tmp") }
func (s *Store) stagesDir() string { return filepath.Join(s.state, "stages") }
func (s *Store) lockPath() string  { return filepath.Join(s.state, "lock") }
func (s *Store) currentPath() string {
	return filepath.Join(s.state, "current")
}
func (s *Store) historyPath() string { return filepath.Join(s.state, "history") }

func (s *Store) tryLock() (*os.File, bool, error) {
	f, err := os.OpenFile(s.lockPath(), os.O_CREATE|os.O_RDWR|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, false, fmt.Errorf("lock: %w", err)
	}
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if err == nil {
		return f, true, nil
	}
	f.Close()
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return nil, false, nil
	}
	return nil, false, fmt.Errorf("flock %s: %w", s.lockPath(), err)
}

// Lock takes the store's exclusive lock, waiting for a build, gc, promote or
// rm in any process to finish; it gives up when ctx is cancelled. The lock
// is per open file, so goroutines of one process exclude each other too.
func (s *Store) Lock(ctx context.Context) (unlock func(), err error) {
	logged := false
	for {
		f, ok, err := s.tryLock()
		if err != nil {
			return nil, err
		}
		if ok {
			return func() { f.Close() }, nil
		}
		if !logged {
			slog.Warn("waiting for the image store lock (a build, gc, promote or rm is running)", "lock", s.lockPath())
			logged = true
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for the image store lock %s: %w", s.lockPath(), ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// StagingDir makes a fresh directory under <state>/tmp for a build to put
// its artifacts in before Publish; the caller holds the lock.
func (s *Store) StagingDir() (string, error) {
	if err := os.MkdirAll(s.tmpDir(), 0o755); err != nil {
		return "", fmt.Errorf("staging dir: %w", err)
	}
	d, err := os.MkdirTemp(s.tmpDir(), "staging-")
	if err != nil {
		return "", fmt.Errorf("staging dir: %w", err)
	}
	return d, nil
}

// Publish hashes the staged artifacts into m, derives the image ID, writes
// the manifest and moves the staging directory to images/<id> in one rename,
// so readers see the whole image or none of it. If that image already
// exists the staging directory is discarded and the existing ID returned.
// The caller holds the lock (a build holds it for its whole run).
func (s *Store) Publish(stagingDir string, m *manifest.Manifest) (string, error) {
	if m == nil {
		return "", errors.New("publish: nil manifest")
	}
	m.Artifacts = map[string]manifest.Artifact{}
	names := append([]string(nil), Artifacts...)
	for _, a := range OptionalArtifacts {
		if _, err := os.Lstat(filepath.Join(stagingDir, a)); err == nil {
			names = append(names, a)
		}
	}
	for _, a := range names {
		p := filepath.Join(stagingDir, a)
		st, err := os.Stat(p)
		if err != nil {
			return "", fmt.Errorf("publish %s: staged artifact missing: %w", stagingDir, err)
		}
		if !st.Mode().IsRegular() {
			return "", fmt.Errorf("publish %s: %s is not a regular file", stagingDir, a)
		}
		h, err := manifest.HashFile(p)
		if err != nil {
			return "", fmt.Errorf("publish: %w", err)
		}
		m.Artifacts[a] = h
	}
	m.ID = m.ComputeID()
	hook("hashed")
	dst := filepath.Join(s.imagesDir(), m.ID)
	if _, err := os.Stat(filepath.Join(dst, manifest.FileName)); err == nil {
		slog.Info("image already in the store; discarding the staged copy", "id", m.ID)
		if err := fsutil.RemoveTree(stagingDir); err != nil {
			return "", fmt.Errorf("publish: discard staging: %w", err)
		}
		return m.ID, nil
	}
	if err := m.Write(stagingDir); err != nil {
		return "", fmt.Errorf("publish: %w", err)
	}
	hook("manifest")
	ents, err := os.ReadDir(stagingDir)
	if err != nil {
		return "", fmt.Errorf("publish: %w", err)
	}
	for _, e := range ents {
		p := filepath.Join(stagingDir, e.Name())
		if e.Type().IsRegular() {
			if err := syncFile(p); err != nil {
				return "", fmt.Errorf("publish: %w", err)
			}
			if err := os.Chmod(p, 0o444); err != nil {
				return "", fmt.Errorf("publish: %w", err)
			}
		}
	}
	if err := syncFile(stagingDir); err != nil {
		return "", fmt.Errorf("publish: %w", err)
	}
	hook("synced")
	if err := os.MkdirAll(s.imagesDir(), 0o755); err != nil {
		return "", fmt.Errorf("publish: %w", err)
	}
	if err := os.Rename(stagingDir, dst); err != nil {
		return "", fmt.Errorf("publish image %s: %w", m.ID, err)
	}
	hook("renamed")
	if err := syncFile(s.imagesDir()); err != nil {
		return "", fmt.Errorf("publish: %w", err)
	}
	// The directory becomes read-only only after the rename: moving a
	// directory to another parent needs write access to it (for "..").
	if err := os.Chmod(dst, 0o555); err != nil {
		return "", fmt.Errorf("publish: %w", err)
	}
	return m.ID, nil
}

func syncFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("sync %s: %w", p, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", p, err)
	}
	return nil
}

// List returns every published image, newest first, marking the current one.
func (s *Store) List() ([]Image, error) {
	ents, err := os.ReadDir(s.imagesDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	cur, err := s.Current()
	if err != nil {
		return nil, err
	}
	var out []Image
	present := map[string]bool{}
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		dir := filepath.Join(s.imagesDir(), e.Name())
		m, err := cachedRead(s.imagesDir(), e.Name(), dir)
		if err != nil {
			slog.Warn("skipping unreadable image", "dir", dir, "err", err)
			continue
		}
		present[e.Name()] = true
		out = append(out, Image{ID: e.Name(), Dir: dir, Manifest: m, Current: e.Name() == cur})
	}
	pruneCache(s.imagesDir(), present)
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].Manifest.Created, out[j].Manifest.Created
		if !a.Equal(b) {
			return a.After(b)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// Get finds one image by its ID or a unique prefix of it.
func (s *Store) Get(id string) (*Image, error) {
	id = strings.TrimSpace(id)
	if id == "" {
		return nil, errors.New("no image ID given")
	}
	if strings.ContainsAny(id, "/\\") || id == "." || id == ".." {
		return nil, fmt.Errorf("image %q: not an image ID", id)
	}
	imgs, err := s.List()
	if err != nil {
		return nil, err
	}
	var hits []Image
	for _, im := range imgs {
		if im.ID == id {
			return &im, nil
		}
		if strings.HasPrefix(im.ID, id) {
			hits = append(hits, im)
		}
	}
	switch len(hits) {
	case 0:
		return nil, fmt.Errorf("image %s: not in the store %s", id, s.imagesDir())
	case 1:
		return &hits[0], nil
	}
	ids := make([]string, len(hits))
	for i, h := range hits {
		ids[i] = h.ID
	}
	return nil, fmt.Errorf("image prefix %s is ambiguous: it matches %s", id, strings.Join(ids, ", "))
}

// Current returns the current image ID, "" when none was promoted yet.
func (s *Store) Current() (string, error) {
	b, err := os.ReadFile(s.currentPath())
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read current image: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// History returns the previously current image IDs, oldest first.
func (s *Store) History() ([]string, error) {
	b, err := os.ReadFile(s.historyPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read image history: %w", err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out, nil
}

func (s *Store) writeHistory(h []string) error {
	var b strings.Builder
	for _, id := range h {
		b.WriteString(id)
		b.WriteByte('\n')
	}
	if err := atomicfile.WriteFile(s.historyPath(), []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write image history: %w", err)
	}
	return nil
}

func (s *Store) writeCurrent(id string) error {
	if err := atomicfile.WriteFile(s.currentPath(), []byte(id+"\n"), 0o644); err != nil {
		return fmt.Errorf("write current image: %w", err)
	}
	return nil
}

// Verify rehashes an image's artifacts and reports the first that does not
// match its manifest.
func (s *Store) Verify(id string) error {
	im, err := s.Get(id)
	if err != nil {
		return err
	}
	for _, a := range ArtifactsOf(im.Manifest) {
		want, ok := im.Manifest.Artifacts[a]
		if !ok {
			return fmt.Errorf("image %s: manifest lists no %s", im.ID, a)
		}
		got, err := manifest.HashFile(filepath.Join(im.Dir, a))
		if err != nil {
			return fmt.Errorf("image %s: %w", im.ID, err)
		}
		if got != want {
			return fmt.Errorf("image %s: %s has sha256 %s size %d, manifest says %s size %d",
				im.ID, a, got.SHA256, got.Size, want.SHA256, want.Size)
		}
	}
	if got := im.Manifest.ComputeID(); got != im.ID {
		return fmt.Errorf("image %s: manifest's artifacts give ID %s", im.ID, got)
	}
	return nil
}
