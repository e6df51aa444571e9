package httpboot

// Secure Boot, level distro (site secure_boot: distro; HACKING.md "Secure
// Boot"). UEFI PXE firmware gets shimx64.efi over TFTP (pxe/dhcp), shim loads
// grubx64.efi from the same TFTP directory, and Ubuntu's network GRUB (built
// with prefix /grub) reads (tftp,<server>)/grub/grub.cfg. That file is the
// same for every node: it sources the node's own config over HTTP,
// /boot/<mac>.grub, which loads kernel and initrd over HTTP with the same
// command line as the iPXE script. shim verifies GRUB, GRUB (through shim)
// verifies the kernel; the initrd and the command line are not verified at
// this level (that is the herd level's signed UKI).

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/internal/atomicfile"
	"github.com/herdlab/herd/secureboot"
	"github.com/herdlab/herd/site"
)

// GrubCfgName is the file Ubuntu's grubnetx64 reads from the TFTP server
// (its embedded prefix is /grub; it also probes grub/x86_64-efi/grub.cfg
// and grub/grub.cfg-amd64 first, which are not found).
const GrubCfgName = "grub/grub.cfg"

// TFTPFile maps the Secure Boot chain's TFTP names to files (tftp.Config.Extra):
// shimx64.efi and grubx64.efi of the current image, and the site-wide
// grub/grub.cfg written under <state>/secureboot/. Only with secure_boot: distro.
func (s *Server) TFTPFile(name string) (string, bool) {
	cfg := s.cfg.Load()
	if cfg.SecureBoot == site.SecureBootHerd && name == secureboot.UKIFile {
		return s.tftpUKI()
	}
	if cfg.SecureBoot != site.SecureBootDistro {
		return "", false
	}
	switch name {
	case manifest.Shim, manifest.Grub:
		cur, err := s.opt.Images.Current()
		if err != nil || cur == "" {
			return "", false
		}
		_, dir, m, err := s.opt.Images.Resolve(cur)
		if err != nil {
			return "", false
		}
		if _, ok := m.Artifacts[name]; !ok {
			s.log.Warn("secure boot: the current image has no "+name+" (built by a herd without the efi stage): rebuild it", "image", cur)
			return "", false
		}
		return filepath.Join(dir, name), true
	case GrubCfgName:
		p, err := s.writeGrubCfg(cfg)
		if err != nil {
			s.log.Error("secure boot: write grub.cfg", "err", err)
			return "", false
		}
		return p, true
	}
	return "", false
}

// writeGrubCfg writes the site-wide grub.cfg when it changed and returns its path.
func (s *Server) writeGrubCfg(cfg *site.Config) (string, error) {
	text, err := SiteGrubCfg(cfg)
	if err != nil {
		return "", err
	}
	p := filepath.Join(s.opt.StateDir, "secureboot", "grub.cfg")
	if old, err := os.ReadFile(p); err == nil && string(old) == text {
		return p, nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", err
	}
	return p, atomicfile.WriteFile(p, []byte(text), 0o644)
}

// grubHTTP is GRUB's device for the boot HTTP server: (http,host:port).
func grubHTTP(cfg *site.Config) (string, error) {
	u, err := url.Parse(cfg.ServerURL())
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("server URL %q: %v", cfg.ServerURL(), err)
	}
	host := u.Host
	if _, _, err := net.SplitHostPort(host); err != nil {
		host += ":80"
	}
	return "(http," + host + ")", nil
}

// SiteGrubCfg is grub/grub.cfg: fetch this node's config by MAC over HTTP.
func SiteGrubCfg(cfg *site.Config) (string, error) {
	dev, err := grubHTTP(cfg)
	if err != nil {
		return "", err
	}
	return "# Written by herd (secure_boot: distro): every node's config is on the boot HTTP server.\n" +
		"set timeout=0\n" +
		"echo \"herd: node ${net_default_mac}\"\n" +
		"source " + dev + "/boot/${net_default_mac}.grub\n", nil
}

// grubQuote quotes one word for GRUB's config parser: single quotes keep
// everything literal ($, ;, spaces); a single quote ends, is escaped, restarts.
func grubQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// GrubScript is a node's /boot/<mac>.grub: the kernel and initrds of the iPXE
// script (BootSpec: one command-line builder for both), over HTTP.
func GrubScript(cfg *site.Config, node *site.Node, id string, m *manifest.Manifest) (string, error) {
	spec, err := BootSpec(cfg, node, id, m)
	if err != nil {
		return "", err
	}
	dev, err := grubHTTP(cfg)
	if err != nil {
		return "", err
	}
	path := func(u string) (string, error) {
		p, ok := strings.CutPrefix(u, cfg.ServerURL())
		if !ok {
			return "", fmt.Errorf("%s is not on the boot server %s: GRUB loads only from it", u, cfg.ServerURL())
		}
		return dev + p, nil
	}
	kernel, err := path(spec.Kernel)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString("# herd: node " + node.Name + ", image " + id + "\n")
	b.WriteString("echo 'herd: loading kernel'\n")
	b.WriteString("linux " + kernel)
	for _, a := range spec.Args {
		b.WriteString(" " + grubQuote(a))
	}
	b.WriteString("\necho 'herd: loading initrd'\ninitrd")
	for _, i := range spec.Initrds {
		p, err := path(i.URL)
		if err != nil {
			return "", err
		}
		b.WriteString(" " + p)
	}
	b.WriteString("\nboot\n")
	return b.String(), nil
}

// grubRetry is served when the node cannot boot right now: GRUB says why
// and asks again.
func grubRetry(cfg *site.Config, mac, why string) string {
	dev, err := grubHTTP(cfg)
	if err != nil {
		return "echo 'herd: cannot boot'\n"
	}
	return "echo " + grubQuote("herd: cannot boot "+mac+": "+why) + "\n" +
		"echo 'herd: retrying in 60 seconds'\nsleep 60\n" +
		"source " + dev + "/boot/" + mac + ".grub\n"
}

// writeGrubOrIPXE writes a script or its retry in the flavour the request asked for.
func writeGrubOrIPXE(w http.ResponseWriter, grub bool, ipxe, grubText string) {
	if grub {
		io.WriteString(w, grubText)
		return
	}
	io.WriteString(w, ipxe)
}
