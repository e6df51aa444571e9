package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/internal/cpio"
	"github.com/herdlab/herd/internal/nodeauth"
	"github.com/herdlab/herd/internal/testenv"
)

// TestHerdBinaryServeEventsNodeList drives the built herd binary: serve on
// loopback, a boot event posted with curl, `herd node list --json` shows it,
// `herd node add` + SIGHUP makes the new node bootable, SIGTERM exits 0.
func TestHerdBinaryServeEventsNodeList(t *testing.T) {
	herd := testenv.Bin(t, "HERD_BIN")
	testenv.RequireCommands(t, "curl")
	h := newHerdSite(t, herd)
	id := publish(t, h.state, map[string]int{manifest.Kernel: 1000, manifest.Initrd: 1000, manifest.Rootfs: 1000})
	httpPort, tftpPort := freePort(t, "tcp"), freePort(t, "udp")
	cfgPath := h.cfg
	h.write(fmt.Sprintf(`# site comment
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
`, httpPort))
	srv, base := h.serve(httpPort, tftpPort)

	ev := fmt.Sprintf(`{"node":"gpu1","mac":"52:54:00:aa:00:01","stage":"up","percent":100,"message":"booted","image":"%s","kernel":"6.8.0-149-generic","nvidia":"580.178.04"}`, id)
	// Unsigned (curl): logged, not recorded.
	if out, err := exec.Command("curl", "-fsS", "-X", "POST", "-H", "Content-Type: application/json", "-d", ev, base+"/events").CombinedOutput(); err != nil {
		t.Fatalf("post event: %v %s", err, out)
	}
	// An enrollment window opened by the CLI applies to the running server.
	h.must("node", "enroll", "gpu1", "--for", "5m")
	ctx := context.Background()
	key, _ := nodeauth.GenerateFileKey()
	node := &nodeauth.Client{Base: base, Node: "gpu1", Key: key}
	if ans, err := node.Enroll(ctx); err != nil || ans.Status != nodeauth.StatusEnrolled {
		t.Fatalf("enroll in the window: %+v %v", ans, err)
	}
	if err := node.Event(ctx, []byte(ev)); err != nil {
		t.Fatalf("signed event: %v", err)
	}
	pub, _ := nodeauth.PublicKey(key)
	fp := nodeauth.Fingerprint(pub)
	out, err := h.command("node", "list", "--json").Output()
	if err != nil {
		t.Fatalf("node list: %v", err)
	}
	var views []struct {
		Name     string
		Identity struct{ Enrolled, Pending string }
		Seen     *struct {
			Stage, Image, NVIDIA string
			Boots                int
		}
	}
	if err := json.Unmarshal(out, &views); err != nil {
		t.Fatalf("node list --json: %v\n%s", err, out)
	}
	if len(views) != 1 || views[0].Seen == nil || views[0].Seen.Stage != "up" || views[0].Seen.Image != id || views[0].Seen.NVIDIA != "580.178.04" || views[0].Seen.Boots != 1 || views[0].Identity.Enrolled != fp {
		t.Fatalf("node list --json (want enrolled %s):\n%s", fp, out)
	}
	if l := h.must("node", "list"); !strings.Contains(l, "enrolled "+fp) {
		t.Errorf("node list does not show the fingerprint %s:\n%s", fp, l)
	}
	hostKey := func(c *nodeauth.Client) string {
		t.Helper()
		data, err := c.Overlay(ctx)
		if err != nil {
			t.Fatalf("overlay: %v", err)
		}
		es, err := cpio.ReadAll(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if e.Name == "herd/overlay/etc/ssh/ssh_host_ed25519_key" {
				return string(e.Data)
			}
		}
		t.Fatal("overlay without an ed25519 host key")
		return ""
	}
	oldHostKey := hostKey(node)

	// rm + add under the same name: a new node, not its predecessor. It has
	// no key until approved, and gets fresh SSH host keys.
	h.must("node", "rm", "gpu1")
	h.must("node", "add", "gpu1", "52:54:00:aa:00:01", "--ip", "127.0.0.1")
	srv.Process.Signal(syscall.SIGHUP)
	if _, err := node.Overlay(ctx); err == nil {
		t.Fatal("the removed node's key still gets the overlay")
	}
	key2, _ := nodeauth.GenerateFileKey()
	node2 := &nodeauth.Client{Base: base, Node: "gpu1", Key: key2}
	waitFor(t, "gpu1 after rm/add and SIGHUP", func() bool {
		ans, err := node2.Enroll(ctx)
		return err == nil && ans.Status == nodeauth.StatusPending
	})
	pub2, _ := nodeauth.PublicKey(key2)
	if l := h.must("node", "list"); !strings.Contains(l, "pending "+nodeauth.Fingerprint(pub2)) {
		t.Errorf("node list does not show the pending fingerprint:\n%s", l)
	}
	if b, err := h.run("node", "approve", "gpu1", "--fingerprint", fp); err == nil {
		t.Errorf("approve with another key's fingerprint succeeded: %s", b)
	}
	h.must("node", "approve", "gpu1", "--fingerprint", nodeauth.Fingerprint(pub2))
	if hostKey(node2) == oldHostKey {
		t.Error("a node re-added under the same name inherited its predecessor's SSH host key")
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
