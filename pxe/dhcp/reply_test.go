package dhcp

import (
	"bytes"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/herdlab/herd/site"
)

const testYAML = `server:
  interface: br0
  address: 10.77.0.1
dhcp:
  mode: MODE
  subnet: 10.77.0.0/24
  router: 10.77.0.254
  dns: [10.77.0.53, 10.77.0.54]
  domain: lab.example
  unknown: UNKNOWN
  lease_time: 1h
  range_start: 10.77.0.100
  range_end: 10.77.0.102
overlays: [base]
nodes:
  - name: gpu01
    mac: "52:54:00:77:00:11"
    ip: 10.77.0.11
  - name: gpu02
    mac: "52:54:00:77:00:12"
    ip: 10.77.0.12
`

var (
	macKnown   = net.HardwareAddr{0x52, 0x54, 0x00, 0x77, 0x00, 0x11}
	macUnknown = net.HardwareAddr{0x52, 0x54, 0x00, 0x99, 0x00, 0x01}
	t0         = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
)

func testConfig(t testing.TB, mode, unknown string) *site.Config {
	t.Helper()
	y := strings.NewReplacer("MODE", mode, "UNKNOWN", unknown).Replace(testYAML)
	cfg, err := site.Parse("herd.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func testPlan(t testing.TB, mode, unknown string) *Plan {
	t.Helper()
	p, err := NewPlan(testConfig(t, mode, unknown), "")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Firmware descriptions from ENVIRONMENT.md (captured with QEMU here).
func seabiosIPXE(mac net.HardwareAddr, mt dhcpv4.MessageType) *dhcpv4.DHCPv4 {
	return pkt(mac, mt,
		dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001"),
		dhcpv4.OptClientArch(iana.INTEL_X86PC),
		dhcpv4.OptGeneric(dhcpv4.OptionUserClassInformation, []byte("iPXE")),
		dhcpv4.OptGeneric(dhcpv4.OptionEtherboot, []byte{0xb1, 0x05, 0x01, 0x80, 0x86, 0x10, 0x0e}))
}

func ovmfPXE(mac net.HardwareAddr, mt dhcpv4.MessageType) *dhcpv4.DHCPv4 {
	d := pkt(mac, mt,
		dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003000"),
		dhcpv4.OptClientArch(iana.EFI_BC),
		dhcpv4.OptGeneric(dhcpv4.OptionClientNetworkInterfaceIdentifier, []byte{1, 3, 0}),
		dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, append([]byte{0}, bytes.Repeat([]byte{0xab}, 16)...)))
	d.SetBroadcast()
	return d
}

func biosPXE(mac net.HardwareAddr, mt dhcpv4.MessageType) *dhcpv4.DHCPv4 {
	return pkt(mac, mt,
		dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001"),
		dhcpv4.OptClientArch(iana.INTEL_X86PC),
		dhcpv4.OptGeneric(dhcpv4.OptionClientNetworkInterfaceIdentifier, []byte{1, 2, 1}),
		dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, append([]byte{0}, bytes.Repeat([]byte{0x11}, 16)...)))
}

func plain(mac net.HardwareAddr, mt dhcpv4.MessageType) *dhcpv4.DHCPv4 {
	return pkt(mac, mt)
}

func pkt(mac net.HardwareAddr, mt dhcpv4.MessageType, opts ...dhcpv4.Option) *dhcpv4.DHCPv4 {
	mods := []dhcpv4.Modifier{dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(mt), dhcpv4.WithTransactionID(dhcpv4.TransactionID{1, 2, 3, 4})}
	for _, o := range opts {
		mods = append(mods, dhcpv4.WithOption(o))
	}
	d, err := dhcpv4.New(mods...)
	if err != nil {
		panic(err)
	}
	return d
}

func with(d *dhcpv4.DHCPv4, opts ...dhcpv4.Option) *dhcpv4.DHCPv4 {
	for _, o := range opts {
		d.UpdateOption(o)
	}
	return d
}

func mustReply(t *testing.T, r Result, mt dhcpv4.MessageType) *dhcpv4.DHCPv4 {
	t.Helper()
	if r.Reply == nil {
		t.Fatalf("no reply: %s (%s)", r.Reason, r.Detail)
	}
	if got := r.Reply.MessageType(); got != mt {
		t.Fatalf("reply %s, want %s (%s)", got, mt, r.Detail)
	}
	// Every reply survives its own wire format.
	if _, err := dhcpv4.FromBytes(r.Reply.ToBytes()); err != nil {
		t.Fatalf("reply does not parse back: %v", err)
	}
	return r.Reply
}

func mustDrop(t *testing.T, r Result, reason string) {
	t.Helper()
	if r.Reply != nil {
		t.Fatalf("unexpected reply %s yiaddr %s file %q", r.Reply.MessageType(), r.Reply.YourIPAddr, r.Reply.BootFileName)
	}
	if r.Reason != reason {
		t.Fatalf("reason %q (%s), want %q", r.Reason, r.Detail, reason)
	}
}

