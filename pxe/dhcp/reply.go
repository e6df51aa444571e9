package dhcp

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/herdlab/herd/site"
)

// Ports: the DHCP server port, the client port, and the PXE boot-server
// port some UEFI firmware sends its boot-server REQUEST to (proxy mode).
const (
	ServerPort = 67
	ClientPort = 68
	PXEPort    = 4011
)

// Reasons a request gets no reply (bounded set: they label a metric).
const (
	ReasonNotRequest   = "not-a-request"
	ReasonNotEthernet  = "not-ethernet"
	ReasonModeOff      = "mode-off"
	ReasonUnknownMAC   = "unknown-mac"
	ReasonNotBootable  = "not-a-boot-client"
	ReasonArch         = "unsupported-arch"
	ReasonOtherServer  = "for-another-server"
	ReasonNoAddress    = "no-free-address"
	ReasonReleased     = "released"
	ReasonDeclined     = "declined"
	ReasonMessageType  = "unhandled-message-type"
	ReasonWrongPort    = "wrong-port"
	ReasonMissingCIAdr = "no-client-address"
	ReasonNotHolder    = "not-the-lease-holder"
	ReasonUnknownShare = "unknown-share-used"
)

// Result is what Reply decided for one request.
type Result struct {
	// Reply is nil when the request gets no answer; Reason/Detail say why.
	Reply  *dhcpv4.DHCPv4
	Dest   *net.UDPAddr
	Reason string
	Detail string
	// Bound is set on an ACK (full mode) or a proxy reply: the inventory hook.
	Bound    bool
	IP       netip.Addr // the leased address (invalid in proxy mode)
	Hostname string
}

func drop(reason, format string, args ...any) Result {
	return Result{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// client is what a request says about the firmware that sent it.
type client struct {
	ipxe, pxe, http bool
	arch            iana.Arch
	hasArch         bool
}

func classify(req *dhcpv4.DHCPv4) client {
	var c client
	vc := req.ClassIdentifier()
	c.pxe = strings.HasPrefix(vc, "PXEClient")
	c.http = strings.HasPrefix(vc, "HTTPClient")
	// iPXE marks itself with option 175 (its encapsulated options) and
	// with user class 77 "iPXE". iPXE sends 77 as a bare string, not in
	// RFC 3004 length-prefixed form, so look at the raw bytes too.
	if req.Options.Has(dhcpv4.OptionEtherboot) {
		c.ipxe = true
	}
	raw := req.GetOneOption(dhcpv4.OptionUserClassInformation)
	if bytes.Equal(raw, []byte("iPXE")) {
		c.ipxe = true
	} else if raw != nil {
		for _, uc := range req.UserClass() {
			if uc == "iPXE" {
				c.ipxe = true
			}
		}
	}
	if archs := req.ClientArch(); len(archs) > 0 {
		c.arch, c.hasArch = archs[0], true
	} else if a, ok := archFromVendorClass(vc); ok {
		c.arch, c.hasArch = a, true
	}
	return c
}

// archFromVendorClass reads "PXEClient:Arch:00007:..." for firmware that
// leaves option 93 out but follows the PXE vendor-class format.
func archFromVendorClass(vc string) (iana.Arch, bool) {
	parts := strings.Split(vc, ":")
	if len(parts) >= 3 && parts[1] == "Arch" {
		var n uint16
		if _, err := fmt.Sscanf(parts[2], "%05d", &n); err == nil {
			return iana.Arch(n), true
		}
	}
	return 0, false
}

// boot is the boot file decision for one client.
type boot struct {
	file        string // option 67 and the file field
	vendorClass string // option 60 to echo ("" for none)
}

func bootFor(p *Plan, c client, mac net.HardwareAddr) (boot, bool, string) {
	switch {
	case c.ipxe:
		// Already iPXE (SeaBIOS's NIC ROM is iPXE; snponly.efi comes back
		// as iPXE too): give the per-node script, never the iPXE binary
		// again, or it would chain itself forever.
		return boot{file: p.HTTPBase + "/boot/" + mac.String() + ".ipxe"}, true, ""
	case c.http:
		// UEFI HTTP boot (93=16) takes a URL and only accepts the offer if
		// option 60 "HTTPClient" comes back.
		if c.arch == iana.EFI_X86_64_HTTP {
			file := p.HTTPBootFile
			if file == "" {
				file = p.HTTPBase + HTTPBootPath + "ipxe.efi"
			}
			return boot{file: file, vendorClass: "HTTPClient"}, true, ""
		}
		return boot{}, false, fmt.Sprintf("HTTP boot arch %d is not x86-64", c.arch)
	case c.pxe:
		switch {
		case !c.hasArch || c.arch == iana.INTEL_X86PC:
			// PXE spec: a client without option 93 is a BIOS (arch 0).
			return boot{file: BIOSBinary, vendorClass: "PXEClient"}, true, ""
		case c.arch == iana.EFI_BC || c.arch == iana.EFI_X86_64:
			// 7 is what OVMF and most x86-64 UEFI send; 9 is the
			// historical mislabel some firmware still uses for x86-64.
			return boot{file: p.UEFIBinary, vendorClass: "PXEClient"}, true, ""
		}
		return boot{}, false, fmt.Sprintf("PXE arch %d is not x86 BIOS or UEFI x86-64", c.arch)
	}
	return boot{}, false, "neither PXE, iPXE nor UEFI HTTP boot"
}

// pxeVendorOptions is option 43 with PXE sub-option 6 (PXE_DISCOVERY_CONTROL)
// = 8: "use the boot file in this offer, skip boot-server discovery". Without
// it PXE ROMs and iPXE keep sending DISCOVERs looking for a boot server.
var pxeVendorOptions = []byte{6, 1, 8, 255}

// ipxeNoProxyDHCP is option 175 (iPXE's encapsulated options) holding
// sub-option 176 "no-pxedhcp" = 1.
var ipxeNoProxyDHCP = []byte{176, 1, 1}

func addBoot(reply *dhcpv4.DHCPv4, p *Plan, b boot) {
	reply.ServerIPAddr = p.ServerIP.AsSlice() // siaddr: the TFTP server
	reply.BootFileName = b.file
	reply.UpdateOption(dhcpv4.OptBootFileName(b.file))
	if b.vendorClass != "" {
		reply.UpdateOption(dhcpv4.OptClassIdentifier(b.vendorClass))
	}
	if b.vendorClass == "PXEClient" {
		reply.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation, pxeVendorOptions))
	}
}

