// Package httpboot is herd's HTTP boot service: everything a node fetches
// after the iPXE binary. Routes:
//
//	GET  /boot/<mac>.ipxe            the node's iPXE script (HACKING.md boot contract)
//	GET  /images/<id>/<artifact>     vmlinuz, initrd.img, rootfs.squashfs, manifest.json
//	GET  /nodes/<name>/challenge     a single-use nonce for the node (identity.go)
//	POST /nodes/<name>/enroll        the node presents its key: enrolled or pending
//	POST /nodes/<name>/overlay       the runtime overlay, sealed to the enrolled node
//	POST /nodes/<name>/status        the node's status report, signed (status.go)
//	GET  /ipxe/<binary>              undionly.kpxe, snponly.efi, ipxe.efi from server.tftp_root
//	                                 (UEFI HTTP boot fetches its first stage over HTTP)
//	GET  /boot/<mac>.json            secure_boot: herd: the node's hints (uki.go)
//	GET  /secureboot/<file>          secure_boot: herd: the signed UKI, certificates, key updates
//	POST /events                     boot progress, signed by the node's enrolled key
//	GET  /metrics, /healthz
//
// Unknown MACs get 404, unless dhcp.unknown is "discover": then the request
// itself is the discovery event (the MAC lands in the inventory, nameless)
// and the answer is an iPXE script that prints "unknown node <mac>" with the
// `herd node add` command to run, waits 30 s and asks again — so a node
// boots by itself as soon as the admin names it. herd never boots a node
// under a made-up name: its identity (host keys, overlay) needs a name.
package httpboot

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/herdlab/herd/fleet/nodestatus"
	"github.com/herdlab/herd/image/chunks"
	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/verity"
	"github.com/herdlab/herd/internal/cpio"
	"github.com/herdlab/herd/internal/nodeauth"
	"github.com/herdlab/herd/pxe/inventory"
	"github.com/herdlab/herd/site"
)

// Images is the read-only view of the image store the server needs.
type Images interface {
	// Current returns the current image ID ("" if none is promoted).
	Current() (string, error)
	// Resolve returns a published image's full ID, directory and manifest;
	// id may be a unique prefix (node pins in herd.yaml may be short).
	Resolve(id string) (fullID, dir string, m *manifest.Manifest, err error)
}

// RuntimeFile is one entry of a node's runtime overlay (mirrors overlays.File).
type RuntimeFile struct {
	Path string // relative, e.g. etc/hostname
	Mode fs.FileMode
	UID  int
	GID  int
	Data []byte
	Link string
	Dir  bool
}

// RuntimeRenderer renders a node's runtime overlay (overlays.RenderRuntime
// behind an adapter, so this package does not depend on the template set).
type RuntimeRenderer func(cfg *site.Config, node *site.Node, s Secrets, ldapBindPassword string) ([]RuntimeFile, error)

// Options are the server's collaborators.
type Options struct {
	StateDir  string
	Images    Images
	Render    RuntimeRenderer
	Inventory *inventory.Inventory
	Log       *slog.Logger
	// Registry receives this package's metrics; Gatherer is served at /metrics.
	Registry prometheus.Registerer
	Gatherer prometheus.Gatherer
	// Now is the clock (tests may fix it).
	Now func() time.Time
	// WriteIdle is how long a response may make no progress before the
	// connection is closed (default DefaultWriteIdle); a download's deadline
	// moves with every chunk written, so a slow link finishes and a reader
	// that stops frees its slot.
	WriteIdle time.Duration
	// StatusReply answers a node's recorded status report (rollout asks a
	// node to wall or reboot through it); nil: an empty Reply. It runs on
	// the request path and must not block for long.
	StatusReply func(node string, r *nodestatus.Report) nodestatus.Reply
}

