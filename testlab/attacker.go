package testlab

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Attacker is DESIGN.md's LAN attacker: a host of its own (a namespace with
// a veth on the lab bridge) that may take any IP and MAC.
type Attacker struct {
	Netns *Netns
	Dev   string
	lab   *Lab
}

var attackers atomic.Int32

// NewAttacker puts a new host on the lab bridge, without an address yet.
func (l *Lab) NewAttacker() (*Attacker, error) {
	ns, err := NewNetns("attacker")
	if err != nil {
		return nil, err
	}
	i := attackers.Add(1)
	inner, dev := fmt.Sprintf("atk%d", i), "eth0"
	if err := l.Netns.AddVethPeer(inner, LabBridge, ns, dev, ""); err != nil {
		ns.Close()
		return nil, err
	}
	return &Attacker{Netns: ns, Dev: dev, lab: l}, nil
}

// Become takes ip (in the lab subnet) and mac, dropping what it had.
func (a *Attacker) Become(ip, mac string) error {
	if err := a.Netns.IP("link", "set", a.Dev, "down"); err != nil {
		return err
	}
	if err := a.Netns.IP("link", "set", a.Dev, "address", mac); err != nil {
		return err
	}
	if err := a.Netns.IP("addr", "flush", "dev", a.Dev); err != nil {
		return err
	}
	if err := a.Netns.IP("addr", "add", ip+"/24", "dev", a.Dev); err != nil {
		return err
	}
	return a.Netns.IP("link", "set", a.Dev, "up")
}

// HTTPClient makes connections from the attacker's host.
func (a *Attacker) HTTPClient() *http.Client { return a.Netns.HTTPClient() }

// Close removes the attacker's host (and its veth) from the lab.
func (a *Attacker) Close() error { return a.Netns.Close() }

// Sniffer records the TCP traffic to one port seen on a device of a
// namespace (AF_PACKET, like tcpdump on a mirror port): what a LAN
// attacker who can see the wire captures.
type Sniffer struct {
	fd    int
	port  uint16
	mu    sync.Mutex
	segs  map[flowKey]map[uint32][]byte
	done  chan struct{}
	stop  atomic.Bool
	order []flowKey
}

type flowKey struct {
	src, dst     [4]byte
	sport, dport uint16
}

// Sniff starts capturing on dev inside ns the TCP segments sent to port.
func Sniff(ns *Netns, dev string, port int) (*Sniffer, error) {
	s := &Sniffer{port: uint16(port), segs: map[flowKey]map[uint32][]byte{}, done: make(chan struct{})}
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_ALL))
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, proto)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind packet socket to %s: %w", dev, err)
		}
		tv := unix.Timeval{Usec: 200000}
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		s.fd = fd
		return nil
	})
	if err != nil {
		return nil, err
	}
	go s.loop()
	return s, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (s *Sniffer) loop() {
	defer close(s.done)
	buf := make([]byte, 65536)
	for {
		n, _, err := unix.Recvfrom(s.fd, buf, 0)
		if err != nil && s.stop.Load() {
			return // stopped, and the socket's queue is drained
		}
		if err != nil || n < 14+20+20 {
			continue
		}
		f := buf[:n]
		if binary.BigEndian.Uint16(f[12:14]) != 0x0800 {
			continue
		}
		ip := f[14:]
		ihl := int(ip[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(ip[2:4]))
		if ip[9] != 6 || ihl < 20 || total > len(ip) || total < ihl+20 {
			continue
		}
		tcp := ip[ihl:total]
		var k flowKey
		copy(k.src[:], ip[12:16])
		copy(k.dst[:], ip[16:20])
		k.sport, k.dport = binary.BigEndian.Uint16(tcp[0:2]), binary.BigEndian.Uint16(tcp[2:4])
		if k.dport != s.port {
			continue
		}
		off := int(tcp[12]>>4) * 4
		if off > len(tcp) || off == len(tcp) {
			continue
		}
		seq := binary.BigEndian.Uint32(tcp[4:8])
		s.mu.Lock()
		m, ok := s.segs[k]
		if !ok {
			m = map[uint32][]byte{}
			s.segs[k] = m
			s.order = append(s.order, k)
		}
		m[seq] = append([]byte(nil), tcp[off:]...)
		s.mu.Unlock()
	}
}

// CapturedRequest is one HTTP request reassembled from the wire.
type CapturedRequest struct {
	From   string
	Method string
	Path   string
	Header http.Header
	Body   []byte
}

// Stop ends the capture and returns the HTTP requests it saw, in the order
// their connections started.
func (s *Sniffer) Stop() []CapturedRequest {
	s.stop.Store(true)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
	}
	unix.Close(s.fd)
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []CapturedRequest
	for _, k := range s.order {
		m := s.segs[k]
		seqs := make([]uint32, 0, len(m))
		for q := range m {
			seqs = append(seqs, q)
		}
		// Ascending sequence numbers: a short flow wrapping 2^32 is unlikely
		// enough for a test capture.
		sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
		var stream bytes.Buffer
		for _, q := range seqs {
			stream.Write(m[q])
		}
		r := bufio.NewReader(&stream)
		for {
			req, err := http.ReadRequest(r)
			if err != nil {
				break
			}
			body, _ := io.ReadAll(req.Body)
			out = append(out, CapturedRequest{From: net.IP(k.src[:]).String(), Method: req.Method, Path: req.URL.Path, Header: req.Header, Body: body})
		}
	}
	return out
}
