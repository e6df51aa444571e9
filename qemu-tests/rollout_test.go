package qemutests

// Rolling reboots onto a new generation (issue 19) on TestLab's two booted
// nodes, run by TestLab after its extras while both are up:
//
//  1. failed canary: a generation whose checks fail on the canary (gpu02)
//     is promoted and rolled out; the engine undoes the promote, sends the
//     canary back to the previous image, and the other node never reboots;
//  2. rollout: generation N+1 (the lab's recipe with one package added) is
//     promoted and rolled out with gpu01 as the canary; gpu01 boots it
//     fetching only the chunks N lacks (issue 17's delta figure, from the
//     server's log); gpu02, where alice runs a job in an SSH session, waits
//     with its users told, and reboots only after the job ends.
//
// Both rollouts go through herd serve's engine and the nodes' own status
// agents (signed reports, Reply.Reboot): nothing here reboots a VM. The
// engine's batches (every other node going at once after the canary) are
// rollout's unit tests (TestCanaryFirstThenBatches): a third node booted
// here only for them cost two TCG boots of the GPU image and a third of
// the host's CPU while the lab ran.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herdlab/herd/fleet"
	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/rollout"
	"github.com/herdlab/herd/testlab"
)

// rolloutCheckTimeout is the lab server's --rollout-check-timeout: how long
// a rebooted node's checks may fail before the rollout counts it failed.
// Under TCG a good node's checks pass within a minute of its first report;
// the broken generation's boot ends degraded, which fails at once.
const rolloutCheckTimeout = "3m"

// variantImage builds the lab's recipe with the lab's herd.yaml changed by
// edit: only the overlays stage and those after it run again, so it is a new
// image generation for the cost of a repack.
func variantImage(herd string, edit func(string) string) (string, error) {
	tmp, err := os.MkdirTemp("", "herd-variant-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	site := filepath.Join(tmp, "herd.yaml")
	if err := testlab.WriteLabSite(site); err != nil {
		return "", err
	}
	b, err := os.ReadFile(site)
	if err != nil {
		return "", err
	}
	changed := edit(string(b))
	if changed == string(b) {
		return "", fmt.Errorf("variant: the edit changed nothing in %s", site)
	}
	if err := os.WriteFile(site, []byte(changed), 0o644); err != nil {
		return "", err
	}
	return testlab.BuildImage(context.Background(), herd, testlab.TestStore, defaultRecipe, site, filepath.Join(tmp, "build.log"))
}

// brokenImage is a generation whose checks fail on every node with an SSD:
// its scratch directory is under /proc, so herd-scratch.service fails and
// the node's system-running check with it.
func brokenImage(herd string) (string, error) {
	return variantImage(herd, func(y string) string {
		return strings.Replace(y, "cache:\n  disk: auto\n", "cache:\n  disk: auto\n  scratch_dir: /proc/scratch\n", 1)
	})
}

// futureImages builds the generations the rollouts need while the nodes
// boot (the builds queue on the test store's lock, after the suite image).
type futureImages struct {
	wg                 sync.WaitGroup
	next, broken       string
	nextErr, brokenErr error
}

func buildFutureImages(herd string) *futureImages {
	f := &futureImages{}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		f.next, f.nextErr = nextGeneration(herd)
		f.broken, f.brokenErr = brokenImage(herd)
	}()
	return f
}

// rolloutLab is what the rollout checks share.
type rolloutLab struct {
	t     *testing.T
	ctx   context.Context
	lab   *testlab.Lab
	nodes map[string]*testlab.Booted
}

func (r *rolloutLab) bootID(name string) string {
	r.t.Helper()
	out, err := r.nodes[name].User.Run(r.ctx, "cat /proc/sys/kernel/random/boot_id")
	if err != nil {
		r.t.Fatalf("%s: boot_id: %v", name, err)
	}
	return strings.TrimSpace(out)
}

func (r *rolloutLab) nodeList() map[string]fleet.Node {
	r.t.Helper()
	out, err := r.lab.Herd(r.ctx, "", "node", "list", "--json")
	if err != nil {
		r.t.Fatal(err)
	}
	var ns []fleet.Node
	if err := json.Unmarshal(out, &ns); err != nil {
		r.t.Fatal(err)
	}
	m := map[string]fleet.Node{}
	for _, n := range ns {
		m[n.Name] = n
	}
	return m
}