// Server serves the HTTP boot routes; safe for concurrent use.
type Server struct {
	opt     Options
	cfg     atomic.Pointer[site.Config]
	slots   atomic.Pointer[chan struct{}]
	dl      downloads
	log     *slog.Logger
	metrics http.Handler

	requests *prometheus.CounterVec
	sent     *prometheus.CounterVec
	active   prometheus.Gauge
	queued   prometheus.Gauge
	events   *prometheus.CounterVec
	auth     *prometheus.CounterVec
	statuses *prometheus.CounterVec

	nonces   *nodeauth.Nonces
	registry *nodeauth.Registry

	chunks chunkMap // /chunks/: chunk sha256 → image file and offset
}

// Artifacts served from an image directory.
var Artifacts = []string{manifest.Kernel, manifest.Initrd, manifest.Rootfs, manifest.FileName, chunks.IndexName}

// New builds the server for cfg.
func New(cfg *site.Config, opt Options) (*Server, error) {
	if opt.Images == nil || opt.Inventory == nil || opt.Render == nil || opt.StateDir == "" {
		return nil, errors.New("httpboot: Images, Inventory, Render and StateDir are required")
	}
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.WriteIdle <= 0 {
		opt.WriteIdle = DefaultWriteIdle
	}
	s := &Server{
		opt: opt,
		log: opt.Log.With("service", "http"),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herd_http_requests_total", Help: "HTTP requests by route and status code.",
		}, []string{"route", "code"}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herd_http_sent_bytes_total", Help: "Response bytes sent, by route.",
		}, []string{"route"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herd_http_active_downloads", Help: "Image downloads in progress.",
		}),
		queued: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herd_http_queued_downloads", Help: "Image downloads waiting for a free slot (server.max_http).",
		}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herd_boot_events_total", Help: "Boot events received from nodes, by stage.",
		}, []string{"stage"}),
		auth: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herd_node_auth_total", Help: "Signed node requests, by purpose and result (ok, refused).",
		}, []string{"purpose", "result"}),
		statuses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herd_status_reports_total", Help: "Signed node status reports recorded, by the health the node reported.",
		}, []string{"health"}),
		nonces:   nodeauth.NewNonces(nonceTTL, 4, 4096),
		registry: nodeauth.OpenRegistry(opt.StateDir),
	}
	s.nonces.Now = opt.Now
	if opt.Registry != nil {
		for _, c := range []prometheus.Collector{s.requests, s.sent, s.active, s.queued, s.events, s.auth, s.statuses} {
			if err := opt.Registry.Register(c); err != nil {
				return nil, fmt.Errorf("register http metrics: %w", err)
			}
		}
	}
	g := opt.Gatherer
	if g == nil {
		g = prometheus.NewRegistry()
	}
	s.metrics = promhttp.HandlerFor(g, promhttp.HandlerOpts{})
	s.SetConfig(cfg)
	return s, nil
}

// SetConfig swaps in a new site config (SIGHUP). Requests in flight finish
// with the config they started with; a new max_http applies to new downloads.
func (s *Server) SetConfig(cfg *site.Config) {
	old := s.cfg.Swap(cfg)
	if old == nil || old.Server.MaxHTTP != cfg.Server.MaxHTTP {
		ch := make(chan struct{}, cfg.Server.MaxHTTP)
		s.slots.Store(&ch)
	}
}

// Config returns the config in use.
func (s *Server) Config() *site.Config { return s.cfg.Load() }

// recorder captures status and size for the access log.
type recorder struct {
	http.ResponseWriter
	code  int
	bytes int64
}

func (r *recorder) WriteHeader(c int) { r.code = c; r.ResponseWriter.WriteHeader(c) }

// Unwrap lets http.ResponseController reach the connection (deadlines).
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
func (r *recorder) Write(p []byte) (int, error) {
	if r.code == 0 {
		r.code = 200
	}
	n, err := r.ResponseWriter.Write(p)
	r.bytes += int64(n)
	return n, err
}

