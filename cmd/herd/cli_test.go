package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/fleet"
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/pxe/inventory"
)

// newCLI runs the herd binary against a fresh state dir and a herd.yaml
// holding yaml.
func newCLI(t *testing.T, yaml string) *cli {
	t.Helper()
	work := t.TempDir()
	t.Cleanup(func() { // published images are read-only dirs
		filepath.WalkDir(work, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				os.Chmod(p, 0o755)
			}
			return nil
		})
	})
	c := &cli{t: t, bin: herdBinary(t), state: filepath.Join(work, "state"), config: filepath.Join(work, "herd.yaml")}
	if err := os.WriteFile(c.config, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return c
}

// freePort returns a TCP port free on loopback now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// node add/list/show/rm edit herd.yaml in place (comments kept), refuse bad
// input naming it, and print JSON a script can read.
func TestNodeCommands(t *testing.T) {
	c := newCLI(t, "# the lab\noverlays: []\ndhcp: {mode: off}\nnodes:\n  # first rack\n  - {name: gpu01, mac: '52:54:00:00:00:01', ip: 10.0.0.11}\n")
	if out := c.ok("node", "add", "gpu02", "52:54:00:00:00:02", "--ip", "10.0.0.12", "--kernel-args", "quiet"); !strings.Contains(out, "added gpu02 (52:54:00:00:00:02)") {
		t.Errorf("add: %q", out)
	}
	data, _ := os.ReadFile(c.config)
	if !strings.Contains(string(data), "# the lab") || !strings.Contains(string(data), "# first rack") || !strings.Contains(string(data), "gpu02") {
		t.Errorf("herd.yaml after add lost comments or the node:\n%s", data)
	}
	c.refused([]string{"node", "add", "gpu01", "52:54:00:00:00:09"}, "gpu01")
	c.refused([]string{"node", "add", "gpu03", "52:54:00:00:00:01"}, "52:54:00:00:00:01")
	c.refused([]string{"node", "add", "GPU_3", "52:54:00:00:00:03"}, "GPU_3", "not a valid host name")
	c.refused([]string{"node", "add", "gpu03", "not-a-mac"}, "not-a-mac")
	c.refused([]string{"node", "add", "gpu03"}, "accepts 2 arg")
	if after, _ := os.ReadFile(c.config); string(after) != string(data) {
		t.Errorf("a refused add changed herd.yaml:\n%s", after)
	}

	// The inventory knows gpu01 booted, and a MAC that is not configured.
	if err := os.MkdirAll(c.state, 0o755); err != nil {
		t.Fatal(err)
	}
	inv, err := inventory.Load(c.state)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if err := inv.RecordDHCP("52:54:00:00:00:01", "gpu01", "10.0.0.11", now); err != nil {
		t.Fatal(err)
	}
	if err := inv.RecordEvent(inventory.Event{Node: "gpu01", MAC: "52:54:00:00:00:01", Stage: "up", Image: "0123456789abcdef"}, "10.0.0.11", now); err != nil {
		t.Fatal(err)
	}
	if err := inv.RecordDHCP("52:54:00:00:00:99", "", "10.0.0.99", now); err != nil {
		t.Fatal(err)
	}
	if err := inv.Flush(); err != nil { // coalesced writes: the CLI reads nodes.json
		t.Fatal(err)
	}
	var views []fleet.Node
	if err := json.Unmarshal([]byte(c.ok("node", "list", "--json")), &views); err != nil {
		t.Fatal(err)
	}
	byMAC := map[string]fleet.Node{}
	for _, v := range views {
		byMAC[v.MAC] = v
	}
	if v := byMAC["52:54:00:00:00:01"]; v.Name != "gpu01" || !v.Configured || v.Seen == nil || v.Seen.Stage != "up" || v.Seen.Image != "0123456789abcdef" {
		t.Errorf("gpu01 in list --json: %+v", v)
	}
	if v := byMAC["52:54:00:00:00:02"]; v.Name != "gpu02" || v.IP != "10.0.0.12" || v.KernelArgs != "quiet" || v.Seen != nil {
		t.Errorf("gpu02 in list --json: %+v", v)
	}
	if v, ok := byMAC["52:54:00:00:00:99"]; !ok || v.Configured {
		t.Errorf("unconfigured MAC in list --json: %+v (present %v)", v, ok)
	}
	out := c.ok("node", "list")
	if !strings.Contains(out, "(not in herd.yaml)") || !strings.Contains(out, "0123456789ab") {
		t.Errorf("node list:\n%s", out)
	}
	if out := c.ok("node", "show", "52-54-00-00-00-01"); !strings.Contains(out, "name:        gpu01") || !strings.Contains(out, "last stage:  up") {
		t.Errorf("show by dashed MAC:\n%s", out)
	}
	var one fleet.Node
	if err := json.Unmarshal([]byte(c.ok("node", "show", "--json", "gpu02")), &one); err != nil || one.MAC != "52:54:00:00:00:02" {
		t.Errorf("show --json: %+v %v", one, err)
	}
	if out := c.ok("node", "show", "gpu02"); !strings.Contains(out, "seen:        never") {
		t.Errorf("show of a node never seen:\n%s", out)
	}
	c.refused([]string{"node", "show", "gpu77"}, "gpu77")

	if out := c.ok("node", "rm", "52:54:00:00:00:02"); !strings.Contains(out, "removed gpu02") {
		t.Errorf("rm by MAC: %q", out)
	}
	c.refused([]string{"node", "rm", "gpu02"}, "gpu02")
	data, _ = os.ReadFile(c.config)
	if strings.Contains(string(data), "gpu02") || !strings.Contains(string(data), "# first rack") {
		t.Errorf("herd.yaml after rm:\n%s", data)
	}
	// A broken herd.yaml is never rewritten.
	os.WriteFile(c.config, []byte("nodes: [\n"), 0o644)
	c.refused([]string{"node", "add", "gpu05", "52:54:00:00:00:05"}, "herd.yaml")
	if after, _ := os.ReadFile(c.config); string(after) != "nodes: [\n" {
		t.Errorf("a broken herd.yaml was rewritten: %q", after)
	}
}