// waitReports polls herd node list for up to limit until each named
// node's latest report is from image id (rollout.json is written at once,
// nodes.json within the inventory's flush interval after it); it returns
// the nodes still off, "" when none.
func (r *rolloutLab) waitReports(id string, limit time.Duration, names ...string) string {
	r.t.Helper()
	for deadline := time.Now().Add(limit); ; time.Sleep(3 * time.Second) {
		var off []string
		ns := r.nodeList()
		for _, n := range names {
			if st := ns[n].Status; st == nil || st.Image != id {
				off = append(off, fmt.Sprintf("%s %+v", n, st))
			}
		}
		if len(off) == 0 || time.Now().After(deadline) {
			return strings.Join(off, "; ")
		}
	}
}

// waitRollout polls rollout.json until the rollout of image is there and
// cond holds (nil: it ended). serve takes `herd rollout`'s request up
// asynchronously: until then rollout.json still holds the one before.
func (r *rolloutLab) waitRollout(image, what string, limit time.Duration, cond func(*rollout.State) bool) *rollout.State {
	r.t.Helper()
	if cond == nil {
		cond = func(st *rollout.State) bool { return rollout.Terminal(st.Phase) }
	}
	for deadline := time.Now().Add(limit); ; time.Sleep(5 * time.Second) {
		st, err := rollout.Load(r.lab.StateDir)
		if err != nil {
			r.t.Fatal(err)
		}
		if st != nil && st.Request.Image == image && cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("rollout: not %s within %s: %+v", what, limit, st)
		}
	}
}

