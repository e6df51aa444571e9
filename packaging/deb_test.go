// Package packaging_test builds the Debian package with `make deb` and checks
// it with lintian, dpkg-deb and systemd-analyze.
package packaging_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/herdlab/herd/internal/testenv"
)

// TestDebPackage: `make deb` (into a scratch BIN, so bin/ is untouched) makes
// a package lintian accepts without errors or warnings, with the binaries,
// the unit, man pages, completions, the conffile and the dependencies; the
// unit's `systemd-analyze security` exposure is logged and must stay "OK".
func TestDebPackage(t *testing.T) {
	testenv.Long(t)
	testenv.RequireCommands(t, "make", "gcc", "lintian", "dpkg-deb", "systemd-analyze")
	out := t.TempDir()
	cmd := exec.Command("make", "-C", "..", "deb", "BIN="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make deb: %v\n%s", err, b)
	}
	debs, _ := filepath.Glob(filepath.Join(out, "herd_*_amd64.deb"))
	if len(debs) != 1 {
		t.Fatalf("make deb made %v", debs)
	}
	deb := debs[0]
	lint, err := exec.Command("lintian", "--fail-on", "error,warning", "--pedantic", "--display-info", deb).CombinedOutput()
	t.Logf("lintian:\n%s", lint)
	if err != nil {
		t.Fatalf("lintian rejects the package: %v", err)
	}

	info, err := exec.Command("dpkg-deb", "--info", deb).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Depends: libc6, mmdebstrap, squashfs-tools, ipxe,", "Recommends: qemu-system-x86", "conffiles"} {
		if !strings.Contains(string(info), want) {
			t.Errorf("control lacks %q:\n%s", want, info)
		}
	}
	x := t.TempDir()
	if b, err := exec.Command("dpkg-deb", "--raw-extract", deb, x).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, b)
	}
	if b, _ := os.ReadFile(filepath.Join(x, "DEBIAN", "conffiles")); strings.TrimSpace(string(b)) != "/etc/herd/herd.yaml" {
		t.Errorf("conffiles: %q", b)
	}
	for _, f := range []string{"usr/bin/herd", "usr/lib/herd/herd-boot", "lib/systemd/system/herd.service", "etc/herd/herd.yaml",
		"usr/share/man/man1/herd.1.gz", "usr/share/man/man1/herd-serve.1.gz", "usr/share/man/man1/herd-backup.1.gz",
		"usr/share/bash-completion/completions/herd", "usr/share/zsh/vendor-completions/_herd",
		"usr/share/fish/vendor_completions.d/herd.fish", "usr/share/doc/herd/copyright", "usr/share/doc/herd/changelog.gz"} {
		if _, err := os.Stat(filepath.Join(x, f)); err != nil {
			t.Errorf("package lacks %s", f)
		}
	}
	if b, err := exec.Command(filepath.Join(x, "usr/bin/herd"), "--version").Output(); err != nil || !strings.HasPrefix(string(b), "herd version ") {
		t.Errorf("packaged herd --version: %v %q", err, b)
	}

	unit := filepath.Join(x, "lib/systemd/system/herd.service")
	b, _ := os.ReadFile(unit)
	for _, want := range []string{"Type=notify", "WatchdogSec=", "Restart=on-failure", "ProtectSystem=strict", "ReadWritePaths=/var/lib/herd",
		"serve --user herd ", "PrivateTmp=yes", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_NET_RAW CAP_SETUID CAP_SETGID CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_CHOWN CAP_FOWNER\n", "NoNewPrivileges=yes"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("herd.service lacks %q", want)
		}
	}
	sec, err := exec.Command("systemd-analyze", "security", "--offline=true", unit).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, sec)
	}
	m := regexp.MustCompile(`Overall exposure level for herd.service: ([0-9.]+) (\S+)`).FindStringSubmatch(string(sec))
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", sec)
	}
	t.Logf("systemd-analyze security herd.service: exposure %s %s", m[1], m[2])
	if m[2] != "OK" {
		t.Errorf("herd.service exposure %s %s, want OK:\n%s", m[1], m[2], sec)
	}
}
