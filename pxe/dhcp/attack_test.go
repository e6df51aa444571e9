package dhcp

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/site"
)

// forgePy sends forged DHCP packets with scapy from the attacker's
// namespace: Ethernet source and chaddr are whatever the attacker says.
//
//	decline MAC IP...          DECLINE of each IP, chaddr MAC
//	release MAC IP SRCIP       RELEASE of IP (ciaddr) with chaddr MAC, sent from SRCIP
//	flood N POOLSTART POOLEND  N random MACs: DISCOVER, then REQUEST for a pool address each
const forgePy = `
import random, sys
from scapy.all import Ether, IP, UDP, BOOTP, DHCP, sendp, conf
conf.verb = 0
def b(mac): return bytes.fromhex(mac.replace(":", "")) + b"\x00" * 10
def pkt(mac, opts, src="0.0.0.0", ciaddr="0.0.0.0"):
    return (Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / IP(src=src, dst="255.255.255.255") /
            UDP(sport=68, dport=67) /
            BOOTP(chaddr=b(mac), ciaddr=ciaddr, xid=random.getrandbits(32), flags=0x8000) /
            DHCP(options=opts + ["end"]))
mode, out = sys.argv[1], []
if mode == "decline":
    for ip in sys.argv[3:]:
        out.append(pkt(sys.argv[2], [("message-type", "decline"), ("requested_addr", ip), ("server_id", "10.77.0.1")]))
elif mode == "release":
    out.append(pkt(sys.argv[2], [("message-type", "release"), ("server_id", "10.77.0.1")], src=sys.argv[4], ciaddr=sys.argv[3]))
elif mode == "flood":
    n, lo, hi = int(sys.argv[2]), int(sys.argv[3].split(".")[3]), int(sys.argv[4].split(".")[3])
    for i in range(n):
        mac = "02:%02x:%02x:%02x:%02x:%02x" % tuple(random.getrandbits(8) for _ in range(5))
        out.append(pkt(mac, [("message-type", "discover")]))
        ip = "10.77.0.%d" % (lo + i % (hi - lo + 1))
        out.append(pkt(mac, [("message-type", "request"), ("requested_addr", ip)]))
sendp(out, iface="eth0")
print("sent", len(out))
`

