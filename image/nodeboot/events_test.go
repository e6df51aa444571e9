package nodeboot

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// eventSink records the events posted to /events.
type eventSink struct {
	mu     sync.Mutex
	events []Event
	block  chan struct{} // if set, handlers wait on it (an endpoint that hangs)
}

func (s *eventSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/events" || r.Method != http.MethodPost {
		http.NotFound(w, r)
		return
	}
	if s.block != nil {
		<-s.block
	}
	var ev Event
	if err := json.NewDecoder(r.Body).Decode(&ev); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	s.mu.Lock()
	s.events = append(s.events, ev)
	s.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func TestReporterPostsJSONAndPrints(t *testing.T) {
	sink := &eventSink{}
	hs := httptest.NewServer(sink)
	defer hs.Close()
	var console bytes.Buffer
	r := &Reporter{Server: hs.URL, Node: "gpu1", MAC: "52:54:00:00:00:01", Image: "img1", Console: &console}
	r.Report(context.Background(), StageDownload, 40, "%d of %d MiB", 40, 100)
	if len(sink.events) != 1 {
		t.Fatalf("events: %+v", sink.events)
	}
	ev := sink.events[0]
	if ev.Node != "gpu1" || ev.MAC != "52:54:00:00:00:01" || ev.Stage != "download" || ev.Percent != 40 || ev.Message != "40 of 100 MiB" || ev.Image != "img1" || ev.Time.IsZero() {
		t.Errorf("event %+v", ev)
	}
	if !strings.Contains(console.String(), "herd: [download 40%] 40 of 100 MiB") {
		t.Errorf("console %q", console.String())
	}
}

func TestReporterNeverBlocksTheBoot(t *testing.T) {
	sink := &eventSink{block: make(chan struct{})}
	hs := httptest.NewServer(sink)
	defer hs.Close()
	defer close(sink.block)
	var console bytes.Buffer
	r := &Reporter{Server: hs.URL, Console: &console, Timeout: 50 * time.Millisecond}
	// Returns (the post times out) and tells the console; no error escapes.
	r.Report(context.Background(), StageDisk, 0, "x")
	if !strings.Contains(console.String(), "event not delivered") {
		t.Errorf("console %q", console.String())
	}
	// A server that refuses connections: same.
	hs2 := httptest.NewServer(http.NotFoundHandler())
	url := hs2.URL
	hs2.Close()
	r2 := &Reporter{Server: url, Console: &console}
	r2.Report(context.Background(), StageError, 0, "y")
	if err := r2.Post(context.Background(), Event{Stage: "x"}); err == nil {
		t.Error("post to a closed server succeeded")
	}
}
