package fleet

import (
	"testing"
	"time"

	"github.com/herdlab/herd/fleet/nodestatus"
	"github.com/herdlab/herd/image/diff"
	"github.com/herdlab/herd/pxe/inventory"
	"github.com/herdlab/herd/site"
)

func TestNodesStatesAndDiscovered(t *testing.T) {
	dir := t.TempDir()
	inv, err := inventory.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &site.Config{Nodes: []site.Node{{Name: "a", MAC: "52:54:00:00:00:01"}, {Name: "b", MAC: "52:54:00:00:00:02"}, {Name: "c", MAC: "52:54:00:00:00:03"}}}
	now := time.Now()
	inv.RecordDHCP("52:54:00:00:00:01", "a", "10.0.0.1", now)
	inv.RecordEvent(inventory.Event{MAC: "52:54:00:00:00:02", Stage: "download", Percent: 40}, "10.0.0.2", now)
	inv.RecordEvent(inventory.Event{MAC: "52:54:00:00:00:09", Node: "stray", Stage: "error"}, "10.0.0.9", now)
	ns := Nodes(cfg, inv)
	want := []struct{ name, state string }{{"a", StateSeen}, {"b", StateBooting}, {"c", StateUnseen}, {"stray", StateError}}
	if len(ns) != len(want) {
		t.Fatalf("%d nodes, want %d: %+v", len(ns), len(want), ns)
	}
	for i, w := range want {
		if ns[i].Name != w.name || ns[i].State != w.state {
			t.Errorf("node %d: %s %s, want %s %s", i, ns[i].Name, ns[i].State, w.name, w.state)
		}
	}
	if ns[3].Configured {
		t.Error("a MAC not in herd.yaml shows as configured")
	}
	if n, ok := FindNode(ns, "52-54-00-00-00-02"); !ok || n.Name != "b" {
		t.Errorf("FindNode by dashed MAC: %+v %v", n, ok)
	}
	r, _ := inv.Get("52:54:00:00:00:02")
	if n := FromRecord(cfg, r); n.Name != "b" || !n.Configured || n.State != StateBooting {
		t.Errorf("FromRecord: %+v", n)
	}
}

func TestRedactGPUUsers(t *testing.T) {
	mk := func() []Node {
		return []Node{{GPUs: []GPU{{Processes: []GPUProcess{{PID: 1, User: "alice"}}}}}}
	}
	ns := mk()
	RedactGPUUsers(ns, false)
	if u := ns[0].GPUs[0].Processes[0].User; u != "" {
		t.Errorf("user name %q shown although the site does not allow it", u)
	}
	ns = mk()
	RedactGPUUsers(ns, true)
	if u := ns[0].GPUs[0].Processes[0].User; u != "alice" {
		t.Errorf("user name %q, want alice where the site allows it", u)
	}
}

func TestDiffSummaryString(t *testing.T) {
	d := Summarize(&diff.Result{Kernel: &diff.Change{Old: "k1", New: "k2"}, Added: []diff.Package{{Name: "x"}}, Changed: []diff.Change{{Name: "y"}, {Name: "z"}}})
	if got, want := d.String(), "kernel k1 → k2, +1 -0 ~2 packages"; got != want {
		t.Errorf("%q, want %q", got, want)
	}
	if got := Summarize(&diff.Result{}).String(); got != "same packages, kernel, driver and overlays" {
		t.Errorf("empty diff: %q", got)
	}
}

func TestNodeStatus(t *testing.T) {
	inv, err := inventory.Load(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	mac := "52:54:00:00:00:01"
	cfg := &site.Config{Nodes: []site.Node{{Name: "a", MAC: mac}}}
	now := time.Now().UTC()
	rep := &nodestatus.Report{Node: "a", Image: "img",
		Sessions:     []nodestatus.Session{{User: "alice", TTY: "pts/0", From: "10.0.0.5"}},
		GPUs:         []nodestatus.GPU{{Index: 0, UUID: "GPU-1", Model: "Tesla T4", MemoryUsedMiB: 1032, MemoryTotalMiB: 15360, ECCUncorrected: 0, RetiredPages: 0, Persistence: true}},
		GPUProcesses: []nodestatus.GPUProcess{{PID: 5762, User: "alice", Name: "python", GPUUUID: "GPU-1", MemoryMiB: 1005}},
		Health:       nodestatus.Health{State: nodestatus.Degraded, Reason: "1/2 GPUs", ExpectedGPUs: 2, SeenGPUs: 1}}
	inv.RecordEvent(inventory.Event{MAC: mac, Node: "a", Stage: "up", Percent: 100}, "10.0.0.1", now)
	if err := inv.RecordStatus(mac, rep, "10.0.0.1", now); err != nil {
		t.Fatal(err)
	}
	ns := Nodes(cfg, inv)
	n := ns[0]
	if n.Status == nil || n.Seen == nil || n.Seen.Status != nil || n.Seen.StatusTime.IsZero() {
		t.Fatalf("status not moved from seen to the node: %+v", n)
	}
	if n.Health != "degraded: 1/2 GPUs" || !n.Busy || len(n.GPUs) != 1 || n.GPUs[0].Health != "ok" ||
		len(n.GPUs[0].Processes) != 1 || n.GPUs[0].Processes[0].User != "alice" {
		t.Errorf("node %+v gpus %+v", n, n.GPUs)
	}
	RedactGPUUsers(ns, false)
	if ns[0].Status.Sessions[0].User != "" || ns[0].Status.GPUProcesses[0].User != "" || ns[0].GPUs[0].Processes[0].User != "" {
		t.Errorf("user names left: %+v", ns[0].Status)
	}
	// The inventory's copy is untouched by the redaction.
	if r, _ := inv.Get(mac); r.Status.Sessions[0].User != "alice" {
		t.Error("redaction changed the stored report")
	}
	// A node booting again: its report is of the previous boot, no health.
	inv.RecordEvent(inventory.Event{MAC: mac, Node: "a", Stage: "download", Percent: 10}, "10.0.0.1", now)
	if n := Nodes(cfg, inv)[0]; n.Health != "" || n.Status == nil {
		t.Errorf("booting node health %q", n.Health)
	}
	if g := GPUHealth(nodestatus.GPU{ECCUncorrected: 2, RetiredPages: -1}); g != "2 uncorrected ECC errors, persistence mode off" {
		t.Errorf("GPUHealth %q", g)
	}
}
