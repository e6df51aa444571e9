package nodeboot

import (
	"reflect"
	"strings"
	"testing"

	"github.com/herdlab/herd/fleet/nodestatus"
	"github.com/herdlab/herd/site"
)

// TestCheckLinks: each way a declared storage interface can fail is named
// as "degraded: storage network down (...)", and a working one is labelled.
func TestCheckLinks(t *testing.T) {
	decl := &site.NodeNetworks{NASNetwork: "storage", NASAddress: "10.78.0.2", Interfaces: []site.DeclaredInterface{
		{Label: "st0", Kind: "nic", MAC: "52:54:00:78:00:11", Network: "storage", Address: "10.78.0.11/24", MTU: 9000},
	}}
	boot := Link{Link: nodestatus.Link{Name: "ens3", MAC: "52:54:00:77:00:11", State: "up", Carrier: true, MTU: 1500, Addresses: []string{"10.77.0.11/24"}}, physical: true}
	good := Link{Link: nodestatus.Link{Name: "ens4", MAC: "52:54:00:78:00:11", State: "up", Carrier: true, MTU: 9000, Addresses: []string{"10.78.0.11/24"}}, physical: true}
	cases := []struct {
		name  string
		links []Link
		want  string
	}{
		{"working", []Link{boot, good}, ""},
		{"missing", []Link{boot}, "degraded: storage network down (st0 52:54:00:78:00:11: missing)"},
		{"no carrier", []Link{boot, func() Link { l := good; l.Carrier, l.State, l.Addresses = false, "down", nil; return l }()}, "degraded: storage network down (st0 52:54:00:78:00:11: link down)"},
		{"no address", []Link{boot, func() Link { l := good; l.Addresses = nil; return l }()}, "address 10.78.0.11/24 not configured"},
		{"wrong mtu", []Link{boot, func() Link { l := good; l.MTU = 1500; return l }()}, "MTU 1500, want 9000"},
		// A VLAN carries its NIC's MAC but is not that NIC.
		{"same mac on a vlan", []Link{boot, {Link: nodestatus.Link{Name: "ens4.5", MAC: "52:54:00:78:00:11", State: "up", Carrier: true, Addresses: []string{"10.78.0.11/24"}, MTU: 9000}}}, "degraded: storage network down (st0 52:54:00:78:00:11: missing)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, deg := CheckLinks(c.links, decl)
			if c.want == "" {
				if len(deg) != 0 {
					t.Fatalf("degraded = %q, want none", deg)
				}
				if got[1].Label != "st0" || got[1].Network != "storage" || got[0].Label != "" {
					t.Fatalf("labels: %+v", got)
				}
				return
			}
			if len(deg) != 1 || !strings.Contains(deg[0], c.want) {
				t.Fatalf("degraded = %q, want %q", deg, c.want)
			}
		})
	}
	// Bonds and VLANs are found by name; a NIC by its MAC is not confused
	// with a declared VLAN on it; match patterns; DHCP needs any address.
	decl = &site.NodeNetworks{Interfaces: []site.DeclaredInterface{
		{Label: "bond0", Kind: "bond", Name: "bond0", Members: []string{"52:54:00:78:01:01"}},
		{Label: "bond0.20", Kind: "vlan", Name: "bond0.20", Network: "storage", Address: "10.78.0.12/24", MTU: 9000},
		{Label: "usb", Kind: "match", Match: "enx*", Network: "ib", Address: "dhcp"},
	}}
	links := []Link{boot,
		{Link: nodestatus.Link{Name: "bond0", MAC: "52:54:00:78:01:01", State: "up", Carrier: true, MTU: 9000}},
		{Link: nodestatus.Link{Name: "bond0.20", MAC: "52:54:00:78:01:01", State: "up", Carrier: true, MTU: 9000, Addresses: []string{"10.78.0.12/24"}}},
		{Link: nodestatus.Link{Name: "enx001122334455", MAC: "00:11:22:33:44:55", State: "up", Carrier: true, MTU: 1500}, physical: true},
	}
	got, deg := CheckLinks(links, decl)
	if !reflect.DeepEqual(deg, []string{"degraded: ib network down (usb: no DHCP address)"}) {
		t.Fatalf("degraded = %q", deg)
	}
	if got[2].Label != "bond0.20" || got[1].Label != "bond0" || got[3].Label != "usb" {
		t.Fatalf("labels: %+v", got)
	}
	if _, deg := CheckLinks(links, nil); deg != nil {
		t.Fatalf("no declaration, degraded = %q", deg)
	}
}
