package qemutests

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/fleet"
	"github.com/herdlab/herd/testlab"
)

// Node health and busy reports on TestLab's booted lab (issue 19): the
// lab's site expects one GPU of gpu01 and none of gpu02; neither VM has a
// GPU. Each node's herd-status.service posts signed status reports; the
// server must show gpu01 `degraded: 0/1 GPUs` and gpu02 `ready` in `herd
// node list`, and a user holding an SSH session on gpu01 in its report.
func init() {
	labConfigure = append(labConfigure, func(c *testlab.LabConfig) {
		if len(c.Nodes) == 0 {
			c.Nodes = slices.Clone(testlab.DefaultLabNodes)
		}
		for i := range c.Nodes {
			switch c.Nodes[i].Name {
			case "gpu01":
				c.Nodes[i].NodeYAML += "    expect_gpus: {count: 1}\n"
			case "gpu02":
				c.Nodes[i].NodeYAML += "    expect_gpus: {count: 0}\n"
			}
		}
	})
	labExtras = append(labExtras, labExtra{name: "node-health-and-sessions", run: healthChecks})
}

// reportWait bounds the wait for a report showing something: the agent
// reports every 60 s, and under TCG a report takes a while to assemble.
const reportWait = 4 * time.Minute

func nodeShow(ctx context.Context, lab *testlab.Lab, name string) (fleet.Node, error) {
	var n fleet.Node
	out, err := lab.Herd(ctx, "", "node", "show", "--json", name)
	if err != nil {
		return n, fmt.Errorf("herd node show %s: %w: %s", name, err, out)
	}
	return n, json.Unmarshal(out, &n)
}

// waitNode polls `herd node show --json` until ok(node) or the deadline.
func waitNode(ctx context.Context, lab *testlab.Lab, name string, ok func(fleet.Node) bool) (fleet.Node, error) {
	deadline := time.Now().Add(reportWait)
	for {
		n, err := nodeShow(ctx, lab, name)
		if err == nil && ok(n) {
			return n, nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("not within %s", reportWait)
			}
			return n, err
		}
		time.Sleep(3 * time.Second)
	}
}

func healthChecks(t *testing.T, ctx context.Context, lab *testlab.Lab, nodes map[string]*testlab.Booted) {
	want := map[string]string{"gpu01": "degraded: 0/1 GPUs", "gpu02": "ready"}
	for name, health := range want {
		if _, ok := nodes[name]; !ok {
			t.Errorf("%s did not boot", name)
			continue
		}
		n, err := waitNode(ctx, lab, name, func(n fleet.Node) bool { return n.Status != nil && n.Health != "" })
		if err != nil {
			t.Errorf("%s: no status report: %v (%+v)", name, err, n.Status)
			continue
		}
		if n.Health != health {
			t.Errorf("%s health %q, want %q (report %+v)", name, n.Health, health, n.Status.Health)
		}
		if n.Status.Image != lab.ImageID {
			t.Errorf("%s reports image %q, want %q", name, n.Status.Image, lab.ImageID)
		}
		for _, c := range n.Status.Checks {
			t.Logf("%s check %s ok=%v %s", name, c.Name, c.OK, c.Detail)
		}
	}
	// The list an admin reads.
	out, err := lab.Herd(ctx, "", "node", "list")
	if err != nil {
		t.Fatalf("herd node list: %v\n%s", err, out)
	}
	t.Logf("herd node list:\n%s", out)
	for name, health := range want {
		line := ""
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, name+" ") {
				line = l
			}
		}
		if !strings.Contains(line, health) {
			t.Errorf("herd node list row of %s %q lacks %q", name, line, health)
		}
	}

	// A logged-in user: alice holds an SSH session on gpu01 while the agent
	// reports; the report (the CLI shows names) lists her and the node busy.
	b, ok := nodes["gpu01"]
	if !ok {
		return
	}
	if out, err := b.User.Run(ctx, "command -v nvidia-smi && systemctl is-enabled herd-status.service"); err != nil {
		t.Errorf("nvidia-smi or herd-status.service missing on the node: %v %s", err, out)
	}
	hold, stop := context.WithCancel(ctx)
	defer stop()
	go b.User.Run(hold, "sleep 600")
	n, err := waitNode(ctx, lab, "gpu01", func(n fleet.Node) bool {
		if n.Status == nil {
			return false
		}
		for _, s := range n.Status.Sessions {
			if s.User == b.User.User {
				return true
			}
		}
		return false
	})
	if err != nil {
		t.Fatalf("gpu01's reports never showed %s logged in: %v (sessions %+v)", b.User.User, err, n.Status)
	}
	if !n.Busy || n.Status.LastBusy.IsZero() {
		t.Errorf("gpu01 with %s logged in: busy %v, last busy %v", b.User.User, n.Busy, n.Status.LastBusy)
	}
	if out, err := lab.Herd(ctx, "", "node", "list"); err != nil || !strings.Contains(string(out), "yes (") {
		t.Errorf("herd node list does not show gpu01 busy: %v\n%s", err, out)
	}
}
