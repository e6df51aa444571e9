package web

import (
	"bufio"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/pxe/inventory"
	"github.com/herdlab/herd/site"
)

// An event stream outlives the server's WriteTimeout: the boot server may
// bound writes (slowloris), and streams set their own deadline per write.
func TestStreamOutlivesServerWriteTimeout(t *testing.T) {
	dir := t.TempDir()
	inv, err := inventory.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &site.Config{Nodes: []site.Node{{Name: "n1", MAC: "52:54:00:00:00:01"}}}
	d, err := New(Options{Config: func() *site.Config { return cfg }, StateDir: dir, Inventory: inv, Heartbeat: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(d)
	srv.Config.WriteTimeout = 300 * time.Millisecond
	srv.Start()
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/api/v1/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	// Read keep-alives until well past the server's write timeout.
	until := time.Now().Add(time.Second)
	for time.Now().Before(until) {
		if _, err := br.ReadString('\n'); err != nil {
			t.Fatalf("the stream ended after the server's write timeout: %v", err)
		}
	}
	if err := inv.RecordEvent(inventory.Event{MAC: "52:54:00:00:00:01", Stage: "mount", Percent: 95}, "10.0.0.5", time.Now()); err != nil {
		t.Fatal(err)
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("no node event after the write timeout: %v", err)
		}
		if strings.HasPrefix(line, "data: ") && strings.Contains(line, `"stage":"mount"`) {
			return
		}
	}
}
