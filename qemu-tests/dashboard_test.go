package qemutests

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/herdlab/herd/internal/browser"
	"github.com/herdlab/herd/testlab"
)

// The dashboard check on TestLab's booted lab: headless Chromium, inside
// the lab's namespace, loads the nodes page `herd serve` renders from the
// nodes' real boot reports, and every node that booted shows as up with
// the lab's image. No extra boot: a few seconds of Chromium.
func init() {
	labExtras = append(labExtras, labExtra{name: "dashboard-shows-booted-nodes", run: dashboardCheck})
}

func dashboardCheck(t *testing.T, ctx context.Context, lab *testlab.Lab, nodes map[string]*testlab.Booted) {
	if len(nodes) == 0 {
		t.Fatal("no node booted")
	}
	bctx := browser.Start(t, browser.Options{Netns: lab.Netns.Name, Timeout: 2 * time.Minute})
	url := fmt.Sprintf("http://%s:%d/", testlab.LabServer, testlab.LabHTTP)
	if err := chromedp.Do(bctx, chromedp.Navigate(url), chromedp.WaitVisible(chromedp.CSS("#nodes")),
		chromedp.WaitVisible(chromedp.CSS("#live.on"))); err != nil {
		t.Fatalf("load the dashboard at %s inside the lab: %v", url, err)
	}
	browser.Screenshot(t, bctx, "lab-dashboard.png")
	for name := range nodes {
		row := `tr[data-name="` + name + `"]`
		if got := browser.Text(t, bctx, row+` [data-field="state"]`); got != "up" {
			t.Errorf("%s shows state %q, want up (row: %q)", name, got, browser.Text(t, bctx, row))
		}
		if got := browser.Text(t, bctx, row+` [data-field="image"]`); len(lab.ImageID) < 12 || got != lab.ImageID[:12]+" current" {
			t.Errorf("%s shows image %q, want %.12s current", name, got, lab.ImageID)
		}
	}
	for _, name := range []string{"gpu01", "gpu02"} {
		if _, ok := nodes[name]; !ok {
			t.Errorf("%s did not boot, so the dashboard cannot show it up", name)
		}
	}
}
