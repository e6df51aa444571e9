// Package tftp is herd's read-only TFTP server for the first boot stage: it
// hands iPXE binaries to PXE firmware and nothing else. Every write is
// refused, every read is confined to one directory with os.OpenRoot, and the
// work any sender can cause is bounded before anything is opened:
//
//   - A per-source request budget (a token bucket per IP address) drops
//     requests beyond it without answering.
//   - One transfer per client address and port: a repeated RRQ from the same
//     address and port re-sends the transfer's first packet, nothing more.
//   - No reply amplification: an RRQ is answered with exactly one packet (the
//     OACK or the first DATA block) from a shared transfer socket; until the
//     client acknowledges it the server keeps only a small record (no file,
//     no socket, no goroutine), never retransmits on its own timer, and forgets
//     it after Timeout. At most MaxPending such handshakes are kept, the
//     oldest making way, so a spoofed flood costs bounded memory and a real
//     client, which answers within a round trip, still gets through.
//   - The cap on transfers (MaxTransfers) is checked before a transfer's file
//     is opened: only acknowledged transfers hold a file; the rest wait in a
//     bounded queue (QueueLen) and are served in order as slots free.
//
// All transfers share one UDP socket (the server's TID, a port other than 69,
// RFC 1350) and are told apart by the client's address and port, so the
// number of sockets does not grow with the number of requests.
//
// Options (RFC 2347/2348/2349): blksize is honoured up to the interface MTU
// (minus IP and UDP headers), tsize is answered with the file size, timeout
// (1-255 s) sets the retransmission timeout. windowsize (RFC 7440) is not
// offered: a client that asks for it falls back to lock-step, one ACK per
// block, as RFC 7440 requires. Block numbers roll over past 65535.
package tftp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// Config configures a Server.
type Config struct {
	// Root is the directory served (server.tftp_root, default /usr/lib/ipxe).
	Root string
	// MaxTransfers bounds concurrent transfers holding an open file
	// (default 32).
	MaxTransfers int
	// QueueLen bounds the acknowledged transfers waiting for a free slot
	// (default 4 × MaxTransfers, at least 64); one beyond it is dropped
	// (the client retries).
	QueueLen int
	// QueueTimeout is how long a transfer may wait for a free slot before it
	// is dropped (default 30 s; firmware retries).
	QueueTimeout time.Duration
	// MaxPending bounds the handshakes sent but not yet acknowledged
	// (default 1024).
	MaxPending int
	// Timeout is the per-packet retransmission timeout (default 2 s).
	Timeout time.Duration
	// Retries is how often a packet is resent, once the client has
	// acknowledged a block, before the transfer fails (default 5).
	Retries int
	// SourceBurst and SourceRate are the per-source request budget: each
	// IP address may send SourceBurst requests at once and SourceRate more
	// per second (defaults 16 and 4).
	SourceBurst int
	SourceRate  float64
	// Extra maps the few names herd makes itself (the Secure Boot chain:
	// shimx64.efi, grubx64.efi, grub/grub.cfg) to files outside the root; it
	// is asked first, with the name as requested minus one leading "/"
	// (shim and GRUB ask for absolute names), and answers only exact names.
	Extra func(name string) (path string, ok bool)
	// Log receives one line per transfer (default slog.Default()).
	Log *slog.Logger
	// Registry receives the metrics (nil: not registered).
	Registry prometheus.Registerer
}

// Server is a read-only TFTP server confined to one directory.
type Server struct {
	cfg  Config
	root atomic.Pointer[os.Root]
	// pinned maps a boot binary's name to the file outside the root its
	// distribution symlink points at (see BootFiles).
	pinned atomic.Pointer[map[string]string]
	log    *slog.Logger

	mu      sync.Mutex
	max     int
	conn    net.PacketConn // port 69: requests
	xconn   *net.UDPConn   // the transfers' shared socket
	pending map[string]*transfer
	porder  []*transfer // pending in the order sent (oldest first)
	queue   []*transfer // acknowledged, waiting for a slot
	active  map[string]*transfer
	sources map[netip.Addr]*bucket
	mtus    map[int]int
	mtuAt   time.Time
	closed  bool
	wg      sync.WaitGroup // running transfers
	rwg     sync.WaitGroup // the transfer socket's reader and sweeper
	quit    chan struct{}
	// running and peak count transfers between opening their file and
	// closing it, apart from the admission bookkeeping (tests check the cap).
	running atomic.Int32
	peak    atomic.Int32

	transfers *prometheus.CounterVec
	bytes     prometheus.Counter
	activeG   prometheus.Gauge
	queued    prometheus.Gauge
	pendingG  prometheus.Gauge
}

