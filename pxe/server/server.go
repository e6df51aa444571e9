// Package server runs `herd serve`: the DHCP (unless dhcp.mode is off),
// TFTP and HTTP boot services over one site config, with SIGHUP reloading
// herd.yaml (a bad file keeps the old config running) and SIGTERM draining
// transfers in flight before exiting.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/herdlab/herd/directory"
	"github.com/herdlab/herd/fleet/nodestatus"
	"github.com/herdlab/herd/internal/privdrop"
	"github.com/herdlab/herd/pxe/httpboot"
	"github.com/herdlab/herd/pxe/inventory"
	"github.com/herdlab/herd/pxe/tftp"
	"github.com/herdlab/herd/site"
	"github.com/herdlab/herd/web"
)

// DHCP is what the server needs from a running DHCP service (pxe/dhcp).
type DHCP interface {
	// SetConfig applies a reloaded site config.
	SetConfig(cfg *site.Config) error
	// Lease returns the address currently leased to mac (full mode).
	Lease(mac string) (ip string, ok bool)
	// Shutdown stops answering and releases the sockets.
	Shutdown(ctx context.Context) error
}

// DHCPEnv is what a DHCP service gets from the server.
type DHCPEnv struct {
	StateDir string
	Force    bool // skip the "another DHCP server answers" probe
	Log      *slog.Logger
	Registry prometheus.Registerer
	// Seen records a DHCP exchange in the inventory (name "" if unknown).
	Seen func(mac, name, ip string)
	// Failed is called if the DHCP service stops serving on its own: herd
	// serve then stops and exits non-zero rather than serve without DHCP.
	Failed func(err error)
}

// DHCPStarter starts the DHCP service for cfg (mode full or proxy).
type DHCPStarter func(ctx context.Context, cfg *site.Config, env DHCPEnv) (DHCP, error)

// DefaultRender is the runtime overlay renderer Run uses when Options.Render
// is nil; overlay.go sets it to the overlays package's RenderRuntime.
var DefaultRender httpboot.RuntimeRenderer

// Options configure Run.
type Options struct {
	StateDir   string
	ConfigPath string
	// Listen overrides the address TFTP and HTTP bind to (default
	// server.address, or all addresses when that is empty).
	Listen string
	// HTTPPort overrides server.http_port for binding only (0: config).
	HTTPPort int
	// TFTPPort is the TFTP port (default 69).
	TFTPPort int
	Force    bool
	// User, when herd serve starts as root, is the unprivileged user it
	// becomes once its sockets are bound (privilegePlan).
	User string
	Log  *slog.Logger
	// DHCP starts the DHCP service; nil means herd was built without it,
	// and only dhcp.mode off can run.
	DHCP DHCPStarter
	// Images is the image store view (default: httpboot.StateImages).
	Images httpboot.Images
	// Render renders runtime overlays (default DefaultRender).
	Render httpboot.RuntimeRenderer
	// DrainTimeout bounds the wait for transfers in flight on SIGTERM (default 30 s).
	DrainTimeout time.Duration
	// Ready, if set, is called with the bound addresses once serving.
	Ready func(httpAddr, tftpAddr string)
	// StatusReply answers nodes' status reports (httpboot.Options.StatusReply;
	// nil: an empty reply).
	StatusReply func(node string, r *nodestatus.Report) nodestatus.Reply
}

// Validate refuses options `herd serve` cannot honour, naming the flag,
// before anything is bound or looked up.
func (o Options) Validate() error {
	if o.Listen != "" {
		if _, err := netip.ParseAddr(o.Listen); err != nil {
			return fmt.Errorf("--listen %q: not an IP address", o.Listen)
		}
	}
	if o.HTTPPort < 0 || o.HTTPPort > 65535 {
		return fmt.Errorf("--http-port %d: not a port (1-65535)", o.HTTPPort)
	}
	if o.TFTPPort < 0 || o.TFTPPort > 65535 {
		return fmt.Errorf("--tftp-port %d: not a port (1-65535)", o.TFTPPort)
	}
	if o.DrainTimeout < 0 {
		return fmt.Errorf("--drain-timeout %s: must not be negative", o.DrainTimeout)
	}
	return nil
}

