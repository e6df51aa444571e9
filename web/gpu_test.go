package web_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/herdlab/herd/fleet"
	"github.com/herdlab/herd/fleet/nodestatus"
	"github.com/herdlab/herd/image/nodeboot"
	"github.com/herdlab/herd/internal/browser"
	"github.com/herdlab/herd/internal/nodeauth"
)

// gpuNode is a node's status agent (image/nodeboot.StatusAgent, the code
// herd-boot status runs) posting through the real signed report path to a
// running herd serve. What cannot run here is stood in for, and only that:
// nvidia-smi answers with output recorded on a real GPU
// (internal/nvsmi/testdata, sources in its README) and loginctl with the
// sessions the test wants (no GPU and no logind on a build machine).
type gpuNode struct {
	agent    *nodeboot.StatusAgent
	root     string
	smi      []byte
	sessions []string // user names logged in
}

func newGPUNode(t *testing.T, l *lab, name, fixture string, expect *nodestatus.ExpectGPUs, users ...string) *gpuNode {
	t.Helper()
	smi, err := os.ReadFile(filepath.Join("..", "internal", "nvsmi", "testdata", fixture))
	if err != nil {
		t.Fatal(err)
	}
	g := &gpuNode{root: t.TempDir(), smi: smi, sessions: users}
	os.MkdirAll(filepath.Join(g.root, "proc"), 0o755)
	os.WriteFile(filepath.Join(g.root, "proc/uptime"), []byte("4242.00 100.00\n"), 0o644)
	// The recorded compute process's /proc entry, owned by whoever runs
	// the test; getent (stood in for) names that uid alice.
	os.MkdirAll(filepath.Join(g.root, "proc/5762"), 0o755)
	g.expect(t, expect)
	g.agent = &nodeboot.StatusAgent{Node: name, Image: l.images[1], Root: g.root, SysRoot: filepath.Join(g.root, "sys"),
		Kmsg: filepath.Join(g.root, "kmsg"), StateFile: filepath.Join(g.root, "run/state.json"), Client: l.nodes[name], Exec: g.exec}
	return g
}