// ErrPath is returned for file names that are refused before any lookup.
var ErrPath = errors.New("file name refused")

// TFTP opcodes and error codes (RFC 1350, RFC 2347).
const (
	opRRQ   = 1
	opWRQ   = 2
	opDATA  = 3
	opACK   = 4
	opERROR = 5
	opOACK  = 6

	errUndef    = 0
	errNotFound = 1
	errAccess   = 2

	maxPacket = 65468 // largest datagram a client may send
	maxBlock  = 65464 // RFC 2348
)

// New opens the root directory and prepares a server (not yet listening).
func New(cfg Config) (*Server, error) {
	if cfg.MaxTransfers < 1 {
		cfg.MaxTransfers = 32
	}
	if cfg.QueueTimeout <= 0 {
		cfg.QueueTimeout = 30 * time.Second
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 1024
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.Retries <= 0 {
		cfg.Retries = 5
	}
	if cfg.SourceBurst <= 0 {
		cfg.SourceBurst = 16
	}
	if cfg.SourceRate <= 0 {
		cfg.SourceRate = 4
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	s := &Server{
		cfg:     cfg,
		log:     cfg.Log.With("service", "tftp"),
		pending: map[string]*transfer{},
		active:  map[string]*transfer{},
		sources: map[netip.Addr]*bucket{},
		quit:    make(chan struct{}),
		transfers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herd_tftp_transfers_total",
			Help: "TFTP requests by result (ok, failed, aborted, refused, not_found, busy, rate_limited, unacknowledged).",
		}, []string{"result"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herd_tftp_sent_bytes_total",
			Help: "Bytes sent by completed TFTP transfers.",
		}),
		activeG: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herd_tftp_active_transfers",
			Help: "TFTP transfers in progress.",
		}),
		queued: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herd_tftp_queued_requests",
			Help: "Acknowledged TFTP transfers waiting for a free transfer slot.",
		}),
		pendingG: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herd_tftp_pending_handshakes",
			Help: "TFTP requests answered but not yet acknowledged by the client.",
		}),
	}
	s.SetMaxTransfers(cfg.MaxTransfers)
	if err := s.SetRoot(cfg.Root); err != nil {
		return nil, err
	}
	if cfg.Registry != nil {
		for _, c := range []prometheus.Collector{s.transfers, s.bytes, s.activeG, s.queued, s.pendingG} {
			if err := cfg.Registry.Register(c); err != nil {
				return nil, fmt.Errorf("register tftp metrics: %w", err)
			}
		}
	}
	return s, nil
}

// BootFiles are the iPXE binaries herd's DHCP hands out. Debian's ipxe
// package makes ipxe.efi in /usr/lib/ipxe an absolute symlink to
// /boot/ipxe.efi, which os.Root rightly refuses. For these names only, a
// symlink in the root is resolved once, when the root is opened (the admin
// owns that directory), and the request opens the resolved file. Every other
// name, and any link created later, stays confined to the root.
var BootFiles = []string{"undionly.kpxe", "snponly.efi", "ipxe.efi"}

// CheckRoot reports whether dir could be served (SetRoot would succeed),
// changing nothing: a reload checks it before anything is applied.
func CheckRoot(dir string) error {
	if dir == "" {
		return errors.New("tftp root: no directory given (server.tftp_root)")
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("tftp root (server.tftp_root): %w", err)
	}
	return r.Close()
}

