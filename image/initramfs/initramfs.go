// Package initramfs puts herd's stateless boot path into an image tree: the
// initramfs-tools hook and `boot=herd` script, the herd-boot agent and the
// herd-up, herd-verity and herd-status units. The image builder calls Install before the image's own
// update-initramfs, so the initramfs it generates carries them.
package initramfs

import (
	"embed"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/herdlab/herd/internal/atomicfile"
)

//go:embed files/hook files/script files/herd-up.service files/herd-verity.service files/herd-status.service
var files embed.FS

// Paths inside the image tree, relative to its root.
const (
	AgentPath   = "usr/lib/herd/herd-boot"
	HookPath    = "etc/initramfs-tools/hooks/herd"
	ScriptPath  = "etc/initramfs-tools/scripts/herd"
	UnitPath    = "etc/systemd/system/herd-up.service"
	WantsLink   = "etc/systemd/system/multi-user.target.wants/herd-up.service"
	VerityUnit  = "etc/systemd/system/herd-verity.service"
	VerityWants = "etc/systemd/system/multi-user.target.wants/herd-verity.service"
	StatusUnit  = "etc/systemd/system/herd-status.service"
	StatusWants = "etc/systemd/system/multi-user.target.wants/herd-status.service"
	unitTarget  = "/etc/systemd/system/herd-up.service"
	embedHook   = "files/hook"
	embedScript = "files/script"
	embedUnit   = "files/herd-up.service"
	embedVerity = "files/herd-verity.service"
	embedStatus = "files/herd-status.service"
)

// Install writes the hook, boot script, agent and unit into chroot so that
// update-initramfs inside it builds an initramfs that boots with boot=herd.
func Install(chroot, agentPath string) error {
	st, err := os.Stat(chroot)
	if err != nil {
		return fmt.Errorf("initramfs: image tree: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("initramfs: image tree %s is not a directory", chroot)
	}
	if _, err := os.Stat(filepath.Join(chroot, "usr/share/initramfs-tools/hook-functions")); err != nil {
		return fmt.Errorf("initramfs: %s has no initramfs-tools (install the initramfs-tools package in the recipe): %w", chroot, err)
	}
	agent, err := os.Open(agentPath)
	if err != nil {
		return fmt.Errorf("initramfs: herd-boot agent: %w", err)
	}
	defer agent.Close()
	if err := checkStatic(agent, agentPath); err != nil {
		return err
	}
	if err := writeFile(chroot, AgentPath, 0o755, func(w io.Writer) error {
		_, err := io.Copy(w, agent)
		return err
	}); err != nil {
		return err
	}
	for _, f := range []struct {
		src, dst string
		mode     os.FileMode
	}{
		{embedHook, HookPath, 0o755},
		{embedScript, ScriptPath, 0o644},
		{embedUnit, UnitPath, 0o644},
		{embedVerity, VerityUnit, 0o644},
		{embedStatus, StatusUnit, 0o644},
	} {
		data, err := files.ReadFile(f.src)
		if err != nil {
			return fmt.Errorf("initramfs: embedded %s: %w", f.src, err)
		}
		if err := writeFile(chroot, f.dst, f.mode, func(w io.Writer) error {
			_, err := w.Write(data)
			return err
		}); err != nil {
			return err
		}
	}
	for link, target := range map[string]string{WantsLink: unitTarget, VerityWants: "/" + VerityUnit, StatusWants: "/" + StatusUnit} {
		link = filepath.Join(chroot, link)
		if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		if err := os.Remove(link); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("initramfs: replace %s: %w", link, err)
		}
		if err := os.Symlink(target, link); err != nil {
			return fmt.Errorf("initramfs: enable %s: %w", filepath.Base(target), err)
		}
	}
	return nil
}

// writeFile writes rel under root atomically with mode, creating parents.
func writeFile(root, rel string, mode os.FileMode, fill func(io.Writer) error) error {
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if err := atomicfile.Write(p, mode, fill); err != nil {
		return fmt.Errorf("initramfs: write %s: %w", p, err)
	}
	return nil
}

// checkStatic refuses an agent with an ELF interpreter: the initramfs has no
// Go-compatible libc guarantees, and a dynamic agent would fail only at boot.
func checkStatic(f *os.File, path string) error {
	defer f.Seek(0, io.SeekStart)
	hdr := make([]byte, 4)
	if _, err := io.ReadFull(f, hdr); err != nil || string(hdr) != "\x7fELF" {
		return fmt.Errorf("initramfs: herd-boot agent %s is not an ELF executable (build it with `make build`)", path)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if dynamic, err := hasInterp(f); err != nil {
		return fmt.Errorf("initramfs: read %s: %w", path, err)
	} else if dynamic {
		return fmt.Errorf("initramfs: herd-boot agent %s is dynamically linked; build it with CGO_ENABLED=0 (`make build`)", path)
	}
	return nil
}
