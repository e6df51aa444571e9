package qemutests

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/fleet"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/pxe/dhcp"
	"github.com/herdlab/herd/testlab"
)

// A second boot server, as a lab would set one up: the herd installed from
// the .deb inside gpu01 (serviceCheck), its state restored from a `herd
// backup` holding the small test image (recipes/test-noble-minimal.yaml)
// onto gpu01's SSD, serving full DHCP on gpu01's NIC for one node of its own
// (gpu04), which does not know the lab's nodes. herd is killed with SIGKILL
// once it serves the restored state, systemd restarts it, and gpu04 netboots
// through the restarted herd (DHCP, script, kernel, image onto its blank
// SSD) to "up". One boot: gpu04's reboot from its SSD would prove nothing
// TestLab's nodes do not.
//
// Who answers gpu04's DHCP: both servers hear it on the lab bridge. gpu04 is
// not in the lab's herd.yaml (checked below; the lab's nodes are gpu01 and gpu02)
// and the lab's site has dhcp.unknown: ignore, so the lab's herd drops it
// (its herd_dhcp_ignored_total{reason="unknown-mac"} grows, and its
// leases.json never holds gpu04's MAC); gpu01's herd knows only gpu04
// (unknown: ignore too), so it leaves the lab's nodes to the lab's herd.
//
// `herd serve --force` (a drop-in, as an admin would write it): the lab's
// herd answers the probe herd sends from gpu01's own MAC, so without it the
// second herd rightly refuses full mode on that segment.
const (
	vmNodeName = "gpu04"
	vmNodeMAC  = "52:54:00:77:00:14"
	vmNodeIP   = "10.77.0.14"
)