// SetRoot switches the served directory (used on reload); transfers already
// running keep the file they opened.
func (s *Server) SetRoot(dir string) error {
	if dir == "" {
		return errors.New("tftp root: no directory given (server.tftp_root)")
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("tftp root (server.tftp_root): %w", err)
	}
	pinned := map[string]string{}
	for _, name := range BootFiles {
		st, err := r.Lstat(name)
		if err != nil || st.Mode()&fs.ModeSymlink == 0 {
			continue
		}
		if _, err := r.Stat(name); err == nil {
			continue // the link stays inside the root: os.Root follows it
		}
		target, err := filepath.EvalSymlinks(filepath.Join(dir, name))
		if err != nil {
			s.log.Warn("tftp boot file link is broken", "file", name, "err", err)
			continue
		}
		if fi, err := os.Stat(target); err != nil || !fi.Mode().IsRegular() {
			continue
		}
		s.log.Info("tftp boot file links out of the root; serving its target", "file", name, "target", target)
		pinned[name] = target
	}
	s.pinned.Store(&pinned)
	if old := s.root.Swap(r); old != nil {
		// Files opened through the old root stay valid after it is closed.
		old.Close()
	}
	return nil
}

// CleanPath checks a requested file name and returns the root-relative name
// to open. Absolute names, "..", backslashes, NUL and empty components are
// refused before the file system sees them; os.Root then also refuses
// symlinks that lead out of the root.
func CleanPath(name string) (string, error) {
	switch {
	case name == "":
		return "", fmt.Errorf("%w: empty name", ErrPath)
	case len(name) > 255:
		return "", fmt.Errorf("%w: longer than 255 bytes", ErrPath)
	case strings.HasPrefix(name, "/"):
		return "", fmt.Errorf("%w: %q is absolute", ErrPath, name)
	case strings.ContainsAny(name, "\\\x00"):
		return "", fmt.Errorf("%w: %q contains a backslash or NUL", ErrPath, name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == "" || part == "." || part == ".." {
			return "", fmt.Errorf("%w: %q has an empty, . or .. component", ErrPath, name)
		}
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return "", fmt.Errorf("%w: %q contains a control character", ErrPath, name)
		}
	}
	return name, nil
}

// SetMaxTransfers changes the bound on concurrent transfers (reload);
// transfers already running finish, queued ones start when the new bound
// allows.
func (s *Server) SetMaxTransfers(n int) {
	if n < 1 {
		n = 1
	}
	s.mu.Lock()
	s.max = n
	s.cfg.MaxTransfers = n
	s.startQueuedLocked()
	s.mu.Unlock()
}

// Serve answers requests on conn until Shutdown. The transfers' shared
// socket is made here, in the calling thread's network namespace.
func (s *Server) Serve(conn net.PacketConn) error {
	laddr, _ := conn.LocalAddr().(*net.UDPAddr)
	var bind net.IP
	if laddr != nil {
		bind = laddr.IP
	}
	network := "udp4"
	if bind != nil && bind.To4() == nil {
		network = "udp6"
	}
	xconn, err := net.ListenUDP(network, &net.UDPAddr{IP: bind}) // in the caller's network namespace
	if err != nil {
		return fmt.Errorf("tftp transfer socket: %w", err)
	}
	xconn.SetWriteBuffer(1 << 20)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		xconn.Close()
		return nil
	}
	s.conn, s.xconn = conn, xconn
	s.mu.Unlock()
	s.rwg.Add(2)
	go s.readTransfers()
	go s.sweep()

	var pc4 *ipv4.PacketConn
	if uc, ok := conn.(*net.UDPConn); ok && (bind == nil || bind.To4() != nil) {
		pc4 = ipv4.NewPacketConn(uc)
		if pc4.SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true) != nil {
			pc4 = nil
		}
	}
	buf := make([]byte, maxPacket)
	for {
		var (
			n       int
			src     net.Addr
			err     error
			local   net.IP
			ifindex int
		)
		if pc4 != nil {
			var cm *ipv4.ControlMessage
			n, cm, src, err = pc4.ReadFrom(buf)
			if cm != nil {
				local, ifindex = cm.Dst, cm.IfIndex
			}
		} else {
			n, src, err = conn.ReadFrom(buf)
		}
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		ua, ok := src.(*net.UDPAddr)
		if !ok || n < 2 {
			continue
		}
		s.request(buf[:n], ua, local, ifindex)
	}
}

