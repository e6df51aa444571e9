package inspect

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herdlab/herd/internal/testenv"
)

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// module compiles a real ELF relocatable object whose .modinfo section
// holds version= and vermagic= strings exactly as a kernel module's does.
func module(t *testing.T, dir, version, abi string) string {
	t.Helper()
	src := filepath.Join(dir, "mod.c")
	c := `__attribute__((section(".modinfo"), used)) static const char a[] = "license=Dual MIT/GPL";
__attribute__((section(".modinfo"), used)) static const char b[] = "version=` + version + `";
__attribute__((section(".modinfo"), used)) static const char c[] = "vermagic=` + abi + ` SMP preempt mod_unload modversions ";
int init_module(void) { return 0; }
`
	if err := os.WriteFile(src, []byte(c), 0o644); err != nil {
		t.Fatal(err)
	}
	obj := filepath.Join(dir, "mod-"+version+".o")
	run(t, "gcc", "-c", "-o", obj, src)
	return obj
}

func copyFile(t *testing.T, src, dst string, extra []byte) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, append(data, extra...), 0o644); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, p, s string) {
	t.Helper()
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func link(t *testing.T, target, p string) {
	t.Helper()
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}

// moduleTrailer signs obj with a throwaway key through openssl cms (as the
// kernel's sign-file does: binary, detached, no attributes, no certificates)
// and returns what sign-file appends: the DER signature, struct
// module_signature (id_type 2 = PKCS#7, big-endian length) and the magic.
func moduleTrailer(t *testing.T, work, obj string) []byte {
	t.Helper()
	testenv.RequireCommands(t, "openssl")
	key, crt, sig := filepath.Join(work, "sign.key"), filepath.Join(work, "sign.crt"), filepath.Join(work, "sign.p7s")
	run(t, "openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
		"-subj", "/CN=herd test module signing key", "-keyout", key, "-out", crt)
	run(t, "openssl", "cms", "-sign", "-binary", "-noattr", "-nocerts", "-nosmimecap", "-md", "sha256",
		"-outform", "DER", "-signer", crt, "-inkey", key, "-in", obj, "-out", sig)
	der, err := os.ReadFile(sig)
	if err != nil {
		t.Fatal(err)
	}
	info := make([]byte, 12)
	info[2] = 2 // PKEY_ID_PKCS7
	binary.BigEndian.PutUint32(info[8:], uint32(len(der)))
	return append(append(der, info...), "~Module signature appended~\n"...)
}

// fixture builds a small merged-/usr tree like Ubuntu's and packs it with
// the real mksquashfs (zstd, as the builder does).
func fixture(t *testing.T) string {
	testenv.RequireCommands(t, "gcc", "zstd", "mksquashfs")
	work := t.TempDir()
	root := filepath.Join(work, "root")
	write(t, root+"/usr/lib/os-release", "PRETTY_NAME=\"Ubuntu 24.04.5 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\nVERSION_CODENAME=noble\n# comment\nID=ubuntu\n")
	link(t, "../usr/lib/os-release", root+"/etc/os-release")
	link(t, "usr/lib", root+"/lib")

	// Kernel A: zstd-compressed signed module listed in modules.dep.
	a := root + "/usr/lib/modules/6.8.0-149-generic"
	objA := module(t, work, "580.178.04", "6.8.0-149-generic")
	// The kernel's signed-module trailer, made as scripts/sign-file does:
	// a detached PKCS#7 (CMS) signature, struct module_signature, the magic.
	copyFile(t, objA, a+"/kernel/nvidia-580srv/nvidia.ko", moduleTrailer(t, work, objA))
	run(t, "zstd", "-q", "--rm", a+"/kernel/nvidia-580srv/nvidia.ko")
	write(t, a+"/kernel/drivers/net/e1000e.ko.zst", "not read")
	write(t, a+"/modules.dep", "kernel/drivers/net/e1000e.ko.zst:\nkernel/nvidia-580srv/nvidia.ko.zst: kernel/drivers/net/e1000e.ko.zst\n")

	// Kernel B: no modules.dep (walked), plain module reached through an
	// absolute link inside the image, and a module without version=.
	b := root + "/usr/lib/modules/6.8.0-150-generic"
	objB := module(t, work, "580.95.05", "6.8.0-150-generic")
	copyFile(t, objB, root+"/opt/nv/nvidia.ko", nil)
	link(t, "/opt/nv/nvidia.ko", b+"/updates/dkms/nvidia.ko")
	write(t, b+"/kernel/other/nvidia.ko.xz", "xz data")
	link(t, "loop2", root+"/loop1")
	link(t, "loop1", root+"/loop2")

	sq := filepath.Join(work, "rootfs.squashfs")
	run(t, "mksquashfs", root, sq, "-comp", "zstd", "-noappend", "-quiet", "-all-root")
	return sq
}

func TestInspectFixture(t *testing.T) {
	sq := fixture(t)
	r, err := File(sq)
	if err != nil {
		t.Fatal(err)
	}
	if r.OS != "Ubuntu 24.04.5 LTS" || r.OSRelease["VERSION_ID"] != "24.04" || r.OSRelease["VERSION_CODENAME"] != "noble" || r.OSRelease["ID"] != "ubuntu" {
		t.Errorf("os-release through the relative link: %q %v", r.OS, r.OSRelease)
	}
	if len(r.Kernels) != 2 {
		t.Fatalf("kernels %+v", r.Kernels)
	}
	ka, kb := r.Kernels[0], r.Kernels[1]
	if ka.ABI != "6.8.0-149-generic" || ka.Dir != "/usr/lib/modules/6.8.0-149-generic" || ka.Modules != 2 {
		t.Errorf("kernel A %+v", ka)
	}
	if len(ka.NVIDIA) != 1 {
		t.Fatalf("kernel A nvidia %+v", ka.NVIDIA)
	}
	m := ka.NVIDIA[0]
	if m.Version != "580.178.04" || m.Compression != "zstd" || !m.Signed || m.Error != "" ||
		!strings.HasPrefix(m.Vermagic, "6.8.0-149-generic SMP") || !strings.HasSuffix(m.Path, "nvidia-580srv/nvidia.ko.zst") {
		t.Errorf("kernel A module %+v", m)
	}
	if kb.ABI != "6.8.0-150-generic" || kb.Modules != -1 || len(kb.NVIDIA) != 2 {
		t.Fatalf("kernel B %+v", kb)
	}
	// Sorted by path: kernel/other/nvidia.ko.xz, updates/dkms/nvidia.ko.
	if x := kb.NVIDIA[0]; !strings.Contains(x.Error, "xz-compressed") {
		t.Errorf("xz module %+v", x)
	}
	if p := kb.NVIDIA[1]; p.Version != "580.95.05" || p.Signed || p.Compression != "" || p.Error != "" {
		t.Errorf("linked plain module %+v", p)
	}
	if got := r.NVIDIAVersion(); got != "580.178.04" {
		t.Errorf("NVIDIAVersion %q", got)
	}
	var buf bytes.Buffer
	r.WriteText(&buf)
	for _, want := range []string{"os:      Ubuntu 24.04.5 LTS (VERSION_ID 24.04, noble)",
		"kernel:  6.8.0-149-generic (/usr/lib/modules/6.8.0-149-generic, 2 modules)",
		"  nvidia: 580.178.04 (/usr/lib/modules/6.8.0-149-generic/kernel/nvidia-580srv/nvidia.ko.zst; zstd, signed)",
		"modules.dep missing", "xz-compressed modules are not read"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, buf.String())
		}
	}
	if _, err := json.Marshal(r); err != nil {
		t.Fatal(err)
	}

	im, err := Open(sq)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	for p, want := range map[string]string{
		"/etc/os-release": "/usr/lib/os-release",
		"/lib/modules/6.8.0-150-generic/updates/dkms/nvidia.ko": "/opt/nv/nvidia.ko",
		// ".." after a link goes up from its target, as in the kernel: /lib is
		// usr/lib, so /lib/.. is /usr.
		"/lib/../lib/./os-release": "/usr/lib/os-release",
		"/":                        "/",
	} {
		if got, err := im.Resolve(p); err != nil || got != want {
			t.Errorf("Resolve(%s) = %q, %v; want %s", p, got, err, want)
		}
	}
	if _, err := im.Resolve("/loop1/x"); err == nil || !strings.Contains(err.Error(), "too many levels") {
		t.Errorf("link loop: %v", err)
	}
	if _, err := im.Resolve("/etc/os-release/x"); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("file as directory: %v", err)
	}
	if _, err := im.ReadFile("/nope"); err == nil || !os.IsNotExist(err) {
		t.Errorf("missing file: %v", err)
	}
}

