// Package qemutests is herd's end-to-end suite: the reference lab on one
// machine. A network namespace with a bridge holds `herd serve` (full DHCP),
// a NAS (nfs-ganesha exporting homes and Public, slapd seeded through
// `herd user add`) and QEMU nodes that netboot the default image with a
// virtual SSD each. The checks are what a lab user or admin would look at,
// run over SSH as an LDAP user (package testlab holds them, shared with
// `herd image test`).
package qemutests

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/herdlab/herd/testlab"
)

const (
	alicePassword = "Wonder-Land-2026"
	// defaultRecipe is the image the lab boots (relative to this package).
	defaultRecipe = "../recipes/ubuntu-noble-gpu.yaml"
)

// TestLab boots two nodes together — gpu01 with SeaBIOS and a TPM, gpu02
// with OVMF — against one server and NAS, runs every check on gpu01 and the
// extras (labExtras) on both, rolls two new generations out across the two
// (rollout_test.go: a failed canary, then N+1 as a delta), runs the basic
// checks on gpu02, then on gpu01 (rebooted as the canary) what must survive
// a reboot, and last flips a byte of its cached image.
func TestLab(t *testing.T) {
	herd := testlab.RequireLab(t)
	ctx := context.Background()

	img := testlab.RecipeImage(t, herd, "HERD_E2E_IMAGE", defaultRecipe, testlab.WriteLabSite)
	dir := testlab.TempLabDir(t)
	cfg := testlab.LabConfig{Dir: dir, HerdBin: herd, ImageDir: img,
		// gpu01 enrolls through `herd node approve` once its console shows
		// its key; gpu02 through the lab's enrollment window (identity_test.go).
		Approve: []string{"gpu01"},
		// gpu01 has a TPM 2.0 (swtpm): its key is made in it and its SSD
		// holds no private key (check node-key-enrolled).
		TPM:       []string{"gpu01"},
		Nodes:     slices.Clone(testlab.DefaultLabNodes),
		ServeArgs: []string{"--rollout-check-timeout", rolloutCheckTimeout}}
	for _, f := range labConfigure {
		f(&cfg)
	}
	lab, err := testlab.StartLab(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var booted []*testlab.Booted
	var mu sync.Mutex
	t.Cleanup(func() {
		if t.Failed() {
			mu.Lock()
			for _, b := range booted {
				t.Logf("--- serial console of %s (%s) ---\n%s", b.Node.Name, b.VM.SerialPath, b.VM.Console.Tail(60))
			}
			mu.Unlock()
			t.Logf("--- server log (%s) ---\n%s", lab.ServerLog, testlab.TailLines([]byte(lab.ServerLogText()), 60))
			t.Logf("NAS logs: %s (kept in %s)", lab.Logs(), dir)
		}
		mu.Lock()
		for _, b := range booted {
			b.VM.Stop()
		}
		mu.Unlock()
		lab.Close()
	})
	uid, gid, err := lab.AddUser(ctx, "alice", alicePassword)
	if err != nil {
		t.Fatal(err)
	}
	// The rollouts' generations build while the nodes boot.
	future := buildFutureImages(herd)
	t.Cleanup(future.wg.Wait)

	// The nodes start at the same moment: a small boot storm, and the two
	// firmware paths (SeaBIOS + iPXE ROM, OVMF PXE + snponly.efi).
	nodes := []struct {
		name string
		uefi bool
	}{{"gpu01", false}, {"gpu02", true}}
	results := make([]*testlab.Booted, len(nodes))
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := testlab.BootNode(ctx, lab, n.name, n.uefi, "alice", alicePassword, uid, gid)
			if b != nil {
				mu.Lock()
				booted = append(booted, b)
				mu.Unlock()
			}
			results[i], errs[i] = b, err
		}()
	}
	wg.Wait()
	t.Run("seabios-and-ovmf-both-boot", func(t *testing.T) {
		for i, n := range nodes {
			if errs[i] != nil {
				t.Errorf("%s (uefi=%v): %v", n.name, n.uefi, errs[i])
			}
		}
	})
	if errs[0] != nil {
		t.Fatalf("gpu01 did not boot; the remaining checks need it")
	}
	gpu01 := results[0]

	for _, c := range testlab.NodeChecks() {
		t.Run(c.Name, func(t *testing.T) {
			if err := c.Run(ctx, gpu01); err != nil {
				t.Fatal(err)
			}
		})
	}
	byName := map[string]*testlab.Booted{}
	for i, n := range nodes {
		if errs[i] == nil {
			byName[n.name] = results[i]
		}
	}
	for _, x := range labExtras {
		t.Run(x.name, func(t *testing.T) { x.run(t, ctx, lab, byName) })
	}
	t.Run("rollout", func(t *testing.T) { rolloutChecks(t, ctx, lab, byName, future) })
	if errs[1] == nil {
		t.Run("second-node-uefi", func(t *testing.T) {
			for _, c := range testlab.NodeChecks() {
				switch c.Name {
				case "address-and-hostname", "root-is-squashfs-overlay", "ldap-user-resolves", "nothing-failed", "node-list-up":
					if err := c.Run(ctx, results[1]); err != nil {
						t.Errorf("%s: %v", c.Name, err)
					}
				}
			}
		})
		// Free the CPU for the reboot.
		results[1].VM.Stop()
	}

	// gpu01 rebooted onto N+1 as the rollout's canary: what must survive a
	// reboot is checked on it now. The reboot from the SSD cache that
	// downloads nothing is gpu02's under hostile traffic (identity_test.go).
	if rolledOut == nil {
		t.Fatal("the rollout did not reboot gpu01 onto N+1 (see rollout); the after-reboot checks need it")
	}
	t.Run("node-whole-after-reboot", func(t *testing.T) {
		// Same checks that touch the SSD and the NAS.
		for _, c := range testlab.NodeChecks() {
			switch c.Name {
			case "root-is-squashfs-overlay", "cachefilesd-on-ssd", "fscache-hits", "nothing-failed", "node-list-up":
				if err := c.Run(ctx, gpu01); err != nil {
					t.Errorf("after reboot, %s: %v", c.Name, err)
				}
			}
		}
	})
	for _, x := range labAfterReboot {
		t.Run(x.name, func(t *testing.T) { x.run(t, ctx, lab, map[string]*testlab.Booted{"gpu01": gpu01}) })
	}
	// Last: it leaves gpu01's cached image corrupt and removed.
	t.Run("verity-flipped-byte", func(t *testing.T) { verityChecks(t, ctx, lab, map[string]*testlab.Booted{"gpu01": gpu01}) })
}

// labExtra is a group of checks another file of this suite runs on TestLab's
// booted lab (appended to labExtras in its init), so a feature adds its
// end-to-end checks without booting a lab of its own. It runs after the
// standard checks, while every node is up, and before the rollouts.
type labExtra struct {
	name string
	run  func(t *testing.T, ctx context.Context, lab *testlab.Lab, nodes map[string]*testlab.Booted)
}

// labExtras are run by TestLab in the order they were registered.
var labExtras []labExtra

// labConfigure adjust TestLab's LabConfig before the lab starts (registered
// from init() beside a labExtra that needs a site setting at boot, such as
// a node's expect_gpus); they must not change what the image is built from.
var labConfigure []func(*testlab.LabConfig)

// labAfterReboot are run by TestLab after the rollouts rebooted gpu01 (only
// gpu01 is up then), in the order they were registered: what must survive
// a reboot.
var labAfterReboot []labExtra