// Shutdown stops accepting requests, drops handshakes and queued transfers,
// and waits for transfers in flight (each ends, or times out after
// Timeout × Retries without ACKs).
func (s *Server) Shutdown() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	if s.conn != nil {
		s.conn.Close()
	}
	clear(s.pending)
	s.porder, s.queue = nil, nil
	s.queued.Set(0)
	s.pendingG.Set(0)
	s.mu.Unlock()
	s.wg.Wait()
	close(s.quit)
	s.mu.Lock()
	if s.xconn != nil {
		s.xconn.Close()
	}
	s.mu.Unlock()
	s.rwg.Wait()
	if r := s.root.Load(); r != nil {
		r.Close()
	}
}

// PeakTransfers returns the most transfers that held an open file at once
// since the server started (for tests and diagnostics).
func (s *Server) PeakTransfers() int { return int(s.peak.Load()) }

// bucket is one source's request budget.
type bucket struct {
	tokens float64
	last   time.Time
}

// allowLocked spends one request from ip's budget.
func (s *Server) allowLocked(ip netip.Addr, now time.Time) bool {
	burst, rate := float64(s.cfg.SourceBurst), s.cfg.SourceRate
	b, ok := s.sources[ip]
	if !ok {
		if len(s.sources) >= 8192 {
			// Forget sources whose budget has refilled; if a spoofed
			// flood still fills the table, start over (bounded memory
			// matters more than the budget's memory).
			full := time.Duration(burst / rate * float64(time.Second))
			for k, v := range s.sources {
				if now.Sub(v.last) > full {
					delete(s.sources, k)
				}
			}
			if len(s.sources) >= 8192 {
				clear(s.sources)
			}
		}
		b = &bucket{tokens: burst, last: now}
		s.sources[ip] = b
	}
	b.tokens = min(burst, b.tokens+now.Sub(b.last).Seconds()*rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// mtuLocked returns the MTU of interface ifindex (0: unknown), cached.
func (s *Server) mtuLocked(ifindex int, now time.Time) int {
	if ifindex <= 0 {
		return 0
	}
	if now.Sub(s.mtuAt) > 30*time.Second {
		s.mtus, s.mtuAt = map[int]int{}, now
	}
	if m, ok := s.mtus[ifindex]; ok {
		return m
	}
	m := 0
	if ifc, err := net.InterfaceByIndex(ifindex); err == nil {
		m = ifc.MTU
	}
	s.mtus[ifindex] = m
	return m
}

// transfer is one RRQ: a pending handshake, a queued or a running transfer.
type transfer struct {
	addr     *net.UDPAddr
	key      string
	local    net.IP
	filename string
	name     string // cleaned, root-relative
	size     int64
	blksize  int
	timeout  time.Duration
	oack     bool   // the first packet was an OACK (else DATA block 1)
	first    []byte // the first packet sent
	sentAt   time.Time
	repeats  int
	ackedAt  time.Time
	in       chan []byte // ACK/ERROR packets while running
}

// key identifies a client transfer: its address and port.
func key(a *net.UDPAddr) string { return a.String() }

// request handles one datagram that arrived on port 69.
func (s *Server) request(p []byte, src *net.UDPAddr, local net.IP, ifindex int) {
	op := binary.BigEndian.Uint16(p)
	if op != opRRQ && op != opWRQ {
		return // ACK/DATA/ERROR to port 69: not ours to answer
	}
	ip, _ := netip.AddrFromSlice(src.IP)
	ip = ip.Unmap()
	now := time.Now()
	k := key(src)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	if !s.allowLocked(ip, now) {
		s.mu.Unlock()
		s.transfers.WithLabelValues("rate_limited").Inc()
		return
	}
	if t, ok := s.pending[k]; ok {
		// A retransmitted RRQ: the first packet again, one for one.
		if t.repeats < s.cfg.Retries {
			t.repeats++
			t.sentAt = now
			s.sendLocked(t.first, t)
		}
		s.mu.Unlock()
		return
	}
	if _, ok := s.active[k]; ok || s.queuedLocked(k) {
		s.mu.Unlock()
		return // one transfer per client address and port
	}
	mtu := s.mtuLocked(ifindex, now)
	s.mu.Unlock()

	if op == opWRQ {
		s.transfers.WithLabelValues("refused").Inc()
		s.log.Warn("tftp write refused", "remote", k)
		s.sendError(src, errAccess, "access violation: this TFTP server is read-only")
		return
	}
	t, opts, err := parseRRQ(p[2:])
	if err != nil {
		s.transfers.WithLabelValues("refused").Inc()
		s.log.Warn("tftp request refused", "remote", k, "err", err)
		s.sendError(src, errUndef, err.Error())
		return
	}
	t.addr, t.key, t.local, t.sentAt = src, k, local, now
	if t.local != nil && (t.local.Equal(net.IPv4bcast) || t.local.IsMulticast()) {
		t.local = nil // answer from the address the route picks
	}
	log := s.log.With("file", t.filename, "remote", k)
	if n := strings.TrimPrefix(t.filename, "/"); s.extra(n) != "" {
		t.name = n
	} else if t.name, err = CleanPath(t.filename); err != nil {
		s.transfers.WithLabelValues("refused").Inc()
		log.Warn("tftp read refused", "err", err)
		s.sendError(src, errAccess, "access violation: "+t.filename)
		return
	}

	// Look the file up (opened and closed again here: nothing stays open
	// for a client that has not acknowledged anything).
	f, err := s.open(t.name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			s.transfers.WithLabelValues("not_found").Inc()
			log.Info("tftp file not found")
			s.sendError(src, errNotFound, "file not found: "+t.filename)
			return
		}
		s.transfers.WithLabelValues("refused").Inc()
		log.Warn("tftp read refused", "err", err)
		s.sendError(src, errAccess, "access violation: "+t.filename)
		return
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		f.Close()
		s.transfers.WithLabelValues("refused").Inc()
		log.Warn("tftp read refused: not a regular file")
		s.sendError(src, errAccess, "access violation: "+t.filename+" is not a file")
		return
	}
	t.size = st.Size()

	// Options.
	t.blksize, t.timeout = 512, s.cfg.Timeout
	maxBlk := maxBlock
	if mtu > 0 {
		maxBlk = mtu - 20 - 8 - 4 // IPv4, UDP and TFTP headers
	}
	var oack []byte
	for _, o := range opts {
		switch o[0] {
		case "blksize":
			n, err := strconv.Atoi(o[1])
			if err != nil || n < 8 {
				continue
			}
			t.blksize = min(n, maxBlk, maxBlock)
			oack = appendOpt(oack, o[0], strconv.Itoa(t.blksize))
		case "tsize":
			oack = appendOpt(oack, o[0], strconv.FormatInt(t.size, 10))
		case "timeout":
			n, err := strconv.Atoi(o[1])
			if err != nil || n < 1 || n > 255 {
				continue
			}
			t.timeout = time.Duration(n) * time.Second
			oack = appendOpt(oack, o[0], o[1])
		}
	}
	if oack != nil {
		t.oack = true
		t.first = append([]byte{0, opOACK}, oack...)
	} else {
		b := make([]byte, 4+t.blksize)
		n, err := io.ReadFull(f, b[4:])
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			f.Close()
			s.transfers.WithLabelValues("failed").Inc()
			log.Warn("tftp read failed", "err", err)
			s.sendError(src, errUndef, "read error")
			return
		}
		binary.BigEndian.PutUint16(b, opDATA)
		binary.BigEndian.PutUint16(b[2:], 1)
		t.first = b[:4+n]
	}
	f.Close()

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	for len(s.pending) >= s.cfg.MaxPending {
		s.forgetOldestLocked()
	}
	s.pending[k] = t
	s.porder = append(s.porder, t)
	s.pendingG.Set(float64(len(s.pending)))
	s.sendLocked(t.first, t)
}

