package solo

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/testlab"
)

// TestSecureBootDistro boots one UEFI node with Secure Boot enforced (OVMF's
// Secure Boot build, Microsoft's keys enrolled) on a site with
// secure_boot: distro: firmware → Microsoft-signed shim → Canonical-signed
// GRUB → Canonical-signed kernel, all from the image's own packages. On the
// node Secure Boot reads enabled, the kernel is locked down, the signed
// NVIDIA module is accepted (it fails only for want of a GPU) and a module
// with its signature cut off is refused. TestLab's two nodes prove that
// SeaBIOS and UEFI without Secure Boot boot as before. Own lab (one node):
// the setting is site-wide, so it cannot share TestLab's.
func TestSecureBootDistro(t *testing.T) {
	herd := testlab.RequireLab(t)
	testenv.RequireFiles(t, "package ovmf", testlab.OVMFSecureCode, testlab.OVMFMSVars)
	ctx := context.Background()

	img := testlab.RecipeImage(t, herd, "HERD_E2E_IMAGE", defaultRecipe, testlab.WriteLabSite)
	dir := testlab.TempLabDir(t)
	// no_timer_check: under TCG with SMM (the Secure Boot OVMF) a busy
	// host makes the kernel's IO-APIC timer check fail ("IO-APIC + timer
	// doesn't work!" panic); a real server never runs that slowly.
	nodes := append([]testlab.LabNode(nil), testlab.DefaultLabNodes...)
	for i := range nodes {
		nodes[i].KernelArgs = "no_timer_check"
	}
	lab, err := testlab.StartLab(ctx, testlab.LabConfig{Dir: dir, HerdBin: herd, ImageDir: img, Nodes: nodes,
		SecureBoot: true, ExtraYAML: "secure_boot: distro\n"})
	if err != nil {
		t.Fatal(err)
	}
	var b *testlab.Booted
	t.Cleanup(func() {
		if t.Failed() {
			if b != nil {
				t.Logf("--- serial console (%s) ---\n%s", b.VM.SerialPath, b.VM.Console.Tail(80))
			}
			t.Logf("--- server log (%s) ---\n%s", lab.ServerLog, testlab.TailLines([]byte(lab.ServerLogText()), 60))
		}
		if b != nil {
			b.VM.Stop()
		}
		lab.Close()
	})
	uid, gid, err := lab.AddUser(ctx, "alice", alicePassword)
	if err != nil {
		t.Fatal(err)
	}
	b, err = testlab.BootNode(ctx, lab, "gpu02", true, "alice", alicePassword, uid, gid)
	if err != nil {
		t.Fatal(err)
	}
	// The chain went through shim and GRUB over TFTP, then GRUB's config
	// over HTTP (the server's access log), not iPXE.
	log := lab.ServerLogText()
	for _, want := range []string{`file=shimx64.efi`, `grubx64.efi`, `grub/grub.cfg`, `path=/boot/52:54:00:77:00:12.grub`} {
		if !strings.Contains(log, want) {
			t.Errorf("server log has no %s: the node did not boot through shim and GRUB", want)
		}
	}
	if strings.Contains(log, `file=snponly.efi`) {
		t.Errorf("the Secure Boot node was handed iPXE")
	}

	run := func(cmd string) string {
		t.Helper()
		c, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		out, err := b.User.Sudo(c, cmd)
		if err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, out)
		}
		return out
	}
	t.Run("secure-boot-enabled", func(t *testing.T) {
		// SecureBoot-8be4df61-...: 4 bytes of attributes, then 1 = on.
		out := run("od -An -tu1 /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c")
		if f := strings.Fields(out); len(f) != 5 || f[4] != "1" {
			t.Errorf("SecureBoot variable reads %q, want enabled (last byte 1)", out)
		}
	})
	t.Run("kernel-lockdown", func(t *testing.T) {
		out := run("cat /sys/kernel/security/lockdown")
		if !regexp.MustCompile(`\[(integrity|confidentiality)\]`).MatchString(out) {
			t.Errorf("lockdown %q, want [integrity] or [confidentiality]", out)
		}
	})
	t.Run("signed-nvidia-module-accepted", func(t *testing.T) {
		out, _ := b.User.Sudo(ctx, "modprobe nvidia 2>&1; echo rc=$?; dmesg | grep -iE 'nvidia|module verification|Key was rejected|signature' | tail -20")
		if regexp.MustCompile(`(?i)key was rejected|required key not available|bad signature|module verification failed`).MatchString(out) {
			t.Errorf("the NVIDIA module was refused for its signature:\n%s", out)
		}
		if !strings.Contains(out, "No such device") {
			t.Errorf("modprobe nvidia did not fail with \"No such device\" (no GPU):\n%s", out)
		}
	})
	t.Run("unsigned-module-refused", func(t *testing.T) {
		// Any module with its appended signature cut off: find the
		// "~Module signature appended~\n" marker and the signature's
		// length in the 12-byte trailer before it.
		script := `set -e; m=$(modinfo -n nls_ascii 2>/dev/null || modinfo -n cfg80211); ` +
			`case "$m" in *.zst) zstd -dqc "$m" > /tmp/u.ko;; *.xz) xz -dc "$m" > /tmp/u.ko;; *) cp "$m" /tmp/u.ko;; esac; ` +
			`python3 -c "
import struct
d=open('/tmp/u.ko','rb').read()
mk=b'~Module signature appended~\n'
assert d.endswith(mk), 'not signed'
n=struct.unpack('>I', d[-len(mk)-4:-len(mk)])[0]
open('/tmp/u.ko','wb').write(d[:-len(mk)-12-n])
"; modprobe -r $(basename "$m" | sed 's/\.ko.*//') 2>/dev/null || true; insmod /tmp/u.ko 2>&1; echo rc=$?`
		out, _ := b.User.Sudo(ctx, script)
		if strings.Contains(out, "rc=0") {
			t.Fatalf("an unsigned module was loaded under Secure Boot:\n%s", out)
		}
		if !regexp.MustCompile(`(?i)key was rejected|required key not available|Operation not permitted|not signed`).MatchString(out) {
			t.Errorf("insmod of the unsigned module failed, but not for its signature:\n%s", out)
		}
		if strings.Contains(out, "not signed") {
			t.Errorf("the module taken was not signed to begin with:\n%s", out)
		}
	})
}
