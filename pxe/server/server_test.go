package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/internal/testenv"
)

// publish publishes an image with random artifacts of the given sizes into
// state's store (image/store's API, as a build does) and promotes it.
func publish(t testing.TB, state string, sizes map[string]int) string {
	t.Helper()
	return publishWith(t, state, "test", func(name, dst string) error {
		b := make([]byte, sizes[name])
		rand.Read(b)
		return os.WriteFile(dst, b, 0o644)
	})
}

// publishWith stages each artifact with fill, publishes and promotes.
func publishWith(t testing.TB, state, recipe string, fill func(name, dst string) error) string {
	t.Helper()
	st, err := store.Open(state)
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := st.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	dir, err := st.StagingDir()
	if err == nil {
		for _, name := range store.Artifacts {
			if err = fill(name, filepath.Join(dir, name)); err != nil {
				break
			}
		}
	}
	var id string
	if err == nil {
		id, err = st.Publish(dir, &manifest.Manifest{Created: time.Now().UTC(), Recipe: recipe})
	}
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Promote(context.Background(), id, false); err != nil {
		t.Fatal(err)
	}
	return id
}

func freePort(t *testing.T, network string) int {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *logBuf) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

const serveYAML = `# test site
server:
  address: 127.0.0.1
  http_port: %d
  tftp_root: /usr/lib/ipxe
dhcp:
  mode: off
overlays: [base]
nodes:
  - name: gpu1
    mac: 52:54:00:aa:00:01
    ip: 127.0.0.1
`

// waitFor polls cond (bounded by count, not asserting any duration).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 600; i++ {
		if cond() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("gave up waiting for %s", what)
}

func status(url string) int {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestServeReloadAndDrain runs the whole server in-process on loopback:
// TFTP and HTTP answer, SIGHUP with a broken herd.yaml keeps the old
// config, SIGHUP with a good one applies it, and SIGTERM lets a download in
// flight finish before Run returns nil.
func TestServeReloadAndDrain(t *testing.T) {
	testenv.RequireCommands(t, "curl")
	testenv.RequireFiles(t, "package ipxe", "/usr/lib/ipxe/undionly.kpxe")
	state := t.TempDir()
	id := publish(t, state, map[string]int{manifest.Kernel: 1 << 20, manifest.Initrd: 1 << 20, manifest.Rootfs: 48 << 20})
	httpPort, tftpPort := freePort(t, "tcp"), freePort(t, "udp")
	cfgPath := filepath.Join(t.TempDir(), "herd.yaml")
	good := fmt.Sprintf(serveYAML, httpPort)
	os.WriteFile(cfgPath, []byte(good), 0o644)

	logs := &logBuf{}
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(context.Background(), Options{
			StateDir: state, ConfigPath: cfgPath, TFTPPort: tftpPort,
			Log:   slog.New(slog.NewJSONHandler(logs, nil)),
			Ready: func(h, _ string) { ready <- h },
		})
	}()
	var base string
	select {
	case h := <-ready:
		base = "http://" + h
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}

	// TFTP serves the iPXE binary.
	out := filepath.Join(t.TempDir(), "u")
	if b, err := exec.Command("curl", "-sS", "--tftp-blksize", "1468", "-o", out, fmt.Sprintf("tftp://127.0.0.1:%d/undionly.kpxe", tftpPort)).CombinedOutput(); err != nil {
		t.Fatalf("tftp: %v %s", err, b)
	}
	want, _ := os.ReadFile("/usr/lib/ipxe/undionly.kpxe")
	if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
		t.Fatal("tftp bytes differ")
	}
	if c := status(base + "/boot/52:54:00:aa:00:01.ipxe"); c != 200 {
		t.Fatalf("script: %d", c)
	}
	// Identity: a challenge for a known node; the old address-checked
	// overlay URL is gone (the overlay is sealed to an enrolled key).
	if c := status(base + "/nodes/gpu1/challenge"); c != 200 {
		t.Fatalf("challenge: %d\n%s", c, logs.String())
	}
	if c := status(base + "/nodes/gpu1/overlay.cpio"); c != 410 {
		t.Fatalf("old overlay URL: %d, want 410", c)
	}
	// One registry: TFTP, HTTP and process metrics on /metrics.
	if resp, err := http.Get(base + "/metrics"); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, m := range []string{`herd_tftp_transfers_total{result="ok"} 1`, `herd_http_requests_total{code="200",route="boot"} 1`, "process_open_fds"} {
			if !strings.Contains(string(b), m) {
				t.Errorf("/metrics lacks %s", m)
			}
		}
	} else {
		t.Fatal(err)
	}

	// A broken file on SIGHUP: refused, logged with file:line, old config kept.
	os.WriteFile(cfgPath, []byte(good+"  - name: BAD\n    mac: zz\n"), 0o644)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitFor(t, "the refused reload in the log", func() bool { return strings.Contains(logs.String(), "reload refused") })
	if !strings.Contains(logs.String(), "herd.yaml:13") {
		t.Errorf("reload error does not name herd.yaml:13:\n%s", logs.String())
	}
	if c := status(base + "/boot/52:54:00:aa:00:01.ipxe"); c != 200 {
		t.Fatalf("after a bad reload the old node is gone: %d", c)
	}

	// Start a slow download, then reload with a good file and stop: the
	// download must complete intact.
	dl := filepath.Join(t.TempDir(), "rootfs")
	curl := exec.Command("curl", "-fsS", "--limit-rate", "16M", "-o", dl, base+"/images/"+id+"/rootfs.squashfs")
	if err := curl.Start(); err != nil {
		t.Fatal(err)
	}
	defer curl.Process.Kill()
	waitFor(t, "the download to start", func() bool {
		st, err := os.Stat(dl)
		return err == nil && st.Size() > 0
	})
	os.WriteFile(cfgPath, []byte(good+"  - name: gpu2\n    mac: 52:54:00:aa:00:02\n    ip: 127.0.0.2\n"), 0o644)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitFor(t, "gpu2 after reload", func() bool { return status(base+"/boot/52:54:00:aa:00:02.ipxe") == 200 })

	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	if err := <-done; err != nil {
		t.Fatalf("Run after SIGTERM: %v", err)
	}
	if err := curl.Wait(); err != nil {
		t.Fatalf("the download in flight was cut: %v", err)
	}
	got, _ := os.ReadFile(dl)
	img, err := store.ReadOnly(state).Get(id)
	if err != nil {
		t.Fatal(err)
	}
	wantRoot, _ := os.ReadFile(filepath.Join(img.Dir, manifest.Rootfs))
	if !bytes.Equal(got, wantRoot) {
		t.Fatalf("download differs after drain: %d of %d bytes", len(got), len(wantRoot))
	}
	// New connections are refused after the drain.
	if c := status(base + "/healthz"); c != 0 {
		t.Errorf("server still answers after stop: %d", c)
	}
}
