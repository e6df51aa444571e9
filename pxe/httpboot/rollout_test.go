package httpboot

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/herdlab/herd/fleet/nodestatus"
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/internal/nodeauth"
	"github.com/herdlab/herd/rollout"
)

// TestRolloutOverSignedReports runs the rollout engine behind the real
// status endpoint, as herd serve wires it: nodes learn that they are to
// reboot from the answers to their signed reports, and the attacker (any LAN
// host, DESIGN.md "Trust") who forges the canary's "up on the new image,
// checks passed" report, unsigned or signed with a key of its own, does not
// move the rollout on to the next node.
func TestRolloutOverSignedReports(t *testing.T) {
	f := newFixture(t, "ignore")
	ctx := context.Background()
	eng, err := rollout.Open(rollout.Options{StateDir: f.state, Images: store.ReadOnly(f.state)})
	if err != nil {
		t.Fatal(err)
	}
	f.srv.opt.StatusReply = eng.Reply
	gpu1, gpu3 := f.enrolled(t, "gpu1"), f.enrolled(t, "gpu3")
	const newID = "abcdefabcdefabcd"
	if err := rollout.Submit(f.state, rollout.Request{Image: newID, Previous: f.id, Nodes: []string{"gpu1", "gpu3"},
		Canary: "gpu1", Batch: 1, Requested: time.Now()}); err != nil {
		t.Fatal(err)
	}
	report := func(c *nodeauth.Client, image string, uptime float64) (nodestatus.Reply, error) {
		t.Helper()
		body, _ := json.Marshal(nodestatus.Report{Node: c.Node, Image: image, Time: time.Now().UTC(), UptimeSeconds: uptime,
			Health: nodestatus.Health{State: nodestatus.Ready, ExpectedGPUs: -1}, Checks: []nodestatus.Check{{Name: "system-running", OK: true}}})
		out, err := c.Status(ctx, body)
		var r nodestatus.Reply
		if err == nil {
			err = json.Unmarshal(out, &r)
		}
		return r, err
	}
	must := func(r nodestatus.Reply, err error) nodestatus.Reply {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := must(report(gpu3, f.id, 3600)); r.Reboot {
		t.Fatal("gpu3 told to reboot before the canary")
	}
	if r := must(report(gpu1, f.id, 3600)); !r.Reboot {
		t.Fatalf("the canary was not told to reboot: %+v (%+v)", r, eng.State())
	}
	// Forgeries of the canary's new boot.
	if _, err := report(f.nodeClient(t, "gpu1"), newID, 1); !errors.Is(err, nodeauth.ErrRefused) {
		t.Fatalf("a report signed by a foreign key for gpu1: %v", err)
	}
	if _, err := report(&nodeauth.Client{Base: f.url, Node: "gpu1", Key: gpu3.Key}, newID, 1); !errors.Is(err, nodeauth.ErrRefused) {
		t.Fatalf("gpu3's key speaking for gpu1: %v", err)
	}
	if n := eng.State().Node("gpu1"); n.State != rollout.NodeRebooting {
		t.Fatalf("forged reports moved the canary to %+v", n)
	}
	if r := must(report(gpu3, f.id, 3700)); r.Reboot {
		t.Fatal("gpu3 told to reboot while the canary is not back")
	}
	// The canary itself, from its new boot.
	time.Sleep(10 * time.Millisecond)
	if r := must(report(gpu1, newID, 0.001)); r.Reboot {
		t.Fatal("the canary was told to reboot again after it came back")
	}
	if st := eng.State(); st.Phase != rollout.PhaseRolling || st.Node("gpu1").State != rollout.NodeDone {
		t.Fatalf("after the canary came back: %+v", st)
	}
	if r := must(report(gpu3, f.id, 3800)); !r.Reboot {
		t.Fatalf("gpu3 not told to reboot after the canary passed: %+v", eng.State())
	}
}
