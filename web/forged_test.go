package web_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/fleet"
	"github.com/herdlab/herd/internal/nodeauth"
	"github.com/herdlab/herd/web"
)

// TestForgedEventsNeverReachTheDashboard is the attack test for what the
// dashboard shows. Attacker: a user on the lab LAN who posts boot events
// to /events — unsigned, for an enrolled node or for a MAC herd never met,
// or signed with a key of their own — to paint a node as failed or
// conjure a fake one. None of it may reach the API, the pages or the live
// stream; the next change a viewer sees is the real node's own.
func TestForgedEventsNeverReachTheDashboard(t *testing.T) {
	l := startLab(t, "")
	l.postEvent(t, "gpu01", "up", 100, "booted")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", l.base+"/api/v1/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	streamed := make(chan sseEvent, 16)
	go readSSE(resp.Body, func(e sseEvent) bool { streamed <- e; return true })
	if first := <-streamed; first.name != "snapshot" {
		t.Fatalf("first event %q, want snapshot", first.name)
	}

	post := func(ev map[string]any) int {
		b, _ := json.Marshal(ev)
		r, err := http.Post(l.base+"/events", "application/json", strings.NewReader(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		return r.StatusCode
	}
	// Unsigned, claiming the enrolled gpu01 failed.
	if c := post(map[string]any{"node": "gpu01", "mac": macs["gpu01"], "stage": "error", "message": "forged: disk dead"}); c/100 == 2 && c != http.StatusAccepted {
		t.Errorf("unsigned event for enrolled gpu01 answered %d", c)
	}
	// Unsigned, a node nobody configured.
	post(map[string]any{"node": "evil01", "mac": "52:54:00:66:66:66", "stage": "up", "percent": 100, "message": "forged node"})
	// Signed, but with the attacker's own key, as gpu01.
	k, err := nodeauth.GenerateFileKey()
	if err != nil {
		t.Fatal(err)
	}
	mallory := &nodeauth.Client{Base: l.base, Node: "gpu01", Key: k}
	b, _ := json.Marshal(map[string]any{"node": "gpu01", "mac": macs["gpu01"], "stage": "error", "message": "forged: signed by a stranger"})
	if err := mallory.Event(context.Background(), b); err == nil {
		t.Error("an event signed by a key gpu01 never enrolled was accepted")
	}

	// The real gpu02 reports; that is the next thing the stream carries.
	l.postEvent(t, "gpu02", "download", 5, "rootfs 5%")
	select {
	case e := <-streamed:
		var m web.Message
		json.Unmarshal([]byte(e.data), &m)
		if e.name != "node" || m.Node.Name != "gpu02" || m.Event == nil || m.Event.Percent != 5 {
			t.Errorf("the stream carried %s %s before gpu02's real event", e.name, e.data)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("gpu02's real event never reached the stream")
	}

	var nodes []fleet.Node
	if err := json.Unmarshal(l.get(t, "/api/v1/nodes"), &nodes); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Name == "evil01" || n.MAC == "52:54:00:66:66:66" {
			t.Errorf("a forged node reached the API: %+v", n)
		}
		if n.Name == "gpu01" && (n.State != fleet.StateUp || n.Seen == nil || n.Seen.Errors != 0) {
			t.Errorf("forged errors changed gpu01: state %s, seen %+v", n.State, n.Seen)
		}
	}
	page := string(l.get(t, "/"))
	if strings.Contains(page, "evil01") || strings.Contains(page, "forged") {
		t.Error("forged input is on the nodes page")
	}
	if tl := string(l.get(t, "/api/v1/nodes/gpu01/timeline")); strings.Contains(tl, "forged") {
		t.Errorf("forged input is in gpu01's timeline: %s", tl)
	}
}
