package nodeboot_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/testlab"
)

// recipeGeneration builds the small test recipe (recipes/test-noble-
// minimal.yaml), changed by edit when given, with this tree's herd and
// agent, into the shared test store (its stage cache keeps reruns cheap).
// Both generations of the delta test come from it: a seed image of
// another recipe (the QEMU suite's GPU image, built by the same agent
// meanwhile) shares few chunks with it.
func recipeGeneration(t *testing.T, name string, edit func(string) string) bootImage {
	t.Helper()
	herd := testenv.Bin(t, "HERD_BIN")
	testenv.RequireCommands(t, "mmdebstrap", "mksquashfs", "veritysetup")
	src, err := os.ReadFile("../../recipes/test-noble-minimal.yaml")
	must(t, err)
	r := string(src)
	if edit != nil {
		r = strings.Replace(edit(r), "name: test-noble-minimal\n", "name: "+name+"\n", 1)
		if r == string(src) || !strings.Contains(r, "name: "+name+"\n") {
			t.Fatalf("cannot derive recipe %s from recipes/test-noble-minimal.yaml", name)
		}
	}
	dir := t.TempDir()
	recipe := filepath.Join(dir, name+".yaml")
	must(t, os.WriteFile(recipe, []byte(r), 0o644))
	cmd := exec.Command(herd, "--state", testlab.TestStore, "--config", filepath.Join(dir, "none.yaml"), "image", "build", recipe, "--agent", agentBinary(t))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("build %s: %v\n%s", name, err, tail(out))
	}
	var id string
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, "image "); ok {
			id = strings.TrimSpace(v)
			break
		}
	}
	if id == "" {
		t.Fatalf("no image ID in the build output:\n%s", tail(out))
	}
	return imageFromDir(t, filepath.Join(testlab.TestStore, "images", id))
}

// nextGeneration is generation N+1 of the test recipe: one package more.
func nextGeneration(t *testing.T) bootImage {
	t.Helper()
	return recipeGeneration(t, "test-noble-minimal-less", func(r string) string {
		if !strings.Contains(r, "  - iproute2\n") {
			t.Fatal("recipes/test-noble-minimal.yaml lists no iproute2 to add less after")
		}
		return strings.Replace(r, "  - iproute2\n", "  - iproute2\n  - less\n", 1)
	})
}

// TestQEMUDeltaUpdate: a node with generation N cached boots generation
// N+1 (one package more): it assembles N+1 from N's chunks and fetches
// less than 5 % of the image from the server, never the whole file; the
// result is checked against its sha256 and mapped through dm-verity.
// make test leaves it out: TestLab's rollout canary checks the same delta
// against herd serve (9 CPU-minutes of TCG and two image builds saved on
// CI's 2 cores); HERD_NODEBOOT_DELTA=1 runs it, e.g. while working on
// FetchDelta.
func TestQEMUDeltaUpdate(t *testing.T) {
	if os.Getenv("HERD_NODEBOOT_DELTA") != "1" {
		testenv.Deliberate(t, "TestLab's rollout canary covers the delta boot (qemu-tests/rollout_test.go); HERD_NODEBOOT_DELTA=1 runs this one")
	}
	requireQEMUBoot(t)
	n := recipeGeneration(t, "test-noble-minimal", nil)
	next := nextGeneration(t)
	if n.Index == "" || next.Index == "" || n.SHA256 == next.SHA256 {
		t.Fatalf("need two different images with chunk indexes: %+v %+v", n, next)
	}
	h := newImageHost(t, n, next)
	overlay := overlayCPIO(t)
	disk := rawDisk(t, 4<<30)

	_, rep := h.boot(t, node{disk: disk}, overlay)
	if !strings.Contains(rep["images"], n.SHA256+".index") {
		t.Fatalf("generation N's chunk index not kept in the cache: %v", rep)
	}

	h.reset()
	console, rep := h.boot(t, node{disk: disk, img: &next}, overlay)
	log, _ := h.snapshot()
	h.mu.Lock()
	sent := h.sent
	h.mu.Unlock()
	st, err := os.Stat(next.Rootfs)
	must(t, err)
	fetched := sent["chunks"] + sent["index"] + sent["rootfs"]
	frac := float64(fetched) / float64(st.Size())
	t.Logf("generation N+1: server sent %d bytes (chunks %d, index %d, whole image %d) of a %d-byte image: %.2f%%",
		fetched, sent["chunks"], sent["index"], sent["rootfs"], st.Size(), 100*frac)
	fmt.Printf("BENCH delta-e2e-one-package: herd %dB reference(full image) %dB ratio %.4f\n", fetched, st.Size(), frac)
	if n := rootfsGets(log); n != 0 {
		t.Errorf("the node downloaded the whole image (%d requests)", n)
	}
	if frac >= 0.05 {
		t.Errorf("fetched %.2f%% of the image for a one-package update, want < 5%%", 100*frac)
	}
	if !strings.Contains(console, "delta download verified (every chunk against the index of sha256 "+sumFile(t, next.Index)) {
		t.Errorf("console lacks the verified delta:\n%s", tail([]byte(console)))
	}
	if !strings.Contains(rep["images"], next.SHA256+".squashfs") || !strings.HasPrefix(rep["lower"], "/dev/dm-") {
		t.Errorf("N+1 not cached or not mapped through dm-verity: %v", rep)
	}
}
