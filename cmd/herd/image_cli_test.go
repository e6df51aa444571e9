package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/fleet"
	"github.com/herdlab/herd/image/diff"
	"github.com/herdlab/herd/image/inspect"
	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/pxe/inventory"
)

// herdBinary is HERD_BIN when `make test` built it, else a binary built
// from this package into the test's temporary directory.
func herdBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("HERD_BIN"); p != "" {
		return p
	}
	bin := filepath.Join(t.TempDir(), "herd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build herd: %v\n%s", err, out)
	}
	return bin
}

type cli struct {
	t      *testing.T
	bin    string
	state  string
	config string
}

// run runs herd and returns stdout, stderr and whether it exited 0.
func (c *cli) run(args ...string) (string, string, bool) {
	c.t.Helper()
	cmd := exec.Command(c.bin, append([]string{"--state", c.state, "--config", c.config}, args...)...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		c.t.Fatalf("herd %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), err == nil
}

func (c *cli) ok(args ...string) string {
	c.t.Helper()
	out, errOut, ok := c.run(args...)
	if !ok {
		c.t.Fatalf("herd %v failed: %s", args, errOut)
	}
	return out
}

// refused runs a command that must fail with a message naming all parts.
func (c *cli) refused(args []string, parts ...string) {
	c.t.Helper()
	_, errOut, ok := c.run(args...)
	if ok {
		c.t.Fatalf("herd %v succeeded, want a refusal", args)
	}
	for _, p := range parts {
		if !strings.Contains(errOut, p) {
			c.t.Errorf("herd %v: stderr %q lacks %q", args, errOut, p)
		}
	}
}

// publishImage puts an image into the store the way a build does: real
// artifacts in a staging dir (the root a real squashfs made by mksquashfs
// from a tree with os-release), then Publish under the lock.
func publishImage(t *testing.T, st *store.Store, recipe, nvidia string, pkgs map[string]string, stages ...string) string {
	t.Helper()
	tree := t.TempDir()
	os.MkdirAll(filepath.Join(tree, "usr/lib/modules/6.8.0-149-generic"), 0o755)
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "usr/lib/os-release"), []byte("PRETTY_NAME=\"Ubuntu 24.04.5 LTS\"\nVERSION_ID=\"24.04\"\nNOTE="+recipe+nvidia+"\n"), 0o644)
	os.Symlink("../usr/lib/os-release", filepath.Join(tree, "etc/os-release"))
	os.Symlink("usr/lib", filepath.Join(tree, "lib"))
	m := &manifest.Manifest{Created: time.Now().UTC(), Recipe: recipe, Distribution: "ubuntu", Suite: "noble",
		KernelABI: "6.8.0-149-generic", NVIDIA: nvidia, Packages: pkgs,
		Overlays: []manifest.OverlayFile{{Overlay: "base", Path: "/etc/motd", Mode: "0644", SHA256: nvidia}}}
	for _, k := range stages {
		m.Stages = append(m.Stages, manifest.Stage{Name: "bootstrap", Key: k})
	}
	id := publishTree(t, st, tree, recipe+nvidia, m)
	time.Sleep(2 * time.Millisecond) // distinct Created for the newest-first order
	return id
}