// TestAttackLeaseSpoofingAndStarvation: the attacker is any host on the boot
// LAN (issue #15). It DECLINEs every pool address, RELEASEs a node's lease
// in that node's name from its own address, and floods random MACs in
// dhcp.unknown: discover mode. Afterwards the victim's lease is intact, a
// named node without a reserved address and a reserved node both get their
// lease from real udhcpc, and the lease table stays bounded. Fails if a
// forged DECLINE empties the pool, a forged RELEASE frees the victim's
// lease, or the flood takes every address.
func TestAttackLeaseSpoofingAndStarvation(t *testing.T) {
	// scapy: Debian's python3-scapy, run with the system /usr/bin/python3.
	testenv.RequireCommands(t, "udhcpc", "scapy")
	l := newLab(t)
	cfg := labConfig(t, site.DHCPFull, site.UnknownDiscover)
	cfg.DHCP.RangeStart, cfg.DHCP.RangeEnd = "10.77.0.100", "10.77.0.119"
	cfg.Nodes = append(cfg.Nodes,
		site.Node{Name: "gpu77", MAC: "52:54:00:77:00:77"},
		site.Node{Name: "gpu78", MAC: "52:54:00:77:00:78"})
	state := t.TempDir()
	srv, err := l.start(cfg, state, true)
	if err != nil {
		t.Fatal(err)
	}
	victim := l.client("52:54:00:77:00:77", "")
	ev := udhcpc(t, victim)
	if len(ev) != 1 || !strings.HasPrefix(ev[0], "bound 10.77.0.1") {
		t.Fatalf("victim: %q", ev)
	}
	victimIP := strings.Fields(ev[0])[1]

	attacker := l.client("02:66:66:66:66:66", "10.77.0.66/24")
	script := filepath.Join(t.TempDir(), "forge.py")
	if err := os.WriteFile(script, []byte(forgePy), 0o644); err != nil {
		t.Fatal(err)
	}
	forge := func(args ...string) {
		ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
		defer cancel()
		b, err := attacker.Command(ctx, "/usr/bin/python3", append([]string{script}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("forge %v: %v: %s", args, err, b)
		}
	}
	var pool []string
	for i := 100; i <= 119; i++ {
		pool = append(pool, fmt.Sprintf("10.77.0.%d", i))
	}
	forge(append([]string{"decline", "02:66:66:66:66:66"}, pool...)...)
	forge(append([]string{"decline", "52:54:00:77:00:12"}, pool...)...) // a reserved node's MAC
	forge("release", "52:54:00:77:00:77", victimIP, "10.77.0.66")
	forge("flood", "300", "10.77.0.100", "10.77.0.119")
	time.Sleep(500 * time.Millisecond) // the server drains its socket

	found := false
	for _, le := range srv.s.Leases() {
		if le.MAC == "52:54:00:77:00:77" && le.IP.String() == victimIP && !le.Offered {
			found = true
		}
	}
	if !found {
		t.Errorf("the victim's lease of %s is gone after forged DECLINE/RELEASE: %v", victimIP, srv.s.Leases())
	}
	if n := len(srv.s.Leases()); n > 20+4 {
		t.Errorf("%d leases and offers held after a 300-MAC flood, want at most the pool (20) plus the nodes", n)
	}
	// Real clients afterwards: a named node without a reservation gets a
	// pool address, a reserved node its own.
	named := l.client("52:54:00:77:00:78", "")
	if ev := udhcpc(t, named); len(ev) != 1 || !strings.HasPrefix(ev[0], "bound 10.77.0.1") || !strings.Contains(ev[0], "gpu78") {
		t.Errorf("named node after the attacks: %q", ev)
	}
	reserved := l.client("52:54:00:77:00:11", "")
	if ev := udhcpc(t, reserved); len(ev) != 1 || !strings.HasPrefix(ev[0], "bound 10.77.0.11 gpu01") {
		t.Errorf("reserved node after the attacks: %q", ev)
	}
	// And the victim renews its address.
	if ev := udhcpc(t, victim); len(ev) != 1 || !strings.HasPrefix(ev[0], "bound "+victimIP+" ") {
		t.Errorf("victim after the attacks: %q, want %s again", ev, victimIP)
	}
}

// TestDiskFullUnderLoad: the state dir is a small tmpfs that fills up while
// nodes ask for leases. The reserved node and a named node still get their
// leases (answered from memory); when space returns the leases reach
// leases.json without new traffic. Fails if a full disk withholds leases.
func TestDiskFullUnderLoad(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "udhcpc", "mount", "umount")
	defer func(d time.Duration) { TickInterval = d }(TickInterval)
	TickInterval = 200 * time.Millisecond
	state := t.TempDir()
	if b, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k", "herd-test-full", state).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, b)
	}
	defer exec.Command("umount", state).Run()
	l := newLab(t)
	cfg := labConfig(t, site.DHCPFull, site.UnknownDiscover)
	cfg.Nodes = append(cfg.Nodes, site.Node{Name: "gpu77", MAC: "52:54:00:77:00:77"})
	srv, err := l.start(cfg, state, true)
	if err != nil {
		t.Fatal(err)
	}
	// Fill the disk.
	filler := filepath.Join(state, "filler")
	f, _ := os.Create(filler)
	f.Write(make([]byte, 1<<20)) // ENOSPC long before 1 MiB
	f.Close()
	// Load: 100 random MACs asking at once, then the real nodes.
	attacker := l.client("02:66:66:66:66:67", "10.77.0.67/24")
	script := filepath.Join(t.TempDir(), "forge.py")
	os.WriteFile(script, []byte(forgePy), 0o644)
	if b, err := attacker.Command(context.Background(), "/usr/bin/python3", script, "flood", "100", "10.77.0.100", "10.77.0.102").CombinedOutput(); err != nil {
		t.Fatalf("flood: %v: %s", err, b)
	}
	reserved := l.client("52:54:00:77:00:11", "")
	if ev := udhcpc(t, reserved); len(ev) != 1 || !strings.HasPrefix(ev[0], "bound 10.77.0.11 gpu01") {
		t.Fatalf("reserved node with the disk full: %q", ev)
	}
	named := l.client("52:54:00:77:00:77", "")
	ev := udhcpc(t, named)
	if len(ev) != 1 || !strings.HasPrefix(ev[0], "bound 10.77.0.1") {
		t.Fatalf("named node with the disk full: %q", ev)
	}
	namedIP := strings.Fields(ev[0])[1]
	os.Remove(filler)
	deadline := time.Now().Add(30 * time.Second)
	for {
		data, err := os.ReadFile(filepath.Join(state, "leases.json"))
		if err == nil && strings.Contains(string(data), "10.77.0.11") && strings.Contains(string(data), namedIP) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("leases.json after space returned: %v %s", err, data)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := LoadLeases(filepath.Join(state, "leases.json")); err != nil {
		t.Fatalf("leases.json after the disk was full: %v", err)
	}
	_ = srv
}
