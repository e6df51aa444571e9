package site

import (
	"strings"
	"testing"
)

// twoNetworks is a valid site with a storage network beside the boot
// network; the refusal cases below each break one thing in it.
const twoNetworks = `overlays: [autofs]
server: {interface: br-herd, address: 10.77.0.1}
dhcp: {mode: full, subnet: 10.77.0.0/24}
networks:
  storage:
    subnet: 10.78.0.0/24
    mtu: 9000
    gateway: 10.78.0.1
    routes: [{to: 10.90.0.0/16}]
nas: {address: 10.78.0.2, homes: /export/homes}
nodes:
  - name: gpu01
    mac: "52:54:00:77:00:11"
    ip: 10.77.0.11
    interfaces:
      - {name: st0, mac: "52-54-00-78-00-11", network: storage, address: 10.78.0.11}
  - name: gpu02
    mac: "52:54:00:77:00:12"
    ip: 10.77.0.12
    interfaces:
      - name: bond0
        bond: {mode: lacp, members: ["52:54:00:78:01:01", "52:54:00:78:01:02"]}
      - {name: bond0.20, vlan: {id: 20, parent: bond0}, network: storage, address: 10.78.0.12, mtu: 9000}
  - name: gpu03
    mac: "52:54:00:77:00:13"
    ip: 10.77.0.13
    interfaces:
      - {match: "enx*", network: storage, address: dhcp}
`

func TestNetworksValidSite(t *testing.T) {
	c, err := Parse("herd.yaml", []byte(twoNetworks))
	if err != nil {
		t.Fatal(err)
	}
	if c.NASNetwork() != "storage" || c.Networks["storage"].MTU != 9000 {
		t.Fatalf("NASNetwork = %q, storage = %+v", c.NASNetwork(), c.Networks["storage"])
	}
	g1, _ := c.NodeByName("gpu01")
	if g1.Interfaces[0].MAC != "52:54:00:78:00:11" || c.MTUFor(&g1.Interfaces[0]) != 9000 {
		t.Fatalf("gpu01 interface not normalised: %+v", g1.Interfaces[0])
	}
	g2, _ := c.NodeByName("gpu02")
	if g2.Interfaces[0].Bond.Mode != BondLACP || g2.Interfaces[0].Kind() != "bond" || g2.Interfaces[1].Kind() != "vlan" {
		t.Fatalf("gpu02 bond: %+v", g2.Interfaces)
	}
	// A site without networks is the single-network layout of before.
	plain := "overlays: []\ndhcp: {mode: off}\nnas: {address: nas.lab}\nnodes:\n  - {name: a, mac: '52:54:00:00:00:01'}\n"
	c, err = Parse("herd.yaml", []byte(plain))
	if err != nil || c.NASNetwork() != "" || len(c.Networks) != 0 {
		t.Fatalf("single-network site: %v, NASNetwork %q", err, c.NASNetwork())
	}
}