// herd serve refuses flags it cannot honour before it binds anything,
// naming the flag.
func TestServeRefusesBadFlags(t *testing.T) {
	port := freePort(t)
	c := newCLI(t, fmt.Sprintf("overlays: []\ndhcp: {mode: off}\nserver: {address: 127.0.0.1, http_port: %d}\n", port))
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"--http-port", "70000"}, "--http-port"},
		{[]string{"--http-port", "-1"}, "--http-port"},
		{[]string{"--tftp-port", "-1"}, "--tftp-port"},
		{[]string{"--tftp-port", "65536"}, "--tftp-port"},
		{[]string{"--listen", "not-an-address"}, "--listen"},
		{[]string{"--drain-timeout", "-5s"}, "--drain-timeout"},
		{[]string{"extra-arg"}, "unknown command"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, c.bin, append([]string{"--state", c.state, "--config", c.config, "serve"}, bad.args...)...)
		start := time.Now()
		out, err := cmd.CombinedOutput()
		timedOut := ctx.Err() != nil
		cancel()
		t.Logf("serve %v: %v after %s", bad.args, err, time.Since(start).Round(time.Millisecond))
		if timedOut {
			t.Errorf("serve %v kept running: the flag was accepted", bad.args)
			continue
		}
		if err == nil || !strings.Contains(string(out), bad.want) {
			t.Errorf("serve %v: err %v, output lacks %q:\n%s", bad.args, err, bad.want, out)
		}
	}
	// Without server.address herd serve refuses, naming the field.
	os.WriteFile(c.config, []byte("overlays: []\ndhcp: {mode: off}\n"), 0o644)
	c.refused([]string{"serve", "--tftp-port", "6969"}, "server.address")
}