// Server is a running `herd serve`.
type Server struct {
	opt  Options
	log  *slog.Logger
	mu   sync.Mutex
	cfg  *site.Config
	http *httpboot.Server
	tftp *tftp.Server
	dhcp DHCP

	bg      sync.WaitGroup // background work Run waits for before returning
	stopped chan struct{}  // closed when Run starts draining
}

// checkSecrets refuses a secret file herd serve hands out (the LDAP bind
// password, which goes into every node's runtime overlay) when group or
// others can read it: on a shared admin host that is a leak already.
func checkSecrets(cfg *site.Config) error {
	if cfg.LDAP.BindDN == "" || cfg.LDAP.BindPasswordFile == "" {
		return nil
	}
	if _, err := directory.ReadSecretFile(cfg.LDAP.BindPasswordFile); err != nil {
		return cfg.Doc.Errorf("ldap.bind_password_file", "%v", err)
	}
	return nil
}

// Reload re-reads the config file; on any error the running config stays
// and the error (with file:line of each problem) is returned and logged.
func (s *Server) Reload() error {
	cfg, err := site.Load(s.opt.ConfigPath, nil)
	if err == nil {
		err = checkSecrets(cfg)
	}
	if err != nil {
		s.log.Error("reload refused: keeping the running config", "file", s.opt.ConfigPath, "err", err)
		return fmt.Errorf("reload %s: %w", s.opt.ConfigPath, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.cfg
	if cfg.DHCP.Mode != old.DHCP.Mode || cfg.Server.Interface != old.Server.Interface ||
		cfg.Server.Address != old.Server.Address || cfg.Server.HTTPPort != old.Server.HTTPPort ||
		cfg.Dashboard.Listen != old.Dashboard.Listen {
		// Sockets are bound once; these take a restart. Say so, apply the rest.
		s.log.Warn("reload: server.interface/address/http_port, dashboard.listen and dhcp.mode changes need a restart; the old values stay in effect until then")
		cfg.DHCP.Mode, cfg.Server.Interface, cfg.Server.Address, cfg.Server.HTTPPort, cfg.Dashboard.Listen =
			old.DHCP.Mode, old.Server.Interface, old.Server.Address, old.Server.HTTPPort, old.Dashboard.Listen
	}
	// All or nothing: check what can fail before changing anything; DHCP
	// accepts the new config before the TFTP root and limits change, and
	// goes back to the old one if the TFTP root then fails after all.
	if cfg.Server.TFTPRoot != old.Server.TFTPRoot {
		if err := tftp.CheckRoot(cfg.Server.TFTPRoot); err != nil {
			s.log.Error("reload refused: keeping the running config", "err", err)
			return err
		}
	}
	if s.dhcp != nil {
		if err := s.dhcp.SetConfig(cfg); err != nil {
			s.log.Error("reload: DHCP refused the new config; keeping the running config", "err", err)
			return err
		}
	}
	if cfg.Server.TFTPRoot != old.Server.TFTPRoot {
		if err := s.tftp.SetRoot(cfg.Server.TFTPRoot); err != nil {
			if s.dhcp != nil {
				if rerr := s.dhcp.SetConfig(old); rerr != nil {
					s.log.Error("reload: DHCP did not take the old config back", "err", rerr)
				}
			}
			s.log.Error("reload refused: keeping the running config", "err", err)
			return err
		}
	}
	if cfg.Server.MaxTFTP != old.Server.MaxTFTP {
		s.tftp.SetMaxTransfers(cfg.Server.MaxTFTP)
	}
	s.http.SetConfig(cfg)
	s.cfg = cfg
	s.startPregenerate(cfg)
	s.log.Info("config reloaded", "file", s.opt.ConfigPath, "nodes", len(cfg.Nodes))
	return nil
}

// Config returns the config in effect.
func (s *Server) Config() *site.Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg
}

// Run serves until ctx ends or SIGTERM/SIGINT arrives, then drains and
// returns nil; SIGHUP reloads the config. It fails early, naming the
// service, when a port cannot be bound.
func Run(ctx context.Context, opt Options) error {
	if err := opt.Validate(); err != nil {
		return err
	}
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	if opt.TFTPPort == 0 {
		opt.TFTPPort = 69
	}
	if opt.DrainTimeout <= 0 {
		opt.DrainTimeout = 30 * time.Second
	}
	if opt.Images == nil {
		opt.Images = httpboot.StateImages{StateDir: opt.StateDir}
	}
	if opt.Render == nil {
		opt.Render = DefaultRender
	}
	if opt.Render == nil {
		return errors.New("serve: no runtime overlay renderer (the overlays package is not linked in)")
	}
	cfg, err := site.Load(opt.ConfigPath, nil)
	if err != nil {
		return err
	}
	if err := checkSecrets(cfg); err != nil {
		return err
	}
	if cfg.Server.Address == "" {
		// Boot scripts name the server by this address; without it nodes cannot come back.
		return cfg.Doc.Errorf("server.address", "required by herd serve (the address nodes reach the server at)")
	}
	drop, err := privilegePlan(opt)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(opt.StateDir, 0o755); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	inv, err := inventory.Load(opt.StateDir)
	if err != nil {
		return err
	}
	// nodes.json is rewritten at most every inventory.FlushInterval; what is
	// pending is written when herd stops.
	inv.OnWriteError(func(err error) { opt.Log.Error("nodes.json not written; retrying", "err", err) })
	// `herd node forget|rm` reach this process's in-memory inventory.
	forgetCtx, stopForgets := context.WithCancel(ctx)
	defer stopForgets()
	inv.ServeForgets(forgetCtx)
	defer func() {
		if err := inv.Flush(); err != nil {
			opt.Log.Error("nodes.json not written at exit", "err", err)
		}
	}()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	s := &Server{opt: opt, log: opt.Log, cfg: cfg, stopped: make(chan struct{})}
	defer s.bg.Wait()
	bindIP := opt.Listen
	if bindIP == "" {
		bindIP = cfg.Server.Address
	}
	httpPort := cfg.Server.HTTPPort
	if opt.HTTPPort != 0 {
		httpPort = opt.HTTPPort
	}

	// DHCP first: in full mode it probes for a rival server before anything listens.
	dhcpFailed := make(chan error, 1)
	if cfg.DHCP.Mode != site.DHCPOff {
		if opt.DHCP == nil {
			return cfg.Doc.Errorf("dhcp.mode", "%s needs herd's DHCP service, which this build lacks; set dhcp.mode: off", cfg.DHCP.Mode)
		}
		s.dhcp, err = opt.DHCP(ctx, cfg, DHCPEnv{
			StateDir: opt.StateDir, Force: opt.Force, Log: opt.Log.With("service", "dhcp"), Registry: reg,
			Failed: func(err error) {
				select {
				case dhcpFailed <- err:
				default:
				}
			},
			Seen: func(mac, name, ip string) {
				if err := inv.RecordDHCP(mac, name, ip, time.Now()); err != nil {
					opt.Log.Error("record DHCP", "mac", mac, "err", err)
				}
			},
		})
		if err != nil {
			return fmt.Errorf("dhcp: %w", err)
		}
	}
	// The Secure Boot chain's files (secure_boot: distro) come from the
	// HTTP boot service; TFTP starts serving only after it exists.
	extra := func(name string) (string, bool) {
		if s.http == nil {
			return "", false
		}
		return s.http.TFTPFile(name)
	}
	s.tftp, err = tftp.New(tftp.Config{Root: cfg.Server.TFTPRoot, MaxTransfers: cfg.Server.MaxTFTP, Log: opt.Log, Registry: reg, Extra: extra})
	if err != nil {
		s.stopDHCP()
		return err
	}
	tconn, err := net.ListenPacket("udp4", net.JoinHostPort(bindIP, strconv.Itoa(opt.TFTPPort)))
	if err != nil {
		s.stopDHCP()
		return fmt.Errorf("tftp: listen on %s port %d: %w", bindIP, opt.TFTPPort, err)
	}
	s.http, err = httpboot.New(cfg, httpboot.Options{
		StateDir: opt.StateDir, Images: opt.Images, Render: opt.Render, Inventory: inv,
		Log: opt.Log, Registry: reg, Gatherer: reg, StatusReply: opt.StatusReply,
	})
	if err != nil {
		tconn.Close()
		s.stopDHCP()
		return err
	}
	hln, err := net.Listen("tcp4", net.JoinHostPort(bindIP, strconv.Itoa(httpPort)))
	if err != nil {
		tconn.Close()
		s.stopDHCP()
		return fmt.Errorf("http: listen on %s port %d: %w", bindIP, httpPort, err)
	}
	// The dashboard and API (package web): on the boot HTTP port unless
	// dashboard.listen names its own address, or not at all ("off").
	var dash *web.Dashboard
	var dln net.Listener
	var handler http.Handler = s.http
	if cfg.Dashboard.Listen != site.DashboardOff {
		dash, err = web.New(web.Options{Config: s.http.Config, StateDir: opt.StateDir, Inventory: inv,
			Log: opt.Log, Registry: reg})
		if err == nil && cfg.Dashboard.Listen != "" {
			dln, err = net.Listen("tcp", cfg.Dashboard.Listen)
			if err != nil {
				err = fmt.Errorf("dashboard: listen on %s (dashboard.listen): %w", cfg.Dashboard.Listen, err)
			}
		}
		if err != nil {
			hln.Close()
			tconn.Close()
			s.stopDHCP()
			return err
		}
		if dln == nil {
			boot := s.http
			handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if web.Owns(r.URL.Path) {
					dash.ServeHTTP(w, r)
					return
				}
				boot.ServeHTTP(w, r)
			})
		}
	}
	// No server-wide write or read timeout: a 1 GB image on a slow link may
	// take minutes and dashboard event streams stay open. Boot responses
	// get a write deadline that downloads move with progress (httpboot);
	// headers must arrive within 10 s, idle keep-alives end after 60 s, and
	// one address holds at most MaxConnsPerIP connections.
	refused := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "herd_http_refused_connections_total", Help: "HTTP connections closed at accept: their address already held MaxConnsPerIP.",
	})
	if err := reg.Register(refused); err != nil {
		hln.Close()
		tconn.Close()
		s.stopDHCP()
		return fmt.Errorf("register http metrics: %w", err)
	}
	hln = newPerIPListener(hln, MaxConnsPerIP, refused)
	hs := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	servers := []*http.Server{hs}
	var ds *http.Server
	if dln != nil {
		dln = newPerIPListener(dln, MaxConnsPerIP, refused)
		ds = &http.Server{Handler: dash, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
		servers = append(servers, ds)
	}
	if dash != nil {
		// Event streams end when the server drains instead of holding it.
		for _, x := range servers {
			x.RegisterOnShutdown(dash.Close)
		}
	}

	// Every privileged socket is open: stop being root before serving
	// anything (DHCP, already answering, changes user with the process).
	if drop != nil {
		// What this process made in the state dir so far (as root) is
		// handed over first.
		err := GiveToStateOwner(opt.StateDir)
		if err == nil {
			err = privdrop.Drop(*drop)
		}
		if err == nil {
			// What serve reads per request must be readable as the user.
			err = checkSecrets(cfg)
		}
		if err != nil {
			hln.Close()
			tconn.Close()
			if dln != nil {
				dln.Close()
			}
			s.stopDHCP()
			return fmt.Errorf("dropping root for user %s: %w", drop.Name, err)
		}
		opt.Log.Info("dropped root after binding the ports", "user", drop.Name, "uid", drop.UID, "gid", drop.GID)
	}
	errc := make(chan error, 3)
	go func() {
		if err := s.tftp.Serve(tconn); err != nil {
			errc <- fmt.Errorf("tftp: %w", err)
		}
	}()
	go func() {
		if err := hs.Serve(hln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http: %w", err)
		}
	}()
	dashAddr := "off"
	switch {
	case ds != nil:
		dashAddr = dln.Addr().String()
		go func() {
			if err := ds.Serve(dln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("dashboard: %w", err)
			}
		}()
	case dash != nil:
		dashAddr = hln.Addr().String()
	}
	opt.Log.Warn("herd serving", "http", hln.Addr().String(), "tftp", tconn.LocalAddr().String(),
		"dhcp", cfg.DHCP.Mode, "nodes", len(cfg.Nodes), "dashboard", dashAddr, "config", opt.ConfigPath)
	// Signals are caught before anyone is told we are ready, so a SIGHUP
	// right after start reloads instead of killing the process.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, os.Interrupt)
	defer signal.Stop(sigs)
	if opt.Ready != nil {
		opt.Ready(hln.Addr().String(), tconn.LocalAddr().String())
	}
	// Generate missing node identities now rather than during a boot storm
	// (an RSA 3072 key takes about a second; generation is serialised).
	s.startPregenerate(cfg)

	var runErr error
loop:
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				s.Reload()
				continue
			}
			opt.Log.Warn("draining", "signal", sig.String())
			break loop
		case <-ctx.Done():
			break loop
		case runErr = <-errc:
			break loop
		case err := <-dhcpFailed:
			opt.Log.Error("dhcp service stopped: stopping herd serve rather than serve without DHCP", "err", err)
			runErr = fmt.Errorf("dhcp: stopped serving: %w", err)
			break loop
		}
	}

	// Drain: stop accepting, let downloads and TFTP transfers finish, bounded.
	close(s.stopped)
	dctx, cancel := context.WithTimeout(context.Background(), opt.DrainTimeout)
	defer cancel()
	s.stopDHCPctx(dctx)
	var wg sync.WaitGroup
	wg.Add(1 + len(servers))
	for _, x := range servers {
		go func() {
			defer wg.Done()
			if err := x.Shutdown(dctx); err != nil {
				opt.Log.Warn("http drain cut short", "err", err)
				x.Close()
			}
		}()
	}
	go func() { defer wg.Done(); s.tftp.Shutdown() }()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-dctx.Done():
		opt.Log.Warn("drain timeout: exiting with transfers still open", "timeout", opt.DrainTimeout)
	}
	opt.Log.Warn("herd stopped")
	return runErr
}

func (s *Server) stopDHCP() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.stopDHCPctx(ctx)
}

func (s *Server) stopDHCPctx(ctx context.Context) {
	if s.dhcp != nil {
		if err := s.dhcp.Shutdown(ctx); err != nil {
			s.log.Warn("dhcp shutdown", "err", err)
		}
	}
}

// startPregenerate makes sure, in the background, that every configured
// node has its machine-id and SSH host keys under <state>/nodes/<name>/.
func (s *Server) startPregenerate(cfg *site.Config) {
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		s.pregenerate(cfg)
	}()
}

func (s *Server) pregenerate(cfg *site.Config) {
	for _, n := range cfg.Nodes {
		select {
		case <-s.stopped:
			return
		default:
		}
		if _, err := httpboot.NodeSecrets(s.opt.StateDir, n.Name); err != nil {
			s.log.Error("generate node secrets", "node", n.Name, "err", err)
		}
	}
}
