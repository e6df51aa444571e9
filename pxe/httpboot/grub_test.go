package httpboot

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/site"
)

// secure_boot: distro — /boot/<mac>.grub carries the iPXE script's kernel,
// command line and initrds over GRUB's (http,host:port) device; off, it is
// not served and neither are the TFTP names of the chain.
func TestGrubConfig(t *testing.T) {
	f := newFixture(t, "ignore")
	if code, _ := get(t, f.url+"/boot/52:54:00:aa:bb:01.grub"); code != 404 {
		t.Errorf("secure_boot off: .grub answered %d, want 404", code)
	}
	if p, ok := f.srv.TFTPFile(GrubCfgName); ok {
		t.Errorf("secure_boot off: TFTP serves %s from %s", GrubCfgName, p)
	}
	cfg := *f.cfg
	cfg.SecureBoot = site.SecureBootDistro
	f.srv.SetConfig(&cfg)

	code, body := get(t, f.url+"/boot/52-54-00-AA-BB-01.grub")
	if code != 200 {
		t.Fatalf("known MAC: %d %s", code, body)
	}
	m, _ := manifest.Read(filepath.Join(f.state, "images", f.id))
	dev := "(http," + strings.TrimPrefix(f.url, "http://") + ")"
	base := f.url
	want := "# herd: node gpu1, image " + f.id + "\n" +
		"echo 'herd: loading kernel'\n" +
		"linux " + dev + "/images/" + f.id + "/vmlinuz 'boot=herd' 'ip=dhcp' 'herd.image=" + base + "/images/" + f.id + "/rootfs.squashfs' 'herd.sha256=" + m.Artifacts[manifest.Rootfs].SHA256 + "' 'herd.id=" + f.id + "' 'herd.node=gpu1' 'herd.server=" + base + "' 'herd.cache=auto' 'herd.keep=2' 'console=tty0' 'console=ttyS0,115200n8' 'nvidia.NVreg_X=1'\n" +
		"echo 'herd: loading initrd'\n" +
		"initrd " + dev + "/images/" + f.id + "/initrd.img\n" +
		"boot\n"
	if body != want {
		t.Errorf("grub config:\n%s\nwant:\n%s", body, want)
	}
	// The iPXE script is the same command line (one builder).
	_, ipxe := get(t, f.url+"/boot/52:54:00:aa:bb:01.ipxe")
	if !strings.Contains(ipxe, "initrd=initrd.img boot=herd ip=dhcp herd.image=") {
		t.Errorf("iPXE script changed:\n%s", ipxe)
	}
	// A quote in kernel_args cannot end GRUB's quoting and add a command.
	q := GrubScript
	node := site.Node{Name: "gpu9", KernelArgs: "a=' ; echo pwned ; '"}
	s, err := q(&cfg, &node, f.id, m)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(s, `'a='\'' ; echo pwned ; '\'''`) {
		t.Errorf("kernel_args not quoted for GRUB:\n%s", s)
	}

	p, ok := f.srv.TFTPFile(GrubCfgName)
	if !ok {
		t.Fatal("grub/grub.cfg not served")
	}
	data, _ := os.ReadFile(p)
	if !strings.Contains(string(data), "source "+dev+"/boot/${net_default_mac}.grub") {
		t.Errorf("grub.cfg:\n%s", data)
	}
	// The test image has no shim: not served (a warning says rebuild).
	if _, ok := f.srv.TFTPFile(manifest.Shim); ok {
		t.Error("shim served from an image without one")
	}
	for _, n := range []string{"../grub.cfg", "grub", "snponly.efi"} {
		if _, ok := f.srv.TFTPFile(n); ok {
			t.Errorf("TFTPFile(%q) answered", n)
		}
	}
}
