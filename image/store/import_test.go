package store

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herdlab/herd/image/manifest"
)

// withIndexFile gives published image id of s a chunk index file, recorded
// in its manifest with its sha256 as the build does.
func withIndexFile(t *testing.T, s *Store, id string, data []byte) string {
	t.Helper()
	dir := filepath.Join(s.imagesDir(), id)
	os.Chmod(dir, 0o755)
	p := filepath.Join(dir, "rootfs.index")
	if err := os.WriteFile(p, data, 0o444); err != nil {
		t.Fatal(err)
	}
	h, _ := manifest.HashFile(p)
	m, err := manifest.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	m.Chunks = &manifest.ChunkIndex{File: "rootfs.index", Count: 1, SHA256: h.SHA256}
	os.Chmod(filepath.Join(dir, manifest.FileName), 0o644)
	if err := m.Write(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestImportKeepsChunkIndex: an imported image keeps its chunk index (the
// lab and `herd image test` import images, and their nodes fetch updates
// by it); an index that does not match the manifest's sha256 is refused;
// an image whose index is missing is imported without one.
func TestImportKeepsChunkIndex(t *testing.T) {
	ctx := context.Background()
	src, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	a := publish(t, src, "r")
	dirA := withIndexFile(t, src, a, []byte("HERDIDX1 index of a"))

	dst, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	id, err := dst.Import(ctx, dirA)
	if err != nil || id != a {
		t.Fatalf("import: %s %v", id, err)
	}
	im, err := dst.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(im.Dir, "rootfs.index")); err != nil || string(b) != "HERDIDX1 index of a" || im.Manifest.Chunks == nil {
		t.Fatalf("imported image lost its chunk index: %v %+v", err, im.Manifest.Chunks)
	}

	b := publish(t, src, "r")
	dirB := withIndexFile(t, src, b, []byte("index of b"))
	os.Chmod(filepath.Join(dirB, "rootfs.index"), 0o644)
	os.WriteFile(filepath.Join(dirB, "rootfs.index"), []byte("index of b, changed"), 0o644)
	if _, err := dst.Import(ctx, dirB); err == nil || !strings.Contains(err.Error(), "rootfs.index") {
		t.Fatalf("an index that does not match the manifest: err %v", err)
	}
	if _, err := dst.Get(b); err == nil {
		t.Fatal("refused import published anyway")
	}

	os.Remove(filepath.Join(dirB, "rootfs.index"))
	if _, err := dst.Import(ctx, dirB); err != nil {
		t.Fatalf("an image whose index is missing: %v", err)
	}
	if im, _ := dst.Get(b); im == nil || im.Manifest.Chunks != nil {
		t.Errorf("imported without its index, yet the manifest names one: %+v", im)
	}
}
