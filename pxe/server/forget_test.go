package server

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/internal/nodeauth"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/pxe/inventory"
)

// TestForgetReachesRunningServe: `herd node forget` while `herd serve`
// runs. The server must stop trusting the forgotten node's key at once and
// must not write its record back into nodes.json from memory — neither one
// it had already written nor one it held only in memory — while it keeps
// recording the other node.
func TestForgetReachesRunningServe(t *testing.T) {
	h := newHerdSite(t, testenv.Bin(t, "HERD_BIN"))
	state := h.state
	id := publish(t, state, map[string]int{manifest.Kernel: 1000, manifest.Initrd: 1000, manifest.Rootfs: 1000})
	httpPort, tftpPort := freePort(t, "tcp"), freePort(t, "udp")
	h.write(fmt.Sprintf(`server: {address: 127.0.0.1, http_port: %d}
dhcp: {mode: off}
overlays: [base]
nodes:
  - {name: gpu1, mac: "52:54:00:aa:00:01", ip: 127.0.0.1}
  - {name: gpu2, mac: "52:54:00:aa:00:02", ip: 127.0.0.2}
`, httpPort))
	srv, base := h.serve(httpPort, tftpPort)
	ctx := context.Background()
	h.must("node", "enroll", "gpu1", "gpu2", "--for", "5m")
	nodes := map[string]*nodeauth.Client{}
	for i, name := range []string{"gpu1", "gpu2"} {
		key, _ := nodeauth.GenerateFileKey()
		nodes[name] = &nodeauth.Client{Base: base, Node: name, Key: key}
		if ans, err := nodes[name].Enroll(ctx); err != nil || ans.Status != nodeauth.StatusEnrolled {
			t.Fatalf("%s: enroll in the window: %+v %v", name, ans, err)
		}
		_ = i
	}
	event := func(name, msg string) []byte {
		mac := map[string]string{"gpu1": "52:54:00:aa:00:01", "gpu2": "52:54:00:aa:00:02"}[name]
		return []byte(fmt.Sprintf(`{"node":%q,"mac":%q,"stage":"up","percent":100,"message":%q,"image":%q}`, name, mac, msg, id))
	}
	// What nodes.json holds (what `herd node list` and a restarted server read).
	onDisk := func() map[string]string {
		inv, err := inventory.Load(state)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, r := range inv.Records() {
			m[r.Name] = r.Message
		}
		return m
	}
	for _, name := range []string{"gpu1", "gpu2"} {
		if err := nodes[name].Event(ctx, event(name, "booted")); err != nil {
			t.Fatalf("%s: signed event: %v", name, err)
		}
	}
	waitFor(t, "both records in nodes.json", func() bool { d := onDisk(); return d["gpu1"] == "booted" && d["gpu2"] == "booted" })

	h.must("node", "forget", "gpu1")
	t.Run("forgotten-key-refused-at-once", func(t *testing.T) {
		if _, err := nodes["gpu1"].Overlay(ctx); err == nil {
			t.Error("the forgotten key still gets the overlay")
		}
		if err := nodes["gpu1"].Event(ctx, event("gpu1", "after forget")); err == nil {
			t.Error("an event signed by the forgotten key was accepted")
		}
		out := h.must("node", "list", "--json")
		var views []struct {
			Name     string
			Identity struct{ Enrolled, Pending string }
			Seen     json.RawMessage
		}
		if err := json.Unmarshal([]byte(out), &views); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		for _, v := range views {
			if v.Name == "gpu1" && (v.Identity.Enrolled != "" || (len(v.Seen) > 0 && string(v.Seen) != "null")) {
				t.Errorf("node list still shows gpu1's key or boot record: %+v %s", v.Identity, v.Seen)
			}
		}
	})
	// gpu2 keeps booting: the server writes nodes.json again.
	if err := nodes["gpu2"].Event(ctx, event("gpu2", "second boot")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "gpu2's new record in nodes.json", func() bool { return onDisk()["gpu2"] == "second boot" })
	t.Run("written-record-not-resurrected", func(t *testing.T) {
		if d := onDisk(); d["gpu1"] != "" || len(d) != 1 {
			t.Errorf("the running server wrote gpu1's record back: %v", d)
		}
	})

	// A record the server holds only in memory (not yet written): forgotten
	// within FlushInterval of the event.
	if err := nodes["gpu2"].Event(ctx, event("gpu2", "third boot")); err != nil {
		t.Fatal(err)
	}
	h.must("node", "forget", "gpu2")
	t.Run("unwritten-record-not-resurrected", func(t *testing.T) {
		time.Sleep(inventory.FlushInterval + 2*inventory.ForgetPoll)
		// Force a write: SIGTERM flushes what is pending.
		srv.Process.Signal(os.Interrupt)
		srv.Wait()
		if d := onDisk(); len(d) != 0 {
			t.Errorf("nodes.json after forgetting both nodes: %v", d)
		}
		if ents, _ := os.ReadDir(filepath.Join(state, inventory.ForgetDirName)); len(ents) != 0 {
			t.Errorf("forget requests left unapplied: %d", len(ents))
		}
	})
}
