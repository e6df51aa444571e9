package httpboot

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/fleet/nodestatus"
	"github.com/herdlab/herd/internal/nodeauth"
	"github.com/herdlab/herd/pxe/inventory"
)

// TestStatusReports: an enrolled node's signed report is recorded and
// answered with StatusReply's Reply; the attacker (any LAN host, DESIGN.md
// "Trust") who sends it unsigned, signed by another key, signed by another
// node's key, replayed, oversized or naming another node gets nothing
// recorded.
func TestStatusReports(t *testing.T) {
	f := newFixture(t, "ignore")
	ctx := context.Background()
	var asked []string
	f.srv.opt.StatusReply = func(node string, r *nodestatus.Report) nodestatus.Reply {
		asked = append(asked, node+" "+r.Health.State)
		return nodestatus.Reply{WallID: "w1", Wall: "rebooting soon", Interval: 30}
	}
	gpu1 := f.enrolled(t, "gpu1")
	gpu2 := f.enrolled(t, "gpu2")
	rep := nodestatus.Report{Node: "gpu1", Image: f.id, Time: time.Now().UTC(), UptimeSeconds: 42,
		Sessions: []nodestatus.Session{{User: "alice", TTY: "pts/0", From: "10.0.0.9", Since: time.Now().UTC()}},
		Health:   nodestatus.Health{State: nodestatus.Degraded, Reason: "0/1 GPUs", ExpectedGPUs: 1, SeenGPUs: 0},
		Checks:   []nodestatus.Check{{Name: "system-running", OK: true}}}
	body, _ := json.Marshal(rep)
	recorded := func() *nodestatus.Report {
		r, _ := f.inv.Get("52:54:00:aa:bb:01")
		return r.Status
	}
	post := func(path, hdr string, b []byte) (int, []byte) {
		req, _ := http.NewRequest(http.MethodPost, f.url+path, bytes.NewReader(b))
		if hdr != "" {
			req.Header.Set(nodeauth.Header, hdr)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, out
	}
	sign := func(c *nodeauth.Client, node string, b []byte) string {
		n, err := c.Nonce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		a, err := nodeauth.Sign(c.Key, node, nodeauth.PurposeStatus, n, b, nil)
		if err != nil {
			t.Fatal(err)
		}
		return a.Encode()
	}

	t.Run("unsigned", func(t *testing.T) {
		if code, _ := post("/nodes/gpu1/status", "", body); code != http.StatusForbidden {
			t.Errorf("unsigned report answered %d, want 403", code)
		}
	})
	t.Run("foreign-key", func(t *testing.T) {
		if _, err := f.nodeClient(t, "gpu1").Status(ctx, body); !errors.Is(err, nodeauth.ErrRefused) {
			t.Errorf("a report signed by a key gpu1 never enrolled: %v", err)
		}
	})
	t.Run("other-nodes-key", func(t *testing.T) {
		// gpu2's enrolled key, signing for gpu1's route.
		impostor := &nodeauth.Client{Base: f.url, Node: "gpu1", Key: gpu2.Key}
		if _, err := impostor.Status(ctx, body); !errors.Is(err, nodeauth.ErrRefused) {
			t.Errorf("gpu2's key spoke for gpu1: %v", err)
		}
		// gpu2 signing properly for itself, but the report names gpu1.
		if code, _ := post("/nodes/gpu2/status", sign(gpu2, "gpu2", body), body); code != http.StatusForbidden {
			t.Errorf("gpu2's report naming gpu1 answered %d, want 403", code)
		}
	})
	t.Run("wrong-purpose", func(t *testing.T) {
		n, _ := gpu1.Nonce(ctx)
		a, _ := nodeauth.Sign(gpu1.Key, "gpu1", nodeauth.PurposeEvent, n, body, nil)
		if code, _ := post("/nodes/gpu1/status", a.Encode(), body); code != http.StatusForbidden {
			t.Errorf("an event signature took as a status report: %d", code)
		}
	})
	t.Run("oversized", func(t *testing.T) {
		big := rep
		big.Checks = nil
		for i := 0; i < 4000; i++ {
			big.Checks = append(big.Checks, nodestatus.Check{Name: strings.Repeat("x", 100)})
		}
		b, _ := json.Marshal(big)
		if code, _ := post("/nodes/gpu1/status", sign(gpu1, "gpu1", b), b); code != http.StatusRequestEntityTooLarge {
			t.Errorf("a %d-byte report answered %d, want 413", len(b), code)
		}
	})
	t.Run("over-bounds", func(t *testing.T) {
		bad := rep
		bad.Checks = make([]nodestatus.Check, nodestatus.MaxChecks+1)
		b, _ := json.Marshal(bad)
		if _, err := gpu1.Status(ctx, b); err == nil {
			t.Error("a report over the bounds was accepted")
		}
		bad = rep
		bad.Health.State = "great"
		b, _ = json.Marshal(bad)
		if _, err := gpu1.Status(ctx, b); err == nil {
			t.Error("a report with a bogus health state was accepted")
		}
	})
	if r := recorded(); r != nil || len(asked) != 0 {
		t.Fatalf("refused reports were recorded (%+v) or answered (%v)", r, asked)
	}

	// The real node.
	hdr := sign(gpu1, "gpu1", body)
	code, out := post("/nodes/gpu1/status", hdr, body)
	if code != http.StatusOK {
		t.Fatalf("signed report: %d %s", code, out)
	}
	var reply nodestatus.Reply
	if err := json.Unmarshal(out, &reply); err != nil || reply.WallID != "w1" || reply.Interval != 30 {
		t.Errorf("reply %s (%v)", out, err)
	}
	if r := recorded(); r == nil || r.Health.Reason != "0/1 GPUs" || len(r.Sessions) != 1 || r.Sessions[0].User != "alice" {
		t.Fatalf("recorded %+v", r)
	}
	t.Run("replayed", func(t *testing.T) {
		changed := rep
		changed.Health = nodestatus.Health{State: nodestatus.Ready, ExpectedGPUs: 1, SeenGPUs: 1}
		// The captured request again, and its header with another body.
		if code, _ := post("/nodes/gpu1/status", hdr, body); code != http.StatusForbidden {
			t.Errorf("replayed report answered %d, want 403", code)
		}
		b, _ := json.Marshal(changed)
		if code, _ := post("/nodes/gpu1/status", hdr, b); code != http.StatusForbidden {
			t.Errorf("replayed header with a new body answered %d, want 403", code)
		}
		if r := recorded(); r.Health.State != nodestatus.Degraded {
			t.Errorf("a replay changed the record: %+v", r.Health)
		}
	})
	if len(asked) != 1 || asked[0] != "gpu1 degraded" {
		t.Errorf("StatusReply asked %v, want once for gpu1", asked)
	}
	// nil StatusReply: an empty Reply.
	f.srv.opt.StatusReply = nil
	out, err := gpu1.Status(ctx, body)
	if err != nil || strings.TrimSpace(string(out)) != "{}" {
		t.Errorf("without StatusReply: %s %v", out, err)
	}
	// Persisted (coalesced writes: Flush, then read what is on disk).
	f.inv.Flush()
	inv, _ := inventory.Load(f.state)
	if r, ok := inv.Get("52:54:00:aa:bb:01"); !ok || r.Status == nil || r.Status.Health.Reason != "0/1 GPUs" || r.StatusTime.IsZero() {
		t.Errorf("on disk: %+v", r)
	}
	if r, ok := inv.Get("52:54:00:aa:bb:02"); ok && r.Status != nil {
		t.Errorf("gpu2 got a status from gpu1's or a forged report: %+v", r.Status)
	}
	_, metrics := get(t, f.url+"/metrics")
	if !strings.Contains(metrics, `herd_status_reports_total{health="degraded"} 2`) {
		t.Errorf("metrics lack the recorded reports:\n%s", metrics)
	}
}

// TestStatusReportsCarryLinks: through the signed status endpoint, a
// report's links replace the "up" event's (a replugged storage NIC clears
// "degraded"), a report without them (an older agent) leaves them, and
// the attacker — a node, or whoever holds its key — sending an oversized
// or garbage link list gets a 400 and nothing recorded.
func TestStatusReportsCarryLinks(t *testing.T) {
	f := newFixture(t, "ignore")
	ctx := context.Background()
	gpu1 := f.enrolled(t, "gpu1")
	const mac = "52:54:00:aa:bb:01"
	boot := inventory.Link{Name: "ens3", MAC: mac, State: "up", Carrier: true, MTU: 1500, Addresses: []string{"10.0.0.5/24"}, Boot: true}
	st := inventory.Link{Name: "ens4", MAC: "52:54:00:78:00:01", State: "down", MTU: 1500, Label: "st0", Network: "storage"}
	down := "degraded: storage network down (st0 52:54:00:78:00:01: link down)"
	if err := f.inv.RecordEvent(inventory.Event{MAC: mac, Node: "gpu1", Stage: "up", Interfaces: []inventory.Link{boot, st}, Degraded: []string{down}}, "10.0.0.5", time.Now()); err != nil {
		t.Fatal(err)
	}
	send := func(n *nodestatus.Network) error {
		b, _ := json.Marshal(nodestatus.Report{Node: "gpu1", Image: f.id, Time: time.Now().UTC(), Health: nodestatus.Health{State: nodestatus.Ready}, Network: n})
		_, err := gpu1.Status(ctx, b)
		return err
	}
	degraded := func() []string {
		r, _ := f.inv.Get(mac)
		return r.Degraded
	}
	if err := send(nil); err != nil {
		t.Fatal(err)
	}
	if d := degraded(); len(d) != 1 || d[0] != down {
		t.Fatalf("a report without links changed degraded to %q", d)
	}
	garbage := make([]nodestatus.Link, nodestatus.MaxLinks+1)
	for i := range garbage {
		garbage[i] = nodestatus.Link{Name: strings.Repeat("v", 60), State: "up", Carrier: true}
	}
	for name, n := range map[string]*nodestatus.Network{
		"65 links":         {Interfaces: garbage},
		"forged line":      {Interfaces: []nodestatus.Link{boot}, Degraded: []string{"x\ngpu2 up ready"}},
		"control in label": {Interfaces: []nodestatus.Link{{Name: "ens4", Label: "st0\r", Network: "storage"}}},
	} {
		err := send(n)
		if err == nil || !strings.Contains(err.Error(), "400") {
			t.Errorf("%s: %v, want a 400 refusal", name, err)
		}
	}
	if r, _ := f.inv.Get(mac); len(r.Interfaces) != 2 || len(r.Degraded) != 1 {
		t.Fatalf("refused reports changed the record: %+v", r)
	}
	st.State, st.Carrier, st.Addresses = "up", true, []string{"10.88.0.5/24"}
	if err := send(&nodestatus.Network{Interfaces: []nodestatus.Link{boot, st}, Degraded: []string{}}); err != nil {
		t.Fatal(err)
	}
	if r, _ := f.inv.Get(mac); len(r.Degraded) != 0 || !r.Interfaces[1].Carrier {
		t.Fatalf("after the storage NIC came back: %+v", r)
	}
}
