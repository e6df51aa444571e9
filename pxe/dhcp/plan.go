// Package dhcp is herd's DHCP service: a pure reply function (site config +
// lease state + request → reply) and a server that owns the sockets.
package dhcp

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/herdlab/herd/secureboot"
	"github.com/herdlab/herd/site"
)

// DefaultUEFIBinary is the iPXE build handed to UEFI PXE firmware: snponly.efi
// drives the NIC through the firmware's SNP, which works on every UEFI NIC.
const DefaultUEFIBinary = "snponly.efi"

// ShimBinary is handed to UEFI PXE firmware instead when the site has
// secure_boot: distro: the current image's Microsoft-signed shim, served over
// TFTP (pxe/secureboot), which loads grubx64.efi from the same directory.
const ShimBinary = "shimx64.efi"

// BIOSBinary is the iPXE build chained from a BIOS PXE ROM (uses the ROM's UNDI).
const BIOSBinary = "undionly.kpxe"

// HTTPBootPath is where herd's HTTP server serves the iPXE binaries (from
// server.tftp_root) for UEFI HTTP boot clients.
const HTTPBootPath = "/ipxe/"

// offerHold is how long an address offered to an unknown client is kept for
// it before the client REQUESTs it.
const offerHold = 2 * time.Minute

// The pool's defences against one host or a flood of random MACs (see
// HACKING.md, "DHCP policy"):
//   - DeclineProbation: a DECLINEd address (in use on the wire) is avoided
//     this long, then offered again;
//   - at most a quarter of the pool is in probation at once (MaxDeclinedShare);
//   - in dhcp.unknown: discover mode, MACs not in nodes may hold (offered or
//     bound) at most half of the pool (UnknownShare); nodes always get theirs.
const (
	DeclineProbation = 10 * time.Minute
	MaxDeclinedShare = 4 // 1/4 of the pool
	UnknownShare     = 2 // 1/2 of the pool
)

// Plan is a site config prepared for answering: addresses parsed once, nodes
// indexed by MAC. It is immutable; Reload swaps the whole Plan.
type Plan struct {
	Mode       string
	Unknown    string
	ServerIP   netip.Addr
	Subnet     netip.Prefix
	Router     netip.Addr
	DNS        []netip.Addr
	Domain     string
	LeaseTime  time.Duration
	RangeStart netip.Addr
	RangeEnd   netip.Addr
	HTTPBase   string // http://server:port
	UEFIBinary string
	// HTTPBootFile is the URL UEFI HTTP boot clients get (iPXE, or the
	// signed UKI with secure_boot: herd).
	HTTPBootFile string
	Interface    string
	nodes        map[string]site.Node // by lower-case colon MAC
	reserved     map[netip.Addr]string
}

