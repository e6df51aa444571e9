package dhcp

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/herdlab/herd/site"
)

var knownReasons = map[string]bool{
	ReasonNotRequest: true, ReasonNotEthernet: true, ReasonModeOff: true, ReasonUnknownMAC: true,
	ReasonNotBootable: true, ReasonArch: true, ReasonOtherServer: true, ReasonNoAddress: true,
	ReasonReleased: true, ReasonDeclined: true, ReasonMessageType: true,
	ReasonWrongPort: true, ReasonMissingCIAdr: true, ReasonNotHolder: true, ReasonUnknownShare: true,
}

// FuzzReply feeds arbitrary packets to the reply logic in both modes and on
// both ports. Seeds in testdata/fuzz/FuzzReply (see testdata/README.md):
// captured-* are real firmware messages recorded from QEMU runs (SeaBIOS's
// iPXE ROM, OVMF's PXE client and the iPXE it loads; TestCapturedSeeds),
// udhcpc-* are udhcpc's real packets captured by TestFullModeUdhcpc, and
// generated-* are built in Go from the firmware descriptions in util_test.go
// (TestFuzzSeedsCurrent), for shapes no local run produces (relayed BIOS
// PXE, UEFI HTTP boot, INFORM, DECLINE).
func FuzzReply(f *testing.F) {
	full := testPlan(f, site.DHCPFull, site.UnknownDiscover)
	proxy := testPlan(f, site.DHCPProxy, site.UnknownDiscover)
	f.Fuzz(func(t *testing.T, pkt []byte, flags byte) {
		req, err := dhcpv4.FromBytes(pkt)
		if err != nil {
			return
		}
		p := full
		if flags&1 != 0 {
			p = proxy
		}
		port := ServerPort
		if flags&2 != 0 {
			port = PXEPort
		}
		src := &net.UDPAddr{IP: net.IPv4(10, 77, 0, 50), Port: ClientPort}
		l := NewLeases()
		// Twice: the second sees the lease state the first left.
		for i := 0; i < 2; i++ {
			r := Reply(p, l, req, port, src, t0)
			if r.Reply == nil {
				if !knownReasons[r.Reason] {
					t.Fatalf("no reply with unknown reason %q", r.Reason)
				}
				continue
			}
			checkReply(t, p, req, r)
		}
	})
}

func checkReply(t *testing.T, p *Plan, req *dhcpv4.DHCPv4, r Result) {
	rep := r.Reply
	back, err := dhcpv4.FromBytes(rep.ToBytes())
	if err != nil {
		t.Fatalf("reply does not parse: %v", err)
	}
	if back.OpCode != dhcpv4.OpcodeBootReply || back.TransactionID != req.TransactionID || back.ClientHWAddr.String() != req.ClientHWAddr.String() {
		t.Fatalf("reply header: %s", back.Summary())
	}
	if r.Dest == nil || r.Dest.IP == nil {
		t.Fatal("reply without destination")
	}
	if !back.ServerIdentifier().Equal(p.ServerIP.AsSlice()) {
		t.Fatalf("server id %v", back.ServerIdentifier())
	}
	yi, _ := netip.AddrFromSlice(back.YourIPAddr.To4())
	switch {
	case p.Mode == site.DHCPProxy:
		if !yi.IsUnspecified() {
			t.Fatalf("proxy reply hands out %s", yi)
		}
		if back.ClassIdentifier() == "" || back.BootFileName == "" {
			t.Fatalf("proxy reply without 60/boot file: %s", back.Summary())
		}
	case yi.IsUnspecified():
		mt := back.MessageType()
		if mt != dhcpv4.MessageTypeNak && !(mt == dhcpv4.MessageTypeAck && req.MessageType() == dhcpv4.MessageTypeInform) {
			t.Fatalf("%s without yiaddr", mt)
		}
	default:
		node, known := p.Node(req.ClientHWAddr)
		if known && node.IP != "" && yi.String() != node.IP {
			t.Fatalf("node %s got %s, reserved %s", node.Name, yi, node.IP)
		}
		if !known && !p.inRange(yi) {
			t.Fatalf("unknown client got %s outside the range", yi)
		}
	}
}