// TestNetworksRefused checks each refusal names the file, line and field.
func TestNetworksRefused(t *testing.T) {
	cases := []struct{ name, from, to, want string }{
		{"boot declared", "  storage:\n    subnet: 10.78.0.0/24", "  boot: {subnet: 10.66.0.0/24}\n  storage:\n    subnet: 10.78.0.0/24", "herd.yaml:5:9: field networks.boot: the boot network is implicit"},
		{"bad network name", "  storage:\n    subnet: 10.78.0.0/24", "  Storage_1: {subnet: 10.79.0.0/24}\n  storage:\n    subnet: 10.78.0.0/24", `field networks.Storage_1: "Storage_1" is not a network name`},
		{"subnet not cidr", "subnet: 10.78.0.0/24", "subnet: 10.78.0.0", `herd.yaml:6:13: field networks.storage.subnet: "10.78.0.0" is not an IPv4 CIDR`},
		{"subnet overlaps boot", "subnet: 10.78.0.0/24", "subnet: 10.77.0.0/16", "field networks.storage.subnet: 10.77.0.0/16 overlaps the boot network dhcp.subnet 10.77.0.0/24"},
		{"networks overlap", "    routes: [{to: 10.90.0.0/16}]\n", "    routes: [{to: 10.90.0.0/16}]\n  ib: {subnet: 10.78.0.128/25}\n", "overlaps networks."},
		{"mtu too big", "mtu: 9000", "mtu: 65000", "herd.yaml:7:10: field networks.storage.mtu: 65000 is outside 576-9216"},
		{"mtu too small", "mtu: 9000", "mtu: 100", "field networks.storage.mtu: 100 is outside 576-9216"},
		{"gateway outside", "gateway: 10.78.0.1", "gateway: 10.79.0.1", "field networks.storage.gateway: 10.79.0.1 is outside networks.storage.subnet 10.78.0.0/24"},
		{"route without via", "    gateway: 10.78.0.1\n", "", "field networks.storage.routes[0].via: required when networks.storage.gateway is not set"},
		{"route host bits", "to: 10.90.0.0/16", "to: 10.90.1.0/16", "field networks.storage.routes[0].to: 10.90.1.0/16 has host bits set"},
		{"address outside", "address: 10.78.0.11}", "address: 10.79.0.11}", "herd.yaml:16:"},
		{"address outside msg", "address: 10.78.0.11}", "address: 10.79.0.11}", "field nodes[0].interfaces[0].address: 10.79.0.11 is outside networks.storage.subnet 10.78.0.0/24"},
		{"address not ip", "address: 10.78.0.11}", "address: fast}", `field nodes[0].interfaces[0].address: "fast" is not an IPv4 address or dhcp`},
		{"address missing", ", address: 10.78.0.11}", "}", "field nodes[0].interfaces[0].address: required"},
		{"broadcast address", "address: 10.78.0.11}", "address: 10.78.0.255}", "is the network or broadcast address"},
		{"duplicate address", "address: 10.78.0.12, mtu", "address: 10.78.0.11, mtu", "field nodes[1].interfaces[1].address: 10.78.0.11 is already used by nodes[0].interfaces[0].address"},
		{"address is the nas", "address: 10.78.0.11}", "address: 10.78.0.2}", "10.78.0.2 is already used by nas.address"},
		{"address is the gateway", "address: 10.78.0.11}", "address: 10.78.0.1}", "is networks.storage.gateway"},
		{"duplicate mac", `"52-54-00-78-00-11"`, `"52:54:00:77:00:12"`, "field nodes[0].interfaces[0].mac: 52:54:00:77:00:12 is already used by nodes[1].mac"},
		{"duplicate member mac", `"52:54:00:78:01:02"]`, `"52:54:00:78:00:11"]`, "field nodes[1].interfaces[0].bond.members[1]: 52:54:00:78:00:11 is already used by nodes[0].interfaces[0].mac"},
		{"bad mac", `"52-54-00-78-00-11"`, `"52:54:00:78"`, `field nodes[0].interfaces[0].mac: "52:54:00:78" is not an Ethernet MAC`},
		{"unknown network", "network: storage, address: 10.78.0.11", "network: ib, address: 10.78.0.11", `field nodes[0].interfaces[0].network: "ib" is not a network under networks (declared: storage)`},
		{"boot network interface", "network: storage, address: 10.78.0.11", "network: boot, address: dhcp", "field nodes[0].interfaces[0].network: the boot NIC is configured by DHCP"},
		{"two links", `{name: st0, mac: "52-54-00-78-00-11",`, `{name: st0, match: "en*", mac: "52-54-00-78-00-11",`, "field nodes[0].interfaces[0]: give exactly one of mac, match, bond and vlan"},
		{"no link", `{name: st0, mac: "52-54-00-78-00-11",`, `{name: st0,`, "give exactly one of mac, match, bond and vlan"},
		{"bad match", `match: "enx*"`, `match: "en x*"`, `field nodes[2].interfaces[0].match: "en x*" is not an interface name pattern`},
		{"long name", "name: st0,", "name: storage-nic-number-one,", `field nodes[0].interfaces[0].name: "storage-nic-number-one" is not an interface name`},
		{"bond mode", "mode: lacp", "mode: round-robin", `field nodes[1].interfaces[0].bond.mode: "round-robin" is not one of 802.3ad (lacp), active-backup`},
		{"bond no name", "      - name: bond0\n        bond:", "      - bond:", "field nodes[1].interfaces[0].name: required for a bond"},
		{"vlan id", "id: 20", "id: 5000", "field nodes[1].interfaces[1].vlan.id: 5000 is outside 1-4094"},
		{"vlan parent", "parent: bond0", "parent: bond1", `field nodes[1].interfaces[1].vlan.parent: "bond1" is not the name of another interface`},
		{"vlan without parent user", "{name: bond0.20, vlan: {id: 20, parent: bond0}, network: storage, address: 10.78.0.12, mtu: 9000}", "{name: bond0.20, match: eth9, network: storage, address: 10.78.0.12, mtu: 9000}", `field nodes[1].interfaces[0].network: required (an interface with no network carries only VLANs, and none names "bond0" as parent)`},
		{"two on one network", "      - {match: \"enx*\", network: storage, address: dhcp}\n", "      - {match: \"enx*\", network: storage, address: dhcp}\n      - {match: \"eth1\", network: storage, address: 10.78.0.99}\n", "field nodes[2].interfaces[1].network: this node already has interfaces[0] on network storage"},
		{"interface mtu below network", "address: 10.78.0.11}", "address: 10.78.0.11, mtu: 1500}", "field nodes[0].interfaces[0].mtu: 1500 is below networks.storage.mtu 9000"},
		{"nas off the storage network", "nas: {address: 10.78.0.2,", "nas: {address: 10.77.0.2,", "herd.yaml:10:16: field nas.address: 10.77.0.2 is outside networks.storage.subnet 10.78.0.0/24: with a storage network declared the NAS must be on it"},
		{"nas by name", "nas: {address: 10.78.0.2,", "nas: {address: nas.lab,", `field nas.address: "nas.lab" must be an IPv4 address on networks.storage`},
		{"nas network unknown", "nas: {address: 10.78.0.2,", "nas: {network: fast, address: 10.78.0.2,", `field nas.network: "fast" is not a network under networks`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if !strings.Contains(twoNetworks, c.from) {
				t.Fatalf("case does not apply: %q not in the base site", c.from)
			}
			src := strings.Replace(twoNetworks, c.from, c.to, 1)
			_, err := Parse("herd.yaml", []byte(src))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error = %v\nwant it to contain %q", err, c.want)
			}
		})
	}
	t.Run("fallback without network", func(t *testing.T) {
		src := "overlays: []\ndhcp: {mode: off}\nnas: {address: 10.0.0.2, allow_fallback: true}\n"
		_, err := Parse("herd.yaml", []byte(src))
		if err == nil || !strings.Contains(err.Error(), "field nas.allow_fallback: only meaningful") {
			t.Fatalf("error = %v", err)
		}
	})
}
