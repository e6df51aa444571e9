package dhcp

import (
	"net"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/herdlab/herd/site"
)

// BenchmarkDORA measures the reply logic for a DISCOVER+REQUEST pair
// (parse, decide, serialise) over 200 clients, without sockets or disk.
func BenchmarkDORA(b *testing.B) {
	p := testPlan(b, site.DHCPFull, site.UnknownDiscover)
	p.RangeStart, p.RangeEnd = netip.MustParseAddr("10.77.0.20"), netip.MustParseAddr("10.77.0.250")
	l := NewLeases()
	var disc, req [][]byte
	for i := 0; i < 200; i++ {
		mac := net.HardwareAddr{2, 0, 0, 0, byte(i >> 8), byte(i)}
		disc = append(disc, plain(mac, dhcpv4.MessageTypeDiscover).ToBytes())
	}
	for i := range disc {
		d, _ := dhcpv4.FromBytes(disc[i])
		r := Reply(p, l, d, ServerPort, nil, t0)
		rq := with(plain(d.ClientHWAddr, dhcpv4.MessageTypeRequest), dhcpv4.OptRequestedIPAddress(r.Reply.YourIPAddr))
		req = append(req, rq.ToBytes())
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, pkt := range [][]byte{disc[i%200], req[i%200]} {
			d, err := dhcpv4.FromBytes(pkt)
			if err != nil {
				b.Fatal(err)
			}
			r := Reply(p, l, d, ServerPort, nil, t0)
			if r.Reply == nil {
				b.Fatal(r.Reason, r.Detail)
			}
			_ = r.Reply.ToBytes()
		}
	}
}

// BenchmarkSaveLeases measures one leases.json write (200 leases, fsync).
func BenchmarkSaveLeases(b *testing.B) {
	p := testPlan(b, site.DHCPFull, site.UnknownDiscover)
	l := NewLeases()
	for i := 0; i < 200; i++ {
		mac := net.HardwareAddr{2, 0, 0, 0, byte(i >> 8), byte(i)}
		l.set(Lease{MAC: mac.String(), IP: p.RangeStart, Expires: t0})
	}
	path := filepath.Join(b.TempDir(), "leases.json")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := l.Save(path); err != nil {
			b.Fatal(err)
		}
	}
}
