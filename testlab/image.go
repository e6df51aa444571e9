package testlab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/herdlab/herd/image/manifest"
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

// FindImage picks the image of recipe name in state: the one whose ID the
// build printed, else the newest.
func FindImage(state, name, buildOutput string) (string, error) {
	images := filepath.Join(state, "images")
	for _, id := range regexp.MustCompile(`\b[0-9a-f]{12,64}\b`).FindAllString(buildOutput, -1) {
		if m, err := manifest.Read(filepath.Join(images, id)); err == nil && m.Recipe == name {
			return filepath.Join(images, id), nil
		}
	}
	ents, err := os.ReadDir(images)
	if err != nil {
		return "", fmt.Errorf("find image: %w", err)
	}
	var best string
	var bestM *manifest.Manifest
	for _, e := range ents {
		m, err := manifest.Read(filepath.Join(images, e.Name()))
		if err != nil || m.Recipe != name {
			continue
		}
		if bestM == nil || m.Created.After(bestM.Created) {
			best, bestM = filepath.Join(images, e.Name()), m
		}
	}
	if best == "" {
		return "", fmt.Errorf("no image of recipe %s in %s", name, images)
	}
	return best, nil
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
