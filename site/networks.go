package site

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"sort"
	"strings"
)

// BootNetwork is the implicit network nodes boot from (dhcp.subnet, the
// NIC base's 10-herd-boot.network configures by DHCP). It cannot be
// declared under networks.
const BootNetwork = "boot"

// Bond modes herd writes into systemd-networkd's [Bond] Mode=.
const (
	BondLACP         = "802.3ad"
	BondActiveBackup = "active-backup"
)

// AddressDHCP as an interface address means the site's own DHCP server on
// that network configures it (herd answers DHCP on the boot network only).
const AddressDHCP = "dhcp"

// MTU bounds: 576 is the smallest IPv4 must carry, 9216 the largest jumbo
// frame common switches accept.
const (
	MinMTU = 576
	MaxMTU = 9216
)

// Network is a named node network beside the boot network (networks.<name>),
// e.g. the storage network the NAS is reached on.
type Network struct {
	// Subnet is the network in CIDR form; node addresses on it get its prefix.
	Subnet string `yaml:"subnet" herd:"required"`
	// MTU of interfaces on this network (default 1500; 9000 for jumbo frames).
	MTU int `yaml:"mtu"`
	// Gateway is the next hop for routes that do not name their own. No
	// default route is added: the default route stays on the boot network.
	Gateway string `yaml:"gateway"`
	// Routes are extra destinations reached through this network.
	Routes []Route `yaml:"routes"`
}

// Route is one static route on a network.
type Route struct {
	To  string `yaml:"to" herd:"required"` // CIDR
	Via string `yaml:"via"`                // default: the network's gateway
}

// Interface is one node interface beside the boot NIC (nodes[].interfaces).
// Exactly one of MAC, Match, Bond and VLAN says which link it is.
type Interface struct {
	// Name is the kernel name of a bond or VLAN (required there); for a NIC
	// matched by MAC or Match it only labels the interface in reports.
	Name string `yaml:"name" json:"name,omitempty"`
	// MAC matches one NIC by hardware address.
	MAC string `yaml:"mac" json:"mac,omitempty"`
	// Match matches NICs by kernel name pattern (e.g. enx*, a USB NIC),
	// for a class of nodes that share the layout.
	Match string `yaml:"match" json:"match,omitempty"`
	// Network is a name under networks; empty only for a link that carries
	// nothing but VLANs.
	Network string `yaml:"network" json:"network,omitempty"`
	// Address is an IPv4 address inside the network's subnet, or "dhcp".
	Address string `yaml:"address" json:"address,omitempty"`
	// MTU overrides the network's MTU for this interface.
	MTU  int   `yaml:"mtu" json:"mtu,omitempty"`
	Bond *Bond `yaml:"bond" json:"bond,omitempty"`
	VLAN *VLAN `yaml:"vlan" json:"vlan,omitempty"`
}

// Bond aggregates NICs (by MAC) into one link.
type Bond struct {
	// Mode is 802.3ad (LACP; "lacp" is accepted) or active-backup.
	Mode string `yaml:"mode" json:"mode" herd:"required"`
	// Members are the MACs of the bonded NICs.
	Members []string `yaml:"members" json:"members" herd:"required"`
}

// VLAN is a tagged link on another interface of the same node.
type VLAN struct {
	ID int `yaml:"id" json:"id" herd:"required"`
	// Parent is the name of another interface of the node.
	Parent string `yaml:"parent" json:"parent" herd:"required"`
}

var (
	netNameRe = regexp.MustCompile(`^[a-z][a-z0-9-]{0,30}$`)
	ifNameRe  = regexp.MustCompile(`^[a-z][a-z0-9_.-]{0,14}$`) // IFNAMSIZ-1
	ifGlobRe  = regexp.MustCompile(`^[A-Za-z0-9_.*?-]{1,15}$`)
)

// Kind is "nic", "match", "bond" or "vlan".
func (i *Interface) Kind() string {
	switch {
	case i.Bond != nil:
		return "bond"
	case i.VLAN != nil:
		return "vlan"
	case i.Match != "":
		return "match"
	}
	return "nic"
}

// Label is how reports and file names call the interface: its name, else
// its network, else its MAC.
func (i *Interface) Label() string {
	switch {
	case i.Name != "":
		return i.Name
	case i.Network != "":
		return i.Network
	}
	return strings.ReplaceAll(i.MAC, ":", "")
}

// MTUFor is the MTU the interface gets (its own, else its network's, else 0
// for "leave the kernel's").
func (c *Config) MTUFor(i *Interface) int {
	if i.MTU != 0 {
		return i.MTU
	}
	if n, ok := c.Networks[i.Network]; ok {
		return n.MTU
	}
	return 0
}