// ReadFrom keeps sendfile(2) working through the recorder.
func (r *recorder) ReadFrom(src io.Reader) (int64, error) {
	if r.code == 0 {
		r.code = 200
	}
	n, err := io.Copy(r.ResponseWriter, src)
	r.bytes += n
	return n, err
}

// ServeHTTP routes a request and writes one access-log line for it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := s.opt.Now()
	// Every boot response makes progress or ends (a reader that stops
	// reading cannot hold the connection); downloads move it per chunk.
	rc := http.NewResponseController(w)
	rc.SetWriteDeadline(time.Now().Add(s.opt.WriteIdle))
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		// Bodies (events, reports) are small: a sender that trickles one
		// cannot hold the handler (not for GET: a read deadline passing
		// during a long download would cancel its context).
		rc.SetReadDeadline(time.Now().Add(s.opt.WriteIdle))
	}
	rec := &recorder{ResponseWriter: w}
	route := s.route(rec, r)
	if rec.code == 0 {
		rec.code = 200
	}
	s.requests.WithLabelValues(route, strconv.Itoa(rec.code)).Inc()
	s.sent.WithLabelValues(route).Add(float64(rec.bytes))
	s.log.Info("http request", "remote", remoteIP(r), "method", r.Method, "path", r.URL.Path,
		"range", r.Header.Get("Range"), "status", rec.code, "bytes", rec.bytes, "route", route,
		"seconds", time.Since(start).Seconds())
}

func (s *Server) route(w http.ResponseWriter, r *http.Request) string {
	p := r.URL.Path
	switch {
	case p == "/healthz":
		io.WriteString(w, "ok\n")
		return "healthz"
	case p == "/metrics":
		s.metrics.ServeHTTP(w, r)
		return "metrics"
	case p == "/events":
		s.serveEvent(w, r)
		return "events"
	case strings.HasPrefix(p, "/boot/") && strings.HasSuffix(p, ".json"):
		s.serveHints(w, r)
		return "hints"
	case strings.HasPrefix(p, "/secureboot/"):
		s.serveSecureBoot(w, r)
		return "secureboot"
	case strings.HasPrefix(p, "/boot/"):
		s.serveScript(w, r)
		return "boot"
	case strings.HasPrefix(p, "/images/"):
		s.serveImage(w, r)
		return "images"
	case strings.HasPrefix(p, "/chunks/"):
		s.serveChunk(w, r)
		return "chunks"
	case strings.HasPrefix(p, "/nodes/"):
		return s.serveNode(w, r)
	case strings.HasPrefix(p, "/ipxe/"):
		s.serveIPXE(w, r)
		return "ipxe"
	}
	http.NotFound(w, r)
	return "other"
}

func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func onlyGet(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return false
	}
	return true
}

// ParseScriptPath extracts the MAC from "/boot/<mac>.ipxe" (colon or dash
// form, any case) and returns it lower-case with colons.
func ParseScriptPath(p string) (string, error) {
	mac, grub, err := parseBootPath(p)
	if err == nil && grub {
		return "", fmt.Errorf("%q is not /boot/<mac>.ipxe", p)
	}
	return mac, err
}