// destination applies RFC 2131 §4.1 delivery rules.
func destination(req, reply *dhcpv4.DHCPv4, port int, src *net.UDPAddr) *net.UDPAddr {
	bcast := &net.UDPAddr{IP: net.IPv4bcast, Port: ClientPort}
	switch {
	case port == PXEPort && src != nil:
		// Boot-server requests come from a client that has its address.
		return src
	case !isZero(req.GatewayIPAddr):
		return &net.UDPAddr{IP: req.GatewayIPAddr, Port: ServerPort}
	case reply.MessageType() == dhcpv4.MessageTypeNak:
		return bcast
	case !isZero(req.ClientIPAddr):
		// RENEW/REBIND/INFORM: the client owns ciaddr and answers ARP.
		return &net.UDPAddr{IP: req.ClientIPAddr, Port: ClientPort}
	default:
		// Broadcast flag set, or a client without an address: unicast to
		// yiaddr would need an ARP entry the client cannot answer for yet,
		// which a plain UDP socket cannot add. Both SeaBIOS/iPXE (no
		// broadcast flag) and OVMF accept broadcast replies.
		return bcast
	}
}

func isZero(ip net.IP) bool { return ip == nil || ip.IsUnspecified() }

// Reply computes the answer to req received on port (67 or 4011) from src,
// using plan p and lease state l (which it updates). It does no I/O.
func Reply(p *Plan, l *Leases, req *dhcpv4.DHCPv4, port int, src *net.UDPAddr, now time.Time) Result {
	if req.OpCode != dhcpv4.OpcodeBootRequest {
		return drop(ReasonNotRequest, "op %s", req.OpCode)
	}
	if req.HWType != iana.HWTypeEthernet || len(req.ClientHWAddr) != 6 {
		return drop(ReasonNotEthernet, "hardware type %s, address length %d", req.HWType, len(req.ClientHWAddr))
	}
	switch p.Mode {
	case site.DHCPFull:
		if port == PXEPort {
			return drop(ReasonWrongPort, "full mode does not answer on port %d", PXEPort)
		}
		return replyFull(p, l, req, src, now)
	case site.DHCPProxy:
		return replyProxy(p, req, port, src)
	}
	return drop(ReasonModeOff, "dhcp.mode is %q", p.Mode)
}

