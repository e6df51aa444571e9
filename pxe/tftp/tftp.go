// Package tftp is herd's read-only TFTP server for the first boot stage: it
// hands iPXE binaries to PXE firmware and nothing else. It wraps
// github.com/pin/tftp/v3 and adds what a boot server needs: every write is
// refused, every read is confined to one directory with os.OpenRoot, the
// number of concurrent transfers is bounded (a boot storm queues instead of
// failing) and every transfer is counted in Prometheus metrics.
//
// Option negotiation (RFC 2347/2348/2349) is pin/tftp's: blksize is honoured
// up to the interface MTU (minus IP and UDP headers), tsize is answered with
// the file size. pin/tftp v3.2.0 does NOT implement RFC 7440 windowsize: it
// leaves the option out of its OACK, so a client that asks for it (OVMF asks
// "windowsize 4") falls back to lock-step, one ACK per block. That is
// correct per RFC 7440 and only costs speed on a ~1 MB iPXE binary.
package tftp

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	ptftp "github.com/pin/tftp/v3"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Server.
type Config struct {
	// Root is the directory served (server.tftp_root, default /usr/lib/ipxe).
	Root string
	// MaxTransfers bounds concurrent transfers; further requests wait.
	MaxTransfers int
	// QueueTimeout is how long a request may wait for a free slot before it
	// is refused with "server busy" (default 60 s; firmware retries).
	QueueTimeout time.Duration
	// Timeout is the per-packet retransmission timeout (default 2 s).
	Timeout time.Duration
	// Retries is how often a packet is resent before the transfer fails (default 5).
	Retries int
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
	slots  atomic.Pointer[chan struct{}]
	srv    *ptftp.Server
	log    *slog.Logger

	mu sync.Mutex // guards cfg.MaxTransfers

	transfers *prometheus.CounterVec
	bytes     prometheus.Counter
	active    prometheus.Gauge
	queued    prometheus.Gauge
}

// ErrPath is returned for file names that are refused before any lookup.
var ErrPath = errors.New("file name refused")

// New opens the root directory and prepares a server (not yet listening).
func New(cfg Config) (*Server, error) {
	if cfg.MaxTransfers < 1 {
		cfg.MaxTransfers = 32
	}
	if cfg.QueueTimeout <= 0 {
		cfg.QueueTimeout = 60 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.Retries <= 0 {
		cfg.Retries = 5
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	s := &Server{
		cfg: cfg,
		log: cfg.Log.With("service", "tftp"),
		transfers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herd_tftp_transfers_total",
			Help: "TFTP requests by result (ok, failed, refused, not_found, busy).",
		}, []string{"result"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herd_tftp_sent_bytes_total",
			Help: "Bytes sent by completed TFTP transfers.",
		}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herd_tftp_active_transfers",
			Help: "TFTP transfers in progress.",
		}),
		queued: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herd_tftp_queued_requests",
			Help: "TFTP requests waiting for a free transfer slot.",
		}),
	}
	s.SetMaxTransfers(cfg.MaxTransfers)
	if err := s.SetRoot(cfg.Root); err != nil {
		return nil, err
	}
	if cfg.Registry != nil {
		for _, c := range []prometheus.Collector{s.transfers, s.bytes, s.active, s.queued} {
			if err := cfg.Registry.Register(c); err != nil {
				return nil, fmt.Errorf("register tftp metrics: %w", err)
			}
		}
	}
	s.srv = ptftp.NewServer(s.read, s.write)
	s.srv.SetTimeout(cfg.Timeout)
	s.srv.SetRetries(cfg.Retries)
	return s, nil
}

// BootFiles are the iPXE binaries herd's DHCP hands out. Debian's ipxe
// package makes ipxe.efi in /usr/lib/ipxe an absolute symlink to
// /boot/ipxe.efi, which os.Root rightly refuses. For these names only, a
// symlink in the root is resolved once, when the root is opened (the admin
// owns that directory), and the request opens the resolved file. Every other
// name, and any link created later, stays confined to the root.
var BootFiles = []string{"undionly.kpxe", "snponly.efi", "ipxe.efi"}

