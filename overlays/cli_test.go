package overlays_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/overlays"
	"github.com/herdlab/herd/site"
)

// The herd binary's overlay commands: list, render --json and --out show
// exactly the render (system overlays + the node's runtime overlay).
func TestHerdOverlayCommands(t *testing.T) {
	herd := testenv.Bin(t, "HERD_BIN")
	testenv.RequireRoot(t) // --out keeps owners
	cfgPath, _ := filepath.Abs("testdata/site.yaml")
	run := func(args ...string) (string, error) {
		cmd := exec.Command(herd, append([]string{"--config", cfgPath, "overlay"}, args...)...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		return out.String() + errb.String(), err
	}
	out, err := run("list")
	if err != nil || !strings.Contains(out, "cachefilesd") || !strings.Contains(out, "runtime") {
		t.Fatalf("overlay list: %v\n%s", err, out)
	}
	out, err = run("render", "gpu02", "--json")
	if err != nil {
		t.Fatalf("render --json: %v\n%s", err, out)
	}
	var entries []struct {
		Overlay, Path, Kind, Mode, Link, Content string
		UID, GID                                 int
	}
	if err := json.Unmarshal([]byte(out), &entries); err != nil {
		t.Fatalf("render --json is not JSON: %v\n%s", err, out)
	}
	cfg, err := site.Load(cfgPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	sys, err := overlays.Render(cfg, cfg.Overlays)
	if err != nil {
		t.Fatal(err)
	}
	byPath := map[string]string{}
	for _, e := range entries {
		byPath[e.Overlay+" "+e.Path] = e.Mode + " " + e.Content
	}
	for _, f := range sys {
		if got, want := byPath[f.Overlay+" /"+f.Path], overlays.OctalMode(f)+" "+string(f.Data); got != want {
			t.Errorf("/%s: CLI shows %q, render has %q", f.Path, got, want)
		}
	}
	if got := byPath["runtime /etc/hostname"]; got != "0644 gpu02\n" {
		t.Errorf("runtime hostname = %q", got)
	}

	dir := filepath.Join(t.TempDir(), "out")
	if out, err := run("render", "gpu01", "--out", dir); err != nil {
		t.Fatalf("render --out: %v\n%s", err, out)
	}
	conf, err := os.Stat(filepath.Join(dir, "etc/sssd/sssd.conf"))
	if err != nil || conf.Mode().Perm() != 0o600 {
		t.Errorf("sssd.conf in --out: %v %v", conf, err)
	}
	host, _ := os.ReadFile(filepath.Join(dir, "etc/hostname"))
	if string(host) != "gpu01\n" {
		t.Errorf("hostname in --out = %q", host)
	}

	if out, err := run("render", "nosuch"); err == nil || !strings.Contains(out, `node "nosuch" is not in`) {
		t.Errorf("unknown node: %v\n%s", err, out)
	}
}