// NASNetwork is the declared network the NAS is reached on ("" when the NAS
// is on the boot network or none is declared).
func (c *Config) NASNetwork() string {
	if c.NAS.Network != "" {
		return c.NAS.Network
	}
	if _, ok := c.Networks["storage"]; ok && c.NAS.Address != "" {
		return "storage"
	}
	return ""
}

// NetworkNames lists the declared networks, sorted.
func (c *Config) NetworkNames() []string {
	out := make([]string, 0, len(c.Networks))
	for n := range c.Networks {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// validateNetworks checks networks, nodes[].interfaces and the NAS's place
// on them. subnet is dhcp.subnet (invalid when unset).
func (c *Config) validateNetworks(bad func(string, string, ...any), subnet netip.Prefix) {
	prefixes := map[string]netip.Prefix{}
	for _, name := range c.NetworkNames() {
		n := c.Networks[name]
		f := "networks." + name
		if name == BootNetwork {
			bad(f, "the boot network is implicit (dhcp.subnet, configured by DHCP); do not declare it")
			continue
		}
		if !netNameRe.MatchString(name) {
			bad(f, "%q is not a network name (lowercase letters, digits, '-')", name)
			continue
		}
		p, err := netip.ParsePrefix(n.Subnet)
		if err != nil || !p.Addr().Is4() || p.Bits() > 30 {
			bad(f+".subnet", "%q is not an IPv4 CIDR with room for hosts, such as 10.20.0.0/24", n.Subnet)
		} else {
			p = p.Masked()
			if subnet.IsValid() && subnet.Overlaps(p) {
				bad(f+".subnet", "%s overlaps the boot network dhcp.subnet %s", p, subnet)
			}
			for _, other := range c.NetworkNames() {
				if q, ok := prefixes[other]; ok && q.Overlaps(p) {
					bad(f+".subnet", "%s overlaps networks.%s (%s)", p, other, q)
				}
			}
			prefixes[name] = p
		}
		if n.MTU < MinMTU || n.MTU > MaxMTU {
			bad(f+".mtu", "%d is outside %d-%d", n.MTU, MinMTU, MaxMTU)
		}
		inNet := func(field, s string) bool {
			a, err := netip.ParseAddr(s)
			if err != nil || !a.Is4() {
				bad(field, "%q is not an IPv4 address", s)
				return false
			}
			if pp, ok := prefixes[name]; ok && !pp.Contains(a) {
				bad(field, "%s is outside networks.%s.subnet %s", a, name, pp)
				return false
			}
			return true
		}
		if n.Gateway != "" {
			inNet(f+".gateway", n.Gateway)
		}
		for i, r := range n.Routes {
			rf := fmt.Sprintf("%s.routes[%d]", f, i)
			if rp, err := netip.ParsePrefix(r.To); err != nil || !rp.Addr().Is4() {
				bad(rf+".to", "%q is not an IPv4 CIDR such as 10.30.0.0/16", r.To)
			} else if rp.Masked() != rp {
				bad(rf+".to", "%s has host bits set (did you mean %s?)", rp, rp.Masked())
			}
			switch {
			case r.Via != "":
				inNet(rf+".via", r.Via)
			case n.Gateway == "":
				bad(rf+".via", "required when networks.%s.gateway is not set", name)
			}
		}
	}

	// MACs and addresses are unique site-wide: boot MACs, interface and
	// bond member MACs, boot reservations, interface addresses.
	macs := map[string]string{}
	for i, n := range c.Nodes {
		if n.MAC != "" {
			macs[n.MAC] = fmt.Sprintf("nodes[%d].mac", i)
		}
	}
	addrs := map[string]string{}
	if a, err := netip.ParseAddr(c.NAS.Address); err == nil {
		addrs[a.String()] = "nas.address"
	}
	claimMAC := func(field, s string) {
		hw, err := net.ParseMAC(s)
		if err != nil || len(hw) != 6 {
			bad(field, "%q is not an Ethernet MAC address such as 52:54:00:12:34:56", s)
			return
		}
		if prev, dup := macs[hw.String()]; dup {
			bad(field, "%s is already used by %s", hw, prev)
			return
		}
		macs[hw.String()] = field
	}
	for ni := range c.Nodes {
		node := &c.Nodes[ni]
		names := map[string]int{}
		onNet := map[string]int{}
		for ii := range node.Interfaces {
			it := &node.Interfaces[ii]
			f := fmt.Sprintf("nodes[%d].interfaces[%d]", ni, ii)
			set := 0
			for _, b := range []bool{it.MAC != "", it.Match != "", it.Bond != nil, it.VLAN != nil} {
				if b {
					set++
				}
			}
			if set != 1 {
				bad(f, "give exactly one of mac, match, bond and vlan (which link this is)")
			}
			if it.Name != "" {
				if !ifNameRe.MatchString(it.Name) {
					bad(f+".name", "%q is not an interface name (lowercase, at most 15 characters)", it.Name)
				} else if j, dup := names[it.Name]; dup {
					bad(f+".name", "%q is already used by interfaces[%d] of this node", it.Name, j)
				}
				names[it.Name] = ii
			}
			if (it.Bond != nil || it.VLAN != nil) && it.Name == "" {
				bad(f+".name", "required for a %s (the kernel name of the link herd creates)", it.Kind())
			}
			if it.MAC != "" {
				claimMAC(f+".mac", it.MAC)
				if hw, err := net.ParseMAC(it.MAC); err == nil {
					it.MAC = hw.String()
				}
			}
			if it.Match != "" && !ifGlobRe.MatchString(it.Match) {
				bad(f+".match", "%q is not an interface name pattern such as enx* (letters, digits, _ . - * ?)", it.Match)
			}
			if b := it.Bond; b != nil {
				switch strings.ToLower(b.Mode) {
				case "lacp", BondLACP:
					b.Mode = BondLACP
				case BondActiveBackup:
				default:
					bad(f+".bond.mode", "%q is not one of 802.3ad (lacp), active-backup", b.Mode)
				}
				if len(b.Members) == 0 {
					bad(f+".bond.members", "a bond needs at least one member NIC (by MAC)")
				}
				for k, m := range b.Members {
					mf := fmt.Sprintf("%s.bond.members[%d]", f, k)
					claimMAC(mf, m)
					if hw, err := net.ParseMAC(m); err == nil {
						b.Members[k] = hw.String()
					}
				}
			}
			if v := it.VLAN; v != nil && (v.ID < 1 || v.ID > 4094) {
				bad(f+".vlan.id", "%d is outside 1-4094", v.ID)
			}
			if it.MTU != 0 && (it.MTU < MinMTU || it.MTU > MaxMTU) {
				bad(f+".mtu", "%d is outside %d-%d", it.MTU, MinMTU, MaxMTU)
			}
			if it.Network == "" {
				if it.Address != "" {
					bad(f+".network", "required when address is set (the network the address is on)")
				}
				continue
			}
			if it.Network == BootNetwork {
				bad(f+".network", "the boot NIC is configured by DHCP from herd (nodes[%d].mac); list only the other interfaces", ni)
				continue
			}
			nw, ok := c.Networks[it.Network]
			if !ok {
				known := strings.Join(c.NetworkNames(), ", ")
				if known == "" {
					known = "none declared"
				}
				bad(f+".network", "%q is not a network under networks (declared: %s)", it.Network, known)
				continue
			}
			if j, dup := onNet[it.Network]; dup {
				bad(f+".network", "this node already has interfaces[%d] on network %s", j, it.Network)
			}
			onNet[it.Network] = ii
			if it.MTU != 0 && it.MTU < nw.MTU {
				bad(f+".mtu", "%d is below networks.%s.mtu %d (the peers would send frames this NIC drops)", it.MTU, it.Network, nw.MTU)
			}
			switch it.Address {
			case "":
				bad(f+".address", "required: an IPv4 address inside networks.%s.subnet %s, or dhcp", it.Network, nw.Subnet)
			case AddressDHCP:
			default:
				a, err := netip.ParseAddr(it.Address)
				if err != nil || !a.Is4() {
					bad(f+".address", "%q is not an IPv4 address or dhcp", it.Address)
					break
				}
				p, ok := prefixes[it.Network]
				if !ok {
					break
				}
				if !p.Contains(a) {
					bad(f+".address", "%s is outside networks.%s.subnet %s", a, it.Network, p)
					break
				}
				if a == p.Addr() || a == lastAddr(p) {
					bad(f+".address", "%s is the network or broadcast address of %s", a, p)
					break
				}
				if prev, dup := addrs[a.String()]; dup {
					bad(f+".address", "%s is already used by %s", a, prev)
					break
				}
				if gw, err := netip.ParseAddr(nw.Gateway); err == nil && gw == a {
					bad(f+".address", "%s is networks.%s.gateway", a, it.Network)
					break
				}
				addrs[a.String()] = f + ".address"
			}
		}
		for ii := range node.Interfaces {
			it := &node.Interfaces[ii]
			if it.VLAN == nil || it.VLAN.Parent == "" {
				continue
			}
			f := fmt.Sprintf("nodes[%d].interfaces[%d].vlan.parent", ni, ii)
			j, ok := names[it.VLAN.Parent]
			switch {
			case !ok:
				bad(f, "%q is not the name of another interface of this node", it.VLAN.Parent)
			case j == ii || node.Interfaces[j].VLAN != nil:
				bad(f, "%q is a VLAN itself; a VLAN's parent is a NIC or bond", it.VLAN.Parent)
			}
		}
		for ii := range node.Interfaces {
			it := &node.Interfaces[ii]
			if it.Network != "" || it.Name == "" {
				continue
			}
			parent := false
			for _, o := range node.Interfaces {
				parent = parent || (o.VLAN != nil && o.VLAN.Parent == it.Name)
			}
			if !parent {
				bad(fmt.Sprintf("nodes[%d].interfaces[%d].network", ni, ii), "required (an interface with no network carries only VLANs, and none names %q as parent)", it.Name)
			}
		}
	}

	if nn := c.NAS.Network; nn != "" {
		if _, ok := c.Networks[nn]; !ok {
			bad("nas.network", "%q is not a network under networks", nn)
		}
	}
	if nn := c.NASNetwork(); nn != "" && c.NAS.Address != "" {
		a, err := netip.ParseAddr(c.NAS.Address)
		if p, ok := prefixes[nn]; ok {
			switch {
			case err != nil || !a.Is4():
				bad("nas.address", "%q must be an IPv4 address on networks.%s (%s): the nodes' guard route and mounts use it", c.NAS.Address, nn, p)
			case !p.Contains(a):
				bad("nas.address", "%s is outside networks.%s.subnet %s: with a %s network declared the NAS must be on it (or set nas.network)", a, nn, p, nn)
			}
		}
	}
	if c.NAS.AllowFallback && c.NASNetwork() == "" {
		bad("nas.allow_fallback", "only meaningful when the NAS is on a declared network (nas.network)")
	}
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// DeclaredPath is where the runtime overlay puts a node's declared
// interfaces (NodeNetworks as JSON), read by herd-boot report-up.
const DeclaredPath = "etc/herd/networks.json"

// NodeNetworks is what a node is told about its own interfaces, so it can
// report which of them are missing or down.
type NodeNetworks struct {
	// NASNetwork is the network the NAS is reached on ("" = boot network).
	NASNetwork string `json:"nas_network,omitempty"`
	NASAddress string `json:"nas_address,omitempty"`
	// AllowFallback is nas.allow_fallback (no guard route).
	AllowFallback bool                `json:"allow_fallback,omitempty"`
	Interfaces    []DeclaredInterface `json:"interfaces"`
}

// DeclaredInterface is one entry of NodeNetworks.
type DeclaredInterface struct {
	Label   string   `json:"label"`
	Kind    string   `json:"kind"`              // nic, match, bond, vlan
	MAC     string   `json:"mac,omitempty"`     // nic
	Match   string   `json:"match,omitempty"`   // match
	Name    string   `json:"name,omitempty"`    // bond/vlan kernel name
	Members []string `json:"members,omitempty"` // bond member MACs
	Network string   `json:"network,omitempty"`
	Address string   `json:"address,omitempty"` // CIDR, or "dhcp"
	MTU     int      `json:"mtu,omitempty"`
}

// NodeNetworks is n's declared interfaces with their addresses in CIDR form.
func (c *Config) NodeNetworks(n *Node) NodeNetworks {
	out := NodeNetworks{NASNetwork: c.NASNetwork(), NASAddress: c.NAS.Address, AllowFallback: c.NAS.AllowFallback, Interfaces: []DeclaredInterface{}}
	for i := range n.Interfaces {
		it := &n.Interfaces[i]
		d := DeclaredInterface{Label: it.Label(), Kind: it.Kind(), MAC: it.MAC, Match: it.Match, Network: it.Network, MTU: c.MTUFor(it)}
		if it.Bond != nil || it.VLAN != nil {
			d.Name = it.Name
		}
		if it.Bond != nil {
			d.Members = it.Bond.Members
		}
		d.Address = c.AddressCIDR(it)
		out.Interfaces = append(out.Interfaces, d)
	}
	return out
}

// AddressCIDR is the interface's address with its network's prefix length
// (10.20.0.13/24), "dhcp", or "".
func (c *Config) AddressCIDR(it *Interface) string {
	if it.Address == "" || it.Address == AddressDHCP {
		return it.Address
	}
	p, err := netip.ParsePrefix(c.Networks[it.Network].Subnet)
	if err != nil {
		return it.Address
	}
	return fmt.Sprintf("%s/%d", it.Address, p.Bits())
}