// rolloutChecks runs both rollouts; on success every node runs N+1 and the
// lab's ImageID (and each Booted's Manifest) says so, for the checks after.
func rolloutChecks(t *testing.T, ctx context.Context, lab *testlab.Lab, nodes map[string]*testlab.Booted, future *futureImages) {
	for _, n := range []string{"gpu01", "gpu02"} {
		if nodes[n] == nil {
			t.Fatalf("%s is not up", n)
		}
	}
	future.wg.Wait()
	if future.nextErr != nil || future.brokenErr != nil {
		t.Fatalf("building the rollouts' generations: %v; %v", future.nextErr, future.brokenErr)
	}
	orig := lab.ImageID
	next, err := testlab.LinkImage(ctx, future.next, lab.StateDir, false)
	if err != nil {
		t.Fatal(err)
	}
	broken, err := testlab.LinkImage(ctx, future.broken, lab.StateDir, false)
	if err != nil {
		t.Fatal(err)
	}
	if next == orig || broken == orig || next == broken {
		t.Fatalf("the generations are not distinct: N %s, N+1 %s, broken %s", orig, next, broken)
	}
	r := &rolloutLab{t: t, ctx: ctx, lab: lab, nodes: nodes}
	if off := r.waitReports(orig, 5*time.Minute, "gpu01", "gpu02"); off != "" {
		t.Fatalf("the nodes never all reported on %s: %s", orig, off)
	}
	before := map[string]string{}
	for n := range nodes {
		before[n] = r.bootID(n)
	}

	t.Run("failed-canary-rolled-back", func(t *testing.T) {
		r.t = t
		if out, err := lab.Herd(ctx, "", "image", "promote", broken); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if out, err := lab.Herd(ctx, "", "rollout", "--canary", "gpu02", "--batch", "2"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		st := r.waitRollout(broken, "ended", 30*time.Minute, nil)
		if st.Phase != rollout.PhaseFailed || !st.Undone || !strings.Contains(st.Error, "canary gpu02 failed") || !strings.Contains(st.Error, "system-running") {
			t.Fatalf("rollout %s undone=%v: %s (%+v)", st.Phase, st.Undone, st.Error, st.Nodes)
		}
		t.Logf("failed rollout: %s", st.Error)
		if cur, err := store.ReadOnly(lab.StateDir).Current(); err != nil || cur != orig {
			t.Fatalf("current image %s (%v), want %s again", cur, err, orig)
		}
		// The canary goes back to the previous image by itself.
		r.waitRollout(broken, "reverted", 20*time.Minute, func(st *rollout.State) bool {
			n := st.Node("gpu02")
			if n.State == rollout.NodeFailed {
				t.Fatalf("canary not reverted: %+v", n)
			}
			return n.State == rollout.NodeReverted
		})
		if off := r.waitReports(orig, 3*time.Minute, "gpu02"); off != "" {
			t.Errorf("not reporting image %s after the revert: %s", orig, off)
		}
		if r.bootID("gpu01") != before["gpu01"] {
			t.Errorf("gpu01 rebooted although the canary failed")
		}
		if id := r.bootID("gpu02"); id == before["gpu02"] {
			t.Errorf("the canary gpu02 never rebooted")
		} else {
			before["gpu02"] = id
		}
	})
	r.t = t
	if t.Failed() {
		return
	}

	rootfs := filepath.Join(lab.StateDir, "images", next, manifest.Rootfs)
	fi, err := os.Stat(rootfs)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("canary-then-busy-node-waits", func(t *testing.T) {
		r.t = t
		// alice runs a job on gpu02 in an SSH session (a logind session);
		// the test ends it (closing the connection) once the rollout has
		// shown that gpu02 waits for it.
		jobCtx, endJob := context.WithCancel(ctx)
		defer endJob()
		go nodes["gpu02"].User.Run(jobCtx, "sleep 3000")
		for deadline := time.Now().Add(5 * time.Minute); !r.nodeList()["gpu02"].Busy; time.Sleep(5 * time.Second) {
			if time.Now().After(deadline) {
				t.Fatalf("gpu02 never reported busy: %+v", r.nodeList()["gpu02"])
			}
		}
		logStart := len(lab.ServerLogText())
		if out, err := lab.Herd(ctx, "", "image", "promote", next); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if out, err := lab.Herd(ctx, "", "image", "diff", orig, next); err == nil {
			t.Logf("herd image diff N N+1:\n%s", out)
		}
		if out, err := lab.Herd(ctx, "", "rollout", "--canary", "gpu01", "--batch", "2", "--when-idle", "--deadline", "2h"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		st := r.waitRollout(next, "past the canary with gpu02 waiting", 30*time.Minute, func(st *rollout.State) bool {
			if rollout.Terminal(st.Phase) {
				t.Fatalf("rollout ended early: %s %s (%+v)", st.Phase, st.Error, st.Nodes)
			}
			return st.Node("gpu01").State == rollout.NodeDone && st.Node("gpu02").State == rollout.NodeWaiting && !st.Node("gpu02").WallSent.IsZero()
		})
		// gpu01's delta: only gpu01 booted between the promote and now.
		cb, rb, ib, cn, rn := fetched(lab.ServerLogText()[logStart:], nodes["gpu01"].Node.IP, next)
		total := cb + rb + ib
		frac := float64(total) / float64(fi.Size())
		t.Logf("canary gpu01 fetched %d bytes for N+1 (%d chunk requests: %d bytes; rootfs: %d requests, %d bytes; index %d bytes) of a %d-byte image: %.3f%%",
			total, cn, cb, rn, rb, ib, fi.Size(), 100*frac)
		fmt.Printf("BENCH delta-e2e-one-package: herd %dB reference(full image) %dB ratio %.4f\n", total, fi.Size(), frac)
		if cn == 0 {
			t.Errorf("no /chunks/ request from gpu01: the update was not fetched as a delta")
		}
		if frac >= 0.05 {
			t.Errorf("a one-package update fetched %.2f%% of the image, want < 5%%", 100*frac)
		}
		if g2 := st.Node("gpu02"); !g2.RebootAsked.IsZero() {
			t.Errorf("busy gpu02 was asked to reboot: %+v", g2)
		}
		if id := r.bootID("gpu02"); id != before["gpu02"] {
			t.Fatal("busy gpu02 rebooted")
		}
		endJob()
		jobEnded := time.Now()
		st = r.waitRollout(next, "ended", 40*time.Minute, nil)
		if st.Phase != rollout.PhaseDone {
			t.Fatalf("rollout %s: %s (%+v)", st.Phase, st.Error, st.Nodes)
		}
		c, g2 := st.Node("gpu01"), st.Node("gpu02")
		if st.Canary != "gpu01" || g2.RebootAsked.Before(c.Up) {
			t.Errorf("the canary did not go first: %+v", st.Nodes)
		}
		if g2.RebootAsked.Before(jobEnded) {
			t.Errorf("gpu02 was asked to reboot at %s, before alice's job ended at %s", g2.RebootAsked, jobEnded)
		}
		if off := r.waitReports(next, 3*time.Minute, "gpu01", "gpu02"); off != "" {
			t.Errorf("not reporting image %s after the rollout: %s", next, off)
		}
		for n := range nodes {
			if id := r.bootID(n); id == before[n] {
				t.Errorf("%s did not reboot", n)
			}
		}
	})
	r.t = t
	if t.Failed() {
		return
	}
	// N+1 is the lab's image from here on.
	img, err := store.ReadOnly(lab.StateDir).Get(next)
	if err != nil {
		t.Fatal(err)
	}
	lab.ImageID = next
	for _, b := range nodes {
		b.Manifest = img.Manifest
	}
	rolledOut = img
}

// rolledOut is generation N+1 once rolloutChecks put every node on it (nil
// before): TestLab's checks after the rollouts use it, and the verity check
// flips a byte of it.
var rolledOut *store.Image
