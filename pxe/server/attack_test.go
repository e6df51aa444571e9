package server

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/internal/testenv"
)

// slowlorisPy opens N connections to host:port and keeps each sending an
// unfinished request header, one byte a second, for S seconds.
const slowlorisPy = `
import resource, socket, sys, time
host, port, n, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks = []
for i in range(n):
    try:
        s = socket.create_connection((host, port), timeout=2)
        s.send(b"GET /boot/52:54:00:aa:00:01.ipxe HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    except OSError:
        pass
print("opened", len(socks), flush=True)
end = time.time() + secs
while time.time() < end:
    for s in socks:
        try: s.send(b"X")
        except OSError: pass
    time.sleep(1)
`

// TestAttackSlowloris: one host opens 900 connections to the boot port and
// trickles request headers (attacker: any host that reaches the port).
// Meanwhile a node at another address gets its script and kernel with
// real curl before a generous deadline, and the server's descriptors stay
// bounded (MaxConnsPerIP). Fails if every connection is accepted and held.
func TestAttackSlowloris(t *testing.T) {
	testenv.RequireCommands(t, "curl", "python3")
	testenv.RequireFiles(t, "package ipxe", "/usr/lib/ipxe/undionly.kpxe")
	state := t.TempDir()
	id := publish(t, state, map[string]int{manifest.Kernel: 4 << 20, manifest.Initrd: 1 << 20, manifest.Rootfs: 1 << 20})
	httpPort, tftpPort := freePort(t, "tcp"), freePort(t, "udp")
	cfgPath := filepath.Join(t.TempDir(), "herd.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(serveYAML, httpPort)), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{StateDir: state, ConfigPath: cfgPath, TFTPPort: tftpPort,
			Log: slog.New(slog.NewJSONHandler(&logBuf{}, nil)), Ready: func(h, _ string) { ready <- h }})
	}()
	defer func() { cancel(); <-done }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	fds := func() int { e, _ := os.ReadDir("/proc/self/fd"); return len(e) }
	baseFD := fds()

	script := filepath.Join(t.TempDir(), "slowloris.py")
	os.WriteFile(script, []byte(slowlorisPy), 0o644)
	att := exec.Command("/usr/bin/python3", script, "127.0.0.1", strconv.Itoa(httpPort), "900", "20")
	var attOut bytes.Buffer
	att.Stdout, att.Stderr = &attOut, &attOut
	if err := att.Start(); err != nil {
		t.Fatal(err)
	}
	defer att.Process.Kill()
	peak := 0
	for i := 0; i < 40; i++ { // the attacker opens its connections
		if n := fds() - baseFD; n > peak {
			peak = n
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The node (another address on loopback) boots meanwhile.
	fetch := func(path string) []byte {
		out := filepath.Join(t.TempDir(), "out")
		b, err := exec.Command("curl", "-fsS", "--interface", "127.0.0.2", "--max-time", "60", "-o", out, base+path).CombinedOutput()
		if err != nil {
			t.Fatalf("curl %s during the slowloris: %v: %s", path, err, b)
		}
		data, _ := os.ReadFile(out)
		return data
	}
	if s := fetch("/boot/52:54:00:aa:00:01.ipxe"); !bytes.Contains(s, []byte("#!ipxe")) {
		t.Errorf("script: %q", s)
	}
	want, _ := os.ReadFile(filepath.Join(state, "images", id, manifest.Kernel))
	if k := fetch("/images/" + id + "/" + manifest.Kernel); !bytes.Equal(k, want) {
		t.Errorf("kernel: %d bytes, want %d identical", len(k), len(want))
	}
	if n := fds() - baseFD; n > peak {
		peak = n
	}
	t.Logf("attacker: %s; server fds peak +%d", bytes.TrimSpace(attOut.Bytes()), peak)
	if peak > MaxConnsPerIP+32 {
		t.Errorf("open fds grew by %d under a 900-connection slowloris from one address, want at most %d", peak, MaxConnsPerIP+32)
	}
}
