// Package web is herd serve's read-only dashboard and versioned JSON API.
// Routes (GET/HEAD only):
//
//	/api/v1/                 the list of endpoints
//	/api/v1/nodes            []fleet.Node (the same rows as `herd node list --json`)
//	/api/v1/nodes/<name>     fleet.Node (name or MAC; as `herd node show --json`)
//	/api/v1/nodes/<name>/timeline  the node's recent changes since the server started
//	/api/v1/images           []fleet.Image (as `herd image list --json`)
//	/api/v1/rollouts         [] (rollouts are not built yet; docs/api.md has the schema)
//	/api/v1/events           server-sent events: live node changes
//	/                        nodes page; /ui/images, /ui/nodes/<name>; /ui/static/...
//
// Pages are server-rendered from embedded Go templates and work without
// JavaScript; a small script (EventSource) applies live updates. Nothing
// served here is secret: node records, image manifests and test results.
// Live updates come from the inventory's change hook through a bounded
// pubsub broker (a flood of SSE clients is refused, never buffered).
package web

import (
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herdlab/herd/fleet"
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/internal/nodeauth"
	"github.com/herdlab/herd/internal/pubsub"
	"github.com/herdlab/herd/pxe/inventory"
	"github.com/herdlab/herd/site"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Limits on live-update subscribers (server-sent events).
const (
	// MaxSubscribers bounds open /api/v1/events streams in total.
	MaxSubscribers = 128
	// MaxSubscribersPerSource bounds them per remote address.
	MaxSubscribersPerSource = 8
	// subscriberBuffer is how many changes one slow stream may lag behind
	// before it is told to reload.
	subscriberBuffer = 64
	// timelineLen is how many recent changes are kept per node; at most
	// timelineNodes MACs are tracked (a MAC flood cannot grow memory).
	timelineLen   = 50
	timelineNodes = 1024
)

// Options are the dashboard's collaborators.
type Options struct {
	// Config returns the site config in effect (it changes on SIGHUP).
	Config    func() *site.Config
	StateDir  string
	Inventory *inventory.Inventory
	Log       *slog.Logger
	// Registry receives the per-node gauges (nil: none).
	Registry prometheus.Registerer
	// Now is the clock (tests may fix it).
	Now func() time.Time
	// Heartbeat is the interval of SSE keep-alive comments (default 20 s);
	// MaxStream bounds one stream's life before the browser reconnects
	// (default 30 min), so a forgotten tab does not hold a place forever.
	Heartbeat, MaxStream time.Duration
}

// Dashboard serves the pages, the API and the event stream; safe for
// concurrent use.
type Dashboard struct {
	opt    Options
	log    *slog.Logger
	mux    *http.ServeMux
	pages  map[string]*template.Template
	broker *pubsub.Broker[Message]
	store  *store.Store

	// planner says what each node's next boot downloads (next_download);
	// plannerMu serializes its use (it caches chunk indexes).
	plannerMu sync.Mutex
	planner   *fleet.Planner

	mu       sync.Mutex
	seq      uint64
	timeline map[string][]Entry // by MAC, oldest first
	done     chan struct{}
	closed   bool
}

// Message is one server-sent event: a node's new state after a change.
type Message struct {
	ID    uint64           `json:"-"`    // the SSE id: line
	Kind  string           `json:"kind"` // dhcp, script, event
	Node  fleet.Node       `json:"node"`
	Event *inventory.Event `json:"event,omitempty"`
}

// Entry is one line of a node's boot timeline.
type Entry struct {
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"` // dhcp, script, event
	Stage   string    `json:"stage,omitempty"`
	Percent int       `json:"percent,omitempty"`
	Message string    `json:"message,omitempty"`
	Address string    `json:"address,omitempty"`
	Image   string    `json:"image,omitempty"`
}

// New builds the dashboard and hooks it to the inventory's change feed.
func New(opt Options) (*Dashboard, error) {
	if opt.Config == nil || opt.Inventory == nil || opt.StateDir == "" {
		return nil, errors.New("web: Config, Inventory and StateDir are required")
	}
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Heartbeat <= 0 {
		opt.Heartbeat = 20 * time.Second
	}
	if opt.MaxStream <= 0 {
		opt.MaxStream = 30 * time.Minute
	}
	d := &Dashboard{
		opt: opt, log: opt.Log.With("service", "dashboard"),
		broker:   pubsub.New[Message](MaxSubscribers, MaxSubscribersPerSource, subscriberBuffer),
		store:    store.ReadOnly(opt.StateDir),
		timeline: map[string][]Entry{},
		done:     make(chan struct{}),
		pages:    map[string]*template.Template{},
	}
	funcs := template.FuncMap{"ago": d.ago, "short": short, "utc": utc, "size": fleet.HumanBytes, "uptime": d.uptime,
		"healthState": healthState}
	for _, p := range []string{"nodes", "images", "node"} {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+p+".html")
		if err != nil {
			return nil, fmt.Errorf("web: template %s: %w", p, err)
		}
		d.pages[p] = t
	}
	if opt.Registry != nil {
		streams := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "herd_dashboard_event_streams", Help: "Open /api/v1/events streams.",
		}, func() float64 { return float64(d.broker.Len()) })
		for _, c := range []prometheus.Collector{&nodeCollector{d: d}, streams} {
			if err := opt.Registry.Register(c); err != nil {
				return nil, fmt.Errorf("web: register metrics: %w", err)
			}
		}
	}
	static, _ := fs.Sub(staticFS, "static")
	m := http.NewServeMux()
	m.HandleFunc("GET /api/v1/{$}", d.apiIndex)
	m.HandleFunc("GET /api/v1/nodes", d.apiNodes)
	m.HandleFunc("GET /api/v1/nodes/{name}", d.apiNode)
	m.HandleFunc("GET /api/v1/nodes/{name}/timeline", d.apiTimeline)
	m.HandleFunc("GET /api/v1/images", d.apiImages)
	m.HandleFunc("GET /api/v1/rollouts", d.apiRollouts)
	m.HandleFunc("GET /api/v1/events", d.apiEvents)
	m.HandleFunc("GET /{$}", d.pageNodes)
	m.HandleFunc("GET /ui/images", d.pageImages)
	m.HandleFunc("GET /ui/nodes/{name}", d.pageNode)
	m.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", http.FileServerFS(static)))
	d.mux = m
	opt.Inventory.Notify(d.publish)
	return d, nil
}