func newReply(p *Plan, req *dhcpv4.DHCPv4, mt dhcpv4.MessageType) *dhcpv4.DHCPv4 {
	r, err := dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(mt),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(p.ServerIP.AsSlice())),
	)
	if err != nil {
		// Only the random transaction ID can fail, and the request's
		// ID replaces it anyway; crypto/rand does not fail on Linux.
		panic(fmt.Sprintf("dhcpv4.NewReplyFromRequest: %v", err))
	}
	return r
}

func replyProxy(p *Plan, req *dhcpv4.DHCPv4, port int, src *net.UDPAddr) Result {
	mac := req.ClientHWAddr
	c := classify(req)
	if !c.pxe && !c.http && !c.ipxe {
		return drop(ReasonNotBootable, "%s: no PXEClient/HTTPClient vendor class, not iPXE", mac)
	}
	node, known := p.Node(mac)
	if !known && p.Unknown != site.UnknownDiscover {
		return drop(ReasonUnknownMAC, "%s is not in nodes and dhcp.unknown is %s", mac, p.Unknown)
	}
	var mt dhcpv4.MessageType
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		mt = dhcpv4.MessageTypeOffer
	case dhcpv4.MessageTypeRequest:
		// On port 67 a REQUEST is the client taking the real DHCP server's
		// offer; answer only those addressed to us (or on 4011).
		if sid := req.ServerIdentifier(); port != PXEPort && (sid == nil || !sid.Equal(p.ServerIP.AsSlice())) {
			return drop(ReasonOtherServer, "%s REQUEST on %d for server %v", mac, port, sid)
		}
		mt = dhcpv4.MessageTypeAck
	default:
		return drop(ReasonMessageType, "%s %s in proxy mode", mac, req.MessageType())
	}
	b, ok, why := bootFor(p, c, mac)
	if !ok {
		return drop(ReasonArch, "%s: %s", mac, why)
	}
	r := newReply(p, req, mt)
	// ProxyDHCP never hands out an address: yiaddr stays 0.0.0.0.
	r.YourIPAddr = net.IPv4zero
	addBoot(r, p, b)
	if b.vendorClass == "" {
		// A proxy reply must carry option 60 "PXEClient" or the
		// firmware ignores it (PXE spec 2.1, ProxyDHCP).
		addBoot(r, p, boot{file: b.file, vendorClass: "PXEClient"})
	}
	if uuid := req.GetOneOption(dhcpv4.OptionClientMachineIdentifier); uuid != nil {
		// PXE spec: option 97 must be echoed; some ROMs drop replies without it.
		r.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, uuid))
	}
	return Result{Reply: r, Dest: destination(req, r, port, src), Bound: true, Hostname: node.Name}
}

