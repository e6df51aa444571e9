package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/fleet"
	"github.com/herdlab/herd/image/chunks"
	"github.com/herdlab/herd/image/diff"
	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/pxe/inventory"
)

// publishChunked publishes an image with root image root and its chunk index.
func publishChunked(t *testing.T, st *store.Store, root []byte) (id, sha string) {
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
	x, _ := chunks.Split(bytes.NewReader(root))
	ib, _ := x.MarshalBinary()
	for name, b := range map[string][]byte{manifest.Rootfs: root, manifest.Kernel: []byte("k"), manifest.Initrd: []byte("i"), chunks.IndexName: ib} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m := &manifest.Manifest{Created: time.Now().UTC(), Recipe: "t", KernelABI: "6.8.0-1-generic",
		Chunks: &manifest.ChunkIndex{File: chunks.IndexName, Count: len(x.Chunks)}}
	if id, err = st.Publish(dir, m); err != nil {
		t.Fatal(err)
	}
	return id, m.Artifacts[manifest.Rootfs].SHA256
}

// TestNextBootShown: `herd node list` says per node what its next boot
// downloads (from the cache its up event reported), and `herd image diff
// A B` what each node's next boot of B downloads.
func TestNextBootShown(t *testing.T) {
	c := newCLI(t, "overlays: []\ndhcp: {mode: off}\nnodes:\n  - {name: n1, mac: '52:54:00:00:00:01'}\n  - {name: n2, mac: '52:54:00:00:00:02'}\n  - {name: n3, mac: '52:54:00:00:00:03'}\n")
	st, err := store.Open(c.state)
	if err != nil {
		t.Fatal(err)
	}
	n := make([]byte, 4<<20)
	rand.Read(n)
	extra := make([]byte, 300<<10)
	rand.Read(extra)
	next := append(append(append([]byte(nil), n[:1<<20]...), extra...), n[1<<20:]...)
	a, shaA := publishChunked(t, st, n)
	b, shaB := publishChunked(t, st, next)
	if _, err := st.Promote(context.Background(), b, false); err != nil {
		t.Fatal(err)
	}
	inv, err := inventory.Load(c.state)
	if err != nil {
		t.Fatal(err)
	}
	for mac, cache := range map[string]*inventory.Cache{
		"52:54:00:00:00:01": {Disk: true, Images: []string{shaA}},
		"52:54:00:00:00:02": {Disk: true, Images: []string{shaB, shaA}},
		"52:54:00:00:00:03": {},
	} {
		if err := inv.RecordEvent(inventory.Event{MAC: mac, Stage: "up", Image: a, Cache: cache}, "127.0.0.1", time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if err := inv.Flush(); err != nil {
		t.Fatal(err)
	}
	xa, _ := chunks.SplitFile(filepath.Join(c.state, "images", a, manifest.Rootfs))
	xb, _ := chunks.SplitFile(filepath.Join(c.state, "images", b, manifest.Rootfs))
	delta, _ := chunks.Missing(xb, xa)

	var views []fleet.Node
	if err := json.Unmarshal([]byte(c.ok("node", "list", "--json")), &views); err != nil {
		t.Fatal(err)
	}
	want := map[string]fleet.Download{"n1": {How: fleet.FetchDelta, Bytes: delta}, "n2": {How: fleet.FetchCached}, "n3": {How: fleet.FetchWhole, Bytes: int64(len(next))}}
	for _, v := range views {
		d := v.NextDownload
		if w := want[v.Name]; d == nil || d.How != w.How || d.Bytes != w.Bytes || d.Image != b {
			t.Errorf("%s: next download %+v, want %s of %d bytes of %s", v.Name, d, w.How, w.Bytes, b)
		}
	}
	out := c.ok("node", "list")
	if !strings.Contains(out, "NEXT BOOT") || !strings.Contains(out, fleet.HumanBytes(delta)+" delta") || !strings.Contains(out, "cached") || !strings.Contains(out, " whole (100.0%)") {
		t.Errorf("node list lacks the next boot's download:\n%s", out)
	}

	var dr diff.Result
	if err := json.Unmarshal([]byte(c.ok("image", "diff", "--json", a, b)), &dr); err != nil {
		t.Fatal(err)
	}
	if dr.Download == nil || dr.Download.Bytes != delta || len(dr.Nodes) != 3 || dr.Nodes[0].Node != "n1" || dr.Nodes[0].Bytes != delta || dr.Nodes[1].How != fleet.FetchCached || dr.Nodes[2].How != fleet.FetchWhole {
		t.Errorf("image diff --json: download %+v, nodes %+v", dr.Download, dr.Nodes)
	}
	if out := c.ok("image", "diff", a, b); !strings.Contains(out, "next boot of") || !strings.Contains(out, "  n1: ") || !strings.Contains(out, "delta)") {
		t.Errorf("image diff lacks the per-node downloads:\n%s", out)
	}
}
