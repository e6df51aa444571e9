package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/internal/atomicfile"
	"github.com/herdlab/herd/internal/fsutil"
)

// Import publishes a copy of another store's image directory (images/<id>)
// into this store: artifacts are hard-linked when on the same file system,
// else copied, then rehashed by Publish, so the source store is never
// changed and a damaged copy is refused. It returns the image ID.
func (s *Store) Import(ctx context.Context, imageDir string) (string, error) {
	m, err := manifest.Read(imageDir)
	if err != nil {
		return "", fmt.Errorf("import %s: %w", imageDir, err)
	}
	want := m.ID
	unlock, err := s.Lock(ctx)
	if err != nil {
		return "", err
	}
	defer unlock()
	staging, err := s.StagingDir()
	if err != nil {
		return "", err
	}
	for _, a := range ArtifactsOf(m) {
		src, dst := filepath.Join(imageDir, a), filepath.Join(staging, a)
		if err := os.Link(src, dst); err != nil {
			if err := atomicfile.Copy(src, dst, 0o444); err != nil {
				fsutil.RemoveTree(staging)
				return "", fmt.Errorf("import %s: %w", imageDir, err)
			}
		}
	}
	if err := importChunkIndex(imageDir, staging, m); err != nil {
		fsutil.RemoveTree(staging)
		return "", fmt.Errorf("import %s: %w", imageDir, err)
	}
	id, err := s.Publish(staging, m)
	if err != nil {
		fsutil.RemoveTree(staging)
		return "", fmt.Errorf("import %s: %w", imageDir, err)
	}
	if want != "" && id != want {
		return "", fmt.Errorf("import %s: its artifacts hash to image %s, not the %s its manifest names", imageDir, id, want)
	}
	return id, nil
}

// importChunkIndex brings the image's chunk index (manifest chunks, not an
// artifact: nodes fetch updates by it) along, checked against the sha256
// the manifest records; an image whose index is missing is imported
// without one (its nodes download it whole).
func importChunkIndex(imageDir, staging string, m *manifest.Manifest) error {
	c := m.Chunks
	if c == nil {
		return nil
	}
	if c.File == "" || filepath.Base(c.File) != c.File || c.File == manifest.FileName {
		return fmt.Errorf("manifest field chunks.file: %q is not a file name in the image directory", c.File)
	}
	src, dst := filepath.Join(imageDir, c.File), filepath.Join(staging, c.File)
	if _, err := os.Stat(src); errors.Is(err, os.ErrNotExist) {
		m.Chunks = nil
		return nil
	}
	if c.SHA256 != "" {
		got, err := manifest.HashFile(src)
		if err != nil {
			return err
		}
		if got.SHA256 != c.SHA256 {
			return fmt.Errorf("%s has sha256 %s, the manifest says %s", c.File, got.SHA256, c.SHA256)
		}
	}
	if err := os.Link(src, dst); err != nil {
		return atomicfile.Copy(src, dst, 0o444)
	}
	return nil
}