// Owns reports whether path belongs to the dashboard when it shares the
// boot HTTP port (everything else is the boot service's).
func Owns(path string) bool {
	return path == "/" || strings.HasPrefix(path, "/ui/") || strings.HasPrefix(path, "/api/")
}

// Close ends every event stream (called when the server drains, so open
// streams do not hold the drain until its timeout).
func (d *Dashboard) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.closed {
		d.closed = true
		close(d.done)
	}
}

// Subscribers is the number of open event streams.
func (d *Dashboard) Subscribers() int { return d.broker.Len() }

// publish is the inventory's change hook: it must not block.
func (d *Dashboard) publish(c inventory.Change) {
	e := Entry{Time: d.opt.Now().UTC(), Kind: c.Kind, Address: c.Record.Address}
	switch c.Kind {
	case "dhcp":
		e.Time, e.Address = c.Record.LastDHCP, c.Record.LastDHCPIP
	case "script":
		e.Time, e.Image = c.Record.ScriptServed, c.Record.ScriptImage
	case "event":
		if c.Event != nil {
			e.Time, e.Stage, e.Percent, e.Message, e.Image = c.Event.Time, c.Event.Stage, c.Event.Percent, c.Event.Message, c.Event.Image
		}
	}
	d.mu.Lock()
	tl, ok := d.timeline[c.Record.MAC]
	// Status reports come every minute: live updates, not timeline lines.
	if c.Kind != "status" && (ok || len(d.timeline) < timelineNodes) {
		if len(tl) >= timelineLen {
			tl = append(tl[:0:0], tl[len(tl)-timelineLen+1:]...)
		}
		d.timeline[c.Record.MAC] = append(tl, e)
	}
	d.seq++
	seq := d.seq
	d.mu.Unlock()
	cfg := d.opt.Config()
	n := fleet.FromRecord(cfg, c.Record)
	one := []fleet.Node{n}
	fleet.RedactGPUUsers(one, cfg.Dashboard.ShowGPUUsers)
	n = one[0]
	d.broker.Publish(Message{ID: seq, Kind: c.Kind, Node: n, Event: c.Event})
}

// Timeline returns a node's recent changes, oldest first.
func (d *Dashboard) Timeline(mac string) []Entry {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Entry{}, d.timeline[mac]...)
}

// statusRecorder keeps the status for the access log and unwraps for
// http.ResponseController (flush and write deadlines of event streams).
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(c int) {
	if r.code == 0 {
		r.code = c
	}
	r.ResponseWriter.WriteHeader(c)
}
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// ServeHTTP serves the dashboard's routes with one access-log line each.
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &statusRecorder{ResponseWriter: w}
	h := rec.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	// Scripts and styles only from the dashboard's own files: no inline code.
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'none'")
	d.mux.ServeHTTP(rec, r)
	code := rec.code
	if code == 0 {
		code = 200
	}
	d.log.Info("http request", "remote", remoteIP(r), "method", r.Method, "path", r.URL.Path,
		"status", code, "seconds", time.Since(start).Seconds())
}

