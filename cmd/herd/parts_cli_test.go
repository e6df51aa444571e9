package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herdlab/herd/internal/testenv"
)

// `herd node list` reads only the nodes part of herd.yaml: a file whose
// server part is incomplete for serving (proxy DHCP without an interface)
// still lists the nodes, while a bad node entry is still refused with its
// file:line; `herd doctor`, which checks the file for serve, refuses it.
func TestNodeListReadsOnlyNodes(t *testing.T) {
	bin := testenv.Bin(t, "HERD_BIN")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "herd.yaml")
	run := func(args ...string) (string, error) {
		out, err := exec.Command(bin, append([]string{"--config", cfg, "--state", filepath.Join(dir, "state")}, args...)...).CombinedOutput()
		return string(out), err
	}
	os.WriteFile(cfg, []byte("nodes:\n  - {name: gpu7, mac: '52:54:00:00:07:07'}\n"), 0o644)
	if out, err := run("node", "list"); err != nil || !strings.Contains(out, "gpu7") {
		t.Fatalf("node list with only nodes: %v\n%s", err, out)
	}
	if out, err := run("doctor"); err == nil || !strings.Contains(out, "server.interface") {
		t.Errorf("doctor must still judge the whole file: %v\n%s", err, out)
	}
	os.WriteFile(cfg, []byte("nodes:\n  - {name: gpu7, mac: 'zz'}\n"), 0o644)
	if out, err := run("node", "list"); err == nil || !strings.Contains(out, "herd.yaml:2:") || !strings.Contains(out, "nodes[0].mac") {
		t.Errorf("bad node entry: %v\n%s", err, out)
	}
}
