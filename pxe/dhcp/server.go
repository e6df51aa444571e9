package dhcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/herdlab/herd/site"
)

// Options configure a Server.
type Options struct {
	StateDir string // leases.json lives here (full mode)
	Force    bool   // start even if another DHCP server answers
	Log      *slog.Logger
	Registry prometheus.Registerer // nil: metrics are not registered
	// OnLease is called for every ACK (full mode) and every proxy reply,
	// from a goroutine of its own (never delaying a reply; calls for one MAC
	// coalesce to the newest); ip is nil in proxy mode, hostname "" for
	// unknown MACs.
	OnLease func(mac net.HardwareAddr, ip net.IP, hostname string)
	// UEFIBinary is the iPXE build for UEFI PXE (default snponly.efi).
	UEFIBinary string
	// ProbeWait is how long the rival-server probe listens (default 3.5 s:
	// dnsmasq pings an address for up to 3 s before it offers it).
	ProbeWait time.Duration
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time
}

// Server answers DHCP on one interface: port 67, plus 4011 in proxy mode.
type Server struct {
	opt     Options
	log     *slog.Logger
	plan    atomic.Pointer[Plan]
	mu      sync.Mutex // guards leases
	leases  *Leases
	path    string
	conns   []*net.UDPConn
	ports   []int
	metrics *metrics
	wg      sync.WaitGroup
	closed  atomic.Bool
	tap     func(port int, pkt []byte) // tests: sees every received packet
	hook    *leaseHook
	// storeFailing and storeLogged track a failing leases.json (disk full):
	// guarded by mu.
	storeFailing bool
	storeLogged  time.Time
}

// New prepares a server for cfg and loads its leases; it opens no socket.
func New(cfg *site.Config, opt Options) (*Server, error) {
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.ProbeWait == 0 {
		opt.ProbeWait = DefaultProbeWait
	}
	if cfg.DHCP.Mode != site.DHCPFull && cfg.DHCP.Mode != site.DHCPProxy {
		return nil, fmt.Errorf("dhcp.mode %q: herd's DHCP runs only in full or proxy mode", cfg.DHCP.Mode)
	}
	p, err := NewPlan(cfg, opt.UEFIBinary)
	if err != nil {
		return nil, err
	}
	s := &Server{opt: opt, log: opt.Log, leases: NewLeases(), hook: newLeaseHook(opt.OnLease)}
	s.plan.Store(p)
	if opt.StateDir != "" {
		s.path = filepath.Join(opt.StateDir, "leases.json")
		if s.leases, err = LoadLeases(s.path); err != nil {
			return nil, err
		}
	}
	s.metrics, err = newMetrics(opt.Registry)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Listen probes for a rival server (full mode, unless Force) and opens the
// sockets bound to the configured interface. Sockets stay in the network
// namespace of the calling thread (tests call it inside Netns.Do).
func (s *Server) Listen(ctx context.Context) error {
	p := s.plan.Load()
	if p.Mode == site.DHCPFull && !s.opt.Force {
		who, err := Probe(ctx, p.Interface, s.opt.ProbeWait)
		if err != nil {
			return fmt.Errorf("probe for another DHCP server on %s: %w", p.Interface, err)
		}
		if who != "" {
			return fmt.Errorf("another DHCP server (%s) answers on %s: full mode would fight it; use dhcp.mode: proxy, or --force", who, p.Interface)
		}
	}
	ports := []int{ServerPort}
	if p.Mode == site.DHCPProxy {
		ports = append(ports, PXEPort)
	}
	for _, port := range ports {
		c, err := server4.NewIPv4UDPConn(p.Interface, &net.UDPAddr{Port: port})
		if err != nil {
			s.closeConns()
			return fmt.Errorf("listen udp/%d on %s: %w", port, p.Interface, err)
		}
		s.conns = append(s.conns, c)
		s.ports = append(s.ports, port)
	}
	s.log.Info("dhcp listening", "mode", p.Mode, "interface", p.Interface, "ports", ports)
	return nil
}

// Serve answers requests until ctx ends or Shutdown; Listen must come first.
func (s *Server) Serve(ctx context.Context) error {
	if len(s.conns) == 0 {
		return errors.New("dhcp: Serve before Listen")
	}
	stop := context.AfterFunc(ctx, func() { s.closeConns() })
	defer stop()
	hookStop, hookDone := make(chan struct{}), make(chan struct{})
	go func() { s.hook.run(hookStop); close(hookDone) }()
	defer func() { close(hookStop); <-hookDone }()
	tickStop, tickDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(tickDone)
		t := time.NewTicker(TickInterval)
		defer t.Stop()
		s.tick()
		for {
			select {
			case <-tickStop:
				return
			case <-t.C:
				s.tick()
			}
		}
	}()
	defer func() { close(tickStop); <-tickDone }()
	errc := make(chan error, len(s.conns))
	for i, c := range s.conns {
		s.wg.Add(1)
		go func(c *net.UDPConn, port int) {
			defer s.wg.Done()
			errc <- s.loop(c, port)
		}(c, s.ports[i])
	}
	s.wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			return err
		}
	}
	return nil
}

