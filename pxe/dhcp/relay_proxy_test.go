package dhcp

import (
	"net"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/herdlab/herd/site"
)

// TestProxyThroughRelay is the README's "nodes on other subnets" layout: a
// router relays a node's DISCOVER to herd (giaddr = the router's address on
// the node's subnet); herd's proxy answer goes back to the relay on port 67,
// carries no address, and names herd (siaddr, server id) for TFTP/HTTP.
func TestProxyThroughRelay(t *testing.T) {
	p := testPlan(t, site.DHCPProxy, site.UnknownIgnore)
	req := biosPXE(macKnown, dhcpv4.MessageTypeDiscover)
	req.GatewayIPAddr = net.IPv4(10, 88, 0, 1) // another subnet, behind a router
	req.HopCount = 1
	r := Reply(p, NewLeases(), req, ServerPort, &net.UDPAddr{IP: net.IPv4(10, 77, 0, 254), Port: ServerPort}, t0)
	rep := mustReply(t, r, dhcpv4.MessageTypeOffer)
	if r.Dest.String() != "10.88.0.1:67" {
		t.Errorf("relayed proxy offer sent to %s, want the relay 10.88.0.1:67", r.Dest)
	}
	if !rep.GatewayIPAddr.Equal(req.GatewayIPAddr) || !rep.YourIPAddr.IsUnspecified() {
		t.Errorf("giaddr %s (want echoed), yiaddr %s (want 0.0.0.0)", rep.GatewayIPAddr, rep.YourIPAddr)
	}
	if !rep.ServerIPAddr.Equal(net.IPv4(10, 77, 0, 1)) || rep.BootFileName == "" || rep.ClassIdentifier() != "PXEClient" {
		t.Errorf("siaddr %s, file %q, class %q", rep.ServerIPAddr, rep.BootFileName, rep.ClassIdentifier())
	}
}
