package server

import (
	"fmt"
	"net"
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

// TestHerdServeNotifiesSystemd: under a Type=notify unit, `herd serve` sends
// READY=1 once it serves, WATCHDOG=1 while its HTTP answers, and STOPPING=1
// on SIGTERM. The test plays systemd's side of the notify socket.
func TestHerdServeNotifiesSystemd(t *testing.T) {
	herd := testenv.Bin(t, "HERD_BIN")
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	publish(t, state, map[string]int{manifest.Kernel: 1000, manifest.Initrd: 1000, manifest.Rootfs: 1000})
	httpPort, tftpPort := freePort(t, "tcp"), freePort(t, "udp")
	cfgPath := filepath.Join(dir, "herd.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf("server: {address: 127.0.0.1, http_port: %d}\ndhcp: {mode: \"off\"}\noverlays: []\n", httpPort)), 0o644)

	sock := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	logf, _ := os.Create(filepath.Join(dir, "herd.log"))
	defer logf.Close()
	srv := exec.Command(herd, "--config", cfgPath, "--state", state, "serve", "--tftp-port", fmt.Sprint(tftpPort))
	srv.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=400000")
	srv.Stdout, srv.Stderr = logf, logf
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Process.Kill()
	next := func(want string) string {
		t.Helper()
		buf := make([]byte, 4096)
		conn.SetReadDeadline(time.Now().Add(60 * time.Second)) // liveness only
		for {
			n, err := conn.Read(buf)
			if err != nil {
				b, _ := os.ReadFile(filepath.Join(dir, "herd.log"))
				t.Fatalf("waiting for %s: %v\n%s", want, err, b)
			}
			if msg := string(buf[:n]); strings.HasPrefix(msg, want) {
				return msg
			}
		}
	}
	ready := next("READY=1")
	if status(fmt.Sprintf("http://127.0.0.1:%d/healthz", httpPort)) != 200 {
		t.Fatal("READY=1 came before HTTP answered")
	}
	if !strings.Contains(ready, "STATUS=serving: http 127.0.0.1:") {
		t.Errorf("ready message: %q", ready)
	}
	next("WATCHDOG=1")
	next("WATCHDOG=1")
	srv.Process.Signal(syscall.SIGTERM)
	next("STOPPING=1")
	if err := srv.Wait(); err != nil {
		t.Fatalf("herd serve after SIGTERM: %v", err)
	}
}
