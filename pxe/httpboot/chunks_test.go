package httpboot

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/herdlab/herd/image/chunks"
	"github.com/herdlab/herd/image/manifest"
)

// withIndex writes the chunk index of image id's rootfs and records it in
// the manifest, as the pack stage does.
func withIndex(t *testing.T, state, id string) *chunks.Index {
	t.Helper()
	dir := filepath.Join(state, "images", id)
	x, err := chunks.SplitFile(filepath.Join(dir, manifest.Rootfs))
	if err != nil {
		t.Fatal(err)
	}
	ib, _ := x.MarshalBinary()
	if err := os.WriteFile(filepath.Join(dir, chunks.IndexName), ib, 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	m.Chunks = &manifest.ChunkIndex{File: chunks.IndexName, Count: len(x.Chunks)}
	if err := m.Write(dir); err != nil {
		t.Fatal(err)
	}
	return x
}

// TestChunkMapBounded: the server keeps the chunk indexes of at most
// MaxChunkImages images however many a client makes it load (memory stays
// bounded), and an image removed from the store (gc) stops being served
// from: its chunks are 404, not an error per request for ever.
func TestChunkMapBounded(t *testing.T) {
	f := newFixture(t, "ignore")
	var ids []string
	for i := 0; i < MaxChunkImages+3; i++ {
		id := publishTestImage(t, f.state, map[string]int{manifest.Kernel: 100, manifest.Initrd: 100, manifest.Rootfs: 200 << 10}, false)
		withIndex(t, f.state, id)
		ids = append(ids, id)
		f.srv.loadChunks(id)
	}
	f.srv.chunks.mu.Lock()
	n, entries := len(f.srv.chunks.images), len(f.srv.chunks.byID)
	f.srv.chunks.mu.Unlock()
	if n > MaxChunkImages {
		t.Fatalf("%d images' indexes held, want at most %d", n, MaxChunkImages)
	}
	if entries > MaxChunkImages*(200<<10/chunks.MinSize+1) {
		t.Fatalf("%d chunk entries held for %d images", entries, n)
	}
	// The newest is servable; remove it from the store and it is not.
	last := ids[len(ids)-1]
	x, _ := chunks.ReadIndexFile(filepath.Join(f.state, "images", last, chunks.IndexName))
	c := x.Chunks[0]
	if code, _ := get(t, f.url+"/chunks/"+c.Hex()); code != 200 {
		t.Fatalf("chunk of a loaded image: %d", code)
	}
	if err := os.RemoveAll(filepath.Join(f.state, "images", last)); err != nil {
		t.Fatal(err)
	}
	if code, _ := get(t, f.url+"/chunks/"+c.Hex()); code != 404 {
		t.Fatalf("chunk of a removed image: %d, want 404", code)
	}
	f.srv.chunks.mu.Lock()
	for _, im := range f.srv.chunks.images {
		if im.id == last {
			t.Error("removed image still in the chunk map")
		}
	}
	f.srv.chunks.mu.Unlock()
}