// publishTree publishes tree as an image's root (a real squashfs), with a
// kernel and initrd whose contents differ by tag, under the store's lock.
func publishTree(t *testing.T, st *store.Store, tree, tag string, m *manifest.Manifest) string {
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
	if out, err := exec.Command("mksquashfs", tree, filepath.Join(dir, manifest.Rootfs), "-noappend", "-quiet", "-comp", "zstd").CombinedOutput(); err != nil {
		t.Fatalf("mksquashfs: %v %s", err, out)
	}
	os.WriteFile(filepath.Join(dir, manifest.Kernel), []byte("kernel "+tag), 0o644)
	os.WriteFile(filepath.Join(dir, manifest.Initrd), []byte("initrd "+tag), 0o644)
	os.WriteFile(filepath.Join(dir, "build.log"), []byte("log\n"), 0o644)
	id, err := st.Publish(dir, m)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestImageCommands(t *testing.T) {
	testenv.RequireCommands(t, "mksquashfs", "go")
	work := t.TempDir()
	t.Cleanup(func() { // published images are read-only dirs
		filepath.WalkDir(work, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				os.Chmod(p, 0o755)
			}
			return nil
		})
	})
	c := &cli{t: t, bin: herdBinary(t), state: filepath.Join(work, "state"), config: filepath.Join(work, "herd.yaml")}
	// Empty store: list says so; rollback has nothing to go back to.
	if out := c.ok("image", "list"); !strings.Contains(out, "no images") {
		t.Errorf("empty list: %q", out)
	}
	if out := c.ok("image", "list", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("empty list --json: %q", out)
	}
	c.refused([]string{"image", "rollback"}, "no image is current")

	st, err := store.Open(c.state)
	if err != nil {
		t.Fatal(err)
	}
	a := publishImage(t, st, "gpu", "580.95.05-0ubuntu0.24.04.1", map[string]string{"autofs": "5.1.9-1", "nvidia-utils-580-server": "580.95.05-0ubuntu0.24.04.1"}, "stage-a")
	b := publishImage(t, st, "gpu", "580.178.04-0ubuntu0.24.04.1", map[string]string{"autofs": "5.1.9-1", "nvidia-utils-580-server": "580.178.04-0ubuntu0.24.04.1", "htop": "3.3.0-4"}, "stage-b")
	pinned := publishImage(t, st, "old", "", map[string]string{"autofs": "5.1.9-1"}, "stage-p")
	for _, k := range []string{"stage-a", "stage-b", "stage-p", "stage-orphan"} {
		os.MkdirAll(filepath.Join(c.state, "stages", k), 0o755)
	}
	os.WriteFile(filepath.Join(c.state, "stages", "stage-orphan", "big"), make([]byte, 1<<20), 0o644)
	if err := os.WriteFile(c.config, []byte("overlays: []\ndhcp: {mode: off}\nnodes:\n  - {name: n1, mac: '52:54:00:00:00:01', image: "+pinned[:8]+"}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Two nodes last booted image a (what pxe/inventory records).
	inv, err := inventory.Load(c.state)
	if err != nil {
		t.Fatal(err)
	}
	for _, mac := range []string{"52:54:00:00:00:01", "52:54:00:00:00:02"} {
		if err := inv.RecordEvent(inventory.Event{MAC: mac, Stage: "up", Image: a}, "127.0.0.1", time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if err := inv.Flush(); err != nil { // coalesced writes: the CLI reads nodes.json
		t.Fatal(err)
	}

	// promote, list marks the current one and counts nodes.
	if out := c.ok("image", "promote", a[:6]); !strings.Contains(out, a+" is now current") {
		t.Errorf("promote: %q", out)
	}
	var rows []fleet.Image
	if err := json.Unmarshal([]byte(c.ok("image", "list", "--json")), &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 3 || rows[0].ID != pinned || rows[2].ID != a || !rows[2].Current || rows[0].Current || rows[2].Nodes != 2 ||
		rows[1].NVIDIA != "580.178.04-0ubuntu0.24.04.1" || rows[1].Kernel != "6.8.0-149-generic" || rows[1].Recipe != "gpu" || rows[1].Size == 0 {
		t.Errorf("list --json: %+v", rows)
	}
	out := c.ok("image", "list")
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, a) && !strings.HasPrefix(line, "*") {
			t.Errorf("current not marked: %q", line)
		}
	}

	// --require-test refuses an untested image, then a failed one.
	c.refused([]string{"image", "promote", "--require-test", b}, b, "no test result")
	if err := st.RecordTest(b, store.TestResult{Passed: false, Summary: "1 of 12 checks failed"}); err != nil {
		t.Fatal(err)
	}
	c.refused([]string{"image", "promote", "--require-test", b}, b, "failed", "1 of 12 checks failed")
	if err := st.RecordTest(b, store.TestResult{Passed: true, Summary: "12 checks passed"}); err != nil {
		t.Fatal(err)
	}
	if out := c.ok("image", "promote", "--require-test", b); !strings.Contains(out, "was "+a) {
		t.Errorf("promote b: %q", out)
	}

	// show, text and JSON.
	out = c.ok("image", "show", b[:5])
	for _, want := range []string{"id:", b, "current:        true", "nvidia:         580.178.04-0ubuntu0.24.04.1", "test:           passed", "12 checks passed", "rootfs.squashfs", "stage-b"} {
		if !strings.Contains(out, want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}
	var det imageDetail
	if err := json.Unmarshal([]byte(c.ok("image", "show", "--json", b)), &det); err != nil {
		t.Fatal(err)
	}
	if det.ID != b || !det.Current || det.Test == nil || !det.Test.Passed || det.Manifest.Packages["htop"] != "3.3.0-4" || det.BuildLog == "" {
		t.Errorf("show --json: %+v", det)
	}
	c.refused([]string{"image", "show", "0badc0de"}, "0badc0de", "not in the store")
	if out := c.ok("image", "show", pinned); !strings.Contains(out, "pinned by:      n1") {
		t.Errorf("show of a pinned image:\n%s", out)
	}

	// diff, text and JSON; unknown IDs named.
	out = c.ok("image", "diff", a, b)
	for _, want := range []string{"nvidia:  580.95.05-0ubuntu0.24.04.1 -> 580.178.04-0ubuntu0.24.04.1", "  + htop 3.3.0-4",
		"  ~ nvidia-utils-580-server 580.95.05-0ubuntu0.24.04.1 -> 580.178.04-0ubuntu0.24.04.1", "  ~ /etc/motd: content"} {
		if !strings.Contains(out, want) {
			t.Errorf("diff lacks %q:\n%s", want, out)
		}
	}
	var dr diff.Result
	if err := json.Unmarshal([]byte(c.ok("image", "diff", "--json", a, b)), &dr); err != nil {
		t.Fatal(err)
	}
	if dr.A != a || dr.B != b || len(dr.Added) != 1 || len(dr.Changed) != 1 || dr.NVIDIA == nil {
		t.Errorf("diff --json: %+v", dr)
	}
	c.refused([]string{"image", "diff", a, "feedface"}, "feedface", "not in the store")
	c.refused([]string{"image", "diff", "feedface", b}, "feedface", "not in the store")

	// inspect by ID, by image dir and by file.
	out = c.ok("image", "inspect", b)
	if !strings.Contains(out, "Ubuntu 24.04.5 LTS") || !strings.Contains(out, "6.8.0-149-generic") {
		t.Errorf("inspect: %s", out)
	}
	var rep inspect.Report
	if err := json.Unmarshal([]byte(c.ok("image", "inspect", "--json", filepath.Join(c.state, "images", a))), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.OSRelease["NOTE"] != "gpu580.95.05-0ubuntu0.24.04.1" {
		t.Errorf("inspect dir: %+v", rep)
	}
	pinnedImg, err := st.Get(pinned)
	if err != nil {
		t.Fatal(err)
	}
	if out := c.ok("image", "inspect", filepath.Join(pinnedImg.Dir, manifest.Rootfs)); !strings.Contains(out, "Ubuntu") {
		t.Errorf("inspect file: %s", out)
	}
	c.refused([]string{"image", "inspect", "nosuchthing"}, "nosuchthing", "not in the store")

	// rm refusals: current, pinned (by prefix in herd.yaml), unknown.
	c.refused([]string{"image", "rm", b}, b, "current image")
	c.refused([]string{"image", "rm", pinned}, pinned, "pinned")
	c.refused([]string{"image", "rm", "abcdef99"}, "abcdef99", "not in the store")
	// A broken herd.yaml: rm refuses rather than guess the pins.
	good, _ := os.ReadFile(c.config)
	os.WriteFile(c.config, []byte("nodes: [\n"), 0o644)
	c.refused([]string{"image", "rm", a}, "herd.yaml", "pins")
	os.WriteFile(c.config, good, 0o644)

	// rollback to a, again refused (no previous).
	if out := c.ok("image", "rollback"); !strings.Contains(out, a+" is current again") {
		t.Errorf("rollback: %q", out)
	}
	c.refused([]string{"image", "rollback"}, "no previously current image", a)

	// gc --keep 0: a is current, pinned is pinned, b... is neither the
	// previous (history is empty after the rollback) nor pinned: removed,
	// with its stage, and the orphan stage.
	var gc store.GCReport
	if err := json.Unmarshal([]byte(c.ok("image", "gc", "--keep", "0", "--json")), &gc); err != nil {
		t.Fatal(err)
	}
	if len(gc.Images) != 1 || gc.Images[0] != b || len(gc.Stages) != 2 || gc.BytesFreed < 1<<20 {
		t.Errorf("gc: %+v", gc)
	}
	if _, err := os.Stat(filepath.Join(c.state, "stages", "stage-a")); err != nil {
		t.Errorf("stage of a kept image removed: %v", err)
	}
	out = c.ok("image", "gc")
	if !strings.Contains(out, "removed 0 images, 0 stage caches, 0 stale staging dirs") {
		t.Errorf("second gc: %q", out)
	}
	c.refused([]string{"image", "gc", "--keep", "-1"}, "keep must be 0 or more")
	// rm of a no-longer-current, unpinned image works.
	if _, err := st.Promote(context.Background(), pinned, false); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(c.config, []byte("overlays: []\ndhcp: {mode: off}\n"), 0o644)
	if out := c.ok("image", "rm", a[:7]); !strings.Contains(out, "removed image "+a) {
		t.Errorf("rm: %q", out)
	}
	if out := c.ok("image", "list"); strings.Contains(out, a) || !strings.Contains(out, pinned) {
		t.Errorf("list after rm: %s", out)
	}
}