// maxBatch bounds how many queued packets one pass answers: they share a
// single leases.json write (group commit), so a burst of clients costs one
// fsync rather than one per ACK, and no ACK leaves before its lease is on disk.
const maxBatch = 64

type packet struct {
	data []byte
	src  *net.UDPAddr
}

func (s *Server) loop(c *net.UDPConn, port int) error {
	buf := make([]byte, 4096)
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	for {
		n, src, err := c.ReadFromUDP(buf)
		if err != nil {
			if s.closed.Load() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read udp/%d: %w", port, err)
		}
		batch := []packet{{append([]byte(nil), buf[:n]...), src}}
		for len(batch) < maxBatch {
			p, ok := recvNow(raw, buf)
			if !ok {
				break
			}
			batch = append(batch, p)
		}
		s.handle(c, port, batch)
	}
}

// recvNow reads one more queued datagram without blocking.
func recvNow(raw syscall.RawConn, buf []byte) (packet, bool) {
	var (
		n    int
		from unix.Sockaddr
		rerr error
	)
	err := raw.Read(func(fd uintptr) bool {
		n, from, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
		return true // never wait for readiness
	})
	sa, ok := from.(*unix.SockaddrInet4)
	if err != nil || rerr != nil || !ok {
		return packet{}, false
	}
	return packet{append([]byte(nil), buf[:n]...), &net.UDPAddr{IP: net.IP(sa.Addr[:]).To16(), Port: sa.Port}}, true
}

type answer struct {
	req *dhcpv4.DHCPv4
	res Result
}

func (s *Server) handle(c *net.UDPConn, port int, batch []packet) {
	p := s.plan.Load()
	var answers []answer
	s.mu.Lock()
	for _, pk := range batch {
		if s.tap != nil {
			s.tap(port, pk.data)
		}
		req, err := dhcpv4.FromBytes(pk.data)
		if err != nil {
			s.metrics.ignored.WithLabelValues("malformed").Inc()
			s.log.Debug("malformed DHCP packet", "from", pk.src, "err", err)
			continue
		}
		s.metrics.requests.WithLabelValues(req.MessageType().String(), p.Mode).Inc()
		answers = append(answers, answer{req, Reply(p, s.leases, req, port, pk.src, s.opt.Now())})
	}
	s.persistLocked()
	s.mu.Unlock()
	for _, a := range answers {
		s.send(c, port, p, a.req, a.res)
	}
}

// persistLocked saves leases.json when it changed. When the disk fails
// (full, gone) the leases stay in memory and replies still go out: a node
// that cannot get its lease cannot boot, reserved nodes least of all, while
// a lease a restart forgets is re-learnt from the client's next REQUEST
// (INIT-REBOOT keeps its address). The failure is logged as an error at
// once and every minute while it lasts, shows in herd_dhcp_lease_store_ok,
// and the save is retried with every batch and every tick.
func (s *Server) persistLocked() {
	if !s.leases.Dirty() || s.path == "" {
		return
	}
	now := time.Now()
	if err := s.leases.Save(s.path); err != nil {
		s.metrics.leaseStore.WithLabelValues().Set(0)
		if !s.storeFailing || now.Sub(s.storeLogged) > time.Minute {
			s.log.Error("LEASES NOT SAVED: answering from memory until leases.json can be written again", "file", s.path, "err", err)
			s.storeLogged = now
		}
		s.storeFailing = true
		return
	}
	s.metrics.leaseStore.WithLabelValues().Set(1)
	if s.storeFailing {
		s.log.Warn("leases saved again", "file", s.path)
		s.storeFailing = false
	}
}

