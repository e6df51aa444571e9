package web_test

import (
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/herdlab/herd/internal/browser"
)

// TestDashboardInChromium loads the dashboard of a real herd serve in a
// real headless Chromium: the node rows are right, a boot in progress
// (events posted through the real /events path) updates the page without a
// reload, the node page's timeline grows live, the images page shows the
// generations, and the layout holds on a phone-sized screen.
func TestDashboardInChromium(t *testing.T) {
	l := startLab(t, "")
	ctx := browser.Start(t, browser.Options{})
	// gpu01 has booted; gpu02 was never seen.
	for _, s := range []string{"network", "download", "up"} {
		l.postEvent(t, "gpu01", s, 100, "")
	}
	row1, row2 := `tr[data-name="gpu01"]`, `tr[data-name="gpu02"]`
	if err := chromedp.Do(ctx,
		chromedp.Navigate(l.base+"/"),
		chromedp.WaitVisible(chromedp.CSS(`#nodes`)),
		// The script connected its event stream.
		chromedp.WaitVisible(chromedp.CSS(`#live.on`)),
	); err != nil {
		t.Fatalf("load the nodes page: %v", err)
	}
	if got := browser.Text(t, ctx, row1+` [data-field="state"]`); got != "up" {
		t.Errorf("gpu01 state %q, want up", got)
	}
	if got := browser.Text(t, ctx, row1+` [data-field="image"]`); !strings.HasPrefix(got, l.images[1][:12]) || !strings.Contains(got, "current") {
		t.Errorf("gpu01 image cell %q, want %s… current", got, l.images[1][:12])
	}
	if got := browser.Text(t, ctx, row2+` [data-field="state"]`); got != "unseen" {
		t.Errorf("gpu02 state %q, want unseen", got)
	}
	for _, r := range []string{row1, row2} {
		if got := browser.Text(t, ctx, r+` [data-field="gpus"]`); got != "no report" {
			t.Errorf("%s GPUs %q, want \"no report\"", r, got)
		}
	}

	// A boot in progress: the row follows it with no reload (a marker set
	// in the page survives only if the page is never reloaded).
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[int](`window.herdTestMarker = 42`)); err != nil {
		t.Fatal(err)
	}
	l.postEvent(t, "gpu02", "network", 0, "dhcp ok")
	l.postEvent(t, "gpu02", "download", 37, "rootfs.squashfs 37%")
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`(function(){
		var c = document.querySelector('tr[data-name="gpu02"] [data-field="progress"]');
		return c && c.textContent.indexOf("download") >= 0 && c.textContent.indexOf("37%") >= 0;
	})()`, chromedp.WithPollingTimeout(60*time.Second))); err != nil {
		t.Fatalf("the gpu02 row did not show the download in progress: %v (row: %q)", err, browser.Text(t, ctx, row2))
	}
	marker, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`window.herdTestMarker || 0`))
	if marker != 42 {
		t.Fatal("the page reloaded to show the update; it should update in place")
	}
	if got := browser.Text(t, ctx, row2+` [data-field="state"]`); got != "booting" {
		t.Errorf("gpu02 state %q during its boot, want booting", got)
	}
	pct, _ := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS(row2+` progress`), "value"))
	if pct.Value != "37" {
		t.Errorf("progress bar value %q, want 37", pct.Value)
	}
	browser.Screenshot(t, ctx, "nodes-booting.png")

	l.postEvent(t, "gpu02", "up", 100, "booted")
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.querySelector('tr[data-name="gpu02"] [data-field="state"]').textContent.trim() === "up"`,
		chromedp.WithPollingTimeout(60*time.Second))); err != nil {
		t.Fatalf("gpu02 did not turn up live: %v", err)
	}
	browser.Screenshot(t, ctx, "nodes.png")

	// The node page: its timeline grows live.
	if err := chromedp.Do(ctx,
		chromedp.Navigate(l.base+"/ui/nodes/gpu02"),
		chromedp.WaitVisible(chromedp.CSS(`#live.on`)),
	); err != nil {
		t.Fatal(err)
	}
	if got := browser.Text(t, ctx, "#timeline"); !strings.Contains(got, "download 37% rootfs.squashfs 37%") || !strings.Contains(got, "up 100% booted") {
		t.Errorf("gpu02 timeline %q lacks its boot", got)
	}
	l.postEvent(t, "gpu02", "error", 0, "disk on fire")
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.querySelector('#timeline li').textContent.indexOf("disk on fire") >= 0 && document.getElementById("state").textContent === "error"`,
		chromedp.WithPollingTimeout(60*time.Second))); err != nil {
		t.Fatalf("the node page did not show the error live: %v (timeline %q)", err, browser.Text(t, ctx, "#timeline"))
	}
	browser.Screenshot(t, ctx, "node-gpu02.png")

	// Images: both generations, the current one tested, the old one's diff.
	if err := chromedp.Do(ctx, chromedp.Navigate(l.base+"/ui/images"), chromedp.WaitVisible(chromedp.CSS(`#images`))); err != nil {
		t.Fatal(err)
	}
	cur := browser.Text(t, ctx, `tr[data-id="`+l.images[1]+`"]`)
	old := browser.Text(t, ctx, `tr[data-id="`+l.images[0]+`"]`)
	if !strings.Contains(cur, "current") || !strings.Contains(cur, "passed 12 checks passed") {
		t.Errorf("current image row %q", cur)
	}
	if !strings.Contains(old, "not tested") || !strings.Contains(old, "kernel 6.8.0-150-generic → 6.8.0-149-generic, +1 -1 ~1 packages") {
		t.Errorf("old image row %q", old)
	}
	browser.Screenshot(t, ctx, "images.png")

	// A phone: rows become cards, nothing wider than the screen.
	if err := chromedp.Do(ctx,
		chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile),
		chromedp.Navigate(l.base+"/"),
		chromedp.WaitVisible(chromedp.CSS(`#nodes`)),
	); err != nil {
		t.Fatal(err)
	}
	scrollW, err1 := chromedp.Run(ctx, chromedp.Evaluate[int64](`document.documentElement.scrollWidth`))
	clientW, err2 := chromedp.Run(ctx, chromedp.Evaluate[int64](`document.documentElement.clientWidth`))
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if scrollW > clientW {
		t.Errorf("on a 390 px screen the page is %d px wide (client %d): it scrolls sideways", scrollW, clientW)
	}
	browser.Screenshot(t, ctx, "nodes-phone.png")
}