func replyFull(p *Plan, l *Leases, req *dhcpv4.DHCPv4, src *net.UDPAddr, now time.Time) Result {
	hw := req.ClientHWAddr
	mac := hw.String()
	node, known := p.Node(hw)
	if !known && p.Unknown != site.UnknownDiscover {
		return drop(ReasonUnknownMAC, "%s is not in nodes and dhcp.unknown is %s", mac, p.Unknown)
	}
	var reserved netip.Addr
	if known && node.IP != "" {
		reserved = netip.MustParseAddr(node.IP) // checked by NewPlan
	}
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		if !known && overShare(p, l, mac, now) {
			return drop(ReasonUnknownShare, "%s: unknown MACs already hold %d of the %d pool addresses (the share dhcp.unknown: discover may take)", mac, (p.PoolSize()+UnknownShare-1)/UnknownShare, p.PoolSize())
		}
		ip, ok := assign(p, l, mac, reserved, req.RequestedIPAddress(), now)
		if !ok {
			return drop(ReasonNoAddress, "%s: no free address in %s-%s", mac, p.RangeStart, p.RangeEnd)
		}
		if !reserved.IsValid() {
			hold := now.Add(offerHold)
			if cur, ok := l.Get(mac, now); ok && !cur.Offered && cur.IP == ip {
				hold = cur.Expires // renewing DISCOVER: keep the bound lease
			} else {
				l.set(Lease{MAC: mac, IP: ip, Expires: hold, Offered: true})
			}
		}
		r := addressReply(p, req, dhcpv4.MessageTypeOffer, ip, node.Name)
		return Result{Reply: r, Dest: destination(req, r, ServerPort, src), IP: ip, Hostname: node.Name}

	case dhcpv4.MessageTypeRequest:
		if sid := req.ServerIdentifier(); sid != nil && !sid.Equal(p.ServerIP.AsSlice()) {
			// SELECTING another server's offer: free ours.
			if cur, ok := l.byMAC[mac]; ok && cur.Offered {
				l.drop(mac)
			}
			return drop(ReasonOtherServer, "%s chose server %s", mac, sid)
		}
		want, ok := netip.AddrFromSlice(req.RequestedIPAddress().To4())
		if !ok || !want.IsValid() {
			want, _ = netip.AddrFromSlice(req.ClientIPAddr.To4())
		}
		var have netip.Addr
		if reserved.IsValid() {
			have = reserved
		} else if cur, ok := l.Get(mac, now); ok && p.inRange(cur.IP) && free(p, l, mac, cur.IP, now) {
			// Still valid under the current config: a reload may have
			// shrunk the range or reserved the address for a node.
			have = cur.IP
		} else if want.IsValid() && !want.IsUnspecified() && free(p, l, mac, want, now) && p.inRange(want) && (known || !overShare(p, l, mac, now)) {
			have = want // we forgot it (offer expired): still free, take it
		}
		if !have.IsValid() || have != want {
			r := newReply(p, req, dhcpv4.MessageTypeNak)
			r.UpdateOption(dhcpv4.OptMessage(fmt.Sprintf("address %s is not yours", want)))
			return Result{Reply: r, Dest: destination(req, r, ServerPort, src),
				Detail: fmt.Sprintf("%s asked for %s, has %v", mac, want, have)}
		}
		// Reserved leases are recorded too, so Lease() and a restarted
		// server know the node is up. A renewal of a binding that still
		// has more than half its time left changes nothing (no disk
		// write): the client renews again at T1 = half the lease time
		// from now, before the recorded expiry passes.
		if cur, ok := l.byMAC[mac]; !ok || cur.Offered || cur.IP != have || !cur.Expires.After(now.Add(p.LeaseTime/2)) {
			l.set(Lease{MAC: mac, IP: have, Hostname: node.Name, Expires: now.Add(p.LeaseTime)})
		}
		if le := l.byMAC[mac]; le != nil && le.Hostname != node.Name {
			le.Hostname, l.dirty = node.Name, true
		}
		r := addressReply(p, req, dhcpv4.MessageTypeAck, have, node.Name)
		return Result{Reply: r, Dest: destination(req, r, ServerPort, src), Bound: true, IP: have, Hostname: node.Name}

	case dhcpv4.MessageTypeDecline:
		// Only the holder of a pool address may decline it (anyone else
		// could empty the pool); a reserved address is never put aside.
		bad, _ := netip.AddrFromSlice(req.RequestedIPAddress().To4())
		cur, ok := l.byMAC[mac]
		if !ok || cur.IP != bad || now.After(cur.Expires) || !p.inRange(bad) || reserved.IsValid() {
			return drop(ReasonNotHolder, "%s declined %s, which it does not hold from the pool: ignored", mac, bad)
		}
		l.drop(mac)
		if l.Declined(now) >= max(1, p.PoolSize()/MaxDeclinedShare) {
			return drop(ReasonDeclined, "%s declined %s; a quarter of the pool is already in probation, so it returns to the pool now", mac, bad)
		}
		l.decline(bad, now.Add(DeclineProbation))
		return drop(ReasonDeclined, "%s declined %s (in use on the network): avoided for %s", mac, bad, DeclineProbation)

	case dhcpv4.MessageTypeRelease:
		// Only from the holder, sent from the address it releases.
		ci, _ := netip.AddrFromSlice(req.ClientIPAddr.To4())
		cur, ok := l.byMAC[mac]
		if !ok || cur.IP != ci || cur.Offered || (src != nil && !src.IP.Equal(ci.AsSlice())) {
			return drop(ReasonNotHolder, "%s released %s from %v, which is not its lease or not its address: ignored", mac, ci, src)
		}
		l.drop(mac)
		return drop(ReasonReleased, "%s released %s", mac, ci)

	case dhcpv4.MessageTypeInform:
		if isZero(req.ClientIPAddr) {
			return drop(ReasonMissingCIAdr, "%s INFORM without ciaddr", mac)
		}
		r := addressReply(p, req, dhcpv4.MessageTypeAck, netip.Addr{}, node.Name)
		// RFC 2131 §4.3.5: no yiaddr and no lease time in an INFORM ACK.
		r.YourIPAddr = net.IPv4zero
		r.Options.Del(dhcpv4.OptionIPAddressLeaseTime)
		return Result{Reply: r, Dest: destination(req, r, ServerPort, src), Hostname: node.Name}
	}
	return drop(ReasonMessageType, "%s sent %s", mac, req.MessageType())
}

