package testlab

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/internal/testenv"
)

// TestStore is the state directory the real-build tests and the e2e suite
// share across runs (stage cache, .deb cache, images), see HACKING.md.
const TestStore = "/var/tmp/herd-test-store"

// BuildImage builds recipe with `herd image build --config site` into state
// and returns the image directory. The recipe is copied next to the log first, so its
// lock file is written there and never into the source tree. Unchanged
// stages come from the store's cache, so a rebuild is cheap.
func BuildImage(ctx context.Context, herd, state, recipe, site, logPath string) (string, error) {
	data, err := os.ReadFile(recipe)
	if err != nil {
		return "", fmt.Errorf("build image: %w", err)
	}
	work := filepath.Join(filepath.Dir(logPath), "recipe")
	if err := os.MkdirAll(work, 0o755); err != nil {
		return "", fmt.Errorf("build image: %w", err)
	}
	copyPath := filepath.Join(work, filepath.Base(recipe))
	if err := os.WriteFile(copyPath, data, 0o644); err != nil {
		return "", fmt.Errorf("build image: %w", err)
	}
	log, err := os.Create(logPath)
	if err != nil {
		return "", fmt.Errorf("build image: %w", err)
	}
	defer log.Close()
	var out strings.Builder
	cmd := exec.CommandContext(ctx, herd, "--state", state, "--config", site, "image", "build", copyPath)
	cmd.Stdout, cmd.Stderr = multi{log, &out}, multi{log, &out}
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("herd image build %s: %w (log %s):\n%s", recipe, err, logPath, TailLines([]byte(out.String()), 30))
	}
	name := strings.TrimSuffix(filepath.Base(recipe), filepath.Ext(recipe))
	return FindImage(state, name, out.String())
}

// FindImage picks the image of recipe name in state's image store: the one
// whose ID the build printed, else the newest. It returns the image's directory.
func FindImage(state, name, buildOutput string) (string, error) {
	imgs, err := store.ReadOnly(state).List()
	if err != nil {
		return "", fmt.Errorf("find image: %w", err)
	}
	printed := map[string]bool{}
	for _, id := range regexp.MustCompile(`\b[0-9a-f]{12,64}\b`).FindAllString(buildOutput, -1) {
		printed[id] = true
	}
	var best *store.Image
	for i, im := range imgs { // newest first
		if im.Manifest.Recipe != name {
			continue
		}
		if printed[im.ID] {
			return im.Dir, nil
		}
		if best == nil {
			best = &imgs[i]
		}
	}
	if best == nil {
		return "", fmt.Errorf("no image of recipe %s in the store of %s", name, state)
	}
	return best.Dir, nil
}

type multi [2]interface{ Write([]byte) (int, error) }

func (m multi) Write(p []byte) (int, error) {
	m[0].Write(p)
	return m[1].Write(p)
}

// WriteLabSite writes the lab's herd.yaml for image builds to path (with a
// placeholder LDAP admin secret next to it: builds never bind).
func WriteLabSite(path string) error {
	secret := filepath.Join(filepath.Dir(path), "ldap-admin.secret")
	if err := os.WriteFile(secret, []byte("unused-at-build-time\n"), 0o600); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(SiteYAML(LabConfig{}, "cn=admin,"+LabBase, secret)), 0o644)
}

// RequireLab checks what StartLab needs (a long run, network namespaces,
// QEMU, nfs-ganesha and slapd) through testenv and returns $HERD_BIN, the
// herd the lab serves with.
func RequireLab(t testing.TB) string {
	t.Helper()
	testenv.Long(t)
	testenv.RequireNetns(t)
	testenv.RequireQEMU(t)
	testenv.RequireCommands(t, "ganesha.nfsd", "slapd", "slapadd")
	return testenv.Bin(t, "HERD_BIN")
}

// TempLabDir makes a directory for one lab's files under /var/tmp: not a
// tmpfs, and on the same file system as TestStore, so the image is linked
// into the lab rather than copied. It is removed after every later cleanup
// (the lab's) when the test passed. A failed test keeps it for the
// post-mortem, less its bulky files (see dropBulky); HERD_E2E_KEEP=1 keeps
// it whole, pass or fail.
func TempLabDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("/var/tmp", "herd-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		switch {
		case os.Getenv("HERD_E2E_KEEP") != "":
		case !t.Failed():
			os.RemoveAll(d)
		default:
			n, freed, err := dropBulky(d, bulkyFile)
			if err != nil {
				t.Logf("lab dir %s: %v", d, err)
			}
			if n > 0 {
				t.Logf("lab dir %s kept without its %d files over %d MiB (node disks, images: %d MiB); HERD_E2E_KEEP=1 keeps them",
					d, n, bulkyFile>>20, freed>>20)
			}
		}
	})
	return d
}

// bulkyFile is the size from which a failed lab's file is dropped: node
// disks and images are a gigabyte each, logs and consoles a few megabytes.
const bulkyFile = 64 << 20

// dropBulky removes the regular files of at least size bytes under dir and
// says how many and how many bytes. A failed run keeps its logs, but each
// kept lab held 3-6 GB of node disks and images, and a machine that runs
// the suite again and again filled its disk with them.
func dropBulky(dir string, size int64) (n int, freed int64, err error) {
	err = filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		if fi.Size() < size {
			return nil
		}
		if err := os.Remove(p); err != nil {
			return err
		}
		n++
		freed += fi.Size()
		return nil
	})
	return n, freed, err
}

// RecipeImage returns the image directory a QEMU test boots: $env if set,
// else recipe built into TestStore with the herd.yaml that writeSite writes
// (the image bakes the lab's NAS and LDAP addresses in). The builder's stage
// cache makes that a no-op when neither the recipe nor herd changed.
func RecipeImage(t testing.TB, herd, env, recipe string, writeSite func(path string) error) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		return p
	}
	tmp := t.TempDir()
	site := filepath.Join(tmp, "herd.yaml")
	if err := writeSite(site); err != nil {
		t.Fatal(err)
	}
	dir, err := BuildImage(context.Background(), herd, TestStore, recipe, site, filepath.Join(tmp, "build.log"))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}
