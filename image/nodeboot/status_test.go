package nodeboot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/fleet/nodestatus"
	"github.com/herdlab/herd/internal/nvsmi"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/site"
)

func smiFixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "internal", "nvsmi", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func smiLog(t *testing.T, name string) *nvsmi.Log {
	t.Helper()
	l, err := nvsmi.Parse(smiFixture(t, name))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestEvaluateHealth judges nvidia-smi output recorded on real GPUs
// (internal/nvsmi/testdata/README.md) against site expectations.
func TestEvaluateHealth(t *testing.T) {
	t4 := smiLog(t, "tesla-t4.xml")        // persistence Disabled, ECC 0
	r3060 := smiLog(t, "rtx-3060-v12.xml") // persistence Enabled
	gtx := smiLog(t, "gtx-1070-ti.xml")    // persistence not recorded
	for _, c := range []struct {
		name   string
		expect *nodestatus.ExpectGPUs
		facts  GPUFacts
		want   string
		exp    int
		seen   int
	}{
		{"no-gpu-none-expected", nil, GPUFacts{}, "ready", -1, 0},
		{"no-gpu-zero-expected", &nodestatus.ExpectGPUs{Count: 0}, GPUFacts{SMIErr: "not found"}, "ready", 0, 0},
		{"no-gpu-one-expected", &nodestatus.ExpectGPUs{Count: 1}, GPUFacts{}, "degraded: 0/1 GPUs", 1, 0},
		{"smi-fails-one-expected", &nodestatus.ExpectGPUs{Count: 1},
			GPUFacts{SMIErr: "exit status 9: NVIDIA-SMI has failed", Loaded: "580.95.05"}, "degraded: 0/1 GPUs", 1, 0},
		{"smi-fails-driver-loaded", nil, GPUFacts{SMIErr: "exit status 9", Loaded: "580.95.05"}, "unknown: nvidia-smi: exit status 9", -1, 0},
		{"3060-as-expected", &nodestatus.ExpectGPUs{Count: 1, Model: "rtx 3060"}, GPUFacts{SMI: r3060}, "ready", 1, 1},
		{"3060-missing-three", &nodestatus.ExpectGPUs{Count: 4, Model: "RTX 3060"}, GPUFacts{SMI: r3060}, "degraded: 1/4 GPUs", 4, 1},
		{"wrong-model", &nodestatus.ExpectGPUs{Count: 1, Model: "1080 Ti"}, GPUFacts{SMI: r3060},
			"degraded: GPU 0 is NVIDIA GeForce RTX 3060, not 1080 Ti", 1, 1},
		{"driver-mismatch", nil, GPUFacts{SMI: r3060, Loaded: "570.124.04", Installed: "570.133.07"},
			"degraded: driver 570.124.04 loaded, image has 570.133.07", -1, 1},
		{"t4-persistence-off", &nodestatus.ExpectGPUs{Count: 1}, GPUFacts{SMI: t4}, "degraded: persistence mode off on GPU 0", 1, 1},
		{"gtx-persistence-unrecorded", &nodestatus.ExpectGPUs{Count: 1, Model: "GTX 1070"}, GPUFacts{SMI: gtx}, "ready", 1, 1},
		{"xid", &nodestatus.ExpectGPUs{Count: 2}, GPUFacts{SMI: r3060, Xid: []string{"NVRM: Xid (PCI:0000:2d:00): 79, GPU has fallen off the bus."}},
			"degraded: 1/2 GPUs; 1 Xid errors in the kernel log", 2, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := EvaluateHealth(c.expect, c.facts)
			if h.String() != c.want || h.ExpectedGPUs != c.exp || h.SeenGPUs != c.seen {
				t.Errorf("got %q (expected %d, seen %d), want %q (%d, %d)", h.String(), h.ExpectedGPUs, h.SeenGPUs, c.want, c.exp, c.seen)
			}
		})
	}
}

