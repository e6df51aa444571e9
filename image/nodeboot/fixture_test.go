package nodeboot_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herdlab/herd/image/build"
	"github.com/herdlab/herd/image/chunks"
	"github.com/herdlab/herd/image/initramfs"
	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/verity"
	"github.com/herdlab/herd/internal/testenv"
)

// bootImage is what a node needs: kernel, initrd and root image.
type bootImage struct {
	Kernel, Initrd, Rootfs string
	SHA256, ID             string
	Verity                 string // herd.verity value ("" = no hash tree)
	Index                  string // rootfs.index path ("" = none)
}

// ubuntuKeyFingerprint is the Ubuntu Archive Automatic Signing Key (2018);
// the keyring fetched without verification is trusted only with it.
const ubuntuKeyFingerprint = "F6ECB3762474EDA9D21B7022871920D1991BC93C"

// fixturePackages is the smallest Ubuntu that netboots with herd's hook:
// a kernel, initramfs-tools, systemd and udev.
var fixturePackages = []string{"linux-image-virtual", "initramfs-tools", "systemd-sysv", "udev", "kmod", "e2fsprogs", "iproute2", "util-linux"}

// testStore is where image/build's tests publish images (HACKING.md).
const testStore = "/var/tmp/herd-test-store"

// testImage returns a bootable herd image, in this order:
//   - HERD_TEST_IMAGE_DIR (vmlinuz, initrd.img, rootfs.squashfs);
//   - an image of the shared test store built by image/build (so by the
//     builder's own initramfs.Install + update-initramfs) whose agent is
//     byte-identical to the one built from this tree — from recipe when
//     given (bench: the default image), else the smallest of a test-*
//     recipe;
//   - a minimal Ubuntu noble built here with mmdebstrap, initramfs.Install
//     and the image's own update-initramfs, cached under /var/tmp by a key
//     over the agent binary, the hook files and the package list.
func testImage(t *testing.T, recipe string) bootImage {
	t.Helper()
	if d := os.Getenv("HERD_TEST_IMAGE_DIR"); d != "" {
		return imageFromDir(t, d)
	}
	testenv.RequireRoot(t)
	agent := agentBinary(t)
	if d := storeImage(t, sumFile(t, agent), recipe); d != "" {
		t.Logf("booting store image %s", d)
		return imageFromDir(t, d)
	}
	testenv.RequireCommands(t, "mmdebstrap", "mksquashfs", "gpg", "chroot", "unshare")
	h := sha256.New()
	fmt.Fprintln(h, sumFile(t, agent), strings.Join(fixturePackages, ","))
	for _, f := range []string{"../initramfs/files/hook", "../initramfs/files/script", "../initramfs/files/herd-up.service", "../initramfs/files/herd-verity.service", "../initramfs/files/herd-status.service", "../initramfs/initramfs.go"} {
		if b, err := os.ReadFile(f); err == nil {
			h.Write(b)
		}
	}
	fmt.Fprintln(h, "verity-v1 chunks-v1 updated-v1")
	key := hex.EncodeToString(h.Sum(nil))[:16]
	dir := filepath.Join("/var/tmp/herd-nodeboot-fixture", key)
	if _, err := os.Stat(filepath.Join(dir, "ok")); err == nil {
		return imageFromDir(t, dir)
	}
	work := dir + ".tmp"
	os.RemoveAll(work)
	must(t, os.MkdirAll(work, 0o755))
	defer os.RemoveAll(work)
	run := func(name string, args ...string) {
		t.Helper()
		cmd := exec.Command(name, args...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, tail(out))
		}
	}
	// The Ubuntu keyring: extracted from the archive's ubuntu-keyring
	// package (Debian has none), then only the known key is exported.
	kr := filepath.Join(work, "kr")
	run("mmdebstrap", "--variant=extract", "--include=ubuntu-keyring",
		`--aptopt=Acquire::AllowInsecureRepositories "true"`, `--aptopt=APT::Get::AllowUnauthenticated "true"`, "noble", kr)
	out, err := exec.Command("gpg", "--no-default-keyring", "--keyring", filepath.Join(kr, "usr/share/keyrings/ubuntu-archive-keyring.gpg"),
		"--export", ubuntuKeyFingerprint).Output()
	if err != nil || len(out) == 0 {
		t.Fatalf("ubuntu keyring lacks key %s: %v", ubuntuKeyFingerprint, err)
	}
	keyring := filepath.Join(work, "ubuntu.gpg")
	must(t, os.WriteFile(keyring, out, 0o644))
	tree := filepath.Join(work, "tree")
	run("mmdebstrap", "--variant=minbase", "--keyring="+keyring, "--components=main",
		"--include="+strings.Join(fixturePackages, ","), "noble", tree)
	must(t, os.WriteFile(filepath.Join(tree, "etc/hostname"), []byte("herd-node\n"), 0o644))
	if err := initramfs.Install(tree, agent); err != nil {
		t.Fatal(err)
	}
	// The image's own update-initramfs, in a private mount namespace.
	run("unshare", "--mount", "--propagation", "private", "sh", "-c",
		fmt.Sprintf("mount -t proc proc %[1]s/proc && mount -t sysfs sys %[1]s/sys && mount --rbind /dev %[1]s/dev && chroot %[1]s update-initramfs -u -k all", tree))
	kernels, _ := filepath.Glob(filepath.Join(tree, "boot/vmlinuz-*"))
	if len(kernels) != 1 {
		t.Fatalf("want one kernel in the fixture, found %v", kernels)
	}
	ver := strings.TrimPrefix(filepath.Base(kernels[0]), "vmlinuz-")
	out2 := filepath.Join(work, "out")
	must(t, os.MkdirAll(out2, 0o755))
	copyTo(t, kernels[0], filepath.Join(out2, "vmlinuz"))
	copyTo(t, filepath.Join(tree, "boot/initrd.img-"+ver), filepath.Join(out2, "initrd.img"))
	// As herd's pack stage does, so a boot does not rerun ldconfig.
	must(t, build.StampUpdated(tree))
	run("mksquashfs", tree, filepath.Join(out2, "rootfs.squashfs"), "-comp", "zstd", "-Xcompression-level", "3", "-noappend", "-quiet")
	// The hash tree, as the build's pack stage appends it.
	testenv.RequireCommands(t, "veritysetup")
	v, err := verity.Format(context.Background(), filepath.Join(out2, "rootfs.squashfs"), nil)
	must(t, err)
	must(t, (&manifest.Manifest{Verity: v}).Write(out2))
	x, err := chunks.SplitFile(filepath.Join(out2, "rootfs.squashfs"))
	must(t, err)
	ib, _ := x.MarshalBinary()
	must(t, os.WriteFile(filepath.Join(out2, chunks.IndexName), ib, 0o644))
	must(t, os.WriteFile(filepath.Join(out2, "ok"), nil, 0o644))
	os.RemoveAll(dir)
	must(t, os.Rename(out2, dir))
	return imageFromDir(t, dir)
}

