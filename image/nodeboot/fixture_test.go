package nodeboot_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herdlab/herd/image/chunks"
	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/verity"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/testlab"
)

// bootImage is what a node needs: kernel, initrd and root image.
type bootImage struct {
	Kernel, Initrd, Rootfs string
	SHA256, ID             string
	Verity                 string // herd.verity value ("" = no hash tree)
	Index                  string // rootfs.index path ("" = none)
}

// testImage returns a bootable herd image, in this order:
//   - HERD_TEST_IMAGE_DIR (vmlinuz, initrd.img, rootfs.squashfs);
//   - an image of the shared test store built by image/build (so by the
//     builder's own initramfs.Install + update-initramfs) whose agent is
//     byte-identical to the one built from this tree — from recipe when
//     given (bench: the default image), else the smallest of a test-*
//     recipe;
//   - else the small test recipe (recipes/test-noble-minimal.yaml) built
//     now into the shared store by $HERD_BIN with this tree's herd-boot
//     (testlab.MinimalImage): its stage cache makes that the agent's
//     stages and the pack, not a bootstrap, and the packages after this
//     one that boot or inspect the minimal image find it built.
func testImage(t *testing.T, recipe string) bootImage {
	t.Helper()
	if d := os.Getenv("HERD_TEST_IMAGE_DIR"); d != "" {
		return imageFromDir(t, d)
	}
	testenv.RequireRoot(t)
	if d := storeImage(t, sumFile(t, agentBinary(t)), recipe); d != "" {
		t.Logf("booting store image %s", d)
		return imageFromDir(t, d)
	}
	if recipe != "" {
		t.Fatalf("no image of recipe %s with this herd-boot in %s (bench/boot.sh builds it; or set HERD_TEST_IMAGE_DIR)", recipe, testlab.TestStore)
	}
	d := testlab.MinimalImage(t)
	t.Logf("booting the minimal test image %s", d)
	return imageFromDir(t, d)
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
	dirs, _ := filepath.Glob(filepath.Join(testlab.TestStore, "images", "*"))
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
