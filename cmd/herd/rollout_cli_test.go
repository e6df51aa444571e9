package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/fleet/nodestatus"
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/rollout"
)

// herd rollout validates its flags against herd.yaml and the store, hands
// the request to the engine (run here in-process, as herd serve runs it),
// and rollout status / node list show the progress.
func TestRolloutCommands(t *testing.T) {
	c := newCLI(t, "overlays: []\ndhcp: {mode: off}\nnodes:\n  - {name: gpu01, mac: '52:54:00:00:00:01'}\n  - {name: gpu02, mac: '52:54:00:00:00:02'}\n")
	c.refused([]string{"rollout"}, "no current image")
	st, err := store.Open(c.state)
	if err != nil {
		t.Fatal(err)
	}
	a := publishImage(t, st, "lab", "570", nil)
	b := publishImage(t, st, "lab", "580", nil)
	c.ok("image", "promote", a)
	c.ok("image", "promote", b)
	c.refused([]string{"rollout", "--canary", "gpu09"}, `canary "gpu09" is not a node`)
	c.refused([]string{"rollout", "--deadline", "soon"}, `deadline "soon" is neither`)
	c.refused([]string{"rollout", "--batch", "0"}, "--batch 0 must be at least 1")
	if out := c.ok("rollout", "status"); !strings.Contains(out, "no rollout") {
		t.Fatalf("status: %q", out)
	}
	out := c.ok("rollout", "--canary", "gpu02", "--when-idle", "--deadline", "2h")
	if !strings.Contains(out, "rollout of "+b[:12]+" over 2 nodes requested") {
		t.Fatalf("rollout: %q", out)
	}
	now := time.Now()
	e, err := rollout.Open(rollout.Options{StateDir: c.state, Images: st, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	e.Reply("gpu01", &nodestatus.Report{Node: "gpu01", Image: a, UptimeSeconds: 3600})
	// Both nodes have reported: the canary is chosen and told to reboot.
	if rep := e.Reply("gpu02", &nodestatus.Report{Node: "gpu02", Image: a, UptimeSeconds: 3600}); !rep.Reboot {
		t.Fatalf("canary reply %+v", rep)
	}
	c.refused([]string{"rollout"}, "is still canary")
	out = c.ok("rollout", "status")
	for _, want := range []string{"image " + b[:12] + ", canary, canary gpu02, batch 1, when idle, deadline", "gpu02  rebooting", "gpu01  pending"} {
		if !strings.Contains(out, want) {
			t.Fatalf("status lacks %q:\n%s", want, out)
		}
	}
	out = c.ok("node", "list")
	if !strings.Contains(out, "ROLLOUT") || !strings.Contains(out, "rebooting (canary)") {
		t.Fatalf("node list:\n%s", out)
	}
	c.ok("rollout", "abort")
	if _, err := os.Stat(filepath.Join(c.state, rollout.RequestFile)); err != nil {
		t.Fatal(err)
	}
	e.Tick(context.Background())
	if out := c.ok("rollout", "status"); !strings.Contains(out, "aborted") || !strings.Contains(out, "gpu01  skipped") {
		t.Fatalf("after abort:\n%s", out)
	}
}
