package httpboot

// Secure Boot, level herd (site secure_boot: herd; HACKING.md "Secure
// Boot"): UEFI nodes boot one UKI per image generation, signed with herd's
// db key, whose command line carries only per-generation values; a node
// asks for its per-node hints by MAC (/boot/<mac>.json).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/verity"
	"github.com/herdlab/herd/secureboot"
	"github.com/herdlab/herd/site"
)

// Hints are a node's per-node boot values, served as /boot/<mac>.json to a
// node booted from the signed UKI (whose command line cannot carry them).
// They are hints: the node's identity is proven by its key (nodeauth), and
// what it boots is fixed by the signed command line.
type Hints struct {
	Node  string `json:"node"`
	Cache string `json:"cache"`
	// Enroll lists the signed variable updates (file names under
	// /secureboot/) the node writes when its firmware is in Setup Mode:
	// the one-shot `herd secureboot enroll NAME`.
	Enroll []string `json:"enroll,omitempty"`
}

// UKICmdline is the signed UKI's command line for image id: the boot
// contract's per-generation arguments (image URL, sha256, verity root hash,
// chunk index, id, server, keep) and the site's kernel_args; never a per-node value.
func UKICmdline(cfg *site.Config, id string, m *manifest.Manifest) (string, error) {
	root, ok := m.Artifacts[manifest.Rootfs]
	if !ok || root.SHA256 == "" {
		return "", fmt.Errorf("image %s: manifest has no %s hash", id, manifest.Rootfs)
	}
	args := []string{
		"boot=herd", "ip=dhcp",
		"herd.image=" + cfg.ImageURL() + "/images/" + id + "/" + manifest.Rootfs,
		"herd.sha256=" + root.SHA256,
		"herd.id=" + id,
		"herd.server=" + cfg.ServerURL(),
		"herd.keep=" + strconv.Itoa(cfg.Cache.KeepImages),
		"console=tty0", "console=ttyS0,115200n8",
	}
	if v := verity.FromManifest(m); v != nil {
		args = slices.Insert(args, 4, "herd.verity="+v.String())
	}
	if m.Chunks != nil {
		// Per generation too: the node fetches only the chunks it lacks.
		args = slices.Insert(args, slices.Index(args, "herd.id="+id), chunkArgs(cfg.ServerURL()+"/images/"+id+"/"+m.Chunks.File, m.Chunks)...)
	}
	if ka := strings.TrimSpace(cfg.KernelArgs); ka != "" {
		if strings.ContainsFunc(ka, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return "", errors.New("kernel_args holds a control character")
		}
		args = append(args, ka)
	}
	return strings.Join(args, " "), nil
}

// Keys returns herd's Secure Boot keys in state, making them on first need
// (created true), and makes sure the public export (certificates, signed
// updates, served under /secureboot/) exists.
func Keys(ctx context.Context, state string) (ks *secureboot.Keys, created bool, err error) {
	ks, created, err = secureboot.Init(state, "herd")
	if err != nil {
		return nil, false, err
	}
	dir := secureboot.ExportDir(state)
	if _, err := os.Stat(filepath.Join(dir, "PK.auth")); err != nil {
		if _, err := ks.Export(ctx, dir); err != nil {
			return nil, false, fmt.Errorf("export herd's Secure Boot certificates: %w", err)
		}
	}
	return ks, created, nil
}

func (s *Server) keys(ctx context.Context) (*secureboot.Keys, error) {
	ks, created, err := Keys(ctx, s.opt.StateDir)
	if created {
		s.log.Info("secure boot: made herd's Secure Boot keys", "dir", secureboot.Dir(s.opt.StateDir))
	}
	return ks, err
}

// UKI returns the path of image id's signed UKI for the current config,
// building and signing it on first need.
func (s *Server) UKI(ctx context.Context, id string) (string, error) {
	return BuildUKI(ctx, s.cfg.Load(), s.opt.StateDir, s.opt.Images, id)
}

// BuildUKI returns the path of image id's signed UKI under state for cfg
// (secureboot.UKI.Path), building and signing it with herd's db key (made
// on first need) unless it exists.
func BuildUKI(ctx context.Context, cfg *site.Config, state string, images Images, id string) (string, error) {
	full, dir, m, err := images.Resolve(id)
	if err != nil {
		return "", err
	}
	if _, ok := m.Artifacts[manifest.Stub]; !ok {
		return "", fmt.Errorf("image %s has no %s (built by a herd without systemd-stub in the efi stage): rebuild it", full, manifest.Stub)
	}
	cmdline, err := UKICmdline(cfg, full, m)
	if err != nil {
		return "", err
	}
	ks, _, err := Keys(ctx, state)
	if err != nil {
		return "", err
	}
	return ks.Ensure(ctx, state, &secureboot.UKI{ImageID: full, Stub: filepath.Join(dir, manifest.Stub),
		Kernel: filepath.Join(dir, manifest.Kernel), Initrd: filepath.Join(dir, manifest.Initrd), Cmdline: cmdline})
}