// SetMaxTransfers changes the bound on concurrent transfers (reload);
// transfers already running finish under the old bound.
func (s *Server) SetMaxTransfers(n int) {
	if n < 1 {
		n = 1
	}
	s.mu.Lock()
	s.cfg.MaxTransfers = n
	s.mu.Unlock()
	ch := make(chan struct{}, n)
	s.slots.Store(&ch)
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

// Serve answers requests on conn until Shutdown.
func (s *Server) Serve(conn net.PacketConn) error {
	return s.srv.Serve(conn)
}

// Shutdown stops accepting requests and waits for transfers in flight
// (each ends or times out after Timeout × Retries without ACKs).
func (s *Server) Shutdown() {
	s.srv.Shutdown()
	if r := s.root.Load(); r != nil {
		r.Close()
	}
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

// remote returns the client's address for logs.
func remote(v any) string {
	if ot, ok := v.(interface{ RemoteAddr() net.UDPAddr }); ok {
		a := ot.RemoteAddr()
		return a.String()
	}
	return ""
}

// read serves one RRQ.
func (s *Server) read(filename string, rf io.ReaderFrom) error {
	from := remote(rf)
	log := s.log.With("file", filename, "remote", from)
	name, err := CleanPath(filename)
	if err != nil {
		s.transfers.WithLabelValues("refused").Inc()
		log.Warn("tftp read refused", "err", err)
		return fmt.Errorf("access violation: %s", filename)
	}
	var f *os.File
	if target, ok := (*s.pinned.Load())[name]; ok {
		f, err = os.Open(target)
	} else {
		f, err = s.root.Load().Open(name)
	}
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			s.transfers.WithLabelValues("not_found").Inc()
			log.Info("tftp file not found")
			return fmt.Errorf("file not found: %s", filename)
		}
		s.transfers.WithLabelValues("refused").Inc()
		log.Warn("tftp read refused", "err", err)
		return fmt.Errorf("access violation: %s", filename)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		s.transfers.WithLabelValues("refused").Inc()
		log.Warn("tftp read refused: not a regular file")
		return fmt.Errorf("access violation: %s is not a file", filename)
	}

	// Wait for a slot. The client may retransmit its RRQ meanwhile; pin/tftp
	// then starts a second transfer from another port, which the client
	// ignores (RFC 1350: packets from an unknown TID are dropped).
	slots := *s.slots.Load()
	s.queued.Inc()
	select {
	case slots <- struct{}{}:
		s.queued.Dec()
	case <-time.After(s.cfg.QueueTimeout):
		s.queued.Dec()
		s.transfers.WithLabelValues("busy").Inc()
		log.Warn("tftp server busy: no free transfer slot", "max_tftp", cap(slots))
		return errors.New("server busy, retry later")
	}
	s.active.Inc()
	defer func() { <-slots; s.active.Dec() }()

	if ot, ok := rf.(ptftp.OutgoingTransfer); ok {
		ot.SetSize(st.Size())
	}
	start := time.Now()
	n, err := rf.ReadFrom(f)
	if err != nil {
		s.transfers.WithLabelValues("failed").Inc()
		log.Warn("tftp transfer failed", "sent", n, "err", err)
		// pin/tftp already sent the error packet; returning nil avoids a second one.
		return nil
	}
	s.transfers.WithLabelValues("ok").Inc()
	s.bytes.Add(float64(n))
	log.Info("tftp transfer done", "bytes", n, "seconds", time.Since(start).Seconds())
	return nil
}

// write refuses every WRQ: the boot server never accepts files.
func (s *Server) write(filename string, wt io.WriterTo) error {
	s.transfers.WithLabelValues("refused").Inc()
	s.log.Warn("tftp write refused", "file", filename, "remote", remote(wt))
	return errors.New("access violation: this TFTP server is read-only")
}
