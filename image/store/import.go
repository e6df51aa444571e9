package store

import (
	"context"
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
