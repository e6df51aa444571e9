// Package swtpmtest starts a real software TPM 2.0 (swtpm) for tests.
package swtpmtest

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/herdlab/herd/internal/testenv"
)

// Start runs swtpm with its state in dir (kept, so a second Start on the
// same dir is the same TPM after a power cycle) and returns its command
// socket, for tpmkey.Open. The TPM is already started up; the process is
// killed when the test ends.
func Start(t testing.TB, dir string) string {
	t.Helper()
	testenv.RequireCommands(t, "swtpm")
	sock := filepath.Join(dir, "tpm.sock")
	ctrl := filepath.Join(dir, "ctrl.sock")
	os.Remove(sock)
	os.Remove(ctrl)
	logPath := filepath.Join(dir, "swtpm.log")
	cmd := exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+dir,
		"--server", "type=unixio,path="+sock, "--ctrl", "type=unixio,path="+ctrl,
		"--flags", "not-need-init,startup-clear", "--log", "file="+logPath)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	// swtpm binds the socket's name before it listens on it: the file
	// exists a moment before a connect succeeds (a loaded CI machine saw
	// "connection refused"), so wait for a connection, not the file. The
	// probe connection is closed at once; swtpm goes back to accept.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return sock
		}
		select {
		case <-done:
			log, _ := os.ReadFile(logPath)
			t.Fatalf("swtpm exited: %s", log)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("swtpm never made its socket")
		}
	}
}
