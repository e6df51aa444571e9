package dhcp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/site"
	"github.com/herdlab/herd/testlab"
)

// lab is a server namespace with bridge br0 (10.77.0.1/24) and client
// namespaces attached to it by veth pairs.
type lab struct {
	t   *testing.T
	srv *testlab.Netns
	n   int
	tap func(port int, pkt []byte)
}

func newLab(t *testing.T) *lab {
	t.Helper()
	testenv.RequireNetns(t)
	ns, err := testlab.NewNetns("dhcp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	if err := ns.AddBridge("br0", "10.77.0.1/24"); err != nil {
		t.Fatal(err)
	}
	return &lab{t: t, srv: ns}
}

// client adds a namespace whose eth0 (MAC mac) sits on br0; cidr may be "".
func (l *lab) client(mac, cidr string) *testlab.Netns {
	l.t.Helper()
	ns, err := testlab.NewNetns("dc")
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { ns.Close() })
	l.n++
	if err := l.srv.AddVethPeer(fmt.Sprintf("v%d", l.n), "br0", ns, "eth0", cidr); err != nil {
		l.t.Fatal(err)
	}
	for _, args := range [][]string{{"link", "set", "eth0", "down"}, {"link", "set", "eth0", "address", mac}, {"link", "set", "eth0", "up"}} {
		if err := ns.IP(args...); err != nil {
			l.t.Fatal(err)
		}
	}
	return ns
}

type running struct {
	s      *Server
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
	mu     sync.Mutex
	seen   []string
}

// start runs a herd DHCP server for cfg inside the lab's namespace.
func (l *lab) start(cfg *site.Config, state string, force bool) (*running, error) {
	return l.startIn(l.srv, cfg, state, force)
}

