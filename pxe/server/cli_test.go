package server

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/internal/testenv"
)

// TestHerdBinaryServeEventsNodeList drives the built herd binary: serve on
// loopback, a boot event posted with curl, `herd node list --json` shows it,
// `herd node add` + SIGHUP makes the new node bootable, SIGTERM exits 0.
func TestHerdBinaryServeEventsNodeList(t *testing.T) {
	herd := testenv.Bin(t, "HERD_BIN")
	testenv.RequireCommands(t, "curl")
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	id := publish(t, state, map[string]int{manifest.Kernel: 1000, manifest.Initrd: 1000, manifest.Rootfs: 1000})
	httpPort, tftpPort := freePort(t, "tcp"), freePort(t, "udp")
	cfgPath := filepath.Join(dir, "herd.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`# site comment
server:
  address: 127.0.0.1
  http_port: %d
dhcp:
  mode: off
overlays: [base]
nodes:
  - name: gpu1
    mac: "52:54:00:aa:00:01"
    ip: 127.0.0.1
`, httpPort)), 0o644)
	logf, _ := os.Create(filepath.Join(dir, "herd.log"))
	defer logf.Close()
	srv := exec.Command(herd, "-v", "--config", cfgPath, "--state", state, "serve", "--tftp-port", fmt.Sprint(tftpPort))
	srv.Stdout, srv.Stderr = logf, logf
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Process.Kill()
	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	waitFor(t, "herd serve to answer", func() bool { return status(base+"/healthz") == 200 })

	ev := fmt.Sprintf(`{"node":"gpu1","mac":"52:54:00:aa:00:01","stage":"up","percent":100,"message":"booted","image":"%s","kernel":"6.8.0-149-generic","nvidia":"580.178.04"}`, id)
	if out, err := exec.Command("curl", "-fsS", "-X", "POST", "-H", "Content-Type: application/json", "-d", ev, base+"/events").CombinedOutput(); err != nil {
		t.Fatalf("post event: %v %s", err, out)
	}
	out, err := exec.Command(herd, "--config", cfgPath, "--state", state, "node", "list", "--json").Output()
	if err != nil {
		t.Fatalf("node list: %v", err)
	}
	var views []struct {
		Name string
		Seen *struct {
			Stage, Image, NVIDIA string
			Boots                int
		}
	}
	if err := json.Unmarshal(out, &views); err != nil {
		t.Fatalf("node list --json: %v\n%s", err, out)
	}
	if len(views) != 1 || views[0].Seen == nil || views[0].Seen.Stage != "up" || views[0].Seen.Image != id || views[0].Seen.NVIDIA != "580.178.04" || views[0].Seen.Boots != 1 {
		t.Fatalf("node list --json:\n%s", out)
	}

	// node add refuses a duplicate MAC naming the line, then adds a good node.
	b, err := exec.Command(herd, "--config", cfgPath, "node", "add", "gpu2", "52:54:00:aa:00:01").CombinedOutput()
	if err == nil || !strings.Contains(string(b), "herd.yaml:10") {
		t.Errorf("duplicate MAC: %v %s", err, b)
	}
	if b, err := exec.Command(herd, "--config", cfgPath, "node", "add", "gpu2", "52:54:00:aa:00:02", "--ip", "127.0.0.2").CombinedOutput(); err != nil {
		t.Fatalf("node add: %v %s", err, b)
	}
	if data, _ := os.ReadFile(cfgPath); !strings.Contains(string(data), "# site comment") {
		t.Errorf("comment lost:\n%s", data)
	}
	srv.Process.Signal(syscall.SIGHUP)
	waitFor(t, "gpu2 after SIGHUP", func() bool { return status(base+"/boot/52:54:00:aa:00:02.ipxe") == 200 })
	srv.Process.Signal(syscall.SIGTERM)
	if err := srv.Wait(); err != nil {
		t.Fatalf("herd serve after SIGTERM: %v", err)
	}
}
