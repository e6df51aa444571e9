package fleet

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/herdlab/herd/image/chunks"
	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/pxe/inventory"
	"github.com/herdlab/herd/site"
)

// publishRoot publishes an image whose root image is root, with its chunk
// index when index is set (as the pack stage writes it).
func publishRoot(t *testing.T, st *store.Store, root []byte, index bool) (id, sha string) {
	t.Helper()
	unlock, err := st.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	dir, err := st.StagingDir()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, manifest.Rootfs), root, 0o644)
	os.WriteFile(filepath.Join(dir, manifest.Kernel), bytes.Repeat([]byte("k"), 1000), 0o644)
	os.WriteFile(filepath.Join(dir, manifest.Initrd), bytes.Repeat([]byte("i"), 3000), 0o644)
	m := &manifest.Manifest{Created: time.Now().UTC(), Recipe: "t", KernelABI: "6.8.0-1-generic"}
	if index {
		x, err := chunks.Split(bytes.NewReader(root))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := x.MarshalBinary()
		os.WriteFile(filepath.Join(dir, chunks.IndexName), b, 0o644)
		m.Chunks = &manifest.ChunkIndex{File: chunks.IndexName, Count: len(x.Chunks)}
	}
	id, err = st.Publish(dir, m)
	if err != nil {
		t.Fatal(err)
	}
	return id, m.Artifacts[manifest.Rootfs].SHA256
}

// TestNextDownload: what a node's next boot downloads follows from the
// cache it reported and the store's chunk indexes: nothing when the image
// is cached, the chunks its cached images lack (a delta), the whole image
// in RAM mode or with no usable seed; unknown without a report.
func TestNextDownload(t *testing.T) {
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	n := make([]byte, 4<<20)
	rand.Read(n)
	// N+1: 200 KiB new in the middle.
	extra := make([]byte, 200<<10)
	rand.Read(extra)
	next := append(append(append([]byte(nil), n[:2<<20]...), extra...), n[2<<20:]...)
	other := make([]byte, 1<<20)
	rand.Read(other)
	idN, shaN := publishRoot(t, st, n, true)
	idNext, shaNext := publishRoot(t, st, next, true)
	_, shaOld := publishRoot(t, st, other, false) // no index: no seed
	xn, _ := chunks.Split(bytes.NewReader(n))
	xnext, _ := chunks.Split(bytes.NewReader(next))
	wantDelta, _ := chunks.Missing(xnext, xn)

	p, err := NewPlanner(st)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		cache *inventory.Cache
		how   string
		bytes int64
	}{
		{"caches N+1", &inventory.Cache{Disk: true, Images: []string{shaN, shaNext}}, FetchCached, 0},
		{"caches N", &inventory.Cache{Disk: true, Images: []string{shaN}}, FetchDelta, wantDelta},
		{"caches an image without index", &inventory.Cache{Disk: true, Images: []string{shaOld}}, FetchWhole, int64(len(next))},
		{"caches an image the store no longer has", &inventory.Cache{Disk: true, Images: []string{shaOld[:60] + "0000"}}, FetchWhole, int64(len(next))},
		{"empty SSD", &inventory.Cache{Disk: true}, FetchWhole, int64(len(next))},
		{"RAM mode", &inventory.Cache{}, FetchWhole, int64(len(next))},
	} {
		d, err := p.Download(c.cache, idNext[:12])
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if d.How != c.how || d.Bytes != c.bytes || d.Image != idNext || d.ImageSize != int64(len(next)) || d.BootFiles != 4000 {
			t.Errorf("%s: %+v, want %s %d bytes", c.name, d, c.how, c.bytes)
		}
	}
	if wantDelta <= 0 || wantDelta > 200<<10+2*chunks.MaxSize {
		t.Errorf("a 200 KiB insertion costs %d bytes", wantDelta)
	}
	if _, err := p.Download(nil, idNext); err != ErrNoCacheReport {
		t.Errorf("no report: %v", err)
	}

	// Per node, for the image each would boot: pin, else current.
	if _, err := st.Promote(context.Background(), idNext, false); err != nil {
		t.Fatal(err)
	}
	inv, err := inventory.Load(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	inv.RecordEvent(inventory.Event{MAC: "52:54:00:00:00:01", Node: "a", Stage: "up", Cache: &inventory.Cache{Disk: true, Images: []string{shaN}}}, "10.0.0.1", now)
	inv.RecordEvent(inventory.Event{MAC: "52:54:00:00:00:02", Node: "b", Stage: "up", Cache: &inventory.Cache{Disk: true, Images: []string{shaN}}}, "10.0.0.2", now)
	inv.RecordEvent(inventory.Event{MAC: "52:54:00:00:00:03", Node: "c", Stage: "up"}, "10.0.0.3", now)
	cfg := &site.Config{Nodes: []site.Node{{Name: "a", MAC: "52:54:00:00:00:01"}, {Name: "b", MAC: "52:54:00:00:00:02", Image: idN[:10]}, {Name: "c", MAC: "52:54:00:00:00:03"}}}
	ns := Nodes(cfg, inv)
	AddNextDownload(ns, p, idNext)
	if d := ns[0].NextDownload; d == nil || d.How != FetchDelta || d.Bytes != wantDelta {
		t.Errorf("a (current is N+1, caches N): %+v", d)
	}
	if d := ns[1].NextDownload; d == nil || d.How != FetchCached || d.Image != idN {
		t.Errorf("b (pinned to N, caches N): %+v", d)
	}
	if d := ns[2].NextDownload; d != nil {
		t.Errorf("c (no cache report): %+v, want unknown", d)
	}
	nd := NodeDownloads(ns, p, idNext)
	if len(nd) != 2 || nd[0].Node != "a" || nd[0].Bytes != wantDelta || nd[1].Node != "b" || nd[1].How != FetchDelta {
		t.Errorf("NodeDownloads: %+v", nd)
	}
}