// startIn runs a herd DHCP server for cfg inside ns.
func (l *lab) startIn(ns *testlab.Netns, cfg *site.Config, state string, force bool) (*running, error) {
	r := &running{reg: prometheus.NewRegistry(), done: make(chan error, 1)}
	s, err := New(cfg, Options{
		StateDir: state, Force: force, Registry: r.reg, ProbeWait: 4 * time.Second,
		Log: slog.New(slog.NewTextHandler(testWriter{l.t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		OnLease: func(mac net.HardwareAddr, ip net.IP, host string) {
			r.mu.Lock()
			r.seen = append(r.seen, fmt.Sprintf("%s %v %s", mac, ip, host))
			r.mu.Unlock()
		},
	})
	if err != nil {
		return nil, err
	}
	r.s = s
	s.tap = l.tap
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	if err := ns.Do(func() error { return s.Listen(ctx) }); err != nil {
		cancel()
		return nil, err
	}
	go func() { r.done <- s.Serve(ctx) }()
	l.t.Cleanup(r.stop)
	return r, nil
}

// seenCalls returns the OnLease calls once there are n of them (they run
// asynchronously; bounded wait), or what there is.
func (r *running) seenCalls(n int) []string {
	for i := 0; i < 200; i++ {
		r.mu.Lock()
		got := append([]string(nil), r.seen...)
		r.mu.Unlock()
		if len(got) >= n || i == 199 {
			return got
		}
		time.Sleep(25 * time.Millisecond)
	}
	return nil
}

func (r *running) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	if err := <-r.done; err != nil {
		panic(err)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// udhcpc runs busybox udhcpc once on eth0 in ns and returns the lines its
// script recorded ("bound <ip> <hostname> <router> <dns> <domain> <subnet>" or "leasefail").
func udhcpc(t *testing.T, ns *testlab.Netns, extra ...string) []string {
	t.Helper()
	dir := t.TempDir()
	out := filepath.Join(dir, "events")
	script := filepath.Join(dir, "script")
	// Like a real client script, configure the address on "bound" (udhcpc
	// sends RELEASE from it); the namespace is the test's own.
	writeFile(t, script, "#!/bin/sh\necho \"$1 $ip $hostname $router $dns $domain $subnet $serverid\" >> "+out+"\n"+
		"[ \"$1\" = bound ] && ip addr replace $ip/24 dev $interface\n"+
		"[ \"$1\" = deconfig ] && ip addr flush dev $interface\nexit 0\n")
	os.Chmod(script, 0o755)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := append([]string{"-f", "-q", "-n", "-t", "3", "-T", "1", "-A", "1", "-i", "eth0", "-s", script}, extra...)
	cmd := ns.Command(ctx, "udhcpc", args...)
	b, _ := cmd.CombinedOutput() // exit status 1 = no lease, judged by the events
	t.Logf("udhcpc %v:\n%s", extra, b)
	data, _ := os.ReadFile(out)
	var ev []string
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if line != "" && !strings.HasPrefix(line, "deconfig") {
			ev = append(ev, strings.TrimSpace(line))
		}
	}
	return ev
}

func labConfig(t *testing.T, mode, unknown string) *site.Config {
	return testConfig(t, mode, unknown)
}

func TestFullModeUdhcpc(t *testing.T) {
	testenv.RequireCommands(t, "udhcpc")
	l := newLab(t)
	known := l.client("52:54:00:77:00:11", "")
	unknown := l.client("52:54:00:99:00:01", "")
	state := t.TempDir()
	if os.Getenv("HERD_WRITE_FUZZ_SEEDS") == "1" {
		// Keep udhcpc's real packets as fuzz seeds.
		var seq int
		var mu sync.Mutex
		l.tap = func(port int, pkt []byte) {
			mu.Lock()
			defer mu.Unlock()
			seq++
			writeSeed(t, fmt.Sprintf("udhcpc-%02d", seq), pkt, 0)
		}
	}

	srv, err := l.start(labConfig(t, site.DHCPFull, site.UnknownIgnore), state, false)
	if err != nil {
		t.Fatal(err)
	}
	ev := udhcpc(t, known)
	if len(ev) != 1 || ev[0] != "bound 10.77.0.11 gpu01 10.77.0.254 10.77.0.53 10.77.0.54 lab.example 255.255.255.0 10.77.0.1" {
		t.Fatalf("known MAC: %q", ev)
	}
	if ip, ok := srv.s.Lease("52:54:00:77:00:11"); !ok || ip != "10.77.0.11" {
		t.Errorf("Lease() = %q %v", ip, ok)
	}
	if got := strings.Join(srv.seenCalls(1), ";"); got != "52:54:00:77:00:11 10.77.0.11 gpu01" {
		t.Errorf("OnLease calls: %q", got)
	}
	ev = udhcpc(t, unknown)
	if len(ev) != 1 || ev[0] != "leasefail" {
		t.Fatalf("unknown MAC with ignore: %q", ev)
	}
	if n := testutil.ToFloat64(srv.s.metrics.ignored.WithLabelValues(ReasonUnknownMAC)); n < 1 {
		t.Errorf("ignored{unknown-mac} = %v", n)
	}

	// Same state dir, unknown: discover. The unknown MAC gets the first
	// range address; a second unknown MAC the next one.
	srv.stop()
	srv, err = l.start(labConfig(t, site.DHCPFull, site.UnknownDiscover), state, true)
	if err != nil {
		t.Fatal(err)
	}
	ev = udhcpc(t, unknown)
	if len(ev) != 1 || !strings.HasPrefix(ev[0], "bound 10.77.0.100  10.77.0.254") {
		t.Fatalf("unknown MAC with discover: %q", ev)
	}

	// Restart: the lease survives; a new client does not get .100 and the
	// old one gets .100 again.
	srv.stop()
	var lf struct{ Leases []Lease }
	data, err := os.ReadFile(filepath.Join(state, "leases.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &lf); err != nil || len(lf.Leases) != 2 {
		t.Fatalf("leases.json: %v\n%s", err, data)
	}
	srv, err = l.start(labConfig(t, site.DHCPFull, site.UnknownDiscover), state, true)
	if err != nil {
		t.Fatal(err)
	}
	other := l.client("52:54:00:99:00:02", "")
	if ev = udhcpc(t, other); len(ev) != 1 || !strings.HasPrefix(ev[0], "bound 10.77.0.101 ") {
		t.Fatalf("second unknown after restart: %q", ev)
	}
	if ev = udhcpc(t, unknown); len(ev) != 1 || !strings.HasPrefix(ev[0], "bound 10.77.0.100 ") {
		t.Fatalf("first unknown after restart: %q", ev)
	}
	// busybox udhcpc -q -R exits without sending its RELEASE, so the client
	// releases from a Go socket on its (now configured) address, unicast.
	rc := newPXEClient(t, unknown)
	rel := plain(macUnknown, dhcpv4.MessageTypeRelease)
	rel.ClientIPAddr = net.IPv4(10, 77, 0, 100)
	rel.UpdateOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 77, 0, 1)))
	if _, err := rc.conn.WriteToUDP(rel.ToBytes(), &net.UDPAddr{IP: net.IPv4(10, 77, 0, 1), Port: ServerPort}); err != nil {
		t.Fatal(err)
	}
	// The RELEASE is handled asynchronously: wait for the server to count
	// it (bounded), then check the lease is gone.
	for i := 0; i < 100 && testutil.ToFloat64(srv.s.metrics.ignored.WithLabelValues(ReasonReleased)) < 1; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if n := testutil.ToFloat64(srv.s.metrics.ignored.WithLabelValues(ReasonReleased)); n != 1 {
		t.Fatalf("ignored{released} = %v", n)
	}
	if _, ok := srv.s.Lease("52:54:00:99:00:01"); ok {
		t.Error("lease kept after RELEASE")
	}
	srv.stop()
	data, _ = os.ReadFile(filepath.Join(state, "leases.json"))
	if strings.Contains(string(data), "52:54:00:99:00:01") || !strings.Contains(string(data), "52:54:00:99:00:02") {
		t.Errorf("leases.json after RELEASE:\n%s", data)
	}
}

func TestFullModeRefusesRivalServer(t *testing.T) {
	testenv.RequireCommands(t, "dnsmasq")
	l := newLab(t)
	rival, err := testlab.NewNetns("dr")
	if err != nil {
		t.Fatal(err)
	}
	defer rival.Close()
	if err := l.srv.AddVethPeer("vr", "br0", rival, "eth0", "10.77.0.2/24"); err != nil {
		t.Fatal(err)
	}
	// Without a rival the probe finds nothing.
	var who string
	if err := l.srv.Do(func() (err error) { who, err = Probe(context.Background(), "br0", time.Second); return }); err != nil || who != "" {
		t.Fatalf("probe with no rival: %q %v", who, err)
	}

	// First rival: a second herd (unknown: discover) on the same segment.
	rcfg := labConfig(t, site.DHCPFull, site.UnknownDiscover)
	rcfg.Server.Interface, rcfg.Server.Address = "eth0", "10.77.0.2"
	other, err := l.startIn(rival, rcfg, t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	_, err = l.start(labConfig(t, site.DHCPFull, site.UnknownIgnore), t.TempDir(), false)
	if err == nil || !strings.Contains(err.Error(), "another DHCP server (10.77.0.2") {
		t.Fatalf("start with a herd rival: %v", err)
	}
	other.stop()

	// Second rival: dnsmasq.
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dm := rival.Command(ctx, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
		"--interface=eth0", "--bind-interfaces", "--dhcp-range=10.77.0.150,10.77.0.160,1h",
		"--dhcp-leasefile="+filepath.Join(dir, "leases"), "--pid-file="+filepath.Join(dir, "pid"))
	dm.Stdout, dm.Stderr = testWriter{t}, testWriter{t}
	if err := dm.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { dm.Process.Kill(); dm.Wait() }()
	// dnsmasq needs a moment to bind: probe until it answers (bounded).
	for i := 0; i < 10 && who == ""; i++ {
		if err := l.srv.Do(func() (err error) { who, err = Probe(context.Background(), "br0", 4*time.Second); return }); err != nil {
			t.Fatal(err)
		}
	}
	if !strings.Contains(who, "10.77.0.2") {
		t.Fatalf("probe never saw dnsmasq: %q", who)
	}
	_, err = l.start(labConfig(t, site.DHCPFull, site.UnknownIgnore), t.TempDir(), false)
	if err == nil || !strings.Contains(err.Error(), "another DHCP server (10.77.0.2") || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("start with a rival: %v", err)
	}
	if _, err := l.start(labConfig(t, site.DHCPFull, site.UnknownIgnore), t.TempDir(), true); err != nil {
		t.Fatalf("start with force: %v", err)
	}
}

// pxeClient sends DHCP packets from a Go socket on eth0:68 in ns.
type pxeClient struct {
	t    *testing.T
	conn *net.UDPConn
}

func newPXEClient(t *testing.T, ns *testlab.Netns) *pxeClient {
	var c *net.UDPConn
	if err := ns.Do(func() (err error) { c, err = server4.NewIPv4UDPConn("eth0", &net.UDPAddr{Port: ClientPort}); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &pxeClient{t: t, conn: c}
}

// exchange sends req to dst and returns the first reply with its
// transaction ID, or nil once the server has counted the request as
// ignored (waitIgnored) — no reply is then coming.
func (c *pxeClient) exchange(req *dhcpv4.DHCPv4, dst *net.UDPAddr, srv *running) (*dhcpv4.DHCPv4, *net.UDPAddr) {
	c.t.Helper()
	xid, _ := dhcpv4.GenerateTransactionID()
	req.TransactionID = xid
	before := testutil.ToFloat64(srv.s.metrics.ignored.WithLabelValues(ReasonNotBootable)) + testutil.ToFloat64(srv.s.metrics.ignored.WithLabelValues(ReasonUnknownMAC))
	if _, err := c.conn.WriteToUDP(req.ToBytes(), dst); err != nil {
		c.t.Fatal(err)
	}
	buf := make([]byte, 2048)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		c.conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, from, err := c.conn.ReadFromUDP(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			after := testutil.ToFloat64(srv.s.metrics.ignored.WithLabelValues(ReasonNotBootable)) + testutil.ToFloat64(srv.s.metrics.ignored.WithLabelValues(ReasonUnknownMAC))
			if after > before {
				return nil, nil
			}
			continue
		}
		if err != nil {
			c.t.Fatal(err)
		}
		r, err := dhcpv4.FromBytes(buf[:n])
		if err == nil && r.OpCode == dhcpv4.OpcodeBootReply && r.TransactionID == xid {
			return r, from
		}
	}
	c.t.Fatal("neither a reply nor an ignored request within 20 s")
	return nil, nil
}

func TestProxyModeGoClient(t *testing.T) {
	l := newLab(t)
	ns := l.client("52:54:00:77:00:11", "10.77.0.50/24")
	srv, err := l.start(labConfig(t, site.DHCPProxy, site.UnknownIgnore), t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	c := newPXEClient(t, ns)
	bcast := &net.UDPAddr{IP: net.IPv4bcast, Port: ServerPort}

	req := biosPXE(macKnown, dhcpv4.MessageTypeDiscover)
	rep, from := c.exchange(req, bcast, srv)
	if rep == nil {
		t.Fatal("PXE DISCOVER got no answer")
	}
	if rep.MessageType() != dhcpv4.MessageTypeOffer || !rep.YourIPAddr.IsUnspecified() || rep.BootFileName != "undionly.kpxe" ||
		rep.ClassIdentifier() != "PXEClient" || !rep.ServerIPAddr.Equal(net.IPv4(10, 77, 0, 1)) || !from.IP.Equal(net.IPv4(10, 77, 0, 1)) {
		t.Errorf("proxy offer from %s: %s", from, rep.Summary())
	}
	if string(rep.GetOneOption(dhcpv4.OptionClientMachineIdentifier)) != string(req.GetOneOption(dhcpv4.OptionClientMachineIdentifier)) {
		t.Error("option 97 not echoed")
	}

	// Port 4011, unicast from the client's address.
	req4011 := ovmfPXE(macKnown, dhcpv4.MessageTypeRequest)
	req4011.ClientIPAddr = net.IPv4(10, 77, 0, 50)
	rep, from = c.exchange(req4011, &net.UDPAddr{IP: net.IPv4(10, 77, 0, 1), Port: PXEPort}, srv)
	if rep == nil || rep.MessageType() != dhcpv4.MessageTypeAck || rep.BootFileName != "snponly.efi" || from.Port != PXEPort || !rep.YourIPAddr.IsUnspecified() {
		t.Fatalf("4011 reply from %v: %v", from, rep)
	}

	// iPXE gets the script URL.
	rep, _ = c.exchange(seabiosIPXE(macKnown, dhcpv4.MessageTypeDiscover), bcast, srv)
	if rep == nil || rep.BootFileName != "http://10.77.0.1:8080/boot/52:54:00:77:00:11.ipxe" {
		t.Fatalf("iPXE: %v", rep)
	}

	// A plain DISCOVER (no option 60) gets nothing.
	if rep, _ = c.exchange(plain(macKnown, dhcpv4.MessageTypeDiscover), bcast, srv); rep != nil {
		t.Fatalf("plain DISCOVER answered: %s", rep.Summary())
	}
	if n := testutil.ToFloat64(srv.s.metrics.replies.WithLabelValues("OFFER", site.DHCPProxy)); n != 2 {
		t.Errorf("replies{OFFER,proxy} = %v", n)
	}
	// Three proxy replies to one MAC: one to three calls (they coalesce).
	seen := srv.seenCalls(1)
	if len(seen) < 1 || len(seen) > 3 {
		t.Errorf("OnLease: %q", seen)
	}
	for _, s := range seen {
		if s != "52:54:00:77:00:11 <nil> gpu01" {
			t.Errorf("OnLease call %q", s)
		}
	}

	// Reload: a new node becomes known without a restart.
	cfg := labConfig(t, site.DHCPProxy, site.UnknownIgnore)
	cfg.Nodes = append(cfg.Nodes, site.Node{Name: "gpu09", MAC: "52:54:00:99:00:01"})
	if rep, _ = c.exchange(biosPXE(macUnknown, dhcpv4.MessageTypeDiscover), bcast, srv); rep != nil {
		t.Fatal("unknown MAC answered before reload")
	}
	if err := srv.s.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if rep, _ = c.exchange(biosPXE(macUnknown, dhcpv4.MessageTypeDiscover), bcast, srv); rep == nil {
		t.Fatal("new node not answered after reload")
	}
	cfg = labConfig(t, site.DHCPFull, site.UnknownIgnore)
	if err := srv.s.Reload(cfg); err == nil {
		t.Error("reload switching mode accepted")
	}
}

// Disk trouble (the state dir vanishes under the running server): the
// known node still gets its lease, answered from memory; the failure shows
// in herd_dhcp_lease_store_ok; when the disk is back the lease is written
// without any new DHCP traffic (the periodic retry).
func TestFullModeAnswersFromMemoryWhenLeasesCannotBeSaved(t *testing.T) {
	testenv.RequireCommands(t, "udhcpc")
	defer func(d time.Duration) { TickInterval = d }(TickInterval)
	TickInterval = 200 * time.Millisecond
	l := newLab(t)
	known := l.client("52:54:00:77:00:11", "")
	state := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(state, 0o755); err != nil {
		t.Fatal(err)
	}
	srv, err := l.start(labConfig(t, site.DHCPFull, site.UnknownIgnore), state, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(state); err != nil {
		t.Fatal(err)
	}
	if ev := udhcpc(t, known); len(ev) != 1 || !strings.HasPrefix(ev[0], "bound 10.77.0.11 gpu01") {
		t.Fatalf("reserved node withheld while the disk fails: %q", ev)
	}
	if n := testutil.ToFloat64(srv.s.metrics.leaseStore.WithLabelValues()); n != 0 {
		t.Errorf("herd_dhcp_lease_store_ok = %v while leases.json cannot be written, want 0", n)
	}
	// The disk comes back: the lease is persisted by the retry alone.
	if err := os.Mkdir(state, 0o755); err != nil {
		t.Fatal(err)
	}
	// The file appears at Save's rename and the gauge is set after Save
	// returns, so wait for both rather than reading the gauge at once.
	deadline := time.Now().Add(30 * time.Second)
	for {
		data, err := os.ReadFile(filepath.Join(state, "leases.json"))
		n := testutil.ToFloat64(srv.s.metrics.leaseStore.WithLabelValues())
		if err == nil && strings.Contains(string(data), "10.77.0.11") && n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after recovery: herd_dhcp_lease_store_ok = %v, want 1; leases.json: %v %s", n, err, data)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// isc-dhcp-client, with its script, lease and pid files in a temp dir so it
// never touches the host's, gets the reserved address and host name.
func TestFullModeDhclient(t *testing.T) {
	testenv.RequireCommands(t, "dhclient")
	l := newLab(t)
	ns := l.client("52:54:00:77:00:12", "")
	if _, err := l.start(labConfig(t, site.DHCPFull, site.UnknownIgnore), t.TempDir(), true); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "events")
	script := filepath.Join(dir, "script")
	writeFile(t, script, "#!/bin/sh\necho \"$reason $new_ip_address $new_host_name $new_subnet_mask $new_routers $new_domain_name\" >> "+out+"\nexit 0\n")
	os.Chmod(script, 0o755)
	conf := filepath.Join(dir, "dhclient.conf")
	writeFile(t, conf, "timeout 30;\nrequest subnet-mask, routers, domain-name-servers, domain-name, host-name;\n")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := ns.Command(ctx, "dhclient", "-d", "-1", "-v", "-cf", conf, "-sf", script,
		"-lf", filepath.Join(dir, "leases"), "-pf", filepath.Join(dir, "pid"), "eth0")
	cmd.Stdout, cmd.Stderr = testWriter{t}, testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() { cmd.Process.Kill(); <-exited }()
	// dhclient -d stays in the foreground after binding: wait (bounded) for
	// the BOUND event or for it to give up.
	var bound string
	for i := 0; i < 700 && bound == ""; i++ {
		data, _ := os.ReadFile(out)
		for _, line := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(line, "BOUND ") {
				bound = line
			}
		}
		select {
		case err := <-exited:
			exited <- err
			if bound == "" {
				t.Fatalf("dhclient exited without a lease: %v\n%s", err, data)
			}
		case <-time.After(50 * time.Millisecond):
		}
	}
	if bound != "BOUND 10.77.0.12 gpu02 255.255.255.0 10.77.0.254 lab.example" {
		t.Fatalf("dhclient: %q", bound)
	}
}