// expect writes the node's etc/herd/node.json as its runtime overlay would.
func (g *gpuNode) expect(t *testing.T, e *nodestatus.ExpectGPUs) {
	b, _ := json.Marshal(nodestatus.NodeConfig{ExpectGPUs: e})
	os.MkdirAll(filepath.Join(g.root, "etc/herd"), 0o755)
	if err := os.WriteFile(filepath.Join(g.root, nodestatus.NodeConfigPath), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func (g *gpuNode) exec(ctx context.Context, stdin, name string, args ...string) ([]byte, error) {
	cmd := name + " " + strings.Join(args, " ")
	switch {
	case cmd == "nvidia-smi -q -x":
		return g.smi, nil
	case cmd == "loginctl list-sessions --no-legend --no-pager":
		var b strings.Builder
		for i, u := range g.sessions {
			b.WriteString(strings.Join([]string{string(rune('1' + i)), "2001", u, "-", "pts/0"}, " ") + "\n")
		}
		return []byte(b.String()), nil
	case name == "loginctl" && len(args) > 1 && args[0] == "show-session":
		u := g.sessions[int(args[1][0]-'1')]
		return []byte("Name=" + u + "\nTTY=pts/0\nRemoteHost=10.77.0.1\nClass=user\nState=active\nTimestampMonotonic=1000000\n"), nil
	case name == "getent" && len(args) == 2 && args[0] == "passwd":
		return []byte("alice:*:2001:2000::/home/alice:/bin/bash\n"), nil
	case cmd == "systemctl is-system-running":
		return []byte("running\n"), nil
	}
	return nil, &exec.Error{Name: name, Err: exec.ErrNotFound}
}

func (g *gpuNode) report(t *testing.T) nodestatus.Reply {
	t.Helper()
	r, err := g.agent.ReportOnce(context.Background())
	if err != nil {
		t.Fatalf("%s's status report: %v", g.agent.Node, err)
	}
	return r
}

// TestGPURowsFromRealReports feeds nvidia-smi output recorded on real GPUs
// through the real node report path (signed POST to a running herd serve)
// and checks the API, the CLI, the metrics, the pages in headless Chromium
// (live update without a reload) and that no response holds a secret or,
// since the site does not allow it, a user name.
func TestGPURowsFromRealReports(t *testing.T) {
	l := startLab(t, "")
	for _, n := range []string{"gpu01", "gpu02"} {
		l.postEvent(t, n, "up", 100, "booted")
	}
	// gpu01: an RTX 3060 as expected (persistence on): ready, idle.
	g1 := newGPUNode(t, l, "gpu01", "rtx-3060-v12.xml", &nodestatus.ExpectGPUs{Count: 1, Model: "RTX 3060"})
	// gpu02: a Tesla T4 recorded with persistence off and a python compute
	// process; alice is logged in.
	g2 := newGPUNode(t, l, "gpu02", "tesla-t4.xml", &nodestatus.ExpectGPUs{Count: 1, Model: "T4"}, "alice")
	if r := g1.report(t); r != (nodestatus.Reply{}) {
		t.Errorf("reply without a rollout: %+v", r)
	}
	g2.report(t)

	var nodes []fleet.Node
	if err := json.Unmarshal(l.get(t, "/api/v1/nodes"), &nodes); err != nil || len(nodes) != 2 {
		t.Fatalf("/api/v1/nodes: %v %+v", err, nodes)
	}
	n1, n2 := nodes[0], nodes[1]
	if n1.Health != "ready" || n1.Busy || len(n1.GPUs) != 1 {
		t.Fatalf("gpu01 %+v", n1)
	}
	if g := n1.GPUs[0]; g.Model != "NVIDIA GeForce RTX 3060" || g.UUID != "GPU-d6889ff6-2523-9142-ca3c-1ca3f396a625" ||
		g.MemoryUsedMiB != 116 || g.MemoryTotalMiB != 12288 || g.TemperatureC != 42 || g.Health != "ok" || len(g.Processes) != 0 {
		t.Errorf("gpu01's GPU %+v", g)
	}
	if n2.Health != "degraded: persistence mode off on GPU 0" || !n2.Busy || len(n2.GPUs) != 1 {
		t.Fatalf("gpu02 %+v", n2)
	}
	if g := n2.GPUs[0]; g.Model != "Tesla T4" || g.MemoryUsedMiB != 1032 || len(g.Processes) != 1 ||
		g.Processes[0].PID != 5762 || g.Processes[0].Name != "python" || g.Processes[0].User != "" {
		t.Errorf("gpu02's GPU %+v", g)
	}
	if s := n2.Status; s == nil || len(s.Sessions) != 1 || s.Sessions[0].User != "" || s.Health.ExpectedGPUs != 1 || s.Health.SeenGPUs != 1 {
		t.Errorf("gpu02's report as served: %+v", s)
	}
	// The CLI (the admin, on the server) shows the same verdicts once
	// nodes.json has caught up (writes are coalesced).
	var out []byte
	var err error
	l.waitFor(t, "herd node list to show the reports", func() bool {
		out, err = exec.Command(l.herd, "--config", l.cfg, "--state", l.state, "node", "list").CombinedOutput()
		return err == nil && strings.Contains(string(out), "GPU processes")
	})
	if err != nil || !strings.Contains(string(out), "degraded: persistence mode off on GPU 0") || !strings.Contains(string(out), "ready") ||
		!strings.Contains(string(out), "yes (1 users, 1 GPU processes)") {
		t.Errorf("herd node list: %v\n%s", err, out)
	}
	var cli []fleet.Node
	if err := json.Unmarshal(l.herdJSON(t, "node", "list", "--json"), &cli); err != nil || len(cli) != 2 ||
		cli[1].Health != n2.Health || len(cli[1].GPUs) != 1 || cli[1].GPUs[0].UUID != n2.GPUs[0].UUID || cli[1].GPUs[0].Processes[0].User != "alice" {
		t.Errorf("herd node list --json: %v %+v", err, cli)
	}

	metrics := string(l.get(t, "/metrics"))
	for _, want := range []string{
		`herd_gpu_memory_total_bytes{gpu="0",model="NVIDIA GeForce RTX 3060",node="gpu01",uuid="GPU-d6889ff6-2523-9142-ca3c-1ca3f396a625"} 1.2884901888e+10`,
		`herd_gpu_memory_used_bytes{gpu="0",model="Tesla T4",node="gpu02",uuid="GPU-d37e67a5-91dd-3774-a5cb-99096249601a"} 1.082130432e+09`,
		`herd_gpu_power_watts{gpu="0",model="Tesla T4",node="gpu02",uuid="GPU-d37e67a5-91dd-3774-a5cb-99096249601a"} 26.78`,
		`herd_gpu_processes{gpu="0",model="Tesla T4",node="gpu02",uuid="GPU-d37e67a5-91dd-3774-a5cb-99096249601a"} 1`,
		`herd_gpu_healthy{gpu="0",model="Tesla T4",node="gpu02",uuid="GPU-d37e67a5-91dd-3774-a5cb-99096249601a"} 0`,
		`herd_node_health{health="ready",mac="` + macs["gpu01"] + `",node="gpu01"} 1`,
		`herd_node_health{health="degraded",mac="` + macs["gpu02"] + `",node="gpu02"} 1`,
		`herd_node_busy{mac="` + macs["gpu02"] + `",node="gpu02"} 1`,
		`herd_node_gpus{kind="expected",mac="` + macs["gpu01"] + `",node="gpu01"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// Pages in a real browser.
	ctx := browser.Start(t, browser.Options{})
	row1, row2 := `tr[data-name="gpu01"]`, `tr[data-name="gpu02"]`
	if err := chromedp.Do(ctx, chromedp.Navigate(l.base+"/"), chromedp.WaitVisible(chromedp.CSS(`#live.on`))); err != nil {
		t.Fatalf("load the nodes page: %v", err)
	}
	if got := browser.Text(t, ctx, row1+` [data-field="gpus"]`); got != "NVIDIA GeForce RTX 3060 116/12288 MiB 0% free" {
		t.Errorf("gpu01 GPUs cell %q", got)
	}
	if got := browser.Text(t, ctx, row2+` [data-field="gpus"]`); got != "Tesla T4 1032/15360 MiB 0% 1 proc persistence mode off" {
		t.Errorf("gpu02 GPUs cell %q", got)
	}
	if got := browser.Text(t, ctx, row2+` [data-field="busy"]`); got != "busy" {
		t.Errorf("gpu02 busy cell %q", got)
	}
	// A new report changes gpu01's health: the row follows without a reload.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[int](`window.herdTestMarker = 7`)); err != nil {
		t.Fatal(err)
	}
	g1.expect(t, &nodestatus.ExpectGPUs{Count: 4, Model: "RTX 3060"})
	g1.report(t)
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.querySelector('tr[data-name="gpu01"] [data-field="health"]').textContent.trim() === "degraded: 1/4 GPUs"`,
		chromedp.WithPollingTimeout(60*time.Second))); err != nil {
		t.Fatalf("gpu01's health did not change live: %v (row %q)", err, browser.Text(t, ctx, row1))
	}
	if marker, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`window.herdTestMarker || 0`)); marker != 7 {
		t.Error("the page reloaded to show the report")
	}
	browser.Screenshot(t, ctx, "nodes-gpus.png")
	// The node page: one row per GPU with its process, the self-checks.
	if err := chromedp.Do(ctx, chromedp.Navigate(l.base+"/ui/nodes/gpu02"), chromedp.WaitVisible(chromedp.CSS(`#gpus`))); err != nil {
		t.Fatal(err)
	}
	gpuRow := browser.Text(t, ctx, `#gpus tr[data-gpu="0"]`)
	for _, want := range []string{"Tesla T4", "1032 / 15360 MiB", "40 °C", "27 W", "persistence mode off", "5762 python 1005 MiB"} {
		if !strings.Contains(gpuRow, want) {
			t.Errorf("gpu02's GPU row %q lacks %q", gpuRow, want)
		}
	}
	if got := browser.Text(t, ctx, "#checks"); !strings.Contains(got, "nvidia-smi") || !strings.Contains(got, "system-running") {
		t.Errorf("checks %q", got)
	}
	browser.Screenshot(t, ctx, "node-gpu02-gpus.png")

	// No secret and no user name in any response.
	for _, p := range []string{"/api/v1/nodes", "/api/v1/nodes/gpu02", "/", "/ui/nodes/gpu02", "/ui/nodes/gpu01", "/metrics"} {
		body := l.get(t, p)
		if bytes.Contains(body, []byte("alice")) {
			t.Errorf("%s names the logged-in user although dashboard.show_gpu_users is off", p)
		}
		if bytes.Contains(body, []byte("PRIVATE KEY")) {
			t.Errorf("%s holds a private key", p)
		}
		for what, secret := range l.secrets {
			for _, line := range strings.Split(secret, "\n") {
				line = strings.TrimSpace(line)
				if len(line) >= 16 && !strings.HasPrefix(line, "-----") && bytes.Contains(body, []byte(line)) {
					t.Errorf("%s leaks %s", p, what)
				}
			}
		}
	}
}