// queuedLocked reports whether a transfer for k waits for a slot.
func (s *Server) queuedLocked(k string) bool {
	for _, q := range s.queue {
		if q.key == k {
			return true
		}
	}
	return false
}

// forgetOldestLocked drops the oldest pending handshake.
func (s *Server) forgetOldestLocked() {
	for len(s.porder) > 0 {
		t := s.porder[0]
		s.porder[0] = nil
		s.porder = s.porder[1:]
		if s.pending[t.key] == t {
			delete(s.pending, t.key)
			s.transfers.WithLabelValues("unacknowledged").Inc()
			break
		}
	}
	if len(s.porder) == 0 {
		s.porder = nil
	}
	s.pendingG.Set(float64(len(s.pending)))
}

// sweep forgets handshakes not acknowledged within their timeout.
func (s *Server) sweep() {
	defer s.rwg.Done()
	tick := time.NewTicker(s.cfg.Timeout / 4)
	defer tick.Stop()
	for {
		select {
		case <-s.quit:
			return
		case now := <-tick.C:
			s.mu.Lock()
			// porder is in send order, but a repeat refreshes sentAt:
			// compact the slice, keeping what is still waiting.
			keep := s.porder[:0]
			for _, t := range s.porder {
				if s.pending[t.key] != t {
					continue
				}
				if now.Sub(t.sentAt) > t.timeout {
					delete(s.pending, t.key)
					s.transfers.WithLabelValues("unacknowledged").Inc()
					continue
				}
				keep = append(keep, t)
			}
			clear(s.porder[len(keep):])
			s.porder = keep
			if len(s.porder) == 0 {
				s.porder = nil
			}
			s.pendingG.Set(float64(len(s.pending)))
			s.mu.Unlock()
		}
	}
}