// TestParseXid reads kernel log records in /dev/kmsg's record format
// ("prio,seq,usec,flags;message", Documentation/ABI/testing/dev-kmsg) with
// messages in the form NVIDIA documents for Xid errors ("NVRM: Xid
// (PCI:<bus>): <code>, ..."; no recording from a failing GPU is at hand).
func TestParseXid(t *testing.T) {
	in := "6,1234,5000000,-;nvidia: loading out-of-tree module taints kernel.\n" +
		"4,1301,912345678,-;NVRM: Xid (PCI:0000:01:00): 79, pid=0, GPU has fallen off the bus.\n" +
		" SUBSYSTEM=pci\n" +
		"[ 1.0] NVRM: Xid (PCI:0000:02:00): 13, Graphics SM Warp Exception\n"
	got := ParseXid(strings.NewReader(in))
	if len(got) != 2 || got[0] != "NVRM: Xid (PCI:0000:01:00): 79, pid=0, GPU has fallen off the bus." || !strings.HasPrefix(got[1], "NVRM: Xid (PCI:0000:02:00): 13") {
		t.Errorf("%q", got)
	}
	var many strings.Builder
	for i := 0; i < 100; i++ {
		many.WriteString("4,1,1,-;NVRM: Xid (PCI:0000:01:00): 31, x\n")
	}
	if n := len(ParseXid(strings.NewReader(many.String()))); n != nodestatus.MaxXid {
		t.Errorf("%d Xid lines kept, want %d", n, nodestatus.MaxXid)
	}
}

// TestReadXidRealKmsg reads this machine's real /dev/kmsg: it must end
// (non-blocking) rather than wait for new records.
func TestReadXidRealKmsg(t *testing.T) {
	testenv.RequireFiles(t, "the kernel's /dev/kmsg", "/dev/kmsg")
	done := make(chan error, 1)
	go func() { _, err := ReadXid("/dev/kmsg"); done <- err }()
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, os.ErrPermission) {
			t.Errorf("read /dev/kmsg: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("reading /dev/kmsg blocked")
	}
}

func TestParseSession(t *testing.T) {
	boot := time.Date(2026, 11, 30, 4, 0, 0, 0, time.UTC)
	s, ok := ParseSession("Name=alice\nTTY=pts/0\nRemoteHost=10.77.0.1\nClass=user\nState=active\nTimestampMonotonic=90000000\n", boot)
	if !ok || s.User != "alice" || s.TTY != "pts/0" || s.From != "10.77.0.1" || !s.Since.Equal(boot.Add(90*time.Second)) {
		t.Errorf("%+v %v", s, ok)
	}
	for _, p := range []string{"Name=gdm\nClass=greeter\n", "Name=bob\nClass=user\nState=closing\n", "Class=user\n"} {
		if _, ok := ParseSession(p, boot); ok {
			t.Errorf("%q taken as a user session", p)
		}
	}
}

// fakeNode is a node root for the agent: /proc files, mounts and node.json
// written here; commands answered by run. nvidia-smi cannot run without a
// GPU, so its answer is a real recording (the one stand-in here).
type fakeNode struct {
	root   string
	calls  []string
	smi    []byte
	smiErr error
}

func (f *fakeNode) exec(ctx context.Context, stdin, name string, args ...string) ([]byte, error) {
	f.calls = append(f.calls, strings.TrimSpace(name+" "+strings.Join(args, " ")+" <"+stdin))
	switch name + " " + strings.Join(args, " ") {
	case "nvidia-smi -q -x":
		return f.smi, f.smiErr
	case "systemctl is-system-running":
		return []byte("running\n"), nil
	case "systemctl is-active cachefilesd", "systemctl is-active nvidia-persistenced":
		return []byte("active\n"), nil
	case "getent group members":
		return []byte("members:*:2000:\n"), nil
	case "loginctl list-sessions --no-legend --no-pager":
		return []byte("3 2001 alice - pts/0 active no -\n"), nil
	}
	if name == "loginctl" && len(args) > 1 && args[0] == "show-session" && args[1] == "3" {
		return []byte("Name=alice\nTTY=pts/0\nRemoteHost=10.77.0.1\nClass=user\nState=active\nTimestampMonotonic=5000000\n"), nil
	}
	if name == "getent" && len(args) == 2 && args[0] == "passwd" {
		return []byte("alice:*:" + args[1] + ":2000::/home/alice:/bin/bash\n"), nil
	}
	return nil, &exec.Error{Name: name, Err: exec.ErrNotFound}
}

