package web_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/herdlab/herd/fleet"
	"github.com/herdlab/herd/image/chunks"
	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/pxe/inventory"
)

// publishChunked puts an image whose root image is root, with its chunk
// index (as pack makes it), in the store and returns its ID and the root
// image's sha256.
func publishChunked(t *testing.T, state string, root []byte) (id, sha string) {
	t.Helper()
	st, err := store.Open(state)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := st.StagingDir()
	if err != nil {
		t.Fatal(err)
	}
	x, err := chunks.Split(bytes.NewReader(root))
	if err != nil {
		t.Fatal(err)
	}
	ib, _ := x.MarshalBinary()
	for name, b := range map[string][]byte{manifest.Rootfs: root, manifest.Kernel: []byte("kernel " + randHex(8)),
		manifest.Initrd: []byte("initrd " + randHex(8)), chunks.IndexName: ib} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m := &manifest.Manifest{Created: time.Now().UTC(), Recipe: "dash-test", KernelABI: "6.8.0-150-generic",
		NVIDIA: "580.178.04-0ubuntu0.24.04.1", Packages: map[string]string{"bash": "5.2.1"},
		Chunks: &manifest.ChunkIndex{File: chunks.IndexName, Count: len(x.Chunks)}}
	if id, err = st.Publish(dir, m); err != nil {
		t.Fatal(err)
	}
	return id, m.Artifacts[manifest.Rootfs].SHA256
}

// TestAPINextDownload: /api/v1/nodes and /api/v1/nodes/<name> say what each
// node's next boot downloads (next_download), the same figure `herd node
// list` shows in NEXT BOOT, from the cache the node's signed up event
// reported: the chunks its cached image lacks, nothing when it caches the
// current image, and a newly promoted image is planned for without a
// restart.
func TestAPINextDownload(t *testing.T) {
	l := startLab(t, "")
	a := make([]byte, 4<<20)
	rand.Read(a)
	extra := make([]byte, 300<<10)
	rand.Read(extra)
	b := append(append(append([]byte(nil), a[:1<<20]...), extra...), a[1<<20:]...)
	idA, shaA := publishChunked(t, l.state, a)
	idB, shaB := publishChunked(t, l.state, b)
	st, err := store.Open(l.state)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Promote(context.Background(), idB, false); err != nil {
		t.Fatal(err)
	}
	up := func(node string, cache inventory.Cache) {
		t.Helper()
		ev, _ := json.Marshal(map[string]any{"node": node, "mac": macs[node], "stage": "up", "percent": 100,
			"image": idA, "kernel": "6.8.0-150-generic", "cache": cache})
		if err := l.nodes[node].Event(context.Background(), ev); err != nil {
			t.Fatalf("POST /events %s up: %v", node, err)
		}
	}
	up("gpu01", inventory.Cache{Disk: true, Images: []string{shaA}})
	up("gpu02", inventory.Cache{Disk: true, Images: []string{shaB, shaA}})

	xa, _ := chunks.SplitFile(filepath.Join(l.state, "images", idA, manifest.Rootfs))
	xb, _ := chunks.SplitFile(filepath.Join(l.state, "images", idB, manifest.Rootfs))
	delta, _ := chunks.Missing(xb, xa)
	if delta <= 0 || delta >= int64(len(b))/2 {
		t.Fatalf("test setup: a delta of %d of %d bytes", delta, len(b))
	}
	want := map[string]fleet.Download{
		"gpu01": {Image: idB, How: fleet.FetchDelta, Bytes: delta, ImageSize: int64(len(b))},
		"gpu02": {Image: idB, How: fleet.FetchCached, ImageSize: int64(len(b))},
	}
	check := func(what string, n fleet.Node) {
		t.Helper()
		w, d := want[n.Name], n.NextDownload
		if d == nil || d.Image != w.Image || d.How != w.How || d.Bytes != w.Bytes || d.ImageSize != w.ImageSize ||
			d.Fraction != float64(w.Bytes)/float64(w.ImageSize) || d.BootFiles <= 0 {
			t.Errorf("%s: %s next_download %+v, want %s of %d/%d bytes of %s", what, n.Name, d, w.How, w.Bytes, w.ImageSize, w.Image)
		}
	}
	var nodes []fleet.Node
	l.waitFor(t, "both up events", func() bool {
		nodes = nil
		strictDecode(t, "/api/v1/nodes", l.get(t, "/api/v1/nodes"), &nodes)
		return len(nodes) == 2 && nodes[0].Seen != nil && nodes[0].Seen.Cache != nil && nodes[1].Seen != nil && nodes[1].Seen.Cache != nil
	})
	for _, n := range nodes {
		check("/api/v1/nodes", n)
	}
	var one fleet.Node
	strictDecode(t, "/api/v1/nodes/gpu01", l.get(t, "/api/v1/nodes/gpu01"), &one)
	check("/api/v1/nodes/gpu01", one)
	// The raw field names, as docs/api.md lists them.
	var raw []map[string]json.RawMessage
	json.Unmarshal(l.get(t, "/api/v1/nodes"), &raw)
	var nd map[string]any
	if err := json.Unmarshal(raw[0]["next_download"], &nd); err != nil {
		t.Fatalf("no next_download object: %v", err)
	}
	for _, k := range []string{"image", "how", "bytes", "image_size", "fraction", "boot_files"} {
		if _, ok := nd[k]; !ok {
			t.Errorf("next_download lacks %q: %v", k, nd)
		}
	}
	// The same rows as the CLI's (nodes.json is written at most every 2 s).
	var cli, api any
	for i := 0; i < 100; i++ {
		cli, api = nil, nil
		json.Unmarshal(l.herdJSON(t, "node", "list", "--json"), &cli)
		json.Unmarshal(l.get(t, "/api/v1/nodes"), &api)
		if reflect.DeepEqual(cli, api) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !reflect.DeepEqual(cli, api) {
		t.Errorf("herd node list --json and /api/v1/nodes differ:\n%v\n%v", cli, api)
	}

	// A new generation promoted while serve runs: both nodes now fetch
	// from it, gpu02 seeding from B as well.
	c := append(append([]byte(nil), b...), extra[:100<<10]...)
	idC, _ := publishChunked(t, l.state, c)
	if _, err := st.Promote(context.Background(), idC, false); err != nil {
		t.Fatal(err)
	}
	xc, _ := chunks.SplitFile(filepath.Join(l.state, "images", idC, manifest.Rootfs))
	d1, _ := chunks.Missing(xc, xa)
	d2, _ := chunks.Missing(xc, xb, xa)
	want["gpu01"] = fleet.Download{Image: idC, How: fleet.FetchDelta, Bytes: d1, ImageSize: int64(len(c))}
	want["gpu02"] = fleet.Download{Image: idC, How: fleet.FetchDelta, Bytes: d2, ImageSize: int64(len(c))}
	nodes = nil
	strictDecode(t, "/api/v1/nodes", l.get(t, "/api/v1/nodes"), &nodes)
	for _, n := range nodes {
		check("/api/v1/nodes after a promote", n)
	}
}
