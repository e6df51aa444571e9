package qemutests

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/testlab"
)

// The package and its unit under a real systemd, on TestLab's booted gpu01
// (Ubuntu 24.04, herd's own image): `make deb`, install it, start
// herd.service (running as the herd user after binding its ports, no
// capabilities left). Type=notify makes the unit active only after herd sent
// READY=1 from inside its sandbox (ProtectSystem=strict, the bounding set,
// the syscall filter), so "active" proves the hardening leaves herd serving;
// its HTTP answers from the lab namespace; `systemd-analyze security` is
// logged; kill -9 is restarted by systemd, and a stopped (hung) herd is
// killed and restarted by the watchdog. Then the same service, with a state
// restored from a backup, serves a node of its own (servicenode_test.go).
func init() {
	labExtras = append(labExtras, labExtra{name: "deb-service-under-systemd", run: serviceCheck})
}

func serviceCheck(t *testing.T, ctx context.Context, lab *testlab.Lab, nodes map[string]*testlab.Booted) {
	b, ok := nodes["gpu01"]
	if !ok {
		t.Fatal("gpu01 did not boot")
	}
	out := t.TempDir()
	if o, err := exec.CommandContext(ctx, "make", "-C", "..", "deb", "BIN="+out).CombinedOutput(); err != nil {
		t.Fatalf("make deb: %v\n%s", err, o)
	}
	debs, _ := filepath.Glob(filepath.Join(out, "herd_*_amd64.deb"))
	if len(debs) != 1 {
		t.Fatalf("make deb made %v", debs)
	}
	g := b.User
	// Copy the package over SSH (stdin of cat), then install it. The lab has
	// no package archive: dpkg installs it without the image-building tools
	// it depends on, which serving does not use.
	data, err := os.ReadFile(debs[0])
	if err != nil {
		t.Fatal(err)
	}
	c, err := g.Dial()
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	s.Stdin = strings.NewReader(string(data))
	if o, err := s.CombinedOutput("cat > /tmp/herd.deb"); err != nil {
		t.Fatalf("copy the package: %v %s", err, o)
	}
	c.Close()
	sudoT := func(t *testing.T, cmd string) string {
		t.Helper()
		o, err := g.Sudo(ctx, cmd)
		if err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, o)
		}
		return o
	}
	sudo := func(cmd string) string { t.Helper(); return sudoT(t, cmd) }
	sudo("dpkg --force-depends -i /tmp/herd.deb >/tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; exit 1; }")
	ip := b.Node.IP
	// No DHCP here (the lab's herd answers it); the ipxe package is one of
	// the dependencies not installed, so TFTP serves the package's own dir.
	sudo(fmt.Sprintf(`printf 'server: {address: %s, http_port: 8080, tftp_root: /usr/lib/herd}\ndhcp: {mode: "off"}\noverlays: []\n' > /etc/herd/herd.yaml`, ip))
	sudo("systemctl start herd") // returns once READY=1 arrived (Type=notify)

	showT := func(t *testing.T) map[string]string {
		o := sudoT(t, "systemctl show herd -p ActiveState -p SubState -p MainPID -p NRestarts -p Type -p WatchdogUSec")
		m := map[string]string{}
		for _, l := range strings.Split(strings.TrimSpace(o), "\n") {
			k, v, _ := strings.Cut(l, "=")
			m[k] = v
		}
		return m
	}
	show := func() map[string]string { return showT(t) }
	st := show()
	if st["ActiveState"] != "active" || st["Type"] != "notify" || st["WatchdogUSec"] == "0" {
		t.Fatalf("herd.service after start: %v\n%s", st, sudo("journalctl -u herd --no-pager -n 50"))
	}
	client := lab.Netns.HTTPClient()
	healthy := func() bool {
		resp, err := client.Get(fmt.Sprintf("http://%s:8080/healthz", ip))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}
	if !healthy() {
		t.Fatalf("herd.service is active but its HTTP does not answer:\n%s", sudo("journalctl -u herd --no-pager -n 50"))
	}
	// Root only to bind the ports: every thread of the service now runs
	// as the package's herd user with no capabilities (issue 15).
	procs := sudo("id -u herd; cat /proc/" + st["MainPID"] + "/task/*/status | grep -E '^(Uid|Gid|CapInh|CapPrm|CapEff|CapAmb):'")
	if lines := strings.Split(strings.TrimSpace(procs), "\n"); len(lines) < 7 {
		t.Errorf("herd's /proc status: %s", procs)
	} else {
		uid := strings.TrimSpace(lines[0])
		for _, l := range lines[1:] {
			k, v, _ := strings.Cut(l, ":")
			f := strings.Fields(v)
			switch {
			case k == "Uid" && (len(f) != 4 || f[0] != uid || f[1] != uid || f[2] != uid || f[3] != uid):
				t.Errorf("herd.service thread runs as %q, want the herd user %s everywhere", v, uid)
			case strings.HasPrefix(k, "Cap") && (len(f) != 1 || strings.Trim(f[0], "0") != ""):
				t.Errorf("herd.service thread keeps capabilities: %s", l)
			}
		}
	}
	sec := sudo("systemd-analyze security herd.service 2>&1 | tail -n 1")
	t.Logf("inside gpu01: %s", strings.TrimSpace(sec))
	if !regexp.MustCompile(`Overall exposure level for herd.service: [0-9.]+ OK`).MatchString(sec) {
		t.Errorf("exposure: %s", sec)
	}

	// restarted waits (liveness only) for systemd to bring herd back with a new PID.
	restartedT := func(t *testing.T, what, oldPID string, restarts int) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Minute)
		for {
			st := showT(t)
			if st["ActiveState"] == "active" && st["MainPID"] != oldPID && st["NRestarts"] == fmt.Sprint(restarts) && healthy() {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: herd was not restarted: %v\n%s", what, st, sudoT(t, "journalctl -u herd --no-pager -n 50"))
			}
			time.Sleep(2 * time.Second)
		}
	}
	restarted := func(what, oldPID string, restarts int) { t.Helper(); restartedT(t, what, oldPID, restarts) }
	pid := st["MainPID"]
	sudo("kill -9 " + pid)
	restarted("kill -9", pid, 1)
	// A hung herd (stopped: no health, no WATCHDOG=1) is killed by the
	// watchdog after WatchdogSec and restarted.
	pid = show()["MainPID"]
	sudo("kill -STOP " + pid)
	restarted("watchdog", pid, 2)
	if j := sudo("journalctl -u herd --no-pager"); !strings.Contains(j, "atchdog") {
		t.Errorf("the journal does not show the watchdog firing:\n%s", j)
	}
	sudo("systemctl stop herd")
	t.Run("second-node-boots-from-it", func(t *testing.T) { vmNodeBoots(t, ctx, lab, b, sudoT, showT, restartedT) })
}
