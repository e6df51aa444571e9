package server

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
)

// dhcpFrame is one DHCP message a client sent, taken from a capture.
type dhcpFrame struct {
	DstPort int    // 67 or 4011
	Payload []byte // the BOOTP/DHCP message
}

// dhcpFromPcap reads a classic pcap file (as QEMU's filter-dump writes it:
// Ethernet link type) and returns the UDP payloads sent from mac to port 67
// or 4011, in order.
func dhcpFromPcap(path string, mac net.HardwareAddr) ([]dhcpFrame, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(data) < 24 {
		return nil, errors.New("pcap: short file")
	}
	var bo binary.ByteOrder
	switch binary.LittleEndian.Uint32(data) {
	case 0xa1b2c3d4:
		bo = binary.LittleEndian
	case 0xd4c3b2a1:
		bo = binary.BigEndian
	default:
		return nil, fmt.Errorf("pcap: unknown magic %x", data[:4])
	}
	if lt := bo.Uint32(data[20:]); lt != 1 {
		return nil, fmt.Errorf("pcap: link type %d, want Ethernet", lt)
	}
	var out []dhcpFrame
	for off := 24; off+16 <= len(data); {
		n := int(bo.Uint32(data[off+8:]))
		off += 16
		if off+n > len(data) {
			return nil, errors.New("pcap: truncated record")
		}
		rec := data[off : off+n]
		off += n
		// Ethernet II, IPv4, UDP. With a tap netdev QEMU's dump keeps the
		// virtio-net header (10 or 12 bytes) in front of the frame.
		var f []byte
		for _, skip := range []int{0, 10, 12} {
			if len(rec) >= skip+14+20+8 && net.HardwareAddr(rec[skip+6:skip+12]).String() == mac.String() &&
				binary.BigEndian.Uint16(rec[skip+12:]) == 0x0800 {
				f = rec[skip:]
				break
			}
		}
		if f == nil {
			continue
		}
		ip := f[14:]
		ihl := int(ip[0]&0x0f) * 4
		if ip[0]>>4 != 4 || ip[9] != 17 || len(ip) < ihl+8 {
			continue
		}
		udp := ip[ihl:]
		dport := int(binary.BigEndian.Uint16(udp[2:]))
		ulen := int(binary.BigEndian.Uint16(udp[4:]))
		if (dport != 67 && dport != 4011) || ulen < 8 || ulen > len(udp) {
			continue
		}
		out = append(out, dhcpFrame{DstPort: dport, Payload: append([]byte(nil), udp[8:ulen]...)})
	}
	return out, nil
}

// writeCapturedSeeds stores the DHCP messages of a QEMU run as raw files in
// pxe/dhcp's testdata/captured/<firmware>-NN.bin (the packets exactly as the
// firmware sent them; pxe/dhcp's TestCapturedSeeds turns each into a
// FuzzReply seed). Run by hand: HERD_WRITE_FUZZ_SEEDS=1 (see that
// directory's README).
func writeCapturedSeeds(t *testing.T, firmware string, frames []dhcpFrame) {
	t.Helper()
	dir := filepath.Join("..", "dhcp", "testdata", "captured")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	old, _ := filepath.Glob(filepath.Join(dir, firmware+"-*.bin"))
	for _, p := range old {
		os.Remove(p)
	}
	for i, f := range frames {
		name := fmt.Sprintf("%s-%02d-port%d.bin", firmware, i+1, f.DstPort)
		if err := os.WriteFile(filepath.Join(dir, name), f.Payload, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("wrote %d captured DHCP messages of %s to %s", len(frames), firmware, dir)
}