// currentUKI is the current image's signed UKI.
func (s *Server) currentUKI(ctx context.Context) (string, error) {
	cur, err := s.opt.Images.Current()
	if err != nil {
		return "", err
	}
	if cur == "" {
		return "", errors.New("no image is current (herd image promote)")
	}
	return s.UKI(ctx, cur)
}

// secureBootFiles are the public files served under /secureboot/ from the
// export directory.
var secureBootFiles = func() map[string]bool {
	m := map[string]bool{}
	for _, r := range secureboot.Roles {
		for _, ext := range []string{".crt", ".cer", ".esl"} {
			m[r+ext] = true
		}
		m[secureboot.UpdateName(r, false)] = true
		m[secureboot.UpdateName(r, true)] = true
	}
	return m
}()

// serveSecureBoot serves /secureboot/herd-uki.efi (UEFI HTTP boot) and the
// public certificates and signed updates. Only with secure_boot: herd.
func (s *Server) serveSecureBoot(w http.ResponseWriter, r *http.Request) {
	if !onlyGet(w, r) {
		return
	}
	cfg := s.cfg.Load()
	name := strings.TrimPrefix(r.URL.Path, "/secureboot/")
	if cfg.SecureBoot != site.SecureBootHerd || (name != secureboot.UKIFile && !secureBootFiles[name]) {
		http.NotFound(w, r)
		return
	}
	var p string
	var err error
	if name == secureboot.UKIFile {
		p, err = s.currentUKI(r.Context())
	} else if _, err = s.keys(r.Context()); err == nil {
		p = filepath.Join(secureboot.ExportDir(s.opt.StateDir), name)
	}
	if err != nil {
		s.log.Error("secure boot: "+name, "err", err)
		http.Error(w, "herd cannot serve "+name+" now; see the server log", http.StatusServiceUnavailable)
		return
	}
	if strings.HasSuffix(name, ".auth") {
		s.log.Info("secure boot: signed key update fetched", "file", name, "remote", remoteIP(r))
	}
	w.Header().Set("Cache-Control", "no-store")
	http.ServeFile(w, r, p)
}

// serveHints answers /boot/<mac>.json: the node's name and cache policy,
// and its one-shot key enrollment if one is pending.
func (s *Server) serveHints(w http.ResponseWriter, r *http.Request) {
	if !onlyGet(w, r) {
		return
	}
	mac, err := ParseScriptPath(strings.TrimSuffix(r.URL.Path, ".json") + ".ipxe")
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	cfg := s.cfg.Load()
	if cfg.SecureBoot != site.SecureBootHerd {
		http.Error(w, "boot hints are served only with secure_boot: herd", http.StatusNotFound)
		return
	}
	from := remoteIP(r)
	node, ok := cfg.NodeByMAC(mac)
	if !ok {
		if cfg.DHCP.Unknown == site.UnknownDiscover {
			if err := s.opt.Inventory.RecordScript(mac, "", "", from, s.opt.Now()); err != nil {
				s.log.Error("record discovery", "mac", mac, "err", err)
			}
		}
		http.Error(w, "unknown node "+mac+" (not in herd.yaml): on the server run: herd node add <name> "+mac, http.StatusNotFound)
		return
	}
	h := Hints{Node: node.Name, Cache: cfg.CacheDiskFor(node)}
	e, ok, err := secureboot.TakeEnroll(s.opt.StateDir, node.Name, s.opt.Now())
	if err != nil {
		s.log.Error("secure boot: read pending enrollments", "err", err)
	} else if ok {
		if _, err := s.keys(r.Context()); err != nil {
			s.log.Error("secure boot: keys for enrollment", "node", node.Name, "err", err)
		} else {
			h.Enroll = e.Updates()
			s.log.Info("secure boot: node takes its one-shot key enrollment", "node", node.Name, "mac", mac,
				"remote", from, "keep_microsoft", !e.DropMicrosoft)
		}
	}
	cur, _ := s.opt.Images.Current()
	if err := s.opt.Inventory.RecordScript(mac, node.Name, cur, from, s.opt.Now()); err != nil {
		s.log.Error("record hints fetch", "node", node.Name, "err", err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(h)
}

// tftpUKI maps the TFTP name herd-uki.efi to the current image's UKI.
func (s *Server) tftpUKI() (string, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := s.currentUKI(ctx)
	if err != nil {
		s.log.Error("secure boot: the signed UKI", "err", err)
		return "", false
	}
	return p, true
}