// readTransfers reads the shared transfer socket and hands each packet to
// its transfer; packets from unknown addresses are dropped unanswered.
func (s *Server) readTransfers() {
	defer s.rwg.Done()
	buf := make([]byte, maxPacket)
	for {
		n, from, err := s.xconn.ReadFromUDP(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case <-s.quit:
				return
			default:
				continue
			}
		}
		if n < 4 {
			continue
		}
		op, block := binary.BigEndian.Uint16(buf), binary.BigEndian.Uint16(buf[2:])
		k := key(from)
		s.mu.Lock()
		if t, ok := s.active[k]; ok {
			s.mu.Unlock()
			select {
			case t.in <- append([]byte(nil), buf[:n]...):
			default: // the transfer is behind: a lost ACK is retransmitted
			}
			continue
		}
		t, ok := s.pending[k]
		if !ok {
			s.mu.Unlock()
			continue
		}
		switch {
		case op == opERROR:
			// PXE firmware asks for tsize and aborts; fine.
			delete(s.pending, k)
			s.transfers.WithLabelValues("aborted").Inc()
		case op == opACK && (block == 0 && t.oack || block == 1 && !t.oack):
			delete(s.pending, k)
			t.ackedAt = time.Now()
			s.confirmLocked(t)
		}
		s.pendingG.Set(float64(len(s.pending)))
		s.mu.Unlock()
	}
}

// confirmLocked starts an acknowledged transfer, or queues it when every
// slot is taken.
func (s *Server) confirmLocked(t *transfer) {
	if s.closed {
		return
	}
	if len(s.active) < s.max {
		s.startLocked(t)
		return
	}
	qlen := s.cfg.QueueLen
	if qlen <= 0 {
		qlen = max(64, 4*s.max)
	}
	if len(s.queue) >= qlen {
		s.transfers.WithLabelValues("busy").Inc()
		s.log.Warn("tftp server busy: queue full, transfer dropped", "file", t.filename, "remote", t.key, "max_tftp", s.max)
		return
	}
	s.queue = append(s.queue, t)
	s.queued.Set(float64(len(s.queue)))
}

