package overlays

import (
	"strconv"
	"strings"
	"testing"

	"github.com/herdlab/herd/site"
)

// networkdKeys are the sections and keys herd may write, as systemd 255
// (noble) documents them in systemd.network(5) and systemd.netdev(5): a
// typo would make networkd ignore the line with only a log message.
var networkdKeys = map[string]map[string][]string{
	".network": {
		"Match":   {"MACAddress", "PermanentMACAddress", "Name", "Type"},
		"Link":    {"MTUBytes", "RequiredForOnline"},
		"Network": {"Address", "DHCP", "LinkLocalAddressing", "IPv6AcceptRA", "VLAN", "Bond"},
		"DHCPv4":  {"UseGateway", "UseDNS", "UseNTP", "UseHostname", "ClientIdentifier"},
		"Route":   {"Destination", "Gateway", "Type", "Metric"},
	},
	".netdev": {
		"NetDev": {"Name", "Kind", "MTUBytes"},
		"Bond":   {"Mode", "MIIMonitorSec", "LACPTransmitRate", "TransmitHashPolicy"},
		"VLAN":   {"Id"},
	},
}

// unit is one parsed networkd file: section → key → values.
type unit map[string]map[string][]string

func parseUnit(t *testing.T, path, text string) unit {
	t.Helper()
	ext := path[strings.LastIndex(path, "."):]
	u := unit{}
	sec := ""
	for i, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || strings.HasPrefix(l, "#"):
		case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]"):
			sec = l[1 : len(l)-1]
			if _, ok := networkdKeys[ext][sec]; !ok {
				t.Errorf("%s:%d: section [%s] is not one networkd knows in a %s file", path, i+1, sec, ext)
			}
			if u[sec] == nil {
				u[sec] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok || sec == "" {
				t.Errorf("%s:%d: %q is not key=value inside a section", path, i+1, l)
				continue
			}
			known := false
			for _, kk := range networkdKeys[ext][sec] {
				known = known || kk == k
			}
			if !known {
				t.Errorf("%s:%d: [%s] %s is not a key networkd knows", path, i+1, sec, k)
			}
			u[sec][k] = append(u[sec][k], v)
		}
	}
	return u
}

func (u unit) get(sec, key string) string {
	if v := u[sec][key]; len(v) > 0 {
		return v[len(v)-1]
	}
	return ""
}

// The bond and VLAN files herd renders hang together the way networkd
// needs: only known sections and keys; every Bond= and VLAN= names a
// .netdev of that kind; every .netdev is matched by a .network of its
// type; a VLAN's id is valid and its MTU fits its parent's; bond members
// carry the bond's MTU. (networkd itself cannot run here: this machine's
// kernel has no bonding or VLAN support; TestStorageNetwork runs it on a
// node.)
func TestNetworkdBondAndVLANFiles(t *testing.T) {
	cfg, err := site.Load("testdata/networks.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"gpu01", "gpu02", "gpu03"} {
		node, _ := cfg.NodeByName(name)
		rt, err := RenderRuntime(cfg, node, RuntimeSecrets{MachineID: "00112233445566778899aabbccddeeff"})
		if err != nil {
			t.Fatal(err)
		}
		netdevs := map[string]unit{}
		networks := map[string]unit{}
		for _, f := range rt {
			if !strings.HasPrefix(f.Path, networkdDir+networkPrefix) {
				continue
			}
			u := parseUnit(t, f.Path, string(f.Data))
			if strings.HasSuffix(f.Path, ".netdev") {
				netdevs[u.get("NetDev", "Name")] = u
			} else {
				networks[f.Path] = u
			}
		}
		mtu := func(u unit, sec string) int {
			n, _ := strconv.Atoi(u.get(sec, "MTUBytes"))
			return n
		}
		matched := map[string]bool{}
		for p, u := range networks {
			if n := u.get("Match", "Name"); netdevs[n] != nil {
				matched[n] = true
				if kind := netdevs[n].get("NetDev", "Kind"); u.get("Match", "Type") != kind {
					t.Errorf("%s %s: matches %s with Type=%s, but it is a %s", name, p, n, u.get("Match", "Type"), kind)
				}
			}
			for _, ref := range []struct{ key, kind string }{{"Bond", "bond"}, {"VLAN", "vlan"}} {
				for _, n := range u["Network"][ref.key] {
					d := netdevs[n]
					if d == nil || d.get("NetDev", "Kind") != ref.kind {
						t.Errorf("%s %s: %s=%s has no .netdev of kind %s", name, p, ref.key, n, ref.kind)
						continue
					}
					switch ref.kind {
					case "vlan":
						if id, err := strconv.Atoi(d.get("VLAN", "Id")); err != nil || id < 1 || id > 4094 {
							t.Errorf("%s: VLAN %s has Id=%q", name, n, d.get("VLAN", "Id"))
						}
						if m := mtu(d, "NetDev"); m > 0 && mtu(u, "Link") > 0 && m > mtu(u, "Link") {
							t.Errorf("%s: VLAN %s MTU %d exceeds its parent's %d (the kernel refuses it)", name, n, m, mtu(u, "Link"))
						}
					case "bond":
						if u.get("Match", "PermanentMACAddress") == "" {
							t.Errorf("%s %s: a bond member must match its permanent MAC (it takes the bond's when enslaved)", name, p)
						}
						if mtu(u, "Link") != mtu(d, "NetDev") {
							t.Errorf("%s %s: member MTU %d, bond %s MTU %d", name, p, mtu(u, "Link"), n, mtu(d, "NetDev"))
						}
						switch d.get("Bond", "Mode") {
						case site.BondLACP, site.BondActiveBackup:
						default:
							t.Errorf("%s: bond %s Mode=%s", name, n, d.get("Bond", "Mode"))
						}
					}
				}
			}
		}
		for n := range netdevs {
			if !matched[n] {
				t.Errorf("%s: netdev %s has no .network matching it", name, n)
			}
		}
		if name != "gpu01" && len(netdevs) < 2 {
			t.Errorf("%s: want a bond and a VLAN netdev, got %d", name, len(netdevs))
		}
	}
}