func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// nodes is the node list as every reader sees it, with GPU user names
// removed unless the site allows them.
func (d *Dashboard) nodes() ([]fleet.Node, *site.Config) {
	cfg := d.opt.Config()
	ns := fleet.Nodes(cfg, d.opt.Inventory)
	fleet.AddIdentity(ns, nodeauth.OpenRegistry(d.opt.StateDir), time.Now())
	d.addNextDownload(ns)
	fleet.RedactGPUUsers(ns, cfg.Dashboard.ShowGPUUsers)
	return ns, cfg
}

// addNextDownload fills in what each node's next boot downloads, as `herd
// node list` does (fleet.AddNextDownload against the current image).
func (d *Dashboard) addNextDownload(ns []fleet.Node) {
	cur, err := d.store.Current()
	if err != nil || cur == "" {
		return
	}
	d.plannerMu.Lock()
	defer d.plannerMu.Unlock()
	if d.planner == nil {
		d.planner, err = fleet.NewPlanner(d.store)
	} else {
		err = d.planner.Refresh()
	}
	if err != nil {
		d.log.Warn("next boot downloads", "err", err)
		d.planner = nil
		return
	}
	fleet.AddNextDownload(ns, d.planner, cur)
}

func (d *Dashboard) images() ([]fleet.Image, error) {
	return fleet.Images(d.store, d.opt.Inventory.CountByImage())
}

// healthState is the first word of a health verdict ("degraded: 0/1 GPUs"
// → "degraded"), for a CSS class.
func healthState(h string) string {
	s, _, _ := strings.Cut(h, ":")
	return s
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func apiError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

// Endpoints is what /api/v1/ lists.
var Endpoints = []string{"/api/v1/nodes", "/api/v1/nodes/{name}", "/api/v1/nodes/{name}/timeline",
	"/api/v1/images", "/api/v1/rollouts", "/api/v1/events"}

func (d *Dashboard) apiIndex(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, 200, map[string]any{"version": "v1", "endpoints": Endpoints})
}

func (d *Dashboard) apiNodes(w http.ResponseWriter, r *http.Request) {
	ns, _ := d.nodes()
	writeJSON(w, 200, ns)
}

func (d *Dashboard) findNode(name string) (fleet.Node, bool) {
	ns, _ := d.nodes()
	return fleet.FindNode(ns, name)
}

func (d *Dashboard) apiNode(w http.ResponseWriter, r *http.Request) {
	n, ok := d.findNode(r.PathValue("name"))
	if !ok {
		apiError(w, 404, "no node "+r.PathValue("name"))
		return
	}
	writeJSON(w, 200, n)
}

func (d *Dashboard) apiTimeline(w http.ResponseWriter, r *http.Request) {
	n, ok := d.findNode(r.PathValue("name"))
	if !ok {
		apiError(w, 404, "no node "+r.PathValue("name"))
		return
	}
	writeJSON(w, 200, d.Timeline(n.MAC))
}

func (d *Dashboard) apiImages(w http.ResponseWriter, r *http.Request) {
	imgs, err := d.images()
	if err != nil {
		d.log.Error("list images", "err", err)
		apiError(w, 500, "the image store cannot be read; see the server log")
		return
	}
	writeJSON(w, 200, imgs)
}

// Rollout is the schema /api/v1/rollouts will return once staged rollouts
// exist; until then the list is always empty.
type Rollout struct {
	ID       string    `json:"id"`
	Image    string    `json:"image"`
	State    string    `json:"state"` // planned, running, paused, done, failed
	Started  time.Time `json:"started"`
	Nodes    []string  `json:"nodes"`
	Done     []string  `json:"done"`
	Failed   []string  `json:"failed"`
	Finished time.Time `json:"finished,omitzero"`
}

func (d *Dashboard) apiRollouts(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, 200, []Rollout{})
}