// startLocked counts t against the cap, then its goroutine opens the file.
func (s *Server) startLocked(t *transfer) {
	t.in = make(chan []byte, 4)
	s.active[t.key] = t
	s.activeG.Set(float64(len(s.active)))
	s.wg.Add(1)
	go s.run(t)
}

// startQueuedLocked starts waiting transfers while slots are free.
func (s *Server) startQueuedLocked() {
	now := time.Now()
	for len(s.queue) > 0 && len(s.active) < s.max && !s.closed {
		t := s.queue[0]
		s.queue[0] = nil
		s.queue = s.queue[1:]
		if now.Sub(t.ackedAt) > s.cfg.QueueTimeout {
			s.transfers.WithLabelValues("busy").Inc()
			continue
		}
		s.startLocked(t)
	}
	if len(s.queue) == 0 {
		s.queue = nil // let the backing array go after a storm
	}
	s.queued.Set(float64(len(s.queue)))
}

// extra is Config.Extra's file for name, or "".
func (s *Server) extra(name string) string {
	if s.cfg.Extra == nil {
		return ""
	}
	if p, ok := s.cfg.Extra(name); ok {
		return p
	}
	return ""
}

// open opens a root-relative name, following BootFiles' pinned links.
func (s *Server) open(name string) (*os.File, error) {
	if p := s.extra(name); p != "" {
		return os.Open(p)
	}
	if target, ok := (*s.pinned.Load())[name]; ok {
		return os.Open(target)
	}
	return s.root.Load().Open(name)
}

// sendLocked sends b to t's client from the transfer socket.
func (s *Server) sendLocked(b []byte, t *transfer) { sendTo(s.xconn, b, t) }

// send is sendLocked for callers without s.mu.
func (s *Server) send(b []byte, t *transfer) {
	s.mu.Lock()
	xconn := s.xconn
	s.mu.Unlock()
	sendTo(xconn, b, t)
}

// sendTo sends b to t's client from the address its request came to,
// without ever blocking: when the socket's buffer is full (replies queued
// behind ARP for spoofed addresses fill it) the packet is dropped like any
// lost datagram and the retransmission logic takes over. A blocking write
// here would stall every transfer behind the flood.
func sendTo(xconn *net.UDPConn, b []byte, t *transfer) {
	if xconn == nil {
		return
	}
	ip4 := t.addr.IP.To4()
	rc, err := xconn.SyscallConn()
	if err != nil || ip4 == nil {
		xconn.WriteTo(b, t.addr)
		return
	}
	sa := &unix.SockaddrInet4{Port: t.addr.Port}
	copy(sa.Addr[:], ip4)
	var oob []byte
	if t.local != nil && t.local.To4() != nil {
		oob = (&ipv4.ControlMessage{Src: t.local}).Marshal()
	}
	rc.Write(func(fd uintptr) bool {
		unix.SendmsgN(int(fd), b, oob, sa, unix.MSG_DONTWAIT)
		return true
	})
}

// sendError answers src from port 69 with one ERROR packet.
func (s *Server) sendError(src *net.UDPAddr, code uint16, msg string) {
	s.mu.Lock()
	conn := s.conn
	s.mu.Unlock()
	if conn != nil {
		conn.WriteTo(errorPacket(code, msg), src)
	}
}

func errorPacket(code uint16, msg string) []byte {
	if len(msg) > 200 {
		msg = msg[:200]
	}
	b := make([]byte, 4, 5+len(msg))
	binary.BigEndian.PutUint16(b, opERROR)
	binary.BigEndian.PutUint16(b[2:], code)
	b = append(b, msg...)
	return append(b, 0)
}