func addressReply(p *Plan, req *dhcpv4.DHCPv4, mt dhcpv4.MessageType, ip netip.Addr, hostname string) *dhcpv4.DHCPv4 {
	r := newReply(p, req, mt)
	if ip.IsValid() {
		r.YourIPAddr = ip.AsSlice()
	}
	r.UpdateOption(dhcpv4.OptSubnetMask(p.mask()))
	r.UpdateOption(dhcpv4.OptIPAddressLeaseTime(p.LeaseTime))
	if p.Router.IsValid() {
		r.UpdateOption(dhcpv4.OptRouter(p.Router.AsSlice()))
	}
	if len(p.DNS) > 0 {
		var dns []net.IP
		for _, d := range p.DNS {
			dns = append(dns, d.AsSlice())
		}
		r.UpdateOption(dhcpv4.OptDNS(dns...))
	}
	if p.Domain != "" {
		r.UpdateOption(dhcpv4.OptDomainName(p.Domain))
	}
	if hostname != "" {
		r.UpdateOption(dhcpv4.OptHostName(hostname))
	}
	c := classify(req)
	if b, ok, _ := bootFor(p, c, req.ClientHWAddr); ok {
		addBoot(r, p, b)
		if c.ipxe {
			// The offer carries the boot file, so no ProxyDHCP offer will
			// follow: iPXE's no-pxedhcp (175.176 = 1) lets it request at
			// once instead of waiting DHCP_DISC_PROXY_TIMEOUT_SEC for one
			// (DISCOVER to REQUEST 3 s → 0 with QEMU's iPXE ROM; 11 s in
			// builds set to the PXE spec's timeouts). On a LAN without
			// IPv6 router advertisements iPXE's "Configuring" still
			// lasts ~16 s: it waits for its IPv6 configurator too.
			r.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionEtherboot, ipxeNoProxyDHCP))
		}
	}
	return r
}

// assign picks the address for mac: its reservation, else its current
// lease, else the address it asks for, else the first free one in the range.
func assign(p *Plan, l *Leases, mac string, reserved netip.Addr, requested net.IP, now time.Time) (netip.Addr, bool) {
	if reserved.IsValid() {
		return reserved, true
	}
	if !p.RangeStart.IsValid() {
		return netip.Addr{}, false
	}
	if cur, ok := l.Get(mac, now); ok && p.inRange(cur.IP) && free(p, l, mac, cur.IP, now) {
		return cur.IP, true
	}
	if want, ok := netip.AddrFromSlice(requested.To4()); ok && p.inRange(want) && free(p, l, mac, want, now) {
		return want, true
	}
	for a := p.RangeStart; a.IsValid() && !p.RangeEnd.Less(a); a = a.Next() {
		if free(p, l, mac, a, now) {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// overShare reports whether an unknown mac asking for a new address would
// take more than the pool share unknown MACs may hold (UnknownShare).
func overShare(p *Plan, l *Leases, mac string, now time.Time) bool {
	if cur, ok := l.Get(mac, now); ok && p.inRange(cur.IP) {
		return false // it keeps what it has
	}
	limit := (p.PoolSize() + UnknownShare - 1) / UnknownShare // rounded up
	n := 0
	for m, le := range l.byMAC {
		if now.After(le.Expires) || !p.inRange(le.IP) {
			continue
		}
		if _, known := p.nodes[m]; !known {
			if n++; n >= limit {
				return true
			}
		}
	}
	return false
}

// PoolFree counts the pool addresses a new client could get now.
func PoolFree(p *Plan, l *Leases, now time.Time) int {
	n := 0
	for a := p.RangeStart; a.IsValid() && p.inRange(a); a = a.Next() {
		if free(p, l, "", a, now) {
			n++
		}
	}
	return n
}

func free(p *Plan, l *Leases, mac string, a netip.Addr, now time.Time) bool {
	if a == p.ServerIP || a == p.Router || !p.Subnet.Contains(a) || a == p.Subnet.Addr() || a == p.broadcast() {
		return false
	}
	if owner, ok := p.reserved[a]; ok && owner != mac {
		return false
	}
	if owner, ok := l.holder(a, now); ok && owner != mac {
		return false
	}
	return !l.isDeclined(a, now)
}