// NewPlan prepares cfg for the reply logic; uefiBinary "" means snponly.efi.
func NewPlan(cfg *site.Config, uefiBinary string) (*Plan, error) {
	if uefiBinary == "" {
		uefiBinary = DefaultUEFIBinary
	}
	httpFile := cfg.ServerURL() + HTTPBootPath + "ipxe.efi"
	switch cfg.SecureBoot {
	case site.SecureBootDistro:
		uefiBinary = ShimBinary
	case site.SecureBootHerd:
		// The image generation's UKI signed with herd's db key, over TFTP
		// for PXE and over HTTP for HTTP boot; BIOS keeps iPXE.
		uefiBinary = secureboot.UKIFile
		httpFile = cfg.ServerURL() + secureboot.UKIHTTPPath
	}
	p := &Plan{
		Mode: cfg.DHCP.Mode, Unknown: cfg.DHCP.Unknown, Domain: cfg.DHCP.Domain,
		LeaseTime: cfg.DHCP.LeaseTime, HTTPBase: cfg.ServerURL(), UEFIBinary: uefiBinary, HTTPBootFile: httpFile,
		Interface: cfg.Server.Interface,
		nodes:     map[string]site.Node{}, reserved: map[netip.Addr]string{},
	}
	if p.LeaseTime <= 0 {
		p.LeaseTime = 12 * time.Hour
	}
	bad := func(field, format string, args ...any) error {
		if cfg.Doc != nil {
			return cfg.Doc.Errorf(field, format, args...)
		}
		return fmt.Errorf(field+": "+format, args...)
	}
	addr := func(field, s string, required bool) (netip.Addr, error) {
		if s == "" {
			if required {
				return netip.Addr{}, bad(field, "required for dhcp.mode %s", p.Mode)
			}
			return netip.Addr{}, nil
		}
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			return netip.Addr{}, bad(field, "%q is not an IPv4 address", s)
		}
		return a, nil
	}
	var err error
	if p.ServerIP, err = addr("server.address", cfg.Server.Address, true); err != nil {
		return nil, err
	}
	if cfg.Server.Interface == "" {
		return nil, bad("server.interface", "required for dhcp.mode %s", p.Mode)
	}
	if p.Mode == site.DHCPFull {
		if p.Subnet, err = netip.ParsePrefix(cfg.DHCP.Subnet); err != nil || !p.Subnet.Addr().Is4() {
			return nil, bad("dhcp.subnet", "%q is not an IPv4 CIDR (required in full mode)", cfg.DHCP.Subnet)
		}
		p.Subnet = p.Subnet.Masked()
	}
	if p.Router, err = addr("dhcp.router", cfg.DHCP.Router, false); err != nil {
		return nil, err
	}
	for i, d := range cfg.DHCP.DNS {
		a, err := addr(fmt.Sprintf("dhcp.dns[%d]", i), d, true)
		if err != nil {
			return nil, err
		}
		p.DNS = append(p.DNS, a)
	}
	if p.RangeStart, err = addr("dhcp.range_start", cfg.DHCP.RangeStart, false); err != nil {
		return nil, err
	}
	if p.RangeEnd, err = addr("dhcp.range_end", cfg.DHCP.RangeEnd, false); err != nil {
		return nil, err
	}
	if p.RangeStart.IsValid() && p.RangeEnd.IsValid() && p.RangeEnd.Less(p.RangeStart) {
		return nil, bad("dhcp.range_end", "%s is before range_start %s", p.RangeEnd, p.RangeStart)
	}
	for i, n := range cfg.Nodes {
		hw, err := net.ParseMAC(n.MAC)
		if err != nil || len(hw) != 6 {
			return nil, bad(fmt.Sprintf("nodes[%d].mac", i), "%q is not an Ethernet MAC", n.MAC)
		}
		p.nodes[hw.String()] = n
		if n.IP != "" {
			a, err := addr(fmt.Sprintf("nodes[%d].ip", i), n.IP, true)
			if err != nil {
				return nil, err
			}
			p.reserved[a] = hw.String()
		}
	}
	return p, nil
}

// Node returns the configured node with this MAC.
func (p *Plan) Node(mac net.HardwareAddr) (site.Node, bool) {
	n, ok := p.nodes[strings.ToLower(mac.String())]
	return n, ok
}

// PoolSize returns how many addresses the dynamic range holds (0: none).
func (p *Plan) PoolSize() int {
	if !p.RangeStart.IsValid() || !p.RangeEnd.IsValid() || p.RangeEnd.Less(p.RangeStart) {
		return 0
	}
	a, b := p.RangeStart.As4(), p.RangeEnd.As4()
	u := func(x [4]byte) int { return int(x[0])<<24 | int(x[1])<<16 | int(x[2])<<8 | int(x[3]) }
	return u(b) - u(a) + 1
}

func (p *Plan) inRange(a netip.Addr) bool {
	return p.RangeStart.IsValid() && p.RangeEnd.IsValid() &&
		!a.Less(p.RangeStart) && !p.RangeEnd.Less(a)
}

func (p *Plan) mask() net.IPMask {
	return net.CIDRMask(p.Subnet.Bits(), 32)
}

func (p *Plan) broadcast() netip.Addr {
	b := p.Subnet.Addr().As4()
	host := uint32(1)<<(32-p.Subnet.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
