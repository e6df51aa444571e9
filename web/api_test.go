package web_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/fleet"
	"github.com/herdlab/herd/web"
)

// strictDecode decodes data into v refusing fields v does not declare, so a
// field added to a response without a schema change here fails the test.
func strictDecode(t *testing.T, what string, data []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: does not match its schema: %v\n%s", what, err, data)
	}
}

// keys returns the sorted top-level keys of each object in a JSON array.
func keys(t *testing.T, data []byte) [][]string {
	var objs []map[string]json.RawMessage
	if err := json.Unmarshal(data, &objs); err != nil {
		t.Fatalf("not an array of objects: %v\n%s", err, data)
	}
	var out [][]string
	for _, o := range objs {
		var k []string
		for name := range o {
			k = append(k, name)
		}
		sort.Strings(k)
		out = append(out, k)
	}
	return out
}

func hasAll(got []string, want ...string) bool {
	for _, w := range want {
		i := sort.SearchStrings(got, w)
		if i == len(got) || got[i] != w {
			return false
		}
	}
	return true
}

// TestAPISchemaSameAsCLIAndNoSecret checks every API endpoint's schema
// against a real herd serve, that the API and `herd node|image list --json`
// return the same data, and that no response — API, pages, static files,
// the event stream, /metrics — holds any secret from the server's state
// dir or herd.yaml (node SSH host keys, machine-ids, password files'
// contents, password hashes).
func TestAPISchemaSameAsCLIAndNoSecret(t *testing.T) {
	l := startLab(t, "")
	seen := &bodies{m: map[string][]byte{}}
	get := func(path string) []byte {
		b := l.get(t, path)
		seen.add(path, b)
		return b
	}
	// Open a live stream first, so the boot below arrives through it.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", l.base+"/api/v1/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
		t.Fatalf("/api/v1/events: %s %q", resp.Status, ct)
	}
	streamed := make(chan sseEvent, 64)
	go readSSE(resp.Body, func(e sseEvent) bool { streamed <- e; return true })
	first := <-streamed
	if first.name != "snapshot" {
		t.Fatalf("first event %q, want snapshot", first.name)
	}
	var snap []fleet.Node
	strictDecode(t, "snapshot event", []byte(first.data), &snap)
	seen.add("/api/v1/events", []byte(first.data))

	// gpu01 boots through every stage; gpu02 stops in download.
	for _, s := range []struct {
		stage string
		pct   int
	}{{"network", 0}, {"disk", 10}, {"download", 50}, {"verify", 90}, {"mount", 95}, {"switch_root", 99}, {"up", 100}} {
		l.postEvent(t, "gpu01", s.stage, s.pct, "stage "+s.stage)
	}
	l.postEvent(t, "gpu02", "download", 42, "rootfs 42%")
	var last web.Message
	for got := 0; got < 8; got++ {
		select {
		case e := <-streamed:
			seen.add("/api/v1/events", []byte(e.data))
			if e.name != "node" || e.id == "" {
				t.Fatalf("stream event %q id %q, want node with an id", e.name, e.id)
			}
			last = web.Message{}
			strictDecode(t, "node event", []byte(e.data), &last)
		case <-time.After(30 * time.Second):
			t.Fatalf("the stream delivered %d of 8 changes", got)
		}
	}
	if last.Kind != "event" || last.Node.Name != "gpu02" || last.Node.State != fleet.StateBooting || last.Event == nil || last.Event.Percent != 42 {
		t.Errorf("last streamed change: %+v", last)
	}

	var idx struct {
		Version   string   `json:"version"`
		Endpoints []string `json:"endpoints"`
	}
	strictDecode(t, "/api/v1/", get("/api/v1/"), &idx)
	if idx.Version != "v1" || len(idx.Endpoints) != len(web.Endpoints) {
		t.Errorf("/api/v1/: %+v", idx)
	}

	nodesJSON := get("/api/v1/nodes")
	var nodes []fleet.Node
	strictDecode(t, "/api/v1/nodes", nodesJSON, &nodes)
	for _, k := range keys(t, nodesJSON) {
		if !hasAll(k, "name", "mac", "configured", "state", "gpus") {
			t.Errorf("/api/v1/nodes: a node lacks a required key: %v", k)
		}
	}
	if len(nodes) != 2 || nodes[0].Name != "gpu01" || nodes[0].State != fleet.StateUp || nodes[0].Seen == nil ||
		nodes[0].Seen.Image != l.images[1] || nodes[0].Seen.Boots != 1 || nodes[1].State != fleet.StateBooting || nodes[1].GPUs != nil {
		t.Errorf("/api/v1/nodes:\n%s", nodesJSON)
	}
	// One source of truth: the CLI prints the same data. The CLI reads
	// nodes.json, which the server writes at most every 2 s (pxe/inventory
	// coalesces rewrites), so wait for it to catch up.
	sameAsCLI := func(apiPath string, args ...string) {
		t.Helper()
		var cli, api any
		for i := 0; i < 100; i++ { // liveness bound: 20 s
			cli, api = nil, nil
			json.Unmarshal(l.herdJSON(t, args...), &cli)
			json.Unmarshal(get(apiPath), &api)
			if reflect.DeepEqual(cli, api) {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Errorf("herd %s and %s differ:\n%v\n%v", strings.Join(args, " "), apiPath, cli, api)
	}
	sameAsCLI("/api/v1/nodes", "node", "list", "--json")

	var one fleet.Node
	strictDecode(t, "/api/v1/nodes/gpu01", get("/api/v1/nodes/gpu01"), &one)
	if one.Name != "gpu01" {
		t.Errorf("/api/v1/nodes/gpu01: %+v", one)
	}
	sameAsCLI("/api/v1/nodes/"+macs["gpu01"], "node", "show", "--json", "gpu01")
	if c := l.status("/api/v1/nodes/nosuch"); c != 404 {
		t.Errorf("unknown node: %d, want 404", c)
	}

	var tl []web.Entry
	strictDecode(t, "timeline", get("/api/v1/nodes/gpu01/timeline"), &tl)
	if len(tl) != 7 || tl[0].Stage != "network" || tl[6].Stage != "up" || tl[6].Percent != 100 {
		t.Errorf("gpu01 timeline: %+v", tl)
	}

	imagesJSON := get("/api/v1/images")
	var imgs []fleet.Image
	strictDecode(t, "/api/v1/images", imagesJSON, &imgs)
	for _, k := range keys(t, imagesJSON) {
		if !hasAll(k, "id", "created", "recipe", "kernel", "nvidia", "size", "current", "nodes", "tested") {
			t.Errorf("/api/v1/images: an image lacks a required key: %v", k)
		}
	}
	sameAsCLI("/api/v1/images", "image", "list", "--json")
	byID := map[string]fleet.Image{}
	for _, im := range imgs {
		byID[im.ID] = im
	}
	cur, old := byID[l.images[1]], byID[l.images[0]]
	if !cur.Current || cur.Tested != "passed" || cur.Nodes != 1 || cur.VsCurrent != nil {
		t.Errorf("current image row: %+v", cur)
	}
	// The old image against the current: kernel back, curl gone, vim back, bash older.
	if d := old.VsCurrent; d == nil || d.Kernel == nil || d.Kernel.Old != "6.8.0-150-generic" || d.PackagesAdded != 1 || d.PackagesRemoved != 1 || d.PackagesChanged != 1 {
		t.Errorf("old image's diff against current: %+v", old.VsCurrent)
	}

	var rollouts []web.Rollout
	ro := get("/api/v1/rollouts")
	strictDecode(t, "/api/v1/rollouts", ro, &rollouts)
	if strings.TrimSpace(string(ro)) != "[]" {
		t.Errorf("/api/v1/rollouts: %s, want [] until rollouts exist", ro)
	}

	// Read-only: nothing but GET/HEAD.
	for _, p := range []string{"/api/v1/nodes", "/api/v1/nodes/gpu01", "/", "/api/v1/events"} {
		r, err := http.Post(l.base+p, "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		if r.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST %s: %s, want 405", p, r.Status)
		}
	}

	// Pages and static files too.
	for _, p := range []string{"/", "/ui/images", "/ui/nodes/gpu01", "/ui/nodes/gpu02", "/ui/static/dash.js", "/ui/static/dash.css", "/metrics"} {
		get(p)
	}
	page := string(seen.m["/"])
	for _, want := range []string{`name="viewport"`, `data-mac="` + macs["gpu01"] + `"`, "no report", `class="state-up"`} {
		if !strings.Contains(page, want) {
			t.Errorf("nodes page lacks %q", want)
		}
	}
	metrics := string(seen.m["/metrics"])
	for _, want := range []string{
		`herd_node_up{mac="` + macs["gpu01"] + `",node="gpu01"} 1`,
		`herd_node_state{mac="` + macs["gpu02"] + `",node="gpu02",state="booting"} 1`,
		`herd_node_last_boot_timestamp_seconds{mac="` + macs["gpu01"] + `",node="gpu01"}`,
		"herd_dashboard_event_streams 1",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// No secret anywhere. Keys are checked line by line (base64 body lines),
	// so a partial leak is caught too.
	if len(l.secrets) < 8 {
		t.Fatalf("only %d secrets planted: %v", len(l.secrets), l.secrets)
	}
	for path, body := range seen.m {
		if bytes.Contains(body, []byte("PRIVATE KEY")) {
			t.Errorf("%s holds a private key", path)
		}
		for what, secret := range l.secrets {
			for _, line := range strings.Split(secret, "\n") {
				line = strings.TrimSpace(line)
				if len(line) >= 16 && !strings.HasPrefix(line, "-----") && bytes.Contains(body, []byte(line)) {
					t.Errorf("%s leaks %s (%q)", path, what, line)
				}
			}
		}
	}
}

// TestEventStreamFloodIsBounded is the attack test for the live stream.
// Attacker: anyone on the lab LAN opens event streams by the hundred, from
// one address and from many, or opens one and never reads it. The server
// must refuse streams beyond its limits (per address and in total), keep
// taking boot events and serving boot scripts while the flood holds its
// connections, never let a stalled reader slow the boot event path, and
// give the places back when the flood ends.
func TestEventStreamFloodIsBounded(t *testing.T) {
	l := startLab(t, "")
	host := strings.TrimPrefix(l.base, "http://")
	open := func(src string) (net.Conn, int) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
		c, err := d.Dial("tcp4", host)
		if err != nil {
			t.Fatalf("dial from %s: %v", src, err)
		}
		fmt.Fprintf(c, "GET /api/v1/events HTTP/1.1\r\nHost: %s\r\n\r\n", host)
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("stream from %s: %v", src, err)
		}
		c.SetReadDeadline(time.Time{})
		return c, resp.StatusCode
	}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	// One address: MaxSubscribersPerSource streams, then refusals.
	for i := 0; i < web.MaxSubscribersPerSource; i++ {
		c, code := open("127.0.0.9")
		conns = append(conns, c)
		if code != 200 {
			t.Fatalf("stream %d from one address: %d", i, code)
		}
	}
	c, code := open("127.0.0.9")
	c.Close()
	if code != http.StatusServiceUnavailable {
		t.Fatalf("stream %d from one address: %d, want 503 (per-address limit)", web.MaxSubscribersPerSource+1, code)
	}
	// Many addresses: up to the total, then refusals for everyone.
	for src := 10; len(conns) < web.MaxSubscribers; src++ {
		for j := 0; j < web.MaxSubscribersPerSource && len(conns) < web.MaxSubscribers; j++ {
			c, code := open(fmt.Sprintf("127.0.1.%d", src))
			conns = append(conns, c)
			if code != 200 {
				t.Fatalf("stream %d (from 127.0.1.%d): %d", len(conns), src, code)
			}
		}
	}
	c, code = open("127.0.2.1")
	c.Close()
	if code != http.StatusServiceUnavailable {
		t.Fatalf("stream over the total of %d: %d, want 503", web.MaxSubscribers, code)
	}
	// Not one of these streams is read. The boot path still answers,
	// every event is taken (none waits on a stalled stream).
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 300; i++ {
			l.postEvent(t, "gpu02", "download", i%101, strings.Repeat("x", 1000))
		}
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Minute): // liveness bound, not a timing claim
		t.Fatal("boot events stalled behind unread event streams")
	}
	if c := l.status("/boot/" + macs["gpu01"] + ".ipxe"); c != 200 {
		t.Errorf("boot script during the flood: %d", c)
	}
	var n fleet.Node
	json.Unmarshal(l.get(t, "/api/v1/nodes/gpu02"), &n)
	if n.Seen == nil || n.Seen.Percent != 299%101 {
		t.Errorf("the last event was not recorded: %+v", n.Seen)
	}
	// The flood ends: its places come back.
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	l.waitFor(t, "streams to close", func() bool {
		b := l.get(t, "/metrics")
		return bytes.Contains(b, []byte("herd_dashboard_event_streams 0"))
	})
	c, code = open("127.0.0.9")
	c.Close()
	if code != 200 {
		t.Errorf("a stream after the flood: %d", code)
	}
	io.Discard.Write(nil)
}

