package testlab

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/herdlab/herd/internal/testenv"
)

// TestSnifferReassemblesRequests: a request made inside a namespace is
// captured from the wire with its headers and body, byte for byte.
func TestSnifferReassemblesRequests(t *testing.T) {
	testenv.RequireNetns(t)
	ns, err := NewNetns("sniff")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := ns.IP("link", "set", "lo", "up"); err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp4", "127.0.0.1:8080"); return err }); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) })}
	go srv.Serve(ln)
	defer srv.Close()
	sn, err := Sniff(ns, "lo", 8080)
	if err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte(`{"x":"y"}`), 1000)
	req, _ := http.NewRequest(http.MethodPost, "http://127.0.0.1:8080/nodes/gpu1/overlay", bytes.NewReader(body))
	req.Header.Set("Herd-Auth", "abc")
	resp, err := ns.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	got := sn.Stop()
	if len(got) != 1 || got[0].Path != "/nodes/gpu1/overlay" || got[0].Header.Get("Herd-Auth") != "abc" || !bytes.Equal(got[0].Body, body) {
		n := -1
		if len(got) > 0 {
			n = len(got[0].Body)
		}
		t.Fatalf("captured %d requests, first body %d bytes of %d", len(got), n, len(body))
	}
}