func TestBootFileByArch(t *testing.T) {
	p := testPlan(t, site.DHCPProxy, site.UnknownIgnore)
	uefiIPXE := testPlan(t, site.DHCPProxy, site.UnknownIgnore)
	uefiIPXE.UEFIBinary = "ipxe.efi"
	sbCfg := testConfig(t, site.DHCPProxy, site.UnknownIgnore)
	sbCfg.SecureBoot = site.SecureBootDistro
	sb, err := NewPlan(sbCfg, "")
	if err != nil {
		t.Fatal(err)
	}
	herdCfg := testConfig(t, site.DHCPProxy, site.UnknownIgnore)
	herdCfg.SecureBoot = site.SecureBootHerd
	hsb, err := NewPlan(herdCfg, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		p      *Plan
		opts   []dhcpv4.Option
		file   string
		vc     string
		reason string
	}{
		{"bios", p, []dhcpv4.Option{dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001"), dhcpv4.OptClientArch(iana.INTEL_X86PC)}, "undionly.kpxe", "PXEClient", ""},
		{"bios without option 93", p, []dhcpv4.Option{dhcpv4.OptClassIdentifier("PXEClient")}, "undionly.kpxe", "PXEClient", ""},
		{"uefi x64 (7)", p, []dhcpv4.Option{dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003000"), dhcpv4.OptClientArch(iana.EFI_BC)}, "snponly.efi", "PXEClient", ""},
		{"uefi x64 (9)", p, []dhcpv4.Option{dhcpv4.OptClassIdentifier("PXEClient:Arch:00009:UNDI:003016"), dhcpv4.OptClientArch(iana.EFI_X86_64)}, "snponly.efi", "PXEClient", ""},
		{"uefi arch from vendor class only", p, []dhcpv4.Option{dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003000")}, "snponly.efi", "PXEClient", ""},
		{"uefi configured ipxe.efi", uefiIPXE, []dhcpv4.Option{dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003000"), dhcpv4.OptClientArch(iana.EFI_BC)}, "ipxe.efi", "PXEClient", ""},
		{"secure boot: uefi x64 (7) gets shim", sb, []dhcpv4.Option{dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003000"), dhcpv4.OptClientArch(iana.EFI_BC)}, "shimx64.efi", "PXEClient", ""},
		{"secure boot: uefi x64 (9) gets shim", sb, []dhcpv4.Option{dhcpv4.OptClassIdentifier("PXEClient:Arch:00009:UNDI:003016"), dhcpv4.OptClientArch(iana.EFI_X86_64)}, "shimx64.efi", "PXEClient", ""},
		{"secure boot herd: uefi x64 (7) gets the signed UKI", hsb, []dhcpv4.Option{dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003000"), dhcpv4.OptClientArch(iana.EFI_BC)}, "herd-uki.efi", "PXEClient", ""},
		{"secure boot herd: uefi http boot gets the signed UKI", hsb, []dhcpv4.Option{dhcpv4.OptClassIdentifier("HTTPClient:Arch:00016:UNDI:003001"), dhcpv4.OptClientArch(iana.EFI_X86_64_HTTP)}, "http://10.77.0.1:8080/secureboot/herd-uki.efi", "HTTPClient", ""},
		{"secure boot herd: bios keeps ipxe", hsb, []dhcpv4.Option{dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001"), dhcpv4.OptClientArch(iana.INTEL_X86PC)}, "undionly.kpxe", "PXEClient", ""},
		{"secure boot herd: ipxe (bios chain) gets its script", hsb, []dhcpv4.Option{dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001"), dhcpv4.OptGeneric(dhcpv4.OptionUserClassInformation, []byte("iPXE"))}, "http://10.77.0.1:8080/boot/52:54:00:77:00:11.ipxe", "PXEClient", ""},
		{"secure boot: bios keeps ipxe", sb, []dhcpv4.Option{dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001"), dhcpv4.OptClientArch(iana.INTEL_X86PC)}, "undionly.kpxe", "PXEClient", ""},
		{"uefi http boot (16)", p, []dhcpv4.Option{dhcpv4.OptClassIdentifier("HTTPClient:Arch:00016:UNDI:003001"), dhcpv4.OptClientArch(iana.EFI_X86_64_HTTP)}, "http://10.77.0.1:8080/ipxe/ipxe.efi", "HTTPClient", ""},
		{"uefi ia32 unsupported", p, []dhcpv4.Option{dhcpv4.OptClassIdentifier("PXEClient:Arch:00006:UNDI:003000"), dhcpv4.OptClientArch(iana.EFI_IA32)}, "", "", ReasonArch},
		{"arm64 http unsupported", p, []dhcpv4.Option{dhcpv4.OptClassIdentifier("HTTPClient:Arch:00019"), dhcpv4.OptClientArch(iana.EFI_ARM64_HTTP)}, "", "", ReasonArch},
		{"ipxe user class", p, []dhcpv4.Option{dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001"), dhcpv4.OptGeneric(dhcpv4.OptionUserClassInformation, []byte("iPXE"))}, "http://10.77.0.1:8080/boot/52:54:00:77:00:11.ipxe", "PXEClient", ""},
		{"ipxe rfc3004 user class", p, []dhcpv4.Option{dhcpv4.OptRFC3004UserClass([]string{"foo", "iPXE"})}, "http://10.77.0.1:8080/boot/52:54:00:77:00:11.ipxe", "PXEClient", ""},
		{"ipxe option 175 only", p, []dhcpv4.Option{dhcpv4.OptGeneric(dhcpv4.OptionEtherboot, []byte{0x15, 0x01, 0x01})}, "http://10.77.0.1:8080/boot/52:54:00:77:00:11.ipxe", "PXEClient", ""},
		{"plain client", p, nil, "", "", ReasonNotBootable},
		{"other vendor class", p, []dhcpv4.Option{dhcpv4.OptClassIdentifier("MSFT 5.0")}, "", "", ReasonNotBootable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := pkt(macKnown, dhcpv4.MessageTypeDiscover, tc.opts...)
			r := Reply(tc.p, NewLeases(), req, ServerPort, nil, t0)
			if tc.reason != "" {
				mustDrop(t, r, tc.reason)
				return
			}
			rep := mustReply(t, r, dhcpv4.MessageTypeOffer)
			if rep.BootFileName != tc.file || rep.BootFileNameOption() != tc.file {
				t.Errorf("file %q / option 67 %q, want %q", rep.BootFileName, rep.BootFileNameOption(), tc.file)
			}
			if vc := rep.ClassIdentifier(); vc != tc.vc {
				t.Errorf("option 60 %q, want %q", vc, tc.vc)
			}
		})
	}
}

func TestProxyReply(t *testing.T) {
	p := testPlan(t, site.DHCPProxy, site.UnknownIgnore)
	req := biosPXE(macKnown, dhcpv4.MessageTypeDiscover)
	r := Reply(p, NewLeases(), req, ServerPort, &net.UDPAddr{IP: net.IPv4zero, Port: 68}, t0)
	rep := mustReply(t, r, dhcpv4.MessageTypeOffer)
	if !rep.YourIPAddr.IsUnspecified() {
		t.Errorf("proxy yiaddr %s, want 0.0.0.0", rep.YourIPAddr)
	}
	if !rep.ServerIPAddr.Equal(net.IPv4(10, 77, 0, 1)) || !rep.ServerIdentifier().Equal(net.IPv4(10, 77, 0, 1)) {
		t.Errorf("siaddr %s, server id %s", rep.ServerIPAddr, rep.ServerIdentifier())
	}
	if got := rep.GetOneOption(dhcpv4.OptionVendorSpecificInformation); !bytes.Equal(got, []byte{6, 1, 8, 255}) {
		t.Errorf("option 43 = % x", got)
	}
	if got, want := rep.GetOneOption(dhcpv4.OptionClientMachineIdentifier), req.GetOneOption(dhcpv4.OptionClientMachineIdentifier); !bytes.Equal(got, want) {
		t.Errorf("option 97 = % x, want % x", got, want)
	}
	if rep.ClassIdentifier() != "PXEClient" || rep.BootFileName != "undionly.kpxe" {
		t.Errorf("60 %q file %q", rep.ClassIdentifier(), rep.BootFileName)
	}
	if rep.Options.Has(dhcpv4.OptionSubnetMask) || rep.Options.Has(dhcpv4.OptionIPAddressLeaseTime) {
		t.Error("proxy reply carries address options")
	}
	if !r.Bound || r.Hostname != "gpu01" || r.IP.IsValid() {
		t.Errorf("hook data: bound %v host %q ip %v", r.Bound, r.Hostname, r.IP)
	}
	if !r.Dest.IP.Equal(net.IPv4bcast) || r.Dest.Port != ClientPort {
		t.Errorf("dest %s, want broadcast:68", r.Dest)
	}

	// Port 4011: REQUEST from a client that has its address → ACK unicast back.
	src := &net.UDPAddr{IP: net.IPv4(10, 77, 0, 150), Port: 68}
	req4011 := ovmfPXE(macKnown, dhcpv4.MessageTypeRequest)
	req4011.ClientIPAddr = src.IP
	rep = mustReply(t, Reply(p, NewLeases(), req4011, PXEPort, src, t0), dhcpv4.MessageTypeAck)
	if rep.BootFileName != "snponly.efi" || !rep.YourIPAddr.IsUnspecified() {
		t.Errorf("4011: file %q yiaddr %s", rep.BootFileName, rep.YourIPAddr)
	}
	if r := Reply(p, NewLeases(), req4011, PXEPort, src, t0); r.Dest.String() != src.String() {
		t.Errorf("4011 dest %s, want %s", r.Dest, src)
	}

	// REQUEST on 67 for the site's DHCP server is not ours to answer.
	other := with(ovmfPXE(macKnown, dhcpv4.MessageTypeRequest), dhcpv4.OptServerIdentifier(net.IPv4(10, 77, 0, 2)))
	mustDrop(t, Reply(p, NewLeases(), other, ServerPort, nil, t0), ReasonOtherServer)
	ours := with(ovmfPXE(macKnown, dhcpv4.MessageTypeRequest), dhcpv4.OptServerIdentifier(net.IPv4(10, 77, 0, 1)))
	mustReply(t, Reply(p, NewLeases(), ours, ServerPort, nil, t0), dhcpv4.MessageTypeAck)

	// iPXE gets its script; plain DHCP clients and unknown MACs get nothing.
	rep = mustReply(t, Reply(p, NewLeases(), seabiosIPXE(macKnown, dhcpv4.MessageTypeDiscover), ServerPort, nil, t0), dhcpv4.MessageTypeOffer)
	if rep.BootFileName != "http://10.77.0.1:8080/boot/52:54:00:77:00:11.ipxe" {
		t.Errorf("iPXE file %q", rep.BootFileName)
	}
	mustDrop(t, Reply(p, NewLeases(), plain(macKnown, dhcpv4.MessageTypeDiscover), ServerPort, nil, t0), ReasonNotBootable)
	mustDrop(t, Reply(p, NewLeases(), biosPXE(macUnknown, dhcpv4.MessageTypeDiscover), ServerPort, nil, t0), ReasonUnknownMAC)
	mustDrop(t, Reply(p, NewLeases(), biosPXE(macKnown, dhcpv4.MessageTypeInform), ServerPort, nil, t0), ReasonMessageType)
	pd := testPlan(t, site.DHCPProxy, site.UnknownDiscover)
	r = Reply(pd, NewLeases(), seabiosIPXE(macUnknown, dhcpv4.MessageTypeDiscover), ServerPort, nil, t0)
	if rep := mustReply(t, r, dhcpv4.MessageTypeOffer); rep.BootFileName != "http://10.77.0.1:8080/boot/52:54:00:99:00:01.ipxe" || r.Hostname != "" {
		t.Errorf("unknown discover: file %q host %q", rep.BootFileName, r.Hostname)
	} else if rep.Options.Has(dhcpv4.OptionEtherboot) {
		// A proxy offer is the one iPXE waits for; no-pxedhcp belongs in
		// the site DHCP server's offer, which herd does not write.
		t.Errorf("proxy offer carries option 175: % x", rep.GetOneOption(dhcpv4.OptionEtherboot))
	}
}

func TestFullKnownNode(t *testing.T) {
	p := testPlan(t, site.DHCPFull, site.UnknownIgnore)
	l := NewLeases()
	rep := mustReply(t, Reply(p, l, plain(macKnown, dhcpv4.MessageTypeDiscover), ServerPort, nil, t0), dhcpv4.MessageTypeOffer)
	checkAddressOptions(t, rep, "10.77.0.11", "gpu01")
	if rep.BootFileName != "" || rep.Options.Has(dhcpv4.OptionBootfileName) {
		t.Errorf("plain client got boot file %q", rep.BootFileName)
	}
	req := with(plain(macKnown, dhcpv4.MessageTypeRequest), dhcpv4.OptRequestedIPAddress(net.IPv4(10, 77, 0, 11)), dhcpv4.OptServerIdentifier(net.IPv4(10, 77, 0, 1)))
	r := Reply(p, l, req, ServerPort, nil, t0)
	checkAddressOptions(t, mustReply(t, r, dhcpv4.MessageTypeAck), "10.77.0.11", "gpu01")
	if !r.Bound || r.IP != netip.MustParseAddr("10.77.0.11") || r.Hostname != "gpu01" {
		t.Errorf("hook data %+v", r)
	}
	if le, ok := l.Get(macKnown.String(), t0); !ok || le.IP.String() != "10.77.0.11" || le.Hostname != "gpu01" || !le.Expires.Equal(t0.Add(time.Hour)) {
		t.Errorf("lease %+v %v", le, ok)
	}

	// A PXE ROM in full mode: address plus boot file, 60 and 43 echoed.
	rep = mustReply(t, Reply(p, l, ovmfPXE(macKnown, dhcpv4.MessageTypeDiscover), ServerPort, nil, t0), dhcpv4.MessageTypeOffer)
	if rep.BootFileName != "snponly.efi" || rep.ClassIdentifier() != "PXEClient" || !rep.ServerIPAddr.Equal(net.IPv4(10, 77, 0, 1)) {
		t.Errorf("PXE in full mode: file %q 60 %q siaddr %s", rep.BootFileName, rep.ClassIdentifier(), rep.ServerIPAddr)
	}
	if rep.Options.Has(dhcpv4.OptionEtherboot) {
		t.Errorf("PXE ROM got iPXE's option 175: % x", rep.GetOneOption(dhcpv4.OptionEtherboot))
	}
	// iPXE in full mode: the script URL, no PXEClient echo, and no-pxedhcp
	// (175.176 = 1) in the offer and the ACK, so that it requests at once
	// instead of waiting for a ProxyDHCP offer.
	for mt, want := range map[dhcpv4.MessageType]dhcpv4.MessageType{dhcpv4.MessageTypeDiscover: dhcpv4.MessageTypeOffer, dhcpv4.MessageTypeRequest: dhcpv4.MessageTypeAck} {
		req := seabiosIPXE(macKnown, mt)
		if mt == dhcpv4.MessageTypeRequest {
			req = with(req, dhcpv4.OptRequestedIPAddress(net.IPv4(10, 77, 0, 11)), dhcpv4.OptServerIdentifier(net.IPv4(10, 77, 0, 1)))
		}
		rep = mustReply(t, Reply(p, l, req, ServerPort, nil, t0), want)
		if rep.BootFileName != "http://10.77.0.1:8080/boot/52:54:00:77:00:11.ipxe" || rep.ClassIdentifier() != "" {
			t.Errorf("iPXE %s in full mode: file %q 60 %q", rep.MessageType(), rep.BootFileName, rep.ClassIdentifier())
		}
		if got := rep.GetOneOption(dhcpv4.OptionEtherboot); !bytes.Equal(got, []byte{176, 1, 1}) {
			t.Errorf("iPXE %s in full mode: option 175 = % x, want b0 01 01 (no-pxedhcp)", rep.MessageType(), got)
		}
	}

	// REQUEST for a wrong address → NAK, broadcast.
	bad := with(plain(macKnown, dhcpv4.MessageTypeRequest), dhcpv4.OptRequestedIPAddress(net.IPv4(10, 77, 0, 12)))
	r = Reply(p, l, bad, ServerPort, nil, t0)
	nak := mustReply(t, r, dhcpv4.MessageTypeNak)
	if !nak.YourIPAddr.IsUnspecified() || !r.Dest.IP.Equal(net.IPv4bcast) || r.Bound {
		t.Errorf("NAK yiaddr %s dest %s", nak.YourIPAddr, r.Dest)
	}
	// REQUEST for another server → silence.
	mustDrop(t, Reply(p, l, with(plain(macKnown, dhcpv4.MessageTypeRequest), dhcpv4.OptServerIdentifier(net.IPv4(10, 77, 0, 2))), ServerPort, nil, t0), ReasonOtherServer)
	// Full mode never answers on 4011.
	mustDrop(t, Reply(p, l, biosPXE(macKnown, dhcpv4.MessageTypeRequest), PXEPort, &net.UDPAddr{IP: net.IPv4(10, 77, 0, 11), Port: 68}, t0), ReasonWrongPort)
}

func checkAddressOptions(t *testing.T, rep *dhcpv4.DHCPv4, ip, host string) {
	t.Helper()
	if rep.YourIPAddr.String() != ip {
		t.Errorf("yiaddr %s, want %s", rep.YourIPAddr, ip)
	}
	if rep.HostName() != host {
		t.Errorf("hostname %q, want %q", rep.HostName(), host)
	}
	if m := rep.SubnetMask(); net.IP(m).String() != "255.255.255.0" {
		t.Errorf("mask %v", m)
	}
	if r := rep.Router(); len(r) != 1 || r[0].String() != "10.77.0.254" {
		t.Errorf("router %v", r)
	}
	if d := rep.DNS(); len(d) != 2 || d[0].String() != "10.77.0.53" || d[1].String() != "10.77.0.54" {
		t.Errorf("dns %v", d)
	}
	if rep.DomainName() != "lab.example" {
		t.Errorf("domain %q", rep.DomainName())
	}
	if lt := rep.IPAddressLeaseTime(0); lt != time.Hour {
		t.Errorf("lease time %s", lt)
	}
	if !rep.ServerIdentifier().Equal(net.IPv4(10, 77, 0, 1)) {
		t.Errorf("server id %v", rep.ServerIdentifier())
	}
}

func TestFullUnknownPolicies(t *testing.T) {
	mustDrop(t, Reply(testPlan(t, site.DHCPFull, site.UnknownIgnore), NewLeases(), plain(macUnknown, dhcpv4.MessageTypeDiscover), ServerPort, nil, t0), ReasonUnknownMAC)
	mustDrop(t, Reply(testPlan(t, site.DHCPFull, site.UnknownIgnore), NewLeases(), with(plain(macUnknown, dhcpv4.MessageTypeRequest), dhcpv4.OptRequestedIPAddress(net.IPv4(10, 77, 0, 100))), ServerPort, nil, t0), ReasonUnknownMAC)

	p := testPlan(t, site.DHCPFull, site.UnknownDiscover)
	l := NewLeases()
	macs := []net.HardwareAddr{macUnknown, {0x52, 0x54, 0, 0x99, 0, 2}, {0x52, 0x54, 0, 0x99, 0, 3}, {0x52, 0x54, 0, 0x99, 0, 4}}
	for i, mac := range macs[:2] {
		rep := mustReply(t, Reply(p, l, plain(mac, dhcpv4.MessageTypeDiscover), ServerPort, nil, t0), dhcpv4.MessageTypeOffer)
		if want := netip.AddrFrom4([4]byte{10, 77, 0, byte(100 + i)}); rep.YourIPAddr.String() != want.String() {
			t.Errorf("unknown %d got %s, want %s", i, rep.YourIPAddr, want)
		}
		if rep.Options.Has(dhcpv4.OptionHostName) {
			t.Error("unknown MAC got a host name")
		}
	}
	// Unknown MACs may hold half the range (3 addresses, rounded up: 2).
	mustDrop(t, Reply(p, l, plain(macs[2], dhcpv4.MessageTypeDiscover), ServerPort, nil, t0), ReasonUnknownShare)
	mustDrop(t, Reply(p, l, plain(macs[3], dhcpv4.MessageTypeDiscover), ServerPort, nil, t0), ReasonUnknownShare)
	// Offers lapse; the fourth client then gets one.
	later := t0.Add(offerHold + time.Second)
	rep := mustReply(t, Reply(p, l, plain(macs[3], dhcpv4.MessageTypeDiscover), ServerPort, nil, later), dhcpv4.MessageTypeOffer)
	if rep.YourIPAddr.String() != "10.77.0.100" {
		t.Errorf("after lapse got %s", rep.YourIPAddr)
	}
	if l.Dirty() {
		t.Error("offers made the table dirty (they are not persisted)")
	}
	// The first client's REQUEST for its lapsed (re-offered) address → NAK.
	mustReply(t, Reply(p, l, with(plain(macUnknown, dhcpv4.MessageTypeRequest), dhcpv4.OptRequestedIPAddress(net.IPv4(10, 77, 0, 100))), ServerPort, nil, later), dhcpv4.MessageTypeNak)
	// The fourth binds it.
	mustReply(t, Reply(p, l, with(plain(macs[3], dhcpv4.MessageTypeRequest), dhcpv4.OptRequestedIPAddress(net.IPv4(10, 77, 0, 100))), ServerPort, nil, later), dhcpv4.MessageTypeAck)
	if !l.Dirty() {
		t.Error("an ACK did not mark the table dirty")
	}
	// INIT-REBOOT for a free address we have no record of → ACK.
	fresh := NewLeases()
	mustReply(t, Reply(p, fresh, with(plain(macs[1], dhcpv4.MessageTypeRequest), dhcpv4.OptRequestedIPAddress(net.IPv4(10, 77, 0, 101))), ServerPort, nil, t0), dhcpv4.MessageTypeAck)
	// ... and for a reserved one → NAK.
	mustReply(t, Reply(p, fresh, with(plain(macs[2], dhcpv4.MessageTypeRequest), dhcpv4.OptRequestedIPAddress(net.IPv4(10, 77, 0, 11))), ServerPort, nil, t0), dhcpv4.MessageTypeNak)
}

func TestDeclineReleaseInform(t *testing.T) {
	p := testPlan(t, site.DHCPFull, site.UnknownDiscover)
	l := NewLeases()
	bind := func(mac net.HardwareAddr) string {
		rep := mustReply(t, Reply(p, l, plain(mac, dhcpv4.MessageTypeDiscover), ServerPort, nil, t0), dhcpv4.MessageTypeOffer)
		ip := rep.YourIPAddr
		mustReply(t, Reply(p, l, with(plain(mac, dhcpv4.MessageTypeRequest), dhcpv4.OptRequestedIPAddress(ip), dhcpv4.OptServerIdentifier(net.IPv4(10, 77, 0, 1))), ServerPort, nil, t0), dhcpv4.MessageTypeAck)
		return ip.String()
	}
	if ip := bind(macUnknown); ip != "10.77.0.100" {
		t.Fatalf("bound %s", ip)
	}
	mustDrop(t, Reply(p, l, with(plain(macUnknown, dhcpv4.MessageTypeDecline), dhcpv4.OptRequestedIPAddress(net.IPv4(10, 77, 0, 100))), ServerPort, nil, t0), ReasonDeclined)
	if _, ok := l.Get(macUnknown.String(), t0); ok {
		t.Error("declined lease kept")
	}
	if ip := bind(macUnknown); ip != "10.77.0.101" {
		t.Errorf("after DECLINE got %s, want the next address", ip)
	}
	rel := plain(macUnknown, dhcpv4.MessageTypeRelease)
	rel.ClientIPAddr = net.IPv4(10, 77, 0, 101)
	mustDrop(t, Reply(p, l, rel, ServerPort, nil, t0), ReasonReleased)
	if _, ok := l.Get(macUnknown.String(), t0); ok {
		t.Error("released lease kept")
	}

	inf := plain(macKnown, dhcpv4.MessageTypeInform)
	inf.ClientIPAddr = net.IPv4(10, 77, 0, 11)
	r := Reply(p, l, inf, ServerPort, nil, t0)
	rep := mustReply(t, r, dhcpv4.MessageTypeAck)
	if !rep.YourIPAddr.IsUnspecified() || rep.Options.Has(dhcpv4.OptionIPAddressLeaseTime) || rep.DomainName() != "lab.example" {
		t.Errorf("INFORM ACK yiaddr %s lease-time %v", rep.YourIPAddr, rep.Options.Has(dhcpv4.OptionIPAddressLeaseTime))
	}
	if r.Dest.String() != "10.77.0.11:68" {
		t.Errorf("INFORM dest %s, want ciaddr:68", r.Dest)
	}
	mustDrop(t, Reply(p, l, plain(macKnown, dhcpv4.MessageTypeInform), ServerPort, nil, t0), ReasonMissingCIAdr)
}

func TestDelivery(t *testing.T) {
	p := testPlan(t, site.DHCPFull, site.UnknownIgnore)
	relay := plain(macKnown, dhcpv4.MessageTypeDiscover)
	relay.GatewayIPAddr = net.IPv4(10, 77, 0, 250)
	relay.SetBroadcast()
	r := Reply(p, NewLeases(), relay, ServerPort, nil, t0)
	rep := mustReply(t, r, dhcpv4.MessageTypeOffer)
	if r.Dest.String() != "10.77.0.250:67" || !rep.GatewayIPAddr.Equal(relay.GatewayIPAddr) || !rep.IsBroadcast() {
		t.Errorf("relay: dest %s giaddr %s broadcast %v", r.Dest, rep.GatewayIPAddr, rep.IsBroadcast())
	}
	bc := plain(macKnown, dhcpv4.MessageTypeDiscover)
	bc.SetBroadcast()
	if r := Reply(p, NewLeases(), bc, ServerPort, nil, t0); r.Dest.String() != "255.255.255.255:68" {
		t.Errorf("broadcast flag: dest %s", r.Dest)
	}
	// SeaBIOS iPXE: no broadcast flag, no address yet → broadcast fallback.
	if r := Reply(p, NewLeases(), seabiosIPXE(macKnown, dhcpv4.MessageTypeDiscover), ServerPort, nil, t0); r.Dest.String() != "255.255.255.255:68" {
		t.Errorf("no flag, no ciaddr: dest %s", r.Dest)
	}
	renew := with(plain(macKnown, dhcpv4.MessageTypeRequest))
	renew.ClientIPAddr = net.IPv4(10, 77, 0, 11)
	r = Reply(p, NewLeases(), renew, ServerPort, nil, t0)
	mustReply(t, r, dhcpv4.MessageTypeAck)
	if r.Dest.String() != "10.77.0.11:68" {
		t.Errorf("renew: dest %s", r.Dest)
	}
	bad := plain(macKnown, dhcpv4.MessageTypeDiscover)
	bad.OpCode = dhcpv4.OpcodeBootReply
	mustDrop(t, Reply(p, NewLeases(), bad, ServerPort, nil, t0), ReasonNotRequest)
	bad = plain(macKnown, dhcpv4.MessageTypeDiscover)
	bad.HWType = iana.HWTypeIEEE802
	mustDrop(t, Reply(p, NewLeases(), bad, ServerPort, nil, t0), ReasonNotEthernet)
	off := testPlan(t, site.DHCPOff, site.UnknownIgnore)
	off.Mode = site.DHCPOff
	mustDrop(t, Reply(off, NewLeases(), plain(macKnown, dhcpv4.MessageTypeDiscover), ServerPort, nil, t0), ReasonModeOff)
}

func TestLeasesPersist(t *testing.T) {
	p := testPlan(t, site.DHCPFull, site.UnknownDiscover)
	l := NewLeases()
	Reply(p, l, plain(macUnknown, dhcpv4.MessageTypeDiscover), ServerPort, nil, t0)
	mustReply(t, Reply(p, l, with(plain(macKnown, dhcpv4.MessageTypeRequest), dhcpv4.OptRequestedIPAddress(net.IPv4(10, 77, 0, 11))), ServerPort, nil, t0), dhcpv4.MessageTypeAck)
	l.decline(netip.MustParseAddr("10.77.0.102"), t0.Add(time.Hour))
	path := filepath.Join(t.TempDir(), "leases.json")
	if err := l.Save(path); err != nil {
		t.Fatal(err)
	}
	back, err := LoadLeases(path)
	if err != nil {
		t.Fatal(err)
	}
	all := back.All()
	if len(all) != 1 || all[0].MAC != macKnown.String() || all[0].IP.String() != "10.77.0.11" || all[0].Hostname != "gpu01" {
		t.Errorf("reloaded %+v (the offer must not persist)", all)
	}
	if !back.isDeclined(netip.MustParseAddr("10.77.0.102"), t0) {
		t.Error("declined address lost")
	}
	if _, err := LoadLeases(filepath.Join(t.TempDir(), "none.json")); err != nil {
		t.Errorf("missing file: %v", err)
	}
	bad := filepath.Join(t.TempDir(), "leases.json")
	writeFile(t, bad, `{"leases":[{"mac":"x"}]}`)
	if _, err := LoadLeases(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("bad file: %v", err)
	}
}

func TestPlanErrors(t *testing.T) {
	cfg := testConfig(t, site.DHCPFull, site.UnknownIgnore)
	cfg.Server.Address = "not-an-ip"
	if _, err := NewPlan(cfg, ""); err == nil || !strings.Contains(err.Error(), "herd.yaml:3") || !strings.Contains(err.Error(), "server.address") {
		t.Errorf("bad address: %v", err)
	}
	cfg = testConfig(t, site.DHCPFull, site.UnknownIgnore)
	cfg.DHCP.RangeStart, cfg.DHCP.RangeEnd = "10.77.0.200", "10.77.0.100"
	if _, err := NewPlan(cfg, ""); err == nil || !strings.Contains(err.Error(), "dhcp.range_end") {
		t.Errorf("reversed range: %v", err)
	}
	cfg = testConfig(t, site.DHCPFull, site.UnknownIgnore)
	cfg.Server.Interface = ""
	if _, err := NewPlan(cfg, ""); err == nil || !strings.Contains(err.Error(), "server.interface") {
		t.Errorf("no interface: %v", err)
	}
	cfg = testConfig(t, site.DHCPOff, site.UnknownIgnore)
	if _, err := New(cfg, Options{}); err == nil || !strings.Contains(err.Error(), "full or proxy") {
		t.Errorf("mode off: %v", err)
	}
}

func TestRenewalWritesOnlyPastHalfLease(t *testing.T) {
	p := testPlan(t, site.DHCPFull, site.UnknownDiscover)
	l := NewLeases()
	req := with(plain(macUnknown, dhcpv4.MessageTypeRequest), dhcpv4.OptRequestedIPAddress(net.IPv4(10, 77, 0, 100)))
	mustReply(t, Reply(p, l, req, ServerPort, nil, t0), dhcpv4.MessageTypeAck)
	if !l.Dirty() {
		t.Fatal("new binding not dirty")
	}
	l.dirty = false
	// Renewed at a quarter of the lease: nothing to write.
	mustReply(t, Reply(p, l, req, ServerPort, nil, t0.Add(15*time.Minute)), dhcpv4.MessageTypeAck)
	if le, _ := l.Get(macUnknown.String(), t0); l.Dirty() || !le.Expires.Equal(t0.Add(time.Hour)) {
		t.Errorf("early renewal: dirty %v expires %v", l.Dirty(), le.Expires)
	}
	// Renewed at T1 (half): extended and written.
	mustReply(t, Reply(p, l, req, ServerPort, nil, t0.Add(30*time.Minute)), dhcpv4.MessageTypeAck)
	if le, _ := l.Get(macUnknown.String(), t0); !l.Dirty() || !le.Expires.Equal(t0.Add(90*time.Minute)) {
		t.Errorf("renewal at T1: dirty %v expires %v", l.Dirty(), le.Expires)
	}
}

func TestReloadInvalidatesDynamicLease(t *testing.T) {
	p := testPlan(t, site.DHCPFull, site.UnknownDiscover)
	l := NewLeases()
	req := with(plain(macUnknown, dhcpv4.MessageTypeRequest), dhcpv4.OptRequestedIPAddress(net.IPv4(10, 77, 0, 100)))
	mustReply(t, Reply(p, l, req, ServerPort, nil, t0), dhcpv4.MessageTypeAck)
	// The admin reserves .100 for a new node: the unknown client's renewal is refused.
	cfg := testConfig(t, site.DHCPFull, site.UnknownDiscover)
	cfg.Nodes = append(cfg.Nodes, site.Node{Name: "gpu03", MAC: "52:54:00:77:00:13", IP: "10.77.0.100"})
	p2, err := NewPlan(cfg, "")
	if err != nil {
		t.Fatal(err)
	}
	mustReply(t, Reply(p2, l, req, ServerPort, nil, t0.Add(time.Minute)), dhcpv4.MessageTypeNak)
	rep := mustReply(t, Reply(p2, l, plain(macUnknown, dhcpv4.MessageTypeDiscover), ServerPort, nil, t0.Add(time.Minute)), dhcpv4.MessageTypeOffer)
	if rep.YourIPAddr.String() != "10.77.0.101" {
		t.Errorf("re-offer %s, want 10.77.0.101", rep.YourIPAddr)
	}
}

// TestDeclineReleaseOnlyFromHolder: the attacker is any host on the boot
// LAN sending DECLINE/RELEASE with a victim's address (issue #15). Only the
// lease holder may decline or release, only pool addresses go into
// probation, probation ends, and expired leases are pruned.
func TestDeclineReleaseOnlyFromHolder(t *testing.T) {
	p := testPlan(t, site.DHCPFull, site.UnknownDiscover)
	l := NewLeases()
	victim, attacker := macUnknown, net.HardwareAddr{0x52, 0x54, 0, 0x66, 0, 6}
	rep := mustReply(t, Reply(p, l, plain(victim, dhcpv4.MessageTypeDiscover), ServerPort, nil, t0), dhcpv4.MessageTypeOffer)
	mustReply(t, Reply(p, l, with(plain(victim, dhcpv4.MessageTypeRequest), dhcpv4.OptRequestedIPAddress(rep.YourIPAddr), dhcpv4.OptServerIdentifier(net.IPv4(10, 77, 0, 1))), ServerPort, nil, t0), dhcpv4.MessageTypeAck)
	ip := rep.YourIPAddr.String() // 10.77.0.100
	size := p.PoolSize()
	if size != 3 || PoolFree(p, l, t0) != 2 {
		t.Fatalf("pool size %d free %d, want 3 and 2", size, PoolFree(p, l, t0))
	}

	// DECLINE of the victim's address, of a reserved one and of one
	// outside the pool, from the attacker's MAC: nothing changes.
	for _, a := range []net.IP{net.ParseIP(ip), net.IPv4(10, 77, 0, 11), net.IPv4(10, 77, 0, 50)} {
		mustDrop(t, Reply(p, l, with(plain(attacker, dhcpv4.MessageTypeDecline), dhcpv4.OptRequestedIPAddress(a)), ServerPort, nil, t0), ReasonNotHolder)
	}
	// The reserved node declining its own reserved address: not the pool.
	mustDrop(t, Reply(p, l, with(plain(macKnown, dhcpv4.MessageTypeDecline), dhcpv4.OptRequestedIPAddress(net.IPv4(10, 77, 0, 11))), ServerPort, nil, t0), ReasonNotHolder)
	if l.Declined(t0) != 0 {
		t.Fatalf("%d addresses in probation after forged DECLINEs", l.Declined(t0))
	}
	if le, ok := l.Get(victim.String(), t0); !ok || le.IP.String() != ip {
		t.Fatalf("victim's lease gone after a forged DECLINE: %v %v", le, ok)
	}

	// RELEASE with the victim's address from another MAC, and with the
	// victim's MAC from another address: ignored.
	rel := plain(attacker, dhcpv4.MessageTypeRelease)
	rel.ClientIPAddr = net.ParseIP(ip)
	mustDrop(t, Reply(p, l, rel, ServerPort, &net.UDPAddr{IP: net.ParseIP(ip), Port: 68}, t0), ReasonNotHolder)
	rel = plain(victim, dhcpv4.MessageTypeRelease)
	rel.ClientIPAddr = net.ParseIP(ip)
	mustDrop(t, Reply(p, l, rel, ServerPort, &net.UDPAddr{IP: net.IPv4(10, 77, 0, 66), Port: 68}, t0), ReasonNotHolder)
	if _, ok := l.Get(victim.String(), t0); !ok {
		t.Fatal("victim's lease gone after a forged RELEASE")
	}

	// The holder declines: probation, then the address comes back.
	mustDrop(t, Reply(p, l, with(plain(victim, dhcpv4.MessageTypeDecline), dhcpv4.OptRequestedIPAddress(net.ParseIP(ip))), ServerPort, nil, t0), ReasonDeclined)
	if l.Declined(t0) != 1 || PoolFree(p, l, t0) != 2 {
		t.Fatalf("after the holder's DECLINE: declined %d free %d, want 1 and 2", l.Declined(t0), PoolFree(p, l, t0))
	}
	after := t0.Add(DeclineProbation + time.Second)
	l.Prune(after)
	if l.Declined(after) != 0 || PoolFree(p, l, after) != 3 {
		t.Fatalf("after probation: declined %d free %d, want 0 and 3", l.Declined(after), PoolFree(p, l, after))
	}

	// Expired leases are pruned from the table (and from leases.json).
	bound := mustReply(t, Reply(p, l, plain(attacker, dhcpv4.MessageTypeDiscover), ServerPort, nil, after), dhcpv4.MessageTypeOffer)
	mustReply(t, Reply(p, l, with(plain(attacker, dhcpv4.MessageTypeRequest), dhcpv4.OptRequestedIPAddress(bound.YourIPAddr), dhcpv4.OptServerIdentifier(net.IPv4(10, 77, 0, 1))), ServerPort, nil, after), dhcpv4.MessageTypeAck)
	gone := after.Add(p.LeaseTime + time.Second)
	l.Prune(gone)
	if n := len(l.All()); n != 0 {
		t.Fatalf("%d leases left after they all expired: %v", n, l.All())
	}
	if !l.Dirty() {
		t.Error("pruning a bound lease did not mark leases.json for rewriting")
	}
}

// TestUnknownShareKeepsRoomForNodes: a flood of random MACs in discover
// mode takes at most UnknownShare of the pool; a node in nodes (no
// reserved ip) still gets an address, a reserved node its own.
func TestUnknownShareKeepsRoomForNodes(t *testing.T) {
	cfg := testConfig(t, site.DHCPFull, site.UnknownDiscover)
	cfg.DHCP.RangeStart, cfg.DHCP.RangeEnd = "10.77.0.100", "10.77.0.199"
	cfg.Nodes = append(cfg.Nodes, site.Node{Name: "gpu77", MAC: "52:54:00:77:00:77"})
	p, err := NewPlan(cfg, "")
	if err != nil {
		t.Fatal(err)
	}
	l := NewLeases()
	offered := 0
	for i := 0; i < 1000; i++ {
		mac := net.HardwareAddr{0x02, 0, byte(i >> 16), byte(i >> 8), byte(i), 1}
		if r := Reply(p, l, plain(mac, dhcpv4.MessageTypeDiscover), ServerPort, nil, t0); r.Reply != nil {
			offered++
		} else if r.Reason != ReasonUnknownShare {
			t.Fatalf("random MAC %d: %s", i, r.Reason)
		}
	}
	if offered != 50 {
		t.Errorf("random MACs got %d of 100 addresses, want the share 50", offered)
	}
	rep := mustReply(t, Reply(p, l, plain(net.HardwareAddr{0x52, 0x54, 0, 0x77, 0, 0x77}, dhcpv4.MessageTypeDiscover), ServerPort, nil, t0), dhcpv4.MessageTypeOffer)
	if rep.YourIPAddr.IsUnspecified() {
		t.Error("named node got no address")
	}
	rep = mustReply(t, Reply(p, l, plain(macKnown, dhcpv4.MessageTypeDiscover), ServerPort, nil, t0), dhcpv4.MessageTypeOffer)
	if rep.YourIPAddr.String() != "10.77.0.11" {
		t.Errorf("reserved node got %s", rep.YourIPAddr)
	}
}
