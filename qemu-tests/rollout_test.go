package qemutests

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herdlab/herd/fleet"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/rollout"
	"github.com/herdlab/herd/testlab"
)

// variantImage builds the lab's recipe with the lab's herd.yaml changed by
// edit: only the overlays stage and those after it run again, so it is a new
// image generation for the cost of a repack.
func variantImage(t *testing.T, herd string, edit func(string) string) string {
	t.Helper()
	tmp := t.TempDir()
	site := filepath.Join(tmp, "herd.yaml")
	if err := testlab.WriteLabSite(site); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(site)
	if err != nil {
		t.Fatal(err)
	}
	changed := edit(string(b))
	if changed == string(b) {
		t.Fatal("variant: the edit changed nothing")
	}
	if err := os.WriteFile(site, []byte(changed), 0o644); err != nil {
		t.Fatal(err)
	}
	dir, err := testlab.BuildImage(context.Background(), herd, testlab.TestStore, defaultRecipe, site, filepath.Join(tmp, "build.log"))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestRollout is issue 19's end to end: three nodes booted together, a new
// generation promoted and rolled out by herd serve's engine through the
// nodes' own status agents — the canary first, then the others, a node with a
// logged-in user running a process only after it ends. (The failed-canary
// case is covered by rollout's unit tests; its QEMU run is not here yet.)
func TestRollout(t *testing.T) {
	testenv.Long(t)
	testenv.RequireNetns(t)
	testenv.RequireQEMU(t)
	testenv.RequireCommands(t, "ganesha.nfsd", "slapd", "slapadd")
	herd := testenv.Bin(t, "HERD_BIN")
	ctx := context.Background()

	img := suiteImage(t, herd)
	// The next generation: a harmless change (the time zone).
	good := variantImage(t, herd, func(y string) string { return y + "timezone: Europe/Berlin\n" })
	goodID := filepath.Base(good)

	nodes := []testlab.LabNode{
		{Name: "gpu01", MAC: "52:54:00:77:00:11", IP: "10.77.0.11"},
		{Name: "gpu02", MAC: "52:54:00:77:00:12", IP: "10.77.0.12"},
		{Name: "gpu03", MAC: "52:54:00:77:00:13", IP: "10.77.0.13"},
	}
	dir := labDir(t)
	lab, err := testlab.StartLab(ctx, testlab.LabConfig{Dir: dir, HerdBin: herd, ImageDir: img, Nodes: nodes,
		ServeArgs: []string{"--rollout-check-timeout", "5m"}})
	if err != nil {
		t.Fatal(err)
	}
	booted := map[string]*testlab.Booted{}
	var mu sync.Mutex
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		if t.Failed() {
			for _, b := range booted {
				t.Logf("--- serial console of %s (%s) ---\n%s", b.Node.Name, b.VM.SerialPath, b.VM.Console.Tail(40))
			}
			t.Logf("--- server log (%s) ---\n%s", lab.ServerLog, testlab.TailLines([]byte(lab.ServerLogText()), 60))
		}
		for _, b := range booted {
			b.VM.Stop()
		}
		lab.Close()
		if !t.Failed() && os.Getenv("HERD_E2E_KEEP") == "" {
			os.RemoveAll(dir)
		}
	})
	if _, err := testlab.LinkImage(ctx, good, lab.StateDir, false); err != nil {
		t.Fatal(err)
	}
	uid, gid, err := lab.AddUser(ctx, "alice", alicePassword)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(nodes))
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := testlab.BootNode(ctx, lab, n.Name, false, "alice", alicePassword, uid, gid)
			if b != nil {
				mu.Lock()
				booted[n.Name] = b
				mu.Unlock()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("%s did not boot: %v", nodes[i].Name, err)
		}
	}
	bootID := func(name string) string {
		t.Helper()
		out, err := booted[name].User.Run(ctx, "cat /proc/sys/kernel/random/boot_id")
		if err != nil {
			t.Fatalf("%s: boot_id: %v", name, err)
		}
		return strings.TrimSpace(out)
	}
	nodeList := func() map[string]fleet.Node {
		t.Helper()
		out, err := lab.Herd(ctx, "", "node", "list", "--json")
		if err != nil {
			t.Fatal(err)
		}
		var ns []fleet.Node
		if err := json.Unmarshal(out, &ns); err != nil {
			t.Fatal(err)
		}
		m := map[string]fleet.Node{}
		for _, n := range ns {
			m[n.Name] = n
		}
		return m
	}
	// waitNodes polls herd node list until cond holds for every node.
	waitNodes := func(what string, limit time.Duration, cond func(fleet.Node) bool) {
		t.Helper()
		for deadline := time.Now().Add(limit); ; time.Sleep(5 * time.Second) {
			ok := true
			for _, n := range nodeList() {
				ok = ok && cond(n)
			}
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("nodes never %s: %+v", what, nodeList())
			}
		}
	}
	waitRollout := func(limit time.Duration) *rollout.State {
		t.Helper()
		for deadline := time.Now().Add(limit); ; time.Sleep(5 * time.Second) {
			st, err := rollout.Load(lab.StateDir)
			if err != nil {
				t.Fatal(err)
			}
			if st != nil && rollout.Terminal(st.Phase) {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("rollout did not end within %s: %+v", limit, st)
			}
		}
	}
	waitNodes("reporting", 5*time.Minute, func(n fleet.Node) bool { return n.Status != nil })
	before := map[string]string{}
	for _, n := range nodes {
		before[n.Name] = bootID(n.Name)
	}

	var jobEnded time.Time
	t.Run("canary-then-others-busy-waits", func(t *testing.T) {
		// alice runs a job on gpu03 in an SSH session (a logind session);
		// the test ends it (closing the connection) once the rollout has
		// shown that gpu03 waits for it.
		jobCtx, endJob := context.WithCancel(ctx)
		defer endJob()
		go booted["gpu03"].User.Run(jobCtx, "sleep 3000")
		waitNodes("gpu03 busy", 5*time.Minute, func(n fleet.Node) bool { return n.Name != "gpu03" || n.Busy })
		if _, err := lab.Herd(ctx, "", "image", "promote", goodID); err != nil {
			t.Fatal(err)
		}
		if _, err := lab.Herd(ctx, "", "rollout", "--canary", "gpu01", "--when-idle", "--deadline", "2h"); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(40 * time.Minute); ; time.Sleep(5 * time.Second) {
			st, err := rollout.Load(lab.StateDir)
			if err != nil {
				t.Fatal(err)
			}
			if st != nil && st.Node("gpu02").State == rollout.NodeDone && st.Node("gpu03").State == rollout.NodeWaiting {
				break
			}
			if time.Now().After(deadline) || (st != nil && rollout.Terminal(st.Phase)) {
				t.Fatalf("never saw gpu02 done while busy gpu03 waits: %+v", st)
			}
		}
		// Its users were sent the wall message (the agent walls it to
		// their terminals), and it has not rebooted.
		if st, _ := rollout.Load(lab.StateDir); st.Node("gpu03").WallSent.IsZero() || !st.Node("gpu03").RebootAsked.IsZero() {
			t.Errorf("waiting gpu03: %+v", st.Node("gpu03"))
		}
		if id := bootID("gpu03"); id != before["gpu03"] {
			t.Fatal("busy gpu03 rebooted")
		}
		endJob()
		jobEnded = time.Now()
		st := waitRollout(45 * time.Minute)
		if st.Phase != rollout.PhaseDone {
			t.Fatalf("rollout %s: %s (%+v)", st.Phase, st.Error, st.Nodes)
		}
		c, g2, g3 := st.Node("gpu01"), st.Node("gpu02"), st.Node("gpu03")
		if st.Canary != "gpu01" || g2.RebootAsked.Before(c.Up) || g3.RebootAsked.Before(c.Up) {
			t.Errorf("the canary did not go first: %+v", st.Nodes)
		}
		if g3.RebootAsked.Before(jobEnded) {
			t.Errorf("gpu03 was asked to reboot at %s, before alice's job ended at %s", g3.RebootAsked, jobEnded)
		}
		for _, n := range nodeList() {
			if n.Status == nil || n.Status.Image != goodID {
				t.Errorf("%s is not on %s: %+v", n.Name, goodID, n.Status)
			}
		}
		for _, n := range nodes {
			if id := bootID(n.Name); id == before[n.Name] {
				t.Errorf("%s did not reboot", n.Name)
			} else {
				before[n.Name] = id
			}
		}
	})
}