// TestDashboardListenSetting: dashboard.listen moves the dashboard to its
// own address (the boot port then serves only the boot routes, and events
// posted there still reach it); "off" serves no dashboard at all.
func TestDashboardListenSetting(t *testing.T) {
	port := freePort(t, "tcp")
	l := startLab(t, fmt.Sprintf("dashboard:\n  listen: 127.0.0.1:%d\n", port))
	dash := fmt.Sprintf("http://127.0.0.1:%d", port)
	if c := l.status("/api/v1/nodes"); c != 404 {
		t.Errorf("boot port /api/v1/nodes: %d, want 404 with dashboard.listen set", c)
	}
	if c := l.status("/boot/" + macs["gpu01"] + ".ipxe"); c != 200 {
		t.Errorf("boot port /boot/: %d", c)
	}
	l.postEvent(t, "gpu02", "verify", 80, "hashing")
	r, err := http.Get(dash + "/api/v1/nodes/gpu02")
	if err != nil {
		t.Fatal(err)
	}
	var n fleet.Node
	json.NewDecoder(r.Body).Decode(&n)
	r.Body.Close()
	if r.StatusCode != 200 || n.State != fleet.StateBooting || n.Seen == nil || n.Seen.Stage != "verify" {
		t.Errorf("dashboard port: %s %+v", r.Status, n)
	}

	off := startLab(t, "dashboard:\n  listen: \"off\"\n")
	for _, p := range []string{"/", "/api/v1/nodes", "/ui/images"} {
		if c := off.status(p); c != 404 {
			t.Errorf("dashboard off: %s answered %d, want 404", p, c)
		}
	}
	if c := off.status("/healthz"); c != 200 {
		t.Errorf("dashboard off: /healthz %d", c)
	}
}
