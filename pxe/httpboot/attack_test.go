package httpboot

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/internal/testenv"
)

// slowReader asks for url's path and never reads the answer, with a tiny
// receive window so the server's writes stall (attacker: any host that
// can reach the boot port).
func slowReader(t *testing.T, base, path string) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		c.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048) })
		return err
	}}
	c, err := d.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write([]byte("GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestAttackSlowReadersAndQueue: readers that stop reading hold every
// download slot and fill the queue. The next request is answered 503 with
// Retry-After (not queued without bound), each stalled download is ended
// after WriteIdle without progress, and a real curl that honours
// Retry-After gets the kernel intact before a generous deadline. Fails if
// the queue is unbounded or a stalled reader keeps its slot.
func TestAttackSlowReadersAndQueue(t *testing.T) {
	testenv.RequireCommands(t, "curl")
	f := newFixture(t, "ignore")
	f.srv.opt.WriteIdle = 2 * time.Second
	cfg := *f.cfg
	cfg.Server.MaxHTTP = 1
	f.srv.SetConfig(&cfg)
	img := "/images/" + f.id + "/"

	// One reader takes the slot and stalls; QueuePerSlot more wait.
	slow := []net.Conn{slowReader(t, f.url, img+manifest.Rootfs)}
	time.Sleep(300 * time.Millisecond)
	for i := 0; i < QueuePerSlot; i++ {
		slow = append(slow, slowReader(t, f.url, img+manifest.Rootfs))
	}
	time.Sleep(300 * time.Millisecond)

	resp, err := (&http.Client{Timeout: 20 * time.Second}).Get(f.url + img + manifest.Kernel)
	if err != nil {
		t.Errorf("with the slot taken and the queue full: %v; want 503 with Retry-After at once", err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Errorf("with the slot taken and the queue full: %s, Retry-After %q; want 503 with Retry-After", resp.Status, resp.Header.Get("Retry-After"))
		}
	}

	// A real client that retries on 503 gets the kernel.
	want, _ := os.ReadFile(filepath.Join(f.state, "images", f.id, manifest.Kernel))
	out := filepath.Join(t.TempDir(), "kernel")
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	start := time.Now()
	b, err := exec.CommandContext(ctx, "curl", "-fsS", "--max-time", "100", "--retry", "20", "--retry-max-time", "90", "-o", out, f.url+img+manifest.Kernel).CombinedOutput()
	if err != nil {
		t.Fatalf("curl behind stalled readers: %v: %s", err, b)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
		t.Fatalf("kernel: %d bytes, want %d identical", len(got), len(want))
	}
	t.Logf("kernel fetched %.1fs after the stalled readers took the server", time.Since(start).Seconds())

	// The first stalled reader's response was cut off: it never gets the
	// whole rootfs however long it now reads.
	slow[0].SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(slow[0])
	hdr, _ := http.ReadResponse(r, nil)
	if hdr != nil {
		n, _ := bytes.NewBuffer(nil).ReadFrom(hdr.Body)
		if n == hdr.ContentLength {
			t.Errorf("a reader that stopped for longer than WriteIdle still got the whole %d bytes", n)
		}
	}
	if p := f.srv.PeakDownloads(); p > 1 {
		t.Errorf("peak concurrent downloads %d, want at most max_http 1", p)
	}
}