// apiEvents streams node changes as server-sent events: first a
// "snapshot" (every node), then one "node" event per change; "reload" when
// this stream fell behind and lost changes. Streams are bounded in number
// (total and per address) and each write carries its own deadline, so a
// client that stops reading is dropped instead of pinning a goroutine.
func (d *Dashboard) apiEvents(w http.ResponseWriter, r *http.Request) {
	sub, err := d.broker.Subscribe(remoteIP(r))
	if err != nil {
		w.Header().Set("Retry-After", "30")
		apiError(w, http.StatusServiceUnavailable, "too many live-update streams; try again later")
		d.log.Warn("event stream refused", "remote", remoteIP(r), "open", d.broker.Len())
		return
	}
	defer sub.Close()
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	const writeWait = 15 * time.Second
	send := func(event string, id uint64, v any) error {
		// The boot server's http.Server may set a write timeout; streams
		// set their own deadline per write instead.
		if err := rc.SetWriteDeadline(time.Now().Add(writeWait)); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return err
		}
		var b strings.Builder
		if event != "" {
			b.WriteString("event: " + event + "\n")
		}
		if id != 0 {
			fmt.Fprintf(&b, "id: %d\n", id)
		}
		if v != nil {
			data, err := json.Marshal(v)
			if err != nil {
				return err
			}
			b.WriteString("data: " + string(data) + "\n\n")
		} else {
			b.WriteString(": keep-alive\n\n")
		}
		if _, err := w.Write([]byte(b.String())); err != nil {
			return err
		}
		return rc.Flush()
	}
	w.WriteHeader(200)
	ns, cfg := d.nodes()
	if err := send("snapshot", 0, ns); err != nil {
		return
	}
	hb := time.NewTicker(d.opt.Heartbeat)
	defer hb.Stop()
	end := time.NewTimer(d.opt.MaxStream)
	defer end.Stop()
	for {
		select {
		case m, ok := <-sub.C:
			if !ok {
				return
			}
			if sub.Lost() > 0 {
				send("reload", 0, map[string]string{"why": "this stream fell behind and lost updates"})
				return
			}
			if cfg2 := d.opt.Config(); cfg2 != cfg {
				cfg = cfg2
			}
			one := []fleet.Node{m.Node}
			fleet.RedactGPUUsers(one, cfg.Dashboard.ShowGPUUsers)
			m.Node = one[0]
			if err := send("node", m.ID, m); err != nil {
				return
			}
		case <-hb.C:
			if err := send("", 0, nil); err != nil {
				return
			}
		case <-end.C:
			return
		case <-d.done:
			return
		case <-r.Context().Done():
			return
		}
	}
}

func (d *Dashboard) render(w http.ResponseWriter, page string, data map[string]any) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	data["Page"] = page
	data["Now"] = d.opt.Now().UTC()
	var b strings.Builder
	if err := d.pages[page].Execute(&b, data); err != nil {
		d.log.Error("render page", "page", page, "err", err)
		http.Error(w, "cannot render the page; see the server log", 500)
		return
	}
	w.Write([]byte(b.String()))
}

func (d *Dashboard) currentImage() string {
	id, err := d.store.Current()
	if err != nil {
		d.log.Warn("read current image", "err", err)
	}
	return id
}

func (d *Dashboard) pageNodes(w http.ResponseWriter, r *http.Request) {
	ns, _ := d.nodes()
	d.render(w, "nodes", map[string]any{"Title": "Nodes", "Nodes": ns, "Current": d.currentImage()})
}

func (d *Dashboard) pageImages(w http.ResponseWriter, r *http.Request) {
	imgs, err := d.images()
	if err != nil {
		d.log.Error("list images", "err", err)
		http.Error(w, "the image store cannot be read; see the server log", 500)
		return
	}
	d.render(w, "images", map[string]any{"Title": "Images", "Images": imgs})
}

func (d *Dashboard) pageNode(w http.ResponseWriter, r *http.Request) {
	n, ok := d.findNode(r.PathValue("name"))
	if !ok {
		http.Error(w, "no node "+r.PathValue("name"), 404)
		return
	}
	tl := d.Timeline(n.MAC)
	// Newest first on the page.
	for i, j := 0, len(tl)-1; i < j; i, j = i+1, j-1 {
		tl[i], tl[j] = tl[j], tl[i]
	}
	d.render(w, "node", map[string]any{"Title": dash(n.Name), "Node": n, "Timeline": tl, "Current": d.currentImage()})
}

func (d *Dashboard) ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return Ago(d.opt.Now().Sub(t)) + " ago"
}

// uptime is how long a node has been up, "" unless its state is up.
func (d *Dashboard) uptime(n fleet.Node) string {
	if n.State != fleet.StateUp || n.Seen == nil || n.Seen.UpTime.IsZero() {
		return ""
	}
	return Ago(d.opt.Now().Sub(n.Seen.UpTime))
}

// Ago formats a duration the way the pages and their script do: 45s, 12m, 3h4m, 2d5h.
func Ago(dur time.Duration) string {
	s := int64(dur / time.Second)
	if s < 0 {
		s = 0
	}
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm", s/60)
	case s < 86400:
		return fmt.Sprintf("%dh%dm", s/3600, s%3600/60)
	}
	return fmt.Sprintf("%dd%dh", s/86400, s%86400/3600)
}

func utc(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return dash(id)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