// TestFuzzSeedsCurrent checks that the generated seeds in testdata/fuzz/FuzzReply
// match the firmware descriptions in util_test.go; HERD_WRITE_FUZZ_SEEDS=1
// rewrites them.
func TestFuzzSeedsCurrent(t *testing.T) {
	write := os.Getenv("HERD_WRITE_FUZZ_SEEDS") == "1"
	http := pkt(macKnown, dhcpv4.MessageTypeDiscover,
		dhcpv4.OptClassIdentifier("HTTPClient:Arch:00016:UNDI:003001"), dhcpv4.OptClientArch(iana.EFI_X86_64_HTTP))
	req := with(ovmfPXE(macKnown, dhcpv4.MessageTypeRequest), dhcpv4.OptServerIdentifier(net.IPv4(10, 77, 0, 1)), dhcpv4.OptRequestedIPAddress(net.IPv4(10, 77, 0, 11)))
	relay := biosPXE(macUnknown, dhcpv4.MessageTypeDiscover)
	relay.GatewayIPAddr = net.IPv4(10, 77, 0, 250)
	inf := plain(macKnown, dhcpv4.MessageTypeInform)
	inf.ClientIPAddr = net.IPv4(10, 77, 0, 11)
	for name, d := range map[string]*dhcpv4.DHCPv4{
		"seabios-ipxe-discover": seabiosIPXE(macKnown, dhcpv4.MessageTypeDiscover),
		"ovmf-pxe-discover":     ovmfPXE(macKnown, dhcpv4.MessageTypeDiscover),
		"ovmf-pxe-request":      req,
		"bios-pxe-relayed":      relay,
		"uefi-http-discover":    http,
		"inform":                inf,
		"decline":               with(plain(macUnknown, dhcpv4.MessageTypeDecline), dhcpv4.OptRequestedIPAddress(net.IPv4(10, 77, 0, 100))),
	} {
		for _, flags := range []byte{0, 1, 3} {
			seed := fmt.Sprintf("generated-%s-%d", name, flags)
			if write {
				writeSeed(t, seed, d.ToBytes(), flags)
				continue
			}
			got, err := os.ReadFile(filepath.Join("testdata", "fuzz", "FuzzReply", seed))
			if err != nil || string(got) != seedBody(d.ToBytes(), flags) {
				t.Errorf("seed %s is missing or stale (rewrite with HERD_WRITE_FUZZ_SEEDS=1): %v", seed, err)
			}
		}
	}
}

func writeSeed(t testing.TB, name string, pkt []byte, flags byte) {
	dir := filepath.Join("testdata", "fuzz", "FuzzReply")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), []byte(seedBody(pkt, flags)), 0o644); err != nil {
		t.Fatal(err)
	}
}

func seedBody(pkt []byte, flags byte) string {
	return fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nbyte(%d)\n", pkt, flags)
}

// TestCapturedSeeds checks the real firmware messages in testdata/captured
// (recorded by pxe/server's QEMU tests, see testdata/README.md): each parses,
// carries its firmware's signature, and is a FuzzReply seed
// (captured-<name>); HERD_WRITE_FUZZ_SEEDS=1 writes the seeds.
func TestCapturedSeeds(t *testing.T) {
	write := os.Getenv("HERD_WRITE_FUZZ_SEEDS") == "1"
	files, _ := filepath.Glob(filepath.Join("testdata", "captured", "*.bin"))
	seen := map[string]bool{}
	for _, p := range files {
		name := strings.TrimSuffix(filepath.Base(p), ".bin")
		pkt, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		d, err := dhcpv4.FromBytes(pkt)
		if err != nil {
			t.Errorf("%s does not parse: %v", p, err)
			continue
		}
		fw, _, _ := strings.Cut(name, "-")
		seen[fw] = true
		class, user := d.ClassIdentifier(), string(d.Options.Get(dhcpv4.OptionUserClassInformation))
		switch {
		case strings.Contains(user, "iPXE"): // iPXE: the SeaBIOS NIC ROM, or loaded by the firmware
		case fw == "ovmf" && strings.HasPrefix(class, "PXEClient:Arch:00007"):
		case fw == "seabios" && strings.HasPrefix(class, "PXEClient:Arch:00000"):
		default:
			t.Errorf("%s: class %q user class %q is no %s firmware message", p, class, user, fw)
		}
		var flags byte
		if strings.Contains(name, "-proxy-") {
			flags |= 1
		}
		if strings.HasSuffix(name, "-port4011") {
			flags |= 2
		}
		seed := "captured-" + name
		if write {
			writeSeed(t, seed, pkt, flags)
			continue
		}
		got, err := os.ReadFile(filepath.Join("testdata", "fuzz", "FuzzReply", seed))
		if err != nil || string(got) != seedBody(pkt, flags) {
			t.Errorf("seed %s is missing or stale (rewrite with HERD_WRITE_FUZZ_SEEDS=1): %v", seed, err)
		}
	}
	for _, fw := range []string{"seabios", "ovmf"} {
		if !seen[fw] {
			t.Errorf("no captured %s message in testdata/captured", fw)
		}
	}
}