func newFakeNode(t *testing.T, cfg nodestatus.NodeConfig) *fakeNode {
	f := &fakeNode{root: t.TempDir()}
	for p, data := range map[string]string{
		"proc/uptime": "123.45 200.00\n",
		"proc/mounts": "overlay / overlay rw 0 0\n/dev/vda1 /var/cache/herd ext4 rw 0 0\nsystemd-1 /home autofs rw 0 0\n",
	} {
		os.MkdirAll(filepath.Join(f.root, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(f.root, p), []byte(data), 0o644)
	}
	b, _ := json.Marshal(cfg)
	os.MkdirAll(filepath.Join(f.root, "etc/herd"), 0o755)
	os.WriteFile(filepath.Join(f.root, nodestatus.NodeConfigPath), b, 0o644)
	return f
}

func TestCollect(t *testing.T) {
	f := newFakeNode(t, nodestatus.NodeConfig{Node: "gpu1", ExpectGPUs: &nodestatus.ExpectGPUs{Count: 2, Model: "T4"}, HomeRoot: "/home", LDAPGroup: "members"})
	f.smi = smiFixture(t, "tesla-t4.xml")
	now := time.Date(2026, 11, 30, 5, 0, 0, 0, time.UTC)
	a := &StatusAgent{Node: "gpu1", Image: "abc", Root: f.root, SysRoot: filepath.Join(f.root, "sys"), Kmsg: filepath.Join(f.root, "kmsg"),
		StateFile: filepath.Join(f.root, "run/state.json"), Exec: f.exec, Now: func() time.Time { return now }}
	rep := a.Collect(context.Background())
	if err := rep.Validate(); err != nil {
		t.Fatalf("the agent's own report is refused: %v", err)
	}
	if rep.UptimeSeconds != 123.45 || len(rep.GPUs) != 1 || rep.GPUs[0].Model != "Tesla T4" {
		t.Errorf("report %+v", rep)
	}
	if rep.Health.String() != "degraded: 1/2 GPUs; persistence mode off on GPU 0" {
		t.Errorf("health %q", rep.Health.String())
	}
	// The recorded python process (pid 5762) is compute; Xorg is not.
	if len(rep.GPUProcesses) != 1 || rep.GPUProcesses[0].PID != 5762 || rep.GPUProcesses[0].GPUUUID != rep.GPUs[0].UUID {
		t.Errorf("GPU processes %+v", rep.GPUProcesses)
	}
	if len(rep.Sessions) != 1 || rep.Sessions[0].User != "alice" || !rep.Busy() || !rep.LastBusy.Equal(now) {
		t.Errorf("sessions %+v, last busy %v", rep.Sessions, rep.LastBusy)
	}
	checks := map[string]bool{}
	for _, c := range rep.Checks {
		checks[c.Name] = c.OK
	}
	for _, c := range []string{"nvidia-smi", "system-running", "root-is-image-overlay", "home-automount", "cachefilesd", "ldap-group-resolves", "nvidia-persistenced"} {
		if ok, there := checks[c]; !there || !ok {
			t.Errorf("check %s: there %v ok %v (%+v)", c, there, ok, rep.Checks)
		}
	}
	// LastBusy survives a restart of the agent (state in /run); this time
	// the node has no expectation and no nvidia-smi.
	os.Remove(filepath.Join(f.root, nodestatus.NodeConfigPath))
	b := &StatusAgent{Node: "gpu1", Root: f.root, StateFile: a.StateFile, Exec: func(ctx context.Context, stdin, name string, args ...string) ([]byte, error) {
		return nil, &exec.Error{Name: name, Err: exec.ErrNotFound}
	}, Now: func() time.Time { return now.Add(time.Hour) }}
	b.load()
	rep = b.Collect(context.Background())
	if rep.Busy() || !rep.LastBusy.Equal(now) {
		t.Errorf("idle node: busy %v, last busy %v, want %v", rep.Busy(), rep.LastBusy, now)
	}
	// No nvidia-smi, no expectation: honest and ready.
	if rep.Health.String() != "ready" || rep.Health.ExpectedGPUs != -1 || len(rep.GPUs) != 0 {
		t.Errorf("node without GPUs: %+v", rep.Health)
	}
}

// TestCollectNoGPUOnTheBus: sysfs shows no NVIDIA device (a VM, a node
// whose GPU fell off the bus): nvidia-smi is not even run.
func TestCollectNoGPUOnTheBus(t *testing.T) {
	f := newFakeNode(t, nodestatus.NodeConfig{Node: "gpu1", ExpectGPUs: &nodestatus.ExpectGPUs{Count: 1}})
	f.smi = smiFixture(t, "tesla-t4.xml")
	sys := filepath.Join(f.root, "sys")
	// A virtio NIC and a VGA card of another vendor, as QEMU shows them.
	for dev, vc := range map[string][2]string{"0000:00:02.0": {"0x1234", "0x030000"}, "0000:00:03.0": {"0x1af4", "0x020000"}} {
		d := filepath.Join(sys, "bus/pci/devices", dev)
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "vendor"), []byte(vc[0]+"\n"), 0o644)
		os.WriteFile(filepath.Join(d, "class"), []byte(vc[1]+"\n"), 0o644)
	}
	a := &StatusAgent{Node: "gpu1", Root: f.root, SysRoot: sys, Exec: f.exec}
	rep := a.Collect(context.Background())
	if rep.Health.String() != "degraded: 0/1 GPUs" || len(rep.GPUs) != 0 {
		t.Errorf("health %q, %d GPUs", rep.Health.String(), len(rep.GPUs))
	}
	for _, c := range f.calls {
		if strings.HasPrefix(c, "nvidia-smi") {
			t.Errorf("nvidia-smi run with no NVIDIA device on the bus")
		}
	}
	// The same bus with an NVIDIA GPU on it: nvidia-smi is asked.
	d := filepath.Join(sys, "bus/pci/devices", "0000:00:1e.0")
	os.MkdirAll(d, 0o755)
	os.WriteFile(filepath.Join(d, "vendor"), []byte("0x10de\n"), 0o644)
	os.WriteFile(filepath.Join(d, "class"), []byte("0x030200\n"), 0o644)
	if rep := a.Collect(context.Background()); len(rep.GPUs) != 1 {
		t.Errorf("with a GPU on the bus: %d GPUs", len(rep.GPUs))
	}
}