func imageFromDir(t *testing.T, d string) bootImage {
	img := bootImage{Kernel: filepath.Join(d, "vmlinuz"), Initrd: filepath.Join(d, "initrd.img"), Rootfs: filepath.Join(d, "rootfs.squashfs")}
	img.SHA256 = sumFile(t, img.Rootfs)
	img.ID = filepath.Base(d)
	if _, err := os.Stat(filepath.Join(d, chunks.IndexName)); err == nil {
		img.Index = filepath.Join(d, chunks.IndexName)
	}
	if m, err := manifest.Read(d); err == nil {
		if v := verity.FromManifest(m); v != nil {
			img.Verity = v.String()
		}
	}
	return img
}

// storeImage picks a published image of the shared test store carrying
// exactly this agent (read from the squashfs with unsquashfs -cat).
func storeImage(t *testing.T, agentSHA, recipe string) string {
	if _, err := exec.LookPath("unsquashfs"); err != nil {
		return ""
	}
	dirs, _ := filepath.Glob(filepath.Join(testStore, "images", "*"))
	best, bestSize := "", int64(-1)
	for _, d := range dirs {
		var m struct {
			Recipe string `json:"recipe"`
		}
		b, err := os.ReadFile(filepath.Join(d, "manifest.json"))
		if err != nil || json.Unmarshal(b, &m) != nil {
			continue
		}
		// No recipe named: a small test recipe's image, never the QEMU
		// suite's GPU image (built by the same agent while these run).
		if (recipe != "" && m.Recipe != recipe) || (recipe == "" && !strings.HasPrefix(m.Recipe, "test-")) {
			continue
		}
		st, err := os.Stat(filepath.Join(d, "rootfs.squashfs"))
		if err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(d, "initrd.img")); err != nil {
			continue
		}
		if bestSize >= 0 && st.Size() >= bestSize {
			continue
		}
		out, err := exec.Command("unsquashfs", "-cat", filepath.Join(d, "rootfs.squashfs"), "usr/lib/herd/herd-boot").Output()
		if err != nil {
			continue
		}
		sum := sha256.Sum256(out)
		if hex.EncodeToString(sum[:]) != agentSHA {
			continue
		}
		best, bestSize = d, st.Size()
	}
	return best
}

// agentBinary is bin/herd-boot from `make build`, or a fresh static build.
func agentBinary(t *testing.T) string {
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

func sumFile(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	must(t, err)
	defer f.Close()
	h := sha256.New()
	_, err = io.Copy(h, f)
	must(t, err)
	return hex.EncodeToString(h.Sum(nil))
}

func copyTo(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	must(t, err)
	must(t, os.WriteFile(dst, b, 0o644))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func tail(b []byte) string {
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}