// vmNodeBoots is serviceCheck's second half: b's herd.service (the .deb)
// serves gpu04.
func vmNodeBoots(t *testing.T, ctx context.Context, lab *testlab.Lab, b *testlab.Booted, sudo func(t *testing.T, cmd string) string,
	show func(t *testing.T) map[string]string, restarted func(t *testing.T, what, oldPID string, restarts int)) {
	herd := testenv.Bin(t, "HERD_BIN")
	// The lab's herd must not know gpu04 (else it, too, would answer).
	for _, n := range lab.Config.Nodes {
		if n.Name == vmNodeName || strings.EqualFold(n.MAC, vmNodeMAC) || n.IP == vmNodeIP {
			t.Fatalf("the lab's herd.yaml reserves %+v: gpu04 (%s, %s) must be gpu01's herd's alone", n, vmNodeMAC, vmNodeIP)
		}
	}
	minimal := testlab.MinimalImage(t)

	// The backup: a state holding only the minimal image, current.
	work := t.TempDir()
	state := filepath.Join(work, "state")
	if _, err := testlab.LinkImage(ctx, minimal, state, true); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(work, "herd.backup")
	if o, err := exec.CommandContext(ctx, herd, "--state", state, "--config", "/dev/null", "backup", "--image", "current", archive).CombinedOutput(); err != nil {
		t.Fatalf("herd backup: %v\n%s", err, o)
	}
	st, _ := os.Stat(archive)
	t.Logf("backup of the minimal image: %d MiB", st.Size()>>20)

	// Onto gpu01's SSD (its root is RAM), then restored as the state dir.
	sudo(t, "systemctl stop herd; install -d -o "+b.User.User+" /var/cache/herd/incoming")
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := b.User.Dial()
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	s.Stdin = f
	start := time.Now()
	if o, err := s.CombinedOutput("cat > /var/cache/herd/incoming/herd.backup"); err != nil {
		t.Fatalf("copy the backup into gpu01: %v %s", err, o)
	}
	c.Close()
	t.Logf("copied the backup into gpu01 in %s", time.Since(start).Round(time.Second))
	t.Log(sudo(t, "herd --config /dev/null --state /var/cache/herd/herd-state restore /var/cache/herd/incoming/herd.backup && rm /var/cache/herd/incoming/herd.backup"))
	iface := strings.TrimSpace(sudo(t, fmt.Sprintf(`ip -o -4 addr show | awk '$4 ~ /^%s\// {print $2}'`, strings.ReplaceAll(b.Node.IP, ".", `\.`))))
	if iface == "" {
		t.Fatalf("no interface of gpu01 has %s", b.Node.IP)
	}
	site := fmt.Sprintf(`server: {interface: %s, address: %s, http_port: 8080, tftp_root: /usr/lib/herd}
dhcp: {mode: full, subnet: %s, router: %s, unknown: ignore}
overlays: []
nodes:
  - {name: %s, mac: "%s", ip: %s, kernel_args: "no_timer_check"}
`, iface, b.Node.IP, testlab.LabSubnet, testlab.LabServer, vmNodeName, vmNodeMAC, vmNodeIP)
	sudo(t, "cat > /etc/herd/herd.yaml <<'EOF'\n"+site+"EOF")
	// The restored state dir belongs to whom the package's /var/lib/herd
	// does (the herd user herd serve --user becomes), as an admin would
	// chown it; the drop-in is the package's ExecStart plus --force.
	sudo(t, `chown "$(stat -c %U:%G /var/lib/herd)" /var/cache/herd/herd-state && mount --bind /var/cache/herd/herd-state /var/lib/herd && mkdir -p /etc/systemd/system/herd.service.d && `+
		`{ printf '[Service]\nExecStart=\n'; sed -n 's/^\(ExecStart=.* serve \)/\1--force /p' /lib/systemd/system/herd.service; } > /etc/systemd/system/herd.service.d/force.conf && grep -q -- '--force' /etc/systemd/system/herd.service.d/force.conf && systemctl daemon-reload`)
	t.Logf("drop-in: %s", sudo(t, "cat /etc/systemd/system/herd.service.d/force.conf"))
	sudo(t, "herd --config /etc/herd/herd.yaml --state /var/lib/herd node enroll "+vmNodeName+" --for 2h")
	// From here on gpu01 must be left as the later checks expect it: no
	// second DHCP server on the bridge, its SSD as it was.
	defer func() {
		if _, err := b.User.Sudo(ctx, "systemctl stop herd; umount /var/lib/herd; rm -rf /var/cache/herd/herd-state /var/cache/herd/incoming /etc/systemd/system/herd.service.d; systemctl daemon-reload"); err != nil {
			t.Errorf("restore gpu01: %v", err)
		}
	}()
	sudo(t, "systemctl start herd")
	st0 := show(t)
	if st0["ActiveState"] != "active" {
		t.Fatalf("herd.service with the restored state: %v\n%s", st0, sudo(t, "journalctl -u herd --no-pager -n 50"))
	}
	// kill -9: systemd restarts herd, and gpu04's boot goes through the
	// restarted one (its state read back from disk).
	var restarts int
	fmt.Sscan(st0["NRestarts"], &restarts)
	sudo(t, "kill -9 "+st0["MainPID"])
	restarted(t, "kill -9 with the restored state", st0["MainPID"], restarts+1)
	labIgnored := labMetric(t, lab, "http://"+testlab.LabServer+":8080/metrics", `herd_dhcp_ignored_total{reason="unknown-mac"}`)

	// gpu04: a SeaBIOS node with a blank SSD on the lab's bridge.
	tap, err := lab.AddTap()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(lab.Config.Dir, "vms", vmNodeName)
	vm, err := testlab.StartVM(ctx, testlab.VMConfig{Netns: lab.Netns, Name: vmNodeName, Tap: tap, MAC: vmNodeMAC,
		Dir: dir, Disk: filepath.Join(dir, "ssd.qcow2"), DiskSize: "4G", MemoryMiB: 1536, Accel: os.Getenv("HERD_QEMU_ACCEL")})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Stop()
	defer func() {
		if t.Failed() {
			t.Logf("--- serial console of %s ---\n%s", vmNodeName, vm.Console.Tail(60))
			t.Logf("--- herd.service in gpu01 ---\n%s", sudo(t, "journalctl -u herd --no-pager -n 60"))
		}
	}()
	// up waits (liveness bound only) until gpu01's herd recorded gpu04 "up".
	up := func() fleet.Node {
		t.Helper()
		deadline := time.Now().Add(testlab.BootTimeout)
		for {
			var n fleet.Node
			o, err := b.User.Sudo(ctx, "herd --config /etc/herd/herd.yaml --state /var/lib/herd node show --json "+vmNodeName)
			if err == nil && json.Unmarshal([]byte(o), &n) == nil && n.Seen != nil && n.Seen.Stage == "up" {
				return n
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never reported up to gpu01's herd: %v %s", vmNodeName, err, o)
			}
			time.Sleep(5 * time.Second)
		}
	}
	start = time.Now()
	n := up()
	t.Logf("%s up from gpu01's herd in %s: image %s, kernel %s, from %s", vmNodeName, time.Since(start).Round(time.Second), n.Seen.Image, n.Seen.Kernel, n.Seen.Address)
	if n.Seen.Address != vmNodeIP || !strings.HasPrefix(filepath.Base(minimal), n.Seen.Image) && !strings.HasPrefix(n.Seen.Image, filepath.Base(minimal)) {
		t.Errorf("gpu04's up event: address %s (want %s), image %s (want %s)", n.Seen.Address, vmNodeIP, n.Seen.Image, filepath.Base(minimal))
	}
	if n.Seen.ScriptServed.IsZero() || n.Seen.ScriptImage == "" {
		t.Errorf("gpu01's herd did not serve gpu04's boot script: %+v", n.Seen)
	}
	// Only gpu01's herd answered gpu04: the lab's herd heard and ignored it.
	if after := labMetric(t, lab, "http://"+testlab.LabServer+":8080/metrics", `herd_dhcp_ignored_total{reason="unknown-mac"}`); after <= labIgnored {
		t.Errorf("the lab's herd ignored no unknown MAC while gpu04 booted (%v before, %v after): did it answer gpu04?", labIgnored, after)
	}
	if ls, err := dhcp.LoadLeases(filepath.Join(lab.StateDir, "leases.json")); err != nil {
		t.Error(err)
	} else {
		for _, le := range ls.All() {
			if strings.EqualFold(le.MAC, vmNodeMAC) {
				t.Errorf("the lab's herd gave gpu04 a lease: %+v", le)
			}
		}
	}
	if r := labMetric(t, lab, "http://"+b.Node.IP+":8080/metrics", `herd_dhcp_replies_total{mode="full",type="ACK"}`); r < 1 {
		t.Errorf("gpu01's herd sent no DHCP ACK (%v)", r)
	}
}

// labMetric returns the value of one sample (name{labels} exactly as the
// exposition format prints it) from a herd's /metrics seen from the lab
// namespace; 0 when the sample is absent (a counter not yet incremented).
func labMetric(t *testing.T, lab *testlab.Lab, url, sample string) float64 {
	t.Helper()
	code, body, err := lab.HTTPGet(url)
	if err != nil || code != 200 {
		t.Fatalf("GET %s: %d %v", url, code, err)
	}
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, sample+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s: %q: %v", url, l, err)
			}
			return f
		}
	}
	return 0
}
