package power

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herdlab/herd/site"
)

func TestParseStatus(t *testing.T) {
	for out, want := range map[string]string{"Chassis Power is on\n": StateOn, "Chassis Power is off\n": StateOff} {
		if got, err := parseStatus(out); err != nil || got != want {
			t.Fatalf("parseStatus(%q) = %q, %v", out, got, err)
		}
	}
	if _, err := parseStatus("Error: Unable to establish IPMI v2 / RMCP+ session\n"); err == nil {
		t.Fatal("an error text parsed as a power state")
	}
}

func siteWithBMC(t *testing.T, pwfile string) *site.Config {
	t.Helper()
	src := "overlays: []\ndhcp: {mode: off}\nnodes:\n  - name: gpu01\n    mac: '52:54:00:00:00:01'\n    bmc:\n      address: 10.0.1.11\n      user: admin\n      password_file: " + pwfile + "\n  - name: gpu02\n    mac: '52:54:00:00:00:02'\n"
	cfg, err := site.Parse("herd.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// A password file others can read (a local attacker on the server) is
// refused before any packet is sent, with the herd.yaml field named.
func TestForNodeRefusesReadablePasswordFile(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "gpu01.pass")
	if err := os.WriteFile(pw, []byte("secret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := ForNode(siteWithBMC(t, pw), "gpu01")
	if err == nil || !strings.Contains(err.Error(), "herd.yaml:9:22: field nodes[0].bmc.password_file:") || !strings.Contains(err.Error(), "mode 0644") {
		t.Fatalf("err = %v", err)
	}
	if err := os.Chmod(pw, 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := ForNode(siteWithBMC(t, pw), "gpu01")
	if err != nil {
		t.Fatal(err)
	}
	// The password goes to ipmitool as a file, never on its command line
	// (which every local user can read in /proc).
	args := strings.Join(p.args("chassis", "power", "status"), " ")
	if strings.Contains(args, "secret") || !strings.Contains(args, "-f "+pw) || !strings.Contains(args, "-p 623") {
		t.Fatalf("ipmitool args = %s", args)
	}
	if _, err := ForNode(siteWithBMC(t, pw), "gpu02"); !errors.Is(err, ErrNoBMC) || !strings.Contains(err.Error(), "nodes[1]") {
		t.Fatalf("node without bmc: %v", err)
	}
	if _, err := ForNode(siteWithBMC(t, pw), "gpu09"); err == nil {
		t.Fatal("unknown node accepted")
	}
	if err := p.Power(context.Background(), "reboot"); err == nil || !strings.Contains(err.Error(), "not on, off or cycle") {
		t.Fatalf("bad action: %v", err)
	}
}
