package qemutests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herdlab/herd/testlab"
)

// TestImageTestCommand runs `herd image test` as an admin would, on a
// store holding the suite's image: promote --require-test refuses the image
// before, the command prints a PASS line per check and exits 0, and
// promote --require-test accepts it after. The reboot check is left to
// TestLab (--no-reboot) to keep the suite's wall time down. It boots a lab
// of its own, yet lives in this package, after TestLab: qemu-tests/solo
// and the other packages beside TestLab ran longer than it.
func TestImageTestCommand(t *testing.T) {
	herd := testlab.RequireLab(t)
	img := testlab.RecipeImage(t, herd, "HERD_E2E_IMAGE", defaultRecipe, testlab.WriteLabSite)
	state, err := os.MkdirTemp("/var/tmp", "herd-imgtest-state-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(state)
	id, err := testlab.LinkImage(t.Context(), img, state, false) // a fresh generation, not yet promoted
	if err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		out, err := exec.Command(herd, append([]string{"--state", state}, args...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := run("image", "test", "nosuch"); err == nil || !strings.Contains(out, "nosuch") {
		t.Errorf("unknown image: %v %s", err, out)
	}
	if out, err := run("image", "promote", "--require-test", id); err == nil {
		t.Fatalf("an untested image was promoted with --require-test: %s", out)
	}
	out, err := run("image", "test", "--no-reboot", "--dir", state, id)
	t.Logf("herd image test output:\n%s", out)
	if err != nil {
		t.Fatalf("herd image test %s: %v", id, err)
	}
	for _, c := range testlab.NodeChecks() {
		if !strings.Contains(out, "PASS "+c.Name+"\n") {
			t.Errorf("no PASS line for %s", c.Name)
		}
	}
	if strings.Contains(out, "FAIL") {
		t.Errorf("a check failed but the command exited 0")
	}
	if out, err := run("image", "promote", "--require-test", id); err != nil {
		t.Fatalf("promote --require-test after a passing test: %v %s", err, out)
	}
	if ents, _ := filepath.Glob(filepath.Join(state, "herd-image-test-*")); len(ents) != 0 {
		t.Errorf("a passing run left its lab files: %v", ents)
	}
}
