// Package browser starts Debian's headless Chromium for tests, driven from
// Go through chromedp over a pipe (so it also works when Chromium runs in a
// network namespace the test created). The flags keep Chromium from
// reaching anything but the pages a test loads: no background networking,
// component updates, sync or QUIC, and a fresh profile every time.
package browser

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/herdlab/herd/internal/testenv"
)

// Options configure Start.
type Options struct {
	// Netns, if set, runs Chromium inside that network namespace
	// (`ip netns exec`), so pages load from addresses only it reaches.
	Netns string
	// Timeout bounds everything the test does in the browser (default 3 min).
	Timeout time.Duration
}

// Start launches Chromium for t (stopped at cleanup) and returns a context
// for chromedp actions in its first tab.
func Start(t *testing.T, o Options) context.Context {
	t.Helper()
	testenv.RequireCommands(t, "chromium")
	if o.Timeout <= 0 {
		o.Timeout = 3 * time.Minute
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath("chromium"),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		// Chromium's own scratch directories (org.chromium.Chromium.*)
		// go under TMPDIR; in the test's temp dir they go with it.
		chromedp.Env("TMPDIR=" + t.TempDir()),
		chromedp.WindowSize(1280, 720),
	}
	if o.Netns != "" {
		ip, err := exec.LookPath("ip")
		if err != nil {
			t.Fatalf("chromium in a namespace needs ip(8): %v", err)
		}
		ns := o.Netns
		opts = append(opts, chromedp.ModifyCmdFunc(func(cmd *exec.Cmd) {
			cmd.Args = append([]string{"ip", "netns", "exec", ns, cmd.Path}, cmd.Args[1:]...)
			cmd.Path = ip
		}))
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelB(); cancelA() })
	// The first action starts the browser, which lives as long as ctx.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	tctx, cancelC := context.WithTimeout(ctx, o.Timeout)
	t.Cleanup(cancelC)
	return tctx
}

// Screenshot saves a full-page PNG named name in the test's artifact
// directory (kept by `go test -artifacts`; also copied into
// $HERD_SCREENSHOT_DIR when set) and returns its path.
func Screenshot(t *testing.T, ctx context.Context, name string) string {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	p := filepath.Join(t.ArtifactDir(), name)
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", p)
	if dir := os.Getenv("HERD_SCREENSHOT_DIR"); dir != "" {
		if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
			t.Errorf("copy screenshot: %v", err)
		}
	}
	return p
}

// Text returns the text content of the first element matching the CSS
// selector sel, with runs of white space folded to one space.
func Text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.TextContent(chromedp.CSS(sel)))
	if err != nil {
		t.Fatalf("text of %s: %v", sel, err)
	}
	return strings.Join(strings.Fields(s), " ")
}
