package solo

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/testlab"
)

// TestVMRunCommand drives `herd vm run` against a bridge in a test
// namespace. dnsmasq stands in for the server's DHCP (the reference tool;
// herd serve is exercised by TestLab) so this test checks only what vm run
// adds: the tap on server.interface, the MAC from herd.yaml, the console,
// --until, the SSD kept across runs and the clean-up.
func TestVMRunCommand(t *testing.T) {
	testenv.Long(t)
	testenv.RequireNetns(t)
	testenv.RequireQEMU(t)
	testenv.RequireCommands(t, "dnsmasq")
	herd := testenv.Bin(t, "HERD_BIN")
	ns, err := testlab.NewNetns("vmrun")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := ns.AddBridge("br-vm", "10.76.0.1/24"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "herd.yaml")
	os.WriteFile(cfg, []byte(`server:
  interface: br-vm
  address: 10.76.0.1
dhcp:
  mode: off
overlays: [base]
nodes:
  - name: try1
    mac: "52:54:00:76:00:31"
    ip: 10.76.0.31
`), 0o644)
	dlog, _ := os.Create(filepath.Join(dir, "dnsmasq.log"))
	defer dlog.Close()
	d := ns.Command(context.Background(), "dnsmasq", "--keep-in-foreground", "--log-facility=-", "--conf-file=/dev/null", "--port=0",
		"--interface=br-vm", "--bind-interfaces", "-u", "root", "--pid-file="+filepath.Join(dir, "dnsmasq.pid"),
		"--dhcp-leasefile="+filepath.Join(dir, "leases"), "--dhcp-range=10.76.0.100,10.76.0.150,1h", "--dhcp-host=52:54:00:76:00:31,10.76.0.31")
	d.Stdout, d.Stderr = dlog, dlog
	d.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { syscall.Kill(-d.Process.Pid, syscall.SIGTERM); d.Wait() }()

	vmdir := filepath.Join(dir, "vm")
	run := func(args ...string) (string, string, error) {
		c := exec.Command(herd, append([]string{"--config", cfg, "vm", "run", "--netns", ns.Name, "--dir", vmdir, "--memory", "256", "--cpus", "1"}, args...)...)
		var out, errb bytes.Buffer
		c.Stdout, c.Stderr = &out, &errb
		err := c.Run()
		return out.String(), errb.String(), err
	}
	out, errs, err := run("--name", "try1", "--disk", "64M", "--until", `net0: 10\.76\.0\.31/`, "--timeout", "4m")
	if err != nil {
		t.Fatalf("herd vm run: %v\nstderr: %s\nconsole:\n%s", err, errs, out)
	}
	if !strings.Contains(out, "iPXE") || !strings.Contains(out, "net0: 10.76.0.31/") {
		t.Errorf("console not printed:\n%s", out)
	}
	if strings.Contains(out, "\x1b[") {
		t.Errorf("console to a pipe still carries escape sequences")
	}
	fi, err := os.Stat(filepath.Join(vmdir, "ssd.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	// The tap is gone and QEMU is no longer running.
	if o, _ := exec.Command("ip", "-n", ns.Name, "-o", "link", "show", "type", "tun").CombinedOutput(); strings.Contains(string(o), "hvm") {
		t.Errorf("tap left behind: %s", o)
	}
	pidOut, _ := exec.Command("sh", "-c", "ps -eo args | grep -c '[q]emu-system.*"+vmdir+"' || true").Output()
	if strings.TrimSpace(string(pidOut)) != "0" {
		t.Errorf("a QEMU of this test still runs")
	}
	// A second run keeps the SSD (same inode, not recreated).
	if _, errs, err := run("--name", "try1", "--until", `net0: 10\.76\.0\.31/`, "--timeout", "4m"); err != nil {
		t.Fatalf("second run: %v %s", err, errs)
	}
	if fi2, err := os.Stat(filepath.Join(vmdir, "ssd.qcow2")); err != nil || !os.SameFile(fi, fi2) {
		t.Errorf("SSD image replaced between runs")
	}

	// Errors name what to fix.
	if _, errs, err := run("--name", "nosuch"); err == nil || !strings.Contains(errs, `node "nosuch" is not in`) {
		t.Errorf("unknown node: %v %s", err, errs)
	}
	if _, errs, err := run("--mac", "zz:zz"); err == nil || !strings.Contains(errs, "--mac") {
		t.Errorf("bad MAC: %v %s", err, errs)
	}
	os.WriteFile(cfg, bytes.Replace(mustRead(t, cfg), []byte("br-vm"), []byte("lo"), 1), 0o644)
	if _, errs, err := run("--name", "try1"); err == nil || !strings.Contains(errs, "not a bridge") {
		t.Errorf("non-bridge interface: %v %s", err, errs)
	}
}

func mustRead(t *testing.T, p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