func TestCollectNoGPUExpectedOne(t *testing.T) {
	f := newFakeNode(t, nodestatus.NodeConfig{Node: "gpu1", ExpectGPUs: &nodestatus.ExpectGPUs{Count: 1}})
	f.smiErr = errors.New("exit status 9: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver")
	a := &StatusAgent{Node: "gpu1", Root: f.root, Exec: f.exec}
	rep := a.Collect(context.Background())
	if rep.Health.String() != "degraded: 0/1 GPUs" {
		t.Errorf("health %q", rep.Health.String())
	}
	for _, c := range rep.Checks {
		if c.Name == "nvidia-smi" && (c.OK || !strings.Contains(c.Detail, "NVIDIA-SMI has failed")) {
			t.Errorf("nvidia-smi check %+v", c)
		}
	}
}

// TestLongNamesClipped: a recorded desktop process whose command line is
// longer than the server accepts is clipped, not refused.
func TestLongNamesClipped(t *testing.T) {
	f := newFakeNode(t, nodestatus.NodeConfig{})
	f.smi = smiFixture(t, "rtx-3080-v12.xml")
	l, _ := nvsmi.Parse(f.smi)
	for i := range l.Processes {
		l.Processes[i].Type = "C" // as if each were compute, so they are reported
	}
	rep := &nodestatus.Report{Node: "n", Health: nodestatus.Health{State: nodestatus.Ready}}
	for _, p := range l.Processes {
		rep.GPUProcesses = append(rep.GPUProcesses, p.GPUProcess)
	}
	sanitize(rep)
	if err := rep.Validate(); err != nil {
		t.Error(err)
	}
}

func TestApplyReply(t *testing.T) {
	f := newFakeNode(t, nodestatus.NodeConfig{})
	var walls, reboots int
	exec := func(ctx context.Context, stdin, name string, args ...string) ([]byte, error) {
		switch name {
		case "wall":
			walls++
			if !strings.Contains(stdin, "node reboots at 18:00") {
				t.Errorf("wall got %q", stdin)
			}
		case "systemctl":
			if strings.Join(args, " ") == "reboot" {
				reboots++
			}
		}
		return nil, nil
	}
	a := &StatusAgent{Root: f.root, StateFile: filepath.Join(f.root, "run/state.json"), Exec: exec}
	r := nodestatus.Reply{WallID: "r1", Wall: "node reboots at 18:00"}
	a.Apply(context.Background(), r)
	a.Apply(context.Background(), r)
	// A restarted agent remembers the walls it showed.
	b := &StatusAgent{Root: f.root, StateFile: a.StateFile, Exec: exec}
	b.load()
	b.Apply(context.Background(), r)
	if walls != 1 || reboots != 0 {
		t.Errorf("walls %d reboots %d, want 1 0", walls, reboots)
	}
	b.Apply(context.Background(), nodestatus.Reply{WallID: "r2", Wall: "node reboots at 18:00", Reboot: true})
	if walls != 2 || reboots != 1 {
		t.Errorf("walls %d reboots %d, want 2 1", walls, reboots)
	}
}

