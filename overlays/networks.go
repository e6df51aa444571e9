package overlays

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	"github.com/herdlab/herd/site"
)

// networkdDir is where the runtime overlay's systemd-networkd files go.
const networkdDir = "etc/systemd/network/"

// networkPrefix sorts every per-node file before base's catch-all
// 10-herd-boot.network: networkd applies the first .network file (in
// lexical order) that matches a link, so a declared NIC never runs the
// boot network's DHCP.
const networkPrefix = "05-herd-"

// guardDropIn adds the NAS guard route to the boot network's file, so it is
// installed whenever the boot NIC is configured, whatever the storage NIC does.
const guardDropIn = "etc/systemd/network/10-herd-boot.network.d/50-herd-nas-guard.conf"

// guardMetric is the largest route metric: the guard route is used only
// when no other route to the NAS network exists (the storage NIC's own
// connected route has metric 0).
const guardMetric = 4294967295

// networkFiles renders node's interfaces (herd.yaml nodes[].interfaces) as
// systemd-networkd .netdev/.network files, the NAS guard drop-in and
// etc/herd/networks.json. A node without interfaces gets none of them: it
// boots on the boot network alone, exactly as before networks existed.
func networkFiles(cfg *site.Config, node *site.Node) ([]File, error) {
	if len(node.Interfaces) == 0 {
		return nil, nil
	}
	var files []File
	add := func(p, text string) {
		files = append(files, File{Overlay: RuntimeName, Path: p, Mode: 0o644, Data: []byte(text)})
	}
	head := func(it *site.Interface, what string) string {
		return fmt.Sprintf("# herd: %s of node %s, from herd.yaml nodes[].interfaces (%s).\n", what, node.Name, it.Label())
	}
	// vlansOn and mtuOf: a VLAN's parent carries the VLAN= lines and at
	// least the largest MTU of its VLANs.
	vlansOn := map[string][]string{}
	vlanMTU := map[string]int{}
	for i := range node.Interfaces {
		it := &node.Interfaces[i]
		if it.VLAN != nil {
			vlansOn[it.VLAN.Parent] = append(vlansOn[it.VLAN.Parent], it.Name)
			vlanMTU[it.VLAN.Parent] = max(vlanMTU[it.VLAN.Parent], cfg.MTUFor(it))
		}
	}
	onNAS := false
	for i := range node.Interfaces {
		it := &node.Interfaces[i]
		mtu := max(cfg.MTUFor(it), vlanMTU[it.Name])
		base := networkdDir + networkPrefix + fileLabel(it)
		var match string
		switch it.Kind() {
		case "nic":
			// Type=ether: VLANs and bonds inherit a NIC's MAC, and must
			// not match its file.
			match = "MACAddress=" + it.MAC + "\nType=ether\n"
		case "match":
			match = "Name=" + it.Match + "\nType=ether\n"
		case "bond":
			var b strings.Builder
			b.WriteString(head(it, "bond "+it.Name))
			fmt.Fprintf(&b, "[NetDev]\nName=%s\nKind=bond\n", it.Name)
			if mtu > 0 {
				fmt.Fprintf(&b, "MTUBytes=%d\n", mtu)
			}
			fmt.Fprintf(&b, "\n[Bond]\nMode=%s\nMIIMonitorSec=100ms\n", it.Bond.Mode)
			if it.Bond.Mode == site.BondLACP {
				b.WriteString("LACPTransmitRate=fast\nTransmitHashPolicy=layer3+4\n")
			}
			add(base+".netdev", b.String())
			for k, m := range it.Bond.Members {
				var mb strings.Builder
				mb.WriteString(head(it, fmt.Sprintf("member %d of bond %s", k+1, it.Name)))
				// The permanent address: once enslaved, a member takes
				// the bond's MAC.
				fmt.Fprintf(&mb, "[Match]\nPermanentMACAddress=%s\nType=ether\n\n", m)
				if mtu > 0 {
					fmt.Fprintf(&mb, "[Link]\nMTUBytes=%d\n\n", mtu)
				}
				fmt.Fprintf(&mb, "[Network]\nBond=%s\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n", it.Name)
				add(fmt.Sprintf("%s-member%d.network", base, k+1), mb.String())
			}
			match = "Name=" + it.Name + "\nType=bond\n"
		case "vlan":
			var b strings.Builder
			b.WriteString(head(it, fmt.Sprintf("VLAN %d on %s", it.VLAN.ID, it.VLAN.Parent)))
			fmt.Fprintf(&b, "[NetDev]\nName=%s\nKind=vlan\n", it.Name)
			if mtu > 0 {
				fmt.Fprintf(&b, "MTUBytes=%d\n", mtu)
			}
			fmt.Fprintf(&b, "\n[VLAN]\nId=%d\n", it.VLAN.ID)
			add(base+".netdev", b.String())
			match = "Name=" + it.Name + "\nType=vlan\n"
		default:
			return nil, fmt.Errorf("runtime overlay for %s: interface %s: unknown kind %s", node.Name, it.Label(), it.Kind())
		}
		var b strings.Builder
		what := "interface " + it.Label()
		if it.Network != "" {
			what += " on network " + it.Network
		}
		b.WriteString(head(it, what))
		b.WriteString("[Match]\n" + match + "\n")
		b.WriteString("[Link]\n")
		if mtu > 0 {
			fmt.Fprintf(&b, "MTUBytes=%d\n", mtu)
		}
		// The node is online once the boot NIC is: a missing or unplugged
		// storage NIC is reported (degraded), not waited for.
		b.WriteString("RequiredForOnline=no\n\n[Network]\n")
		switch {
		case it.Address == site.AddressDHCP:
			b.WriteString("DHCP=ipv4\n")
		case it.Address != "":
			fmt.Fprintf(&b, "Address=%s\n", cfg.AddressCIDR(it))
		}
		b.WriteString("LinkLocalAddressing=no\nIPv6AcceptRA=no\n")
		for _, v := range vlansOn[it.Name] {
			fmt.Fprintf(&b, "VLAN=%s\n", v)
		}
		if it.Address == site.AddressDHCP {
			// The default route, DNS and host name stay the boot network's.
			b.WriteString("\n[DHCPv4]\nUseGateway=no\nUseDNS=no\nUseNTP=no\nUseHostname=no\nClientIdentifier=mac\n")
		}
		if nw, ok := cfg.Networks[it.Network]; ok {
			for _, r := range nw.Routes {
				via := r.Via
				if via == "" {
					via = nw.Gateway
				}
				fmt.Fprintf(&b, "\n[Route]\nDestination=%s\nGateway=%s\n", r.To, via)
			}
		}
		add(base+".network", b.String())
		if it.Network != "" && it.Network == cfg.NASNetwork() {
			onNAS = true
		}
	}
	if onNAS && !cfg.NAS.AllowFallback {
		nw := cfg.Networks[cfg.NASNetwork()]
		p, err := netip.ParsePrefix(nw.Subnet)
		if err != nil {
			return nil, fmt.Errorf("runtime overlay for %s: networks.%s.subnet: %w", node.Name, cfg.NASNetwork(), err)
		}
		add(guardDropIn, fmt.Sprintf(`# herd: the NAS (%s) is on network %s. While %s's interface there is
# up, its own route (metric 0) carries NFS; when that link is down or
# missing, this route answers "unreachable" instead of letting NFS go out
# over the boot network's default route (set nas.allow_fallback: true in
# herd.yaml to allow that).
[Route]
Type=unreachable
Destination=%s
Metric=%d
`, cfg.NAS.Address, cfg.NASNetwork(), node.Name, p.Masked(), guardMetric))
	}
	js, err := json.MarshalIndent(cfg.NodeNetworks(node), "", "  ")
	if err != nil {
		return nil, fmt.Errorf("runtime overlay for %s: %w", node.Name, err)
	}
	add(site.DeclaredPath, string(js)+"\n")
	return files, nil
}

// fileLabel is the interface's part of its file names (its label, made
// safe for a file name).
func fileLabel(it *site.Interface) string {
	return strings.NewReplacer(":", "", "*", "x", "?", "x", "/", "-").Replace(it.Label())
}