// parseRRQ parses "filename\0mode\0[opt\0value\0]..." into a transfer and
// its options in the client's order (lower-cased names, first one wins).
func parseRRQ(p []byte) (*transfer, [][2]string, error) {
	parts := strings.Split(string(p), "\x00")
	if len(parts) < 3 || parts[len(parts)-1] != "" {
		return nil, nil, errors.New("malformed request")
	}
	parts = parts[:len(parts)-1]
	t := &transfer{filename: parts[0]}
	switch strings.ToLower(parts[1]) {
	case "octet":
	case "netascii":
		return nil, nil, errors.New("netascii mode not supported; use octet")
	default:
		return nil, nil, fmt.Errorf("unknown transfer mode %q", parts[1])
	}
	rest := parts[2:]
	if len(rest)%2 != 0 || len(rest) > 32 {
		return nil, nil, errors.New("malformed options")
	}
	var opts [][2]string
	seen := map[string]bool{}
	for i := 0; i < len(rest); i += 2 {
		k := strings.ToLower(rest[i])
		if seen[k] {
			continue
		}
		seen[k] = true
		opts = append(opts, [2]string{k, rest[i+1]})
	}
	return t, opts, nil
}

func appendOpt(b []byte, k, v string) []byte {
	b = append(b, k...)
	b = append(b, 0)
	b = append(b, v...)
	return append(b, 0)
}

// run sends an acknowledged transfer's file, block by block.
func (s *Server) run(t *transfer) {
	result := "failed"
	var sent int64
	log := s.log.With("file", t.filename, "remote", t.key)
	defer func() {
		s.transfers.WithLabelValues(result).Inc()
		s.mu.Lock()
		if s.active[t.key] == t {
			delete(s.active, t.key)
		}
		s.activeG.Set(float64(len(s.active)))
		s.startQueuedLocked()
		s.mu.Unlock()
		s.wg.Done()
	}()
	f, err := s.open(t.name)
	if err != nil {
		log.Warn("tftp transfer: file gone", "err", err)
		s.send(errorPacket(errNotFound, "file not found: "+t.filename), t)
		return
	}
	defer f.Close()
	if n := s.running.Add(1); n > s.peak.Load() {
		s.peak.Store(n)
	}
	defer s.running.Add(-1)

	buf := make([]byte, 4+t.blksize)
	block := uint16(1)
	var off int64
	if !t.oack {
		// DATA 1 went out with the handshake and is acknowledged.
		sent = int64(len(t.first) - 4)
		if len(t.first) < 4+t.blksize {
			result = "ok"
			s.bytes.Add(float64(sent))
			log.Info("tftp transfer done", "bytes", sent, "seconds", time.Since(t.sentAt).Seconds())
			return
		}
		block, off = 2, int64(t.blksize)
	}
	timer := time.NewTimer(t.timeout)
	defer timer.Stop()
	for {
		n, err := f.ReadAt(buf[4:], off)
		if err != nil && !errors.Is(err, io.EOF) {
			log.Warn("tftp read failed", "err", err)
			s.send(errorPacket(errUndef, "read error"), t)
			return
		}
		binary.BigEndian.PutUint16(buf, opDATA)
		binary.BigEndian.PutUint16(buf[2:], block)
		pkt := buf[:4+n]
		s.send(pkt, t)
		timer.Reset(t.timeout)
		retries := 0
	wait:
		for {
			select {
			case p := <-t.in:
				switch binary.BigEndian.Uint16(p) {
				case opERROR:
					result = "aborted"
					log.Info("tftp transfer aborted by client", "sent", sent)
					return
				case opACK:
					if binary.BigEndian.Uint16(p[2:]) == block {
						break wait
					}
					// A duplicate ACK: never answered (Sorcerer's Apprentice).
				}
			case <-timer.C:
				if retries >= s.cfg.Retries {
					log.Warn("tftp transfer failed: no ACK", "sent", sent, "block", block)
					s.send(errorPacket(errUndef, "timeout"), t)
					return
				}
				retries++
				s.send(pkt, t)
				timer.Reset(t.timeout)
			}
		}
		sent += int64(n)
		off += int64(n)
		if n < t.blksize {
			result = "ok"
			s.bytes.Add(float64(sent))
			log.Info("tftp transfer done", "bytes", sent, "seconds", time.Since(t.sentAt).Seconds())
			return
		}
		block++
	}
}
