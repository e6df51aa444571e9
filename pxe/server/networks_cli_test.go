package server

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/fleet/nodestatus"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/pxe/inventory"
)

// TestNodeShowAndDoctorShowNetworks: with a node's "up" report in the
// inventory (as the server records it), `herd node show` prints its
// declared and reported interfaces and the degraded line, `herd node list`
// marks it degraded, and `herd doctor` fails the node's networks check
// naming the storage network.
func TestNodeShowAndDoctorShowNetworks(t *testing.T) {
	h := newHerdSite(t, testenv.Bin(t, "HERD_BIN"))
	state := h.state
	h.write(`server: {address: 127.0.0.1, http_port: 1}
dhcp: {mode: off}
overlays: [autofs]
networks:
  storage: {subnet: 10.78.0.0/24, mtu: 9000}
nas: {address: 10.78.0.2, homes: /export/homes}
nodes:
  - name: gpu01
    mac: "52:54:00:77:00:11"
    interfaces:
      - {name: st0, mac: "52:54:00:78:00:11", network: storage, address: 10.78.0.11}
  - name: gpu02
    mac: "52:54:00:77:00:12"
    interfaces:
      - {name: st0, mac: "52:54:00:78:00:12", network: storage, address: 10.78.0.12}
  - name: gpu03
    mac: "52:54:00:77:00:13"
    interfaces:
      - {name: st0, mac: "52:54:00:78:00:13", network: storage, address: 10.78.0.13}
`)
	os.MkdirAll(state, 0o755)
	inv, err := inventory.Load(state)
	if err != nil {
		t.Fatal(err)
	}
	boot := func(n int) inventory.Link {
		return inventory.Link{Name: "ens3", MAC: fmt.Sprintf("52:54:00:77:00:1%d", n), State: "up", Carrier: true, MTU: 1500, Addresses: []string{fmt.Sprintf("10.77.0.1%d/24", n)}, Boot: true}
	}
	for _, e := range []inventory.Event{
		{Node: "gpu01", MAC: "52:54:00:77:00:11", Stage: "up", Image: "abc", Interfaces: []inventory.Link{boot(1),
			{Name: "ens4", MAC: "52:54:00:78:00:11", State: "down", MTU: 9000, Label: "st0", Network: "storage"}},
			Degraded: []string{"degraded: storage network down (st0 52:54:00:78:00:11: link down)"}},
		{Node: "gpu02", MAC: "52:54:00:77:00:12", Stage: "up", Image: "abc", Interfaces: []inventory.Link{boot(2),
			{Name: "ens4", MAC: "52:54:00:78:00:12", State: "up", Carrier: true, MTU: 9000, Addresses: []string{"10.78.0.12/24"}, Label: "st0", Network: "storage"}}},
	} {
		if err := inv.RecordEvent(e, "10.77.0.1", time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if err := inv.Flush(); err != nil { // the CLI reads nodes.json
		t.Fatal(err)
	}
	out, err := h.run("node", "show", "gpu01")
	if err != nil {
		t.Fatalf("node show: %v\n%s", err, out)
	}
	for _, want := range []string{"declared interfaces:", "st0", "10.78.0.11/24", "reported interfaces", "ens4", "52:54:00:78:00:11", "storage (st0)",
		"degraded: storage network down (st0 52:54:00:78:00:11: link down)"} {
		if !strings.Contains(out, want) {
			t.Errorf("node show gpu01 lacks %q:\n%s", want, out)
		}
	}
	out, _ = h.run("node", "show", "gpu02")
	if strings.Contains(out, "degraded") || !strings.Contains(out, "10.78.0.12/24") {
		t.Errorf("node show gpu02:\n%s", out)
	}
	out, _ = h.run("node", "list")
	if !strings.Contains(out, "up (degraded)") || strings.Count(out, "degraded") != 1 {
		t.Errorf("node list should mark gpu01 (only) degraded:\n%s", out)
	}
	out, _ = h.run("node", "show", "gpu01", "--json")
	var v struct {
		Interfaces []struct{ Name, MAC, Network, Address string }
		Seen       *inventory.Record
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil || len(v.Interfaces) != 1 || v.Interfaces[0].MAC != "52:54:00:78:00:11" || v.Seen == nil || len(v.Seen.Degraded) != 1 {
		t.Errorf("node show --json: %v\n%s", err, out)
	}

	// doctor: its other checks fail here (no image, port 1); only the
	// node network checks matter.
	stdout, _ := h.command("doctor", "--json").Output()
	out = string(stdout)
	var checks []Check
	if err := json.Unmarshal([]byte(out), &checks); err != nil {
		t.Fatalf("doctor --json: %v\n%s", err, out)
	}
	got := map[string]Check{}
	for _, c := range checks {
		got[c.Name] = c
	}
	if c := got["networks of gpu01"]; c.OK || !strings.Contains(c.Detail, "degraded: storage network down") {
		t.Errorf("doctor gpu01: %+v", c)
	}
	if c := got["networks of gpu02"]; !c.OK || !strings.Contains(c.Detail, "storage ens4 10.78.0.12/24 (up, mtu 9000)") || !strings.Contains(c.Detail, "boot ens3") {
		t.Errorf("doctor gpu02: %+v", c)
	}
	if c := got["networks of gpu03"]; !c.Skip {
		t.Errorf("doctor gpu03 (never up): %+v", c)
	}

	// Status reports after boot: gpu01's storage NIC replugged, gpu02's
	// lost. node list and doctor follow the reports, not the up events.
	st := func(n int, up bool) inventory.Link {
		l := inventory.Link{Name: "ens4", MAC: fmt.Sprintf("52:54:00:78:00:1%d", n), State: "down", MTU: 9000, Label: "st0", Network: "storage"}
		if up {
			l.State, l.Carrier, l.Addresses = "up", true, []string{fmt.Sprintf("10.78.0.1%d/24", n)}
		}
		return l
	}
	for n, netw := range map[int]*nodestatus.Network{
		1: {Interfaces: []inventory.Link{boot(1), st(1, true)}, Degraded: []string{}},
		2: {Interfaces: []inventory.Link{boot(2), st(2, false)}, Degraded: []string{"degraded: storage network down (st0 52:54:00:78:00:12: link down)"}},
	} {
		rep := &nodestatus.Report{Node: fmt.Sprintf("gpu0%d", n), Health: nodestatus.Health{State: nodestatus.Ready}, Network: netw}
		if err := inv.RecordStatus(fmt.Sprintf("52:54:00:77:00:1%d", n), rep, "10.77.0.1", time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if err := inv.Flush(); err != nil {
		t.Fatal(err)
	}
	out, _ = h.run("node", "list")
	rows := 0
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "gpu01") && strings.Contains(l, "degraded") || strings.HasPrefix(l, "gpu02") && !strings.Contains(l, "up (degraded)") {
			t.Errorf("node list after the reports: gpu01 replugged, gpu02 lost its storage link:\n%s", out)
		}
		if strings.HasPrefix(l, "gpu01") || strings.HasPrefix(l, "gpu02") {
			rows++
		}
	}
	if rows != 2 {
		t.Errorf("node list lacks gpu01 or gpu02:\n%s", out)
	}
	stdout, _ = h.command("doctor", "--json").Output()
	checks = nil
	if err := json.Unmarshal(stdout, &checks); err != nil {
		t.Fatalf("doctor --json: %v\n%s", err, stdout)
	}
	for _, c := range checks {
		got[c.Name] = c
	}
	if c := got["networks of gpu01"]; !c.OK || !strings.Contains(c.Detail, "storage ens4 10.78.0.11/24 (up, mtu 9000)") {
		t.Errorf("doctor gpu01 after its storage NIC came back: %+v", c)
	}
	if c := got["networks of gpu02"]; c.OK || !strings.Contains(c.Detail, "degraded: storage network down (st0 52:54:00:78:00:12") {
		t.Errorf("doctor gpu02 after its storage link went down: %+v", c)
	}
}
