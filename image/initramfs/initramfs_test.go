package initramfs

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herdlab/herd/internal/testenv"
)

// buildAgent builds the real static agent the way `make build` does.
func buildAgent(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("HERD_BOOT_BIN"); p != "" {
		return p
	}
	out := filepath.Join(t.TempDir(), "herd-boot")
	cmd := exec.Command("go", "build", "-o", out, "github.com/herdlab/herd/cmd/herd-boot")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build herd-boot: %v\n%s", err, b)
	}
	return out
}

func fakeChroot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	hf := filepath.Join(root, "usr/share/initramfs-tools/hook-functions")
	if err := os.MkdirAll(filepath.Dir(hf), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hf, []byte("# stand-in\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestInstallWritesHookScriptAgentAndUnit(t *testing.T) {
	agent := buildAgent(t)
	root := fakeChroot(t)
	if err := Install(root, agent); err != nil {
		t.Fatal(err)
	}
	// Twice: an image rebuild re-runs Install over its own output.
	if err := Install(root, agent); err != nil {
		t.Fatalf("second Install: %v", err)
	}
	for rel, mode := range map[string]os.FileMode{AgentPath: 0o755, HookPath: 0o755, ScriptPath: 0o644, UnitPath: 0o644, VerityUnit: 0o644, StatusUnit: 0o644} {
		st, err := os.Stat(filepath.Join(root, rel))
		if err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", rel, st.Mode().Perm(), mode)
		}
	}
	if l, err := os.Readlink(filepath.Join(root, VerityWants)); err != nil || l != "/etc/systemd/system/herd-verity.service" {
		t.Errorf("herd-verity.service not enabled: %q %v", l, err)
	}
	if l, err := os.Readlink(filepath.Join(root, StatusWants)); err != nil || l != "/etc/systemd/system/herd-status.service" {
		t.Errorf("herd-status.service not enabled: %q %v", l, err)
	}
	if l, err := os.Readlink(filepath.Join(root, WantsLink)); err != nil || l != "/etc/systemd/system/herd-up.service" {
		t.Errorf("wants link = %q, %v", l, err)
	}
	a, _ := os.ReadFile(agent)
	b, _ := os.ReadFile(filepath.Join(root, AgentPath))
	if string(a) != string(b) {
		t.Error("installed agent differs from the built one")
	}
	// The installed agent runs.
	out, err := exec.Command(filepath.Join(root, AgentPath), "version").CombinedOutput()
	if err != nil {
		t.Fatalf("installed agent: %v: %s", err, out)
	}
	// Shell syntax of what initramfs-tools will source and run.
	for _, rel := range []string{HookPath, ScriptPath} {
		if out, err := exec.Command("sh", "-n", filepath.Join(root, rel)).CombinedOutput(); err != nil {
			t.Errorf("sh -n %s: %v: %s", rel, err, out)
		}
	}
	script, _ := os.ReadFile(filepath.Join(root, ScriptPath))
	for _, fn := range []string{"mountroot()", "mount_top()", "mount_premount()", "mount_bottom()", "ipconfig -t \"$round\" -c dhcp -d all", "configure_networking", "herd-boot mountroot \"${rootmnt}\""} {
		if !strings.Contains(string(script), fn) {
			t.Errorf("boot script lacks %s", fn)
		}
	}
}

func TestInstallRefusesBadInputs(t *testing.T) {
	agent := buildAgent(t)
	if err := Install(t.TempDir(), agent); err == nil || !strings.Contains(err.Error(), "initramfs-tools") {
		t.Errorf("tree without initramfs-tools: err = %v", err)
	}
	root := fakeChroot(t)
	if err := Install(root, filepath.Join(root, "missing")); err == nil {
		t.Error("missing agent accepted")
	}
	// A dynamically linked binary would die in the initramfs.
	testenv.RequireCommands(t, "sh")
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	if err := Install(root, sh); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Errorf("dynamic agent: err = %v", err)
	}
	txt := filepath.Join(root, "agent.txt")
	os.WriteFile(txt, []byte("#!/bin/sh\n"), 0o755)
	if err := Install(root, txt); err == nil || !strings.Contains(err.Error(), "not an ELF") {
		t.Errorf("script agent: err = %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, AgentPath)); err == nil {
		t.Error("a refused agent was installed")
	}
}
