package browser_test

import (
	"fmt"
	"net"
	"net/http"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/herdlab/herd/internal/browser"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/testlab"
)

// TestChromiumInNetns loads a page served on an address that exists only
// inside a namespace the test made: Chromium must run in there too (as the
// QEMU lab's dashboard check does).
func TestChromiumInNetns(t *testing.T) {
	testenv.RequireNetns(t)
	ns, err := testlab.NewNetns("browser")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := ns.AddBridge("br-test", "10.79.0.1/24"); err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp4", "10.79.0.1:0"); return err }); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `<!doctype html><title>t</title><p id="where">inside the namespace</p>`)
	})}
	go srv.Serve(ln)
	defer srv.Close()

	ctx := browser.Start(t, browser.Options{Netns: ns.Name})
	if err := chromedp.Do(ctx, chromedp.Navigate("http://"+ln.Addr().String()+"/"), chromedp.WaitVisible(chromedp.CSS("#where"))); err != nil {
		t.Fatalf("load a page inside the namespace: %v", err)
	}
	if got := browser.Text(t, ctx, "#where"); got != "inside the namespace" {
		t.Errorf("page text %q", got)
	}
}