func TestInspectNoOSRelease(t *testing.T) {
	testenv.RequireCommands(t, "mksquashfs")
	root := t.TempDir()
	write(t, root+"/hello", "hi")
	sq := filepath.Join(t.TempDir(), "x.squashfs")
	run(t, "mksquashfs", root, sq, "-noappend", "-quiet")
	r, err := File(sq)
	if err != nil {
		t.Fatal(err)
	}
	if r.OS != "" || len(r.Kernels) != 0 {
		t.Errorf("%+v", r)
	}
	var buf bytes.Buffer
	r.WriteText(&buf)
	if !strings.Contains(buf.String(), "(no os-release)") || !strings.Contains(buf.String(), "kernels: none") {
		t.Errorf("text: %s", buf.String())
	}
}

func TestInspectNotSquashfs(t *testing.T) {
	p := filepath.Join(t.TempDir(), "junk.squashfs")
	os.WriteFile(p, bytes.Repeat([]byte("x"), 8192), 0o644)
	_, err := File(p)
	if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "not a readable squashfs") {
		t.Errorf("junk file: %v", err)
	}
	_, err = File(filepath.Join(t.TempDir(), "missing"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	_, err = File(t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: %v", err)
	}
}

func TestParseOSRelease(t *testing.T) {
	got := ParseOSRelease([]byte("A=plain\nB=\"dq \\\"x\\\"\"\nC='single'\n#D=no\n\nbogus\n"))
	want := map[string]string{"A": "plain", "B": `dq "x"`, "C": "single"}
	if len(got) != len(want) {
		t.Errorf("%v", got)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
}