// TestStatusAgentRunOnce runs `herd-boot status --once`'s code
// (nodeboot.RunStatus) as a node would, from its kernel command line and
// node key file, with this machine's real commands (no nvidia-smi, no
// logind here) against a running herd serve: the node expected to have a
// GPU reports `degraded: 0/1 GPUs`, the one expected to have none `ready`,
// as `herd node list` shows them.
func TestStatusAgentRunOnce(t *testing.T) {
	l := startLab(t, "")
	for name, expect := range map[string]int{"gpu01": 1, "gpu02": 0} {
		l.postEvent(t, name, "up", 100, "booted")
		d := t.TempDir()
		// The kernel command line the server's boot script gives the node.
		cmdline := ""
		for _, line := range strings.Split(string(l.get(t, "/boot/"+macs[name]+".ipxe")), "\n") {
			if f := strings.Fields(line); len(f) > 2 && f[0] == "kernel" {
				cmdline = strings.Join(f[2:], " ")
			}
		}
		if !strings.Contains(cmdline, "herd.node="+name) {
			t.Fatalf("%s's boot script has no kernel line for it: %q", name, cmdline)
		}
		os.WriteFile(filepath.Join(d, "cmdline"), []byte(cmdline+"\n"), 0o644)
		os.MkdirAll(filepath.Join(d, "cache/identity"), 0o700)
		if err := nodeauth.SaveFileKey(filepath.Join(d, "cache", nodeauth.KeyFile), l.nodes[name].Key, name); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(nodestatus.NodeConfig{Node: name, ExpectGPUs: &nodestatus.ExpectGPUs{Count: expect}})
		os.MkdirAll(filepath.Join(d, "root/etc/herd"), 0o755)
		os.WriteFile(filepath.Join(d, "root", nodestatus.NodeConfigPath), b, 0o644)
		var console bytes.Buffer
		s := &nodeboot.System{Cmdline: filepath.Join(d, "cmdline"), SysRoot: filepath.Join(d, "sys"), DevRoot: filepath.Join(d, "dev"),
			RunDir: filepath.Join(d, "run"), CacheDir: filepath.Join(d, "cache"), Root: filepath.Join(d, "root"), Console: &console}
		if err := nodeboot.RunStatus(context.Background(), s, true); err != nil {
			t.Fatalf("%s: herd-boot status --once: %v\n%s", name, err, console.String())
		}
	}
	var out []byte
	l.waitFor(t, "herd node list to show both reports", func() bool {
		var err error
		out, err = exec.Command(l.herd, "--config", l.cfg, "--state", l.state, "node", "list").CombinedOutput()
		return err == nil && strings.Count(string(out), "idle") == 2
	})
	t.Logf("herd node list:\n%s", out)
	for name, health := range map[string]string{"gpu01": "degraded: 0/1 GPUs", "gpu02": "ready"} {
		line := ""
		for _, s := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(s, name+" ") {
				line = s
			}
		}
		if !strings.Contains(line, health) {
			t.Errorf("herd node list row of %s %q lacks %q\n%s", name, line, health, out)
		}
	}
	var n fleet.Node
	if err := json.Unmarshal(l.get(t, "/api/v1/nodes/gpu01"), &n); err != nil || n.Status == nil {
		t.Fatalf("gpu01: %v %+v", err, n)
	}
	for _, c := range n.Status.Checks {
		if c.Name == "nvidia-smi" && (c.OK || c.Detail != "not installed") {
			t.Errorf("nvidia-smi check on a machine without it: %+v", c)
		}
	}
}