// TestRunStatusWithoutKey: a node without a key (none on the SSD, no TPM)
// says why and stops cleanly: no report is sent, and no restart loop.
func TestRunStatusWithoutKey(t *testing.T) {
	d := t.TempDir()
	os.WriteFile(filepath.Join(d, "cmdline"), []byte("boot=herd herd.image=http://127.0.0.1:1/images/x/rootfs.squashfs herd.sha256="+strings.Repeat("0", 64)+" herd.server=http://127.0.0.1:1 herd.node=gpu1 herd.id=x\n"), 0o644)
	var console strings.Builder
	s := &System{Cmdline: filepath.Join(d, "cmdline"), CacheDir: filepath.Join(d, "cache"), RunDir: filepath.Join(d, "run"), Console: &console}
	if err := RunStatus(context.Background(), s, false); err != nil {
		t.Fatalf("RunStatus without a key: %v", err)
	}
	if !strings.Contains(console.String(), "status reports cannot be signed") {
		t.Errorf("console %q", console.String())
	}
}

// TestCollectReportsNetworks: every report carries the node's links and
// its network-degraded lines now (checked against etc/herd/networks.json
// without waiting), so a NIC replugged or lost after boot shows in the
// next report; none declared, none degraded, but the links still come.
func TestCollectReportsNetworks(t *testing.T) {
	f := newFakeNode(t, nodestatus.NodeConfig{Node: "gpu1"})
	a := &StatusAgent{Node: "gpu1", Root: f.root, SysRoot: "/sys", Exec: f.exec}
	rep := a.Collect(context.Background())
	if rep.Network == nil || rep.Network.Degraded == nil || len(rep.Network.Degraded) != 0 {
		t.Fatalf("no networks declared: %+v", rep.Network)
	}
	host, err := ReadLinks("/sys")
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Network.Interfaces) != min(len(host), nodestatus.MaxLinks) {
		t.Errorf("reported %d links, the host has %d", len(rep.Network.Interfaces), len(host))
	}
	// A storage NIC declared by a MAC no interface here has: missing.
	decl := site.NodeNetworks{Interfaces: []site.DeclaredInterface{{Label: "st0", Kind: "nic", MAC: "02:00:5e:00:53:99", Network: "storage", Address: "10.88.0.5/24"}}}
	b, _ := json.Marshal(decl)
	os.WriteFile(filepath.Join(f.root, site.DeclaredPath), b, 0o644)
	start := time.Now()
	rep = a.Collect(context.Background())
	if time.Since(start) > time.Minute {
		t.Errorf("Collect waited for the missing link (%v)", time.Since(start))
	}
	want := "degraded: storage network down (st0 02:00:5e:00:53:99: missing)"
	if rep.Network == nil || len(rep.Network.Degraded) != 1 || rep.Network.Degraded[0] != want {
		t.Fatalf("network %+v, want degraded %q", rep.Network, want)
	}
	if err := rep.Validate(); err != nil {
		t.Fatalf("the agent's own report is refused: %v", err)
	}
	js, _ := json.Marshal(rep)
	var back nodestatus.Report
	if err := json.Unmarshal(js, &back); err != nil || back.Network == nil || len(back.Network.Degraded) != 1 {
		t.Errorf("report JSON %s: %v", js, err)
	}
}

// TestSanitizeNetworkKeepsDeclaredLinks: a node with more links than the
// server takes (containers' veths) still reports within bounds, its boot
// and declared links kept.
func TestSanitizeNetworkKeepsDeclaredLinks(t *testing.T) {
	n := &nodestatus.Network{Degraded: []string{}}
	for i := 0; i < 200; i++ {
		n.Interfaces = append(n.Interfaces, nodestatus.Link{Name: fmt.Sprintf("veth%03d", i), State: "up"})
	}
	n.Interfaces = append(n.Interfaces, nodestatus.Link{Name: "ens4", Label: "st0", Network: "storage", Addresses: make([]string, 40)},
		nodestatus.Link{Name: "ens3", Boot: true})
	for i := 0; i < 40; i++ {
		n.Degraded = append(n.Degraded, "degraded: x\n"+strings.Repeat("y", 300))
	}
	rep := &nodestatus.Report{Node: "n", Health: nodestatus.Health{State: nodestatus.Ready}, Network: n}
	sanitize(rep)
	if err := rep.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(n.Interfaces) != nodestatus.MaxLinks || n.Interfaces[0].Name != "ens4" || n.Interfaces[1].Name != "ens3" {
		t.Errorf("kept %d links, first %+v %+v", len(n.Interfaces), n.Interfaces[0], n.Interfaces[1])
	}
}
