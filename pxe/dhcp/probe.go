package dhcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
)

// DefaultProbeWait is how long Probe listens by default: long enough for
// dnsmasq, which pings an address for up to 3 s before offering it.
const DefaultProbeWait = 3500 * time.Millisecond

// Probe broadcasts a DISCOVER on iface from the interface's own MAC and
// listens for wait; it returns "server-id via source" for the first OFFER
// (another DHCP server on the segment) or "" if none answered. A rival that
// ignores unknown MACs cannot be seen this way.
func Probe(ctx context.Context, iface string, wait time.Duration) (string, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return "", fmt.Errorf("interface %s: %w", iface, err)
	}
	hw := ifi.HardwareAddr
	if len(hw) != 6 {
		// Bridges without ports may have no address yet: any locally
		// administered MAC does for a probe.
		hw = net.HardwareAddr{0x02, 0x68, 0x65, 0x72, 0x64, 0x01}
	}
	c, err := server4.NewIPv4UDPConn(iface, &net.UDPAddr{Port: ClientPort})
	if err != nil {
		return "", fmt.Errorf("listen udp/%d on %s: %w", ClientPort, iface, err)
	}
	defer c.Close()
	disc, err := dhcpv4.NewDiscovery(hw, dhcpv4.WithBroadcast(true))
	if err != nil {
		return "", err
	}
	if _, err := c.WriteToUDP(disc.ToBytes(), &net.UDPAddr{IP: net.IPv4bcast, Port: ServerPort}); err != nil {
		return "", fmt.Errorf("send probe DISCOVER on %s: %w", iface, err)
	}
	deadline := time.Now().Add(wait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.SetReadDeadline(deadline)
	buf := make([]byte, 4096)
	for {
		n, src, err := c.ReadFromUDP(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return "", ctx.Err()
		}
		if err != nil {
			return "", fmt.Errorf("read probe replies: %w", err)
		}
		r, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || r.OpCode != dhcpv4.OpcodeBootReply || r.TransactionID != disc.TransactionID {
			continue
		}
		if r.MessageType() == dhcpv4.MessageTypeOffer {
			return fmt.Sprintf("%v via %v", r.ServerIdentifier(), src.IP), nil
		}
	}
}
