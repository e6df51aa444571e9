package overlays_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/squashfs"

	"github.com/herdlab/herd/image/build"
	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/recipe"
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/overlays"
	"github.com/herdlab/herd/site"
	"github.com/herdlab/herd/testlab"
)

// buildAgent builds the static herd-boot agent (or uses HERD_BOOT_BIN).
func buildAgent(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("HERD_BOOT_BIN"); p != "" {
		return p
	}
	p := filepath.Join(t.TempDir(), "herd-boot")
	cmd := exec.Command("go", "build", "-o", p, "../cmd/herd-boot")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build herd-boot: %v\n%s", err, out)
	}
	return p
}

// TestImageCarriesTheRender builds the default GPU recipe with every
// overlay, rendered for the rich test site, and checks that each rendered
// entry is in rootfs.squashfs (read with go-diskfs) with the same bytes,
// mode, owner and link target. Then it unpacks the image and runs the
// image's own checkers on the files: visudo, sshd -t, sh -n and
// systemd-analyze verify. Stages shared with other builds come from the
// test store's cache.
func TestImageCarriesTheRender(t *testing.T) {
	testenv.Long(t)
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "mmdebstrap", "mksquashfs", "unsquashfs", "gpg", "unshare", "go", "chroot")

	cfg, err := site.Load("testdata/site.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile("../recipes/ubuntu-noble-gpu.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rp := filepath.Join(t.TempDir(), "ubuntu-noble-gpu.yaml")
	if err := os.WriteFile(rp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := recipe.Load(rp, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(testlab.TestStore)
	if err != nil {
		t.Fatal(err)
	}
	var rendered []overlays.File
	var prog bytes.Buffer
	res, err := build.Build(context.Background(), r, build.Options{
		StateDir:  testlab.TestStore,
		Store:     st,
		AgentPath: buildAgent(t),
		Progress:  &prog,
		Overlays: func(names []string) (build.OverlaySet, error) {
			f, err := overlays.Render(cfg, names)
			rendered = f
			return overlays.Set(f), err
		},
	})
	t.Logf("build progress:\n%s", prog.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(rendered) == 0 {
		t.Fatal("the build rendered no overlay files")
	}
	if len(res.Manifest.Overlays) != len(rendered) {
		t.Errorf("manifest lists %d overlay files, render has %d", len(res.Manifest.Overlays), len(rendered))
	}
	img, err := st.Get(res.ID)
	if err != nil {
		t.Fatal(err)
	}
	sq := filepath.Join(img.Dir, manifest.Rootfs)

	t.Run("squashfs matches render", func(t *testing.T) {
		fsys := openSquash(t, sq)
		for _, f := range rendered {
			checkEntry(t, fsys, f)
		}
	})

	tree := filepath.Join(t.TempDir(), "root")
	if out, err := exec.Command("unsquashfs", "-q", "-n", "-d", tree, sq).CombinedOutput(); err != nil {
		t.Fatalf("unsquashfs: %v\n%s", err, out)
	}
	inImage := func(t *testing.T, args ...string) string {
		t.Helper()
		out, err := exec.Command("chroot", append([]string{tree}, args...)...).CombinedOutput()
		if err != nil {
			t.Errorf("in the image: %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	t.Run("visudo", func(t *testing.T) {
		inImage(t, "visudo", "-c", "-f", "/etc/sudoers.d/herd")
		inImage(t, "visudo", "-c") // the whole sudoers with our include
	})
	t.Run("sshd -t", func(t *testing.T) {
		// sshd insists on its privilege separation dir (tmpfiles makes it at boot).
		if err := os.MkdirAll(filepath.Join(tree, "run/sshd"), 0o755); err != nil {
			t.Fatal(err)
		}
		// The image ships no host keys (the build drops the ones
		// openssh-server's postinst made, which every node would share):
		// ssh.service makes this boot's first, as on a node.
		if shared, _ := filepath.Glob(filepath.Join(tree, "etc/ssh/ssh_host_*")); len(shared) > 0 {
			t.Errorf("the image ships build-time host keys every node would share: %v", shared)
		}
		inImage(t, "/usr/lib/herd/ssh-host-keys")
		out := inImage(t, "/usr/sbin/sshd", "-T", "-C", "user=alice,host=x,addr=10.77.0.50")
		for _, want := range []string{"passwordauthentication yes", "usepam yes", "permitrootlogin without-password"} {
			if !strings.Contains(out, want) {
				t.Errorf("effective sshd config lacks %q", want)
			}
		}
	})
	t.Run("scripts parse", func(t *testing.T) {
		for _, f := range rendered {
			if !f.Dir && f.Link == "" && f.Mode&0o111 != 0 {
				inImage(t, "/bin/sh", "-n", "/"+f.Path)
			}
		}
	})
	t.Run("systemd-analyze verify", func(t *testing.T) {
		var units []string
		for _, f := range rendered {
			if !f.Dir && f.Link == "" && strings.HasPrefix(f.Path, "etc/systemd/system/") && strings.Count(f.Path, "/") == 3 {
				units = append(units, "/"+f.Path)
			}
		}
		if len(units) == 0 {
			t.Fatal("no units rendered")
		}
		// --man=no: the image has no man pages for Documentation= links.
		out := inImage(t, append([]string{"systemd-analyze", "verify", "--man=no"}, units...)...)
		t.Logf("systemd-analyze verify %v:\n%s", units, out)
	})
	t.Run("resolv.conf from DHCP lease", func(t *testing.T) {
		// What networkd leaves in /run when systemd-resolved is absent.
		leases := filepath.Join(tree, "run/systemd/netif/leases")
		if err := os.MkdirAll(leases, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(leases, "2"), []byte("# This is private data. Do not parse.\nADDRESS=10.77.0.11\nDNS=10.77.0.1 10.77.0.3\nDOMAINNAME=lab.internal\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		inImage(t, "/usr/lib/herd/resolv-conf")
		got, err := os.ReadFile(filepath.Join(tree, "run/herd/resolv.conf"))
		if want := "search lab.internal\nnameserver 10.77.0.1\nnameserver 10.77.0.3\n"; err != nil || string(got) != want {
			t.Errorf("resolv.conf = %q (%v), want %q", got, err, want)
		}
		if l, _ := os.Readlink(filepath.Join(tree, "etc/resolv.conf")); l != "../run/herd/resolv.conf" {
			t.Errorf("/etc/resolv.conf -> %q", l)
		}
	})
	t.Run("ssh host keys", func(t *testing.T) {
		// Without the runtime overlay's marker a node makes fresh keys at
		// each boot (the sshd -t subtest's boot made some); with it the
		// node's keys stay.
		key := filepath.Join(tree, "etc/ssh/ssh_host_ed25519_key")
		inImage(t, "/usr/lib/herd/ssh-host-keys")
		earlier, _ := os.ReadFile(key)
		os.Remove(filepath.Join(tree, "run/herd/ssh-host-keys-done")) // a new boot
		inImage(t, "/usr/lib/herd/ssh-host-keys")
		fresh, _ := os.ReadFile(key)
		if len(fresh) == 0 || bytes.Equal(fresh, earlier) {
			t.Fatal("a new boot kept the last boot's host key")
		}
		inImage(t, "/usr/lib/herd/ssh-host-keys") // a restart keeps this boot's keys
		if again, _ := os.ReadFile(key); !bytes.Equal(again, fresh) {
			t.Error("ssh restart regenerated the host keys")
		}
		os.Remove(filepath.Join(tree, "run/herd/ssh-host-keys-done"))
		mustWrite(t, filepath.Join(tree, "etc/ssh/herd-node-keys"), "marker\n")
		inImage(t, "/usr/lib/herd/ssh-host-keys")
		if kept, _ := os.ReadFile(key); !bytes.Equal(kept, fresh) {
			t.Error("the runtime overlay's keys were replaced")
		}
	})
	t.Run("initramfs blacklists nouveau", func(t *testing.T) {
		// The initramfs is built after the overlays stage, so
		// initramfs-tools copies modprobe.d into it: nouveau stays unloaded
		// before switch_root too. lsinitramfs is the image's own tool.
		initrd, err := os.ReadFile(filepath.Join(img.Dir, manifest.Initrd))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tree, "tmp/herd-initrd.img"), initrd, 0o644); err != nil {
			t.Fatal(err)
		}
		list := inImage(t, "lsinitramfs", "/tmp/herd-initrd.img")
		if !strings.Contains(list, "etc/modprobe.d/herd-nvidia.conf") {
			t.Errorf("the initramfs lacks etc/modprobe.d/herd-nvidia.conf")
		}
	})
	t.Run("pam and nss", func(t *testing.T) {
		// libpam-sss's postinst (pam-auth-update) already wired pam_sss at
		// install time; the overlay relies on it.
		auth, _ := os.ReadFile(filepath.Join(tree, "etc/pam.d/common-auth"))
		if !bytes.Contains(auth, []byte("pam_sss.so")) {
			t.Errorf("common-auth lacks pam_sss:\n%s", auth)
		}
		ns, _ := os.ReadFile(filepath.Join(tree, "etc/nsswitch.conf"))
		if !bytes.Contains(ns, []byte("passwd:         files systemd sss")) {
			t.Errorf("nsswitch.conf:\n%s", ns)
		}
	})
	t.Run("admin account", func(t *testing.T) {
		// Run herd-accounts' script in the unpacked image, as boot would,
		// and check the account it leaves behind.
		inImage(t, "/usr/lib/herd/accounts.sh")
		pw := inImage(t, "getent", "-s", "files", "passwd", cfg.Admin.User)
		if !strings.HasPrefix(pw, fmt.Sprintf("%s:x:%d:", cfg.Admin.User, cfg.Admin.UID)) || !strings.Contains(pw, ":/var/lib/herd-admin:/bin/bash") {
			t.Errorf("admin passwd entry: %q", pw)
		}
		shadow, _ := os.ReadFile(filepath.Join(tree, "etc/shadow"))
		if !bytes.Contains(shadow, []byte("root:"+cfg.Root.PasswordHash+":")) {
			t.Error("root password hash not set")
		}
		if !bytes.Contains(shadow, []byte(cfg.Admin.User+":*:")) {
			t.Error("admin account is not key-only ('*')")
		}
		// Twice is fine (every boot runs it on a fresh /etc).
		inImage(t, "/usr/lib/herd/accounts.sh")
	})
}

func openSquash(t *testing.T, p string) *squashfs.FileSystem {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fi, _ := f.Stat()
	fsys, err := squashfs.Read(file.New(f, true), fi.Size(), 0, 0)
	if err != nil {
		t.Fatalf("go-diskfs cannot read %s: %v", p, err)
	}
	return fsys
}

// checkEntry compares one rendered entry with the image. Every parent of
// a rendered path is a real directory in the image (the overlays write
// under /etc, /usr/lib, /var/lib, /root), so go-diskfs, which does not
// follow links, can look the entry up directly.
func checkEntry(t *testing.T, fsys *squashfs.FileSystem, f overlays.File) {
	t.Helper()
	dir := path.Dir(f.Path)
	ents, err := fsys.ReadDir(dir)
	if err != nil {
		t.Errorf("/%s: read dir: %v", f.Path, err)
		return
	}
	var info iofs.FileInfo
	for _, e := range ents {
		if e.Name() == path.Base(f.Path) {
			info, _ = e.Info()
		}
	}
	if info == nil {
		t.Errorf("/%s is missing from the image", f.Path)
		return
	}
	stat, _ := info.Sys().(*squashfs.StatT)
	if stat == nil || int(stat.UID) != f.UID || int(stat.GID) != f.GID {
		t.Errorf("/%s owner %+v, want %d:%d", f.Path, stat, f.UID, f.GID)
	}
	switch {
	case f.Dir:
		if !info.IsDir() || info.Mode().Perm() != f.Mode.Perm() {
			t.Errorf("/%s is %v, want dir %v", f.Path, info.Mode(), f.Mode)
		}
	case f.Link != "":
		if info.Mode()&iofs.ModeSymlink == 0 || stat.LinkTarget != f.Link {
			t.Errorf("/%s is %v -> %q, want link to %q", f.Path, info.Mode(), stat.LinkTarget, f.Link)
		}
	default:
		if !info.Mode().IsRegular() || info.Mode().Perm() != f.Mode.Perm() {
			t.Errorf("/%s is %v, want file %v", f.Path, info.Mode(), f.Mode)
			return
		}
		r, err := fsys.OpenFile(f.Path, os.O_RDONLY)
		if err != nil {
			t.Errorf("/%s: %v", f.Path, err)
			return
		}
		got, err := io.ReadAll(r)
		if err != nil {
			t.Errorf("/%s: %v", f.Path, err)
			return
		}
		if !bytes.Equal(got, f.Data) {
			t.Errorf("/%s content differs from the render:\n%s", f.Path, got)
		}
	}
}

func mustWrite(t *testing.T, p, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}