// herd doctor: exit 1 with FAIL lines while no image is current, the JSON
// list of checks, and exit 0 once an image is promoted and the ports are free.
func TestDoctor(t *testing.T) {
	testenv.RequireCommands(t, "mksquashfs")
	testenv.RequireFiles(t, "package ipxe", "/usr/lib/ipxe/undionly.kpxe")
	port := freePort(t)
	tftpPort := freePort(t)
	c := newCLI(t, fmt.Sprintf("overlays: []\ndhcp: {mode: off}\nserver: {address: 127.0.0.1, http_port: %d}\n", port))
	out, _, ok := c.run("doctor", "--tftp-port", fmt.Sprint(tftpPort))
	if ok || !strings.Contains(out, "FAIL  current image: no image is current") || !strings.Contains(out, "PASS  config:") {
		t.Errorf("doctor with no image (exit 0: %v):\n%s", ok, out)
	}
	st, err := store.Open(c.state)
	if err != nil {
		t.Fatal(err)
	}
	id := publishImage(t, st, "gpu", "", map[string]string{"autofs": "5.1.9-1"})
	if _, err := st.Promote(context.Background(), id, false); err != nil {
		t.Fatal(err)
	}
	out = c.ok("doctor", "--tftp-port", fmt.Sprint(tftpPort), "--hash")
	for _, want := range []string{"PASS  current image: " + id, "PASS  current image artifacts: sizes and sha256 match", "SKIP  other dhcp server: dhcp.mode is off"} {
		if !strings.Contains(out, want) {
			t.Errorf("doctor lacks %q:\n%s", want, out)
		}
	}
	var checks []struct {
		Name   string `json:"name"`
		OK     bool   `json:"ok"`
		Detail string `json:"detail"`
	}
	raw := c.ok("doctor", "--json", "--tftp-port", fmt.Sprint(tftpPort))
	if err := json.Unmarshal([]byte(raw), &checks); err != nil || len(checks) == 0 {
		t.Fatalf("doctor --json: %v\n%s", err, raw)
	}
	// The HTTP port taken: doctor names it and fails.
	l, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	out, _, ok = c.run("doctor", "--tftp-port", fmt.Sprint(tftpPort))
	if ok || !strings.Contains(out, fmt.Sprintf("FAIL  port http tcp/%d", port)) {
		t.Errorf("doctor with the HTTP port taken (exit 0: %v):\n%s", ok, out)
	}
	// An invalid herd.yaml: FAIL config naming the file, exit 1.
	os.WriteFile(c.config, []byte("server: {address: 127.0.0.1, bogus: 1}\n"), 0o644)
	out, _, ok = c.run("doctor")
	if ok || !strings.Contains(out, "FAIL  config:") || !strings.Contains(out, "bogus") {
		t.Errorf("doctor with a bad herd.yaml (exit 0: %v):\n%s", ok, out)
	}
}

// overlay list/render: the files a node gets, with secrets as placeholders,
// in text and JSON; an unknown node is refused.
func TestOverlayCommands(t *testing.T) {
	c := newCLI(t, "dhcp: {mode: off}\noverlays: [base]\nnodes:\n  - {name: gpu01, mac: '52:54:00:00:00:01'}\n")
	var rows []struct {
		Name    string `json:"name"`
		Kind    string `json:"kind"`
		Enabled bool   `json:"enabled"`
		Files   int    `json:"files"`
	}
	if err := json.Unmarshal([]byte(c.ok("overlay", "list", "--json")), &rows); err != nil {
		t.Fatal(err)
	}
	enabled := map[string]bool{}
	for _, r := range rows {
		enabled[r.Name] = r.Enabled
		if r.Name == "base" && r.Files == 0 {
			t.Errorf("base overlay renders no files: %+v", r)
		}
	}
	if !enabled["base"] || enabled["ldap"] {
		t.Errorf("overlay list --json: %+v", rows)
	}
	var files []struct {
		Overlay, Path, Kind, Mode, Content string
	}
	if err := json.Unmarshal([]byte(c.ok("overlay", "render", "--json", "gpu01")), &files); err != nil {
		t.Fatal(err)
	}
	paths := map[string]string{}
	for _, f := range files {
		paths[f.Path] = f.Content
	}
	if got := paths["/etc/hostname"]; strings.TrimSpace(got) != "gpu01" {
		t.Errorf("rendered /etc/hostname = %q", got)
	}
	if got := paths["/etc/machine-id"]; strings.TrimSpace(got) != "0123456789abcdef0123456789abcdef" {
		t.Errorf("machine-id is not the placeholder: %q", got)
	}
	if out := c.ok("overlay", "render", "gpu01"); !strings.Contains(out, "/etc/hostname") || !strings.Contains(out, "OVERLAY") {
		t.Errorf("overlay render:\n%s", out)
	}
	c.refused([]string{"overlay", "render", "gpu99"}, "gpu99", "herd.yaml")
	if _, err := os.Stat(filepath.Join(c.state, "nodes")); err == nil {
		t.Errorf("overlay render wrote node secrets into the state dir")
	}
}