// tick prunes expired leases and probations, retries a failed save and
// updates the pool gauges.
func (s *Server) tick() {
	p := s.plan.Load()
	now := s.opt.Now()
	s.mu.Lock()
	s.leases.Prune(now)
	s.persistLocked()
	size, free, declined := p.PoolSize(), 0, s.leases.Declined(now)
	if size > 0 {
		free = PoolFree(p, s.leases, now)
	}
	s.mu.Unlock()
	s.metrics.pool.WithLabelValues("size").Set(float64(size))
	s.metrics.pool.WithLabelValues("free").Set(float64(free))
	s.metrics.pool.WithLabelValues("declined").Set(float64(declined))
	if size > 0 && free == 0 {
		s.log.Warn("dhcp pool exhausted", "range", fmt.Sprintf("%s-%s", p.RangeStart, p.RangeEnd), "declined", declined)
	}
}

// TickInterval is how often leases are pruned and a failed save retried.
var TickInterval = 5 * time.Second

func (s *Server) send(c *net.UDPConn, port int, p *Plan, req *dhcpv4.DHCPv4, res Result) {
	if res.Reply == nil {
		s.metrics.ignored.WithLabelValues(res.Reason).Inc()
		s.log.Debug("no reply", "mac", req.ClientHWAddr.String(), "type", req.MessageType(), "port", port, "reason", res.Reason, "detail", res.Detail)
		return
	}
	if res.Bound {
		var ip net.IP
		if res.IP.IsValid() {
			ip = res.IP.AsSlice()
		}
		s.hook.add(req.ClientHWAddr, ip, res.Hostname)
	}
	// Counted before the write so a client that has its reply also sees it counted.
	s.metrics.replies.WithLabelValues(res.Reply.MessageType().String(), p.Mode).Inc()
	if _, err := c.WriteToUDP(res.Reply.ToBytes(), res.Dest); err != nil {
		s.metrics.ignored.WithLabelValues("send-failed").Inc()
		s.log.Warn("send DHCP reply", "to", res.Dest, "err", err)
		return
	}
	s.log.Debug("reply", "mac", req.ClientHWAddr.String(), "type", res.Reply.MessageType(), "yiaddr", res.Reply.YourIPAddr,
		"file", res.Reply.BootFileName, "to", res.Dest, "detail", res.Detail)
}

// Reload swaps in a new site config atomically; leases are kept. The mode
// and interface cannot change while running (restart for that).
func (s *Server) Reload(cfg *site.Config) error {
	old := s.plan.Load()
	p, err := NewPlan(cfg, s.opt.UEFIBinary)
	if err != nil {
		return err
	}
	if p.Mode != old.Mode || p.Interface != old.Interface {
		return fmt.Errorf("dhcp.mode/server.interface changed (%s on %s → %s on %s): restart herd serve", old.Mode, old.Interface, p.Mode, p.Interface)
	}
	s.plan.Store(p)
	s.log.Info("dhcp config reloaded", "nodes", len(cfg.Nodes))
	return nil
}

// Lease returns the unexpired address leased to mac (full mode).
func (s *Server) Lease(mac string) (string, bool) {
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return "", false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	le, ok := s.leases.Get(hw.String(), s.opt.Now())
	if !ok || le.Offered {
		return "", false
	}
	return le.IP.String(), true
}

// Leases returns a snapshot of the lease table.
func (s *Server) Leases() []Lease {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leases.All()
}

// Shutdown closes the sockets and waits for the loops to end (or ctx).
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeConns()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Server) closeConns() {
	s.closed.Store(true)
	for _, c := range s.conns {
		c.Close()
	}
}