// parseBootPath is ParseScriptPath for both flavours: /boot/<mac>.ipxe and
// (secure_boot: distro) /boot/<mac>.grub.
func parseBootPath(p string) (mac string, grub bool, err error) {
	rest, ok := strings.CutPrefix(p, "/boot/")
	if !ok {
		return "", false, fmt.Errorf("%q is not under /boot/", p)
	}
	macStr, ok := strings.CutSuffix(rest, ".ipxe")
	if !ok {
		macStr, grub = strings.CutSuffix(rest, ".grub")
	}
	if !ok && !grub || len(macStr) != 17 {
		return "", false, fmt.Errorf("%q is not /boot/<mac>.ipxe or /boot/<mac>.grub", p)
	}
	for i := 0; i < 17; i++ {
		c := macStr[i]
		if i%3 == 2 {
			if c != ':' && c != '-' || c != macStr[2] {
				return "", false, fmt.Errorf("%q: MAC separators must be all ':' or all '-'", p)
			}
			continue
		}
		if !isHex(c) {
			return "", false, fmt.Errorf("%q: %q is not a MAC address", p, macStr)
		}
	}
	return strings.ToLower(strings.ReplaceAll(macStr, "-", ":")), grub, nil
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

var idRe = regexp.MustCompile(`^[0-9a-f]{8,64}$`)

// ParseImagePath splits "/images/<id>/<artifact>" and checks both parts:
// the ID is lower-case hex and the artifact one of Artifacts.
func ParseImagePath(p string) (id, artifact string, err error) {
	rest, ok := strings.CutPrefix(p, "/images/")
	if !ok {
		return "", "", fmt.Errorf("%q is not under /images/", p)
	}
	id, artifact, ok = strings.Cut(rest, "/")
	if !ok || !idRe.MatchString(id) {
		return "", "", fmt.Errorf("%q: not /images/<id>/<artifact>", p)
	}
	for _, a := range Artifacts {
		if artifact == a {
			return id, artifact, nil
		}
	}
	return "", "", fmt.Errorf("%q: %q is not one of %s", p, artifact, strings.Join(Artifacts, ", "))
}

// Initrd is one initrd of a boot: its name (iPXE's initrd=) and URL.
type Initrd struct{ Name, URL string }

// Boot is what a node boots, for either loader: the kernel's URL, its
// command line (without iPXE's initrd= names) and the initrds in order.
type Boot struct {
	Kernel  string
	Args    []string
	Initrds []Initrd
}

// chunkArgs are the command line's chunk-index arguments: herd.index, and
// herd.index_sha256 when the manifest records the index's sha256 (images
// built before it did go without: their nodes hash an assembled image
// whole). With it the index is as trusted as herd.sha256 itself, so a node
// need not hash a delta-assembled image again.
func chunkArgs(url string, c *manifest.ChunkIndex) []string {
	args := []string{"herd.index=" + url}
	if b, err := hex.DecodeString(c.SHA256); err == nil && len(b) == sha256.Size {
		args = append(args, "herd.index_sha256="+strings.ToLower(c.SHA256))
	}
	return args
}

// BootSpec builds the boot of the boot contract for node and image: the one
// command-line builder behind the iPXE script and the GRUB config.
func BootSpec(cfg *site.Config, node *site.Node, id string, m *manifest.Manifest) (*Boot, error) {
	root, ok := m.Artifacts[manifest.Rootfs]
	if !ok || root.SHA256 == "" {
		return nil, fmt.Errorf("image %s: manifest has no %s hash", id, manifest.Rootfs)
	}
	base := cfg.ServerURL()
	img := base + "/images/" + id
	args := []string{
		"boot=herd", "ip=dhcp",
		"herd.image=" + cfg.ImageURL() + "/images/" + id + "/" + manifest.Rootfs,
		"herd.sha256=" + root.SHA256,
		"herd.id=" + id,
		"herd.node=" + node.Name,
		"herd.server=" + base,
		"herd.cache=" + cfg.CacheDiskFor(node),
		"herd.keep=" + strconv.Itoa(cfg.Cache.KeepImages),
		"console=tty0", "console=ttyS0,115200n8",
	}
	if v := verity.FromManifest(m); v != nil {
		// Same for every node of the generation: the node maps its cached
		// copy through dm-verity with it instead of hashing it whole.
		args = slices.Insert(args, slices.Index(args, "herd.sha256="+root.SHA256)+1, "herd.verity="+v.String())
	}
	if m.Chunks != nil {
		// The node assembles the image from chunks it has and fetches the
		// rest from /chunks/.
		args = slices.Insert(args, slices.Index(args, "herd.id="+id), chunkArgs(img+"/"+m.Chunks.File, m.Chunks)...)
	}
	if ka := strings.TrimSpace(cfg.KernelArgs + " " + node.KernelArgs); ka != "" {
		// A newline would start a new iPXE command; iPXE would also expand
		// ${...} itself. Neither belongs in a kernel command line.
		if strings.ContainsFunc(ka, func(r rune) bool { return r < 0x20 || r == 0x7f }) || strings.Contains(ka, "${") {
			return nil, fmt.Errorf("node %s: kernel_args (site or node) holds a control character or ${...}, which iPXE would interpret", node.Name)
		}
		args = append(args, ka)
	}
	return &Boot{Kernel: img + "/" + manifest.Kernel, Args: args, Initrds: []Initrd{
		{manifest.Initrd, img + "/" + manifest.Initrd},
	}}, nil
}

// Script renders the iPXE script of the boot contract for node and image.
func Script(cfg *site.Config, node *site.Node, id string, m *manifest.Manifest) (string, error) {
	spec, err := BootSpec(cfg, node, id, m)
	if err != nil {
		return "", err
	}
	args := []string{spec.Kernel}
	for _, i := range spec.Initrds {
		args = append(args, "initrd="+i.Name)
	}
	args = append(args, spec.Args...)
	var b strings.Builder
	b.WriteString("#!ipxe\n")
	b.WriteString("kernel " + strings.Join(args, " ") + "\n")
	for _, i := range spec.Initrds {
		b.WriteString("initrd --name " + i.Name + " " + i.URL + "\n")
	}
	b.WriteString("boot\n")
	return b.String(), nil
}

// retryScript is served when the node is known but cannot boot right now
// (no current image, pinned image missing): iPXE prints why and asks again.
func retryScript(base, mac, why string) string {
	return "#!ipxe\n" +
		"echo herd: cannot boot " + mac + ": " + why + "\n" +
		"echo herd: retrying in 60 seconds\n" +
		"sleep 60\n" +
		"chain --replace " + base + "/boot/" + mac + ".ipxe\n"
}

func (s *Server) serveScript(w http.ResponseWriter, r *http.Request) {
	if !onlyGet(w, r) {
		return
	}
	mac, grub, err := parseBootPath(r.URL.Path)
	cfg := s.cfg.Load()
	if err == nil && grub && cfg.SecureBoot != site.SecureBootDistro {
		err = fmt.Errorf("%s: GRUB configs are served only with secure_boot: distro", r.URL.Path)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	from := remoteIP(r)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	node, ok := cfg.NodeByMAC(mac)
	if !ok {
		if cfg.DHCP.Unknown != site.UnknownDiscover {
			http.Error(w, "unknown node "+mac+" (not in herd.yaml)", http.StatusNotFound)
			return
		}
		if err := s.opt.Inventory.RecordScript(mac, "", "", from, s.opt.Now()); err != nil {
			s.log.Error("record discovery", "mac", mac, "err", err)
		}
		s.log.Warn("unknown node asked for a boot script (discover)", "mac", mac, "remote", from)
		if grub {
			dev, _ := grubHTTP(cfg)
			io.WriteString(w, "echo 'herd: unknown node "+mac+" (not in herd.yaml)'\n"+
				"echo 'herd: on the server run: herd node add <name> "+mac+"'\n"+
				"echo 'herd: asking again in 30 seconds'\nsleep 30\n"+
				"source "+dev+"/boot/"+mac+".grub\n")
			return
		}
		io.WriteString(w, "#!ipxe\n"+
			"echo herd: unknown node "+mac+" (not in herd.yaml)\n"+
			"echo herd: on the server run: herd node add <name> "+mac+"\n"+
			"echo herd: asking again in 30 seconds\n"+
			"sleep 30\n"+
			"chain --replace "+cfg.ServerURL()+"/boot/"+mac+".ipxe\n")
		return
	}
	want := node.Image
	if want == "" {
		want, err = s.opt.Images.Current()
		if err != nil {
			s.log.Error("read current image", "err", err)
			writeGrubOrIPXE(w, grub, retryScript(cfg.ServerURL(), mac, "the image store cannot be read"), grubRetry(cfg, mac, "the image store cannot be read"))
			return
		}
		if want == "" {
			s.log.Warn("no current image to boot", "node", node.Name)
			writeGrubOrIPXE(w, grub, retryScript(cfg.ServerURL(), mac, "no image is current (herd image promote)"), grubRetry(cfg, mac, "no image is current (herd image promote)"))
			return
		}
	}
	id, _, m, err := s.opt.Images.Resolve(want)
	if err != nil {
		s.log.Error("resolve image for node", "node", node.Name, "image", want, "err", err)
		writeGrubOrIPXE(w, grub, retryScript(cfg.ServerURL(), mac, "image "+want+" is not published"), grubRetry(cfg, mac, "image "+want+" is not published"))
		return
	}
	s.loadChunks(id) // the node may ask /chunks/ for this image's pieces
	render := Script
	if grub {
		render = GrubScript
	}
	script, err := render(cfg, node, id, m)
	if err != nil {
		s.log.Error("render boot script", "node", node.Name, "err", err)
		why := "its boot script cannot be built; see the server log"
		writeGrubOrIPXE(w, grub, retryScript(cfg.ServerURL(), mac, why), grubRetry(cfg, mac, why))
		return
	}
	if err := s.opt.Inventory.RecordScript(mac, node.Name, id, from, s.opt.Now()); err != nil {
		s.log.Error("record script fetch", "node", node.Name, "err", err)
	}
	io.WriteString(w, script)
}

func (s *Server) serveImage(w http.ResponseWriter, r *http.Request) {
	if !onlyGet(w, r) {
		return
	}
	id, artifact, err := ParseImagePath(r.URL.Path)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	full, dir, m, err := s.opt.Images.Resolve(id)
	if err != nil || full != id {
		// Only full IDs in URLs: a prefix would make a cached URL change meaning.
		http.Error(w, "no published image "+id, http.StatusNotFound)
		return
	}
	// A slot first (bounded wait, bounded queue), then the file: a storm
	// queues without holding descriptors, and a full queue answers 503.
	release, ok := s.acquire(w, r)
	if !ok {
		return
	}
	defer release()
	f, err := os.Open(path.Join(dir, artifact))
	if err != nil {
		s.log.Error("open artifact", "image", id, "artifact", artifact, "err", err)
		http.Error(w, "artifact missing", http.StatusNotFound)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		http.Error(w, "artifact missing", http.StatusNotFound)
		return
	}
	if a, ok := m.Artifacts[artifact]; ok && a.SHA256 != "" {
		// The content hash is the perfect validator: If-Range and If-None-Match work.
		w.Header().Set("ETag", `"`+a.SHA256+`"`)
		// Content-addressed, so never stale: caches (an nginx proxy_cache per
		// rack, server.image_mirror) may keep it without asking again.
		w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	// ServeContent with an *os.File: Range, Content-Length, and sendfile(2)
	// through the connection's ReadFrom, in chunks that each move the
	// write deadline.
	http.ServeContent(&progressWriter{ResponseWriter: w, rc: http.NewResponseController(w), idle: s.opt.WriteIdle}, r, "", st.ModTime(), f)
}

// IPXEFiles are the binaries served under /ipxe/ (the names DHCP hands out).
var IPXEFiles = []string{"undionly.kpxe", "snponly.efi", "ipxe.efi"}

// serveIPXE serves one of IPXEFiles from server.tftp_root. Only these fixed
// names are looked up, so no request path reaches the file system; the
// admin's directory may link them elsewhere (Debian links ipxe.efi to /boot).
func (s *Server) serveIPXE(w http.ResponseWriter, r *http.Request) {
	if !onlyGet(w, r) {
		return
	}
	name := strings.TrimPrefix(r.URL.Path, "/ipxe/")
	ok := false
	for _, n := range IPXEFiles {
		ok = ok || n == name
	}
	if !ok {
		http.Error(w, "not an iPXE binary: "+name, http.StatusNotFound)
		return
	}
	f, err := os.Open(path.Join(s.cfg.Load().Server.TFTPRoot, name))
	if err != nil {
		s.log.Error("open iPXE binary", "file", name, "err", err)
		http.Error(w, "iPXE binary missing", http.StatusNotFound)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		http.Error(w, "iPXE binary missing", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/efi")
	http.ServeContent(w, r, "", st.ModTime(), f)
}

// buildOverlay renders the runtime overlay and packs it as newc cpio with
// every path under herd/overlay/.
func (s *Server) buildOverlay(cfg *site.Config, node *site.Node) ([]byte, error) {
	sec, err := NodeSecrets(s.opt.StateDir, node.Name)
	if err != nil {
		return nil, err
	}
	var pw string
	if cfg.LDAP.BindDN != "" && cfg.LDAP.BindPasswordFile != "" {
		b, err := os.ReadFile(cfg.LDAP.BindPasswordFile)
		if err != nil {
			return nil, fmt.Errorf("ldap.bind_password_file: %w", err)
		}
		pw = strings.TrimRight(string(b), "\r\n")
	}
	files, err := s.opt.Render(cfg, node, sec, pw)
	if err != nil {
		return nil, err
	}
	return PackOverlay(files)
}

// PackOverlay packs runtime files into a newc cpio under herd/overlay/,
// parent directories first (the kernel's unpacker does not create them).
func PackOverlay(files []RuntimeFile) ([]byte, error) {
	const prefix = "herd/overlay"
	dirs := map[string]RuntimeFile{
		"herd": {Path: "herd", Mode: fs.ModeDir | 0o755, Dir: true},
		prefix: {Path: prefix, Mode: fs.ModeDir | 0o755, Dir: true},
	}
	var rest []RuntimeFile
	for _, f := range files {
		if f.Path == "" || strings.HasPrefix(f.Path, "/") || path.Clean(f.Path) != f.Path || strings.HasPrefix(f.Path, "..") {
			return nil, fmt.Errorf("runtime overlay: bad path %q", f.Path)
		}
		full := prefix + "/" + f.Path
		for d := path.Dir(full); d != prefix && d != "."; d = path.Dir(d) {
			if _, ok := dirs[d]; !ok {
				dirs[d] = RuntimeFile{Path: d, Mode: fs.ModeDir | 0o755, Dir: true}
			}
		}
		f.Path = full
		if f.Dir {
			f.Mode |= fs.ModeDir
			dirs[full] = f // an explicit directory keeps its owner and mode
			continue
		}
		rest = append(rest, f)
	}
	names := make([]string, 0, len(dirs))
	for d := range dirs {
		names = append(names, d)
	}
	sort.Strings(names)
	var b strings.Builder
	w := cpio.NewWriter(&b)
	for _, d := range names {
		f := dirs[d]
		if err := w.WriteHeader(&cpio.Header{Name: d, Mode: cpio.FileMode(f.Mode | fs.ModeDir), UID: f.UID, GID: f.GID}); err != nil {
			return nil, err
		}
	}
	for _, f := range rest {
		mode, data := f.Mode, f.Data
		if f.Link != "" {
			mode, data = fs.ModeSymlink|0o777, []byte(f.Link)
		}
		if err := w.WriteHeader(&cpio.Header{Name: f.Path, Mode: cpio.FileMode(mode), UID: f.UID, GID: f.GID, Size: int64(len(data))}); err != nil {
			return nil, err
		}
		if _, err := w.Write(data); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return []byte(b.String()), nil
}
