package tftp

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herdlab/herd/internal/testenv"
)

// Config.Extra serves exactly the names it knows (absolute or not, as shim
// and GRUB ask), from outside the root; every other name still goes through
// CleanPath and the sandboxed root (real atftp client).
func TestExtraNames(t *testing.T) {
	testenv.RequireCommands(t, "atftp")
	root, outside := t.TempDir(), t.TempDir()
	cfgFile := filepath.Join(outside, "grub.cfg")
	os.WriteFile(cfgFile, []byte("set timeout=0\n"), 0o644)
	os.WriteFile(filepath.Join(outside, "secret"), []byte("no"), 0o644)
	s, err := New(Config{Root: root, MaxTransfers: 4, Registry: prometheus.NewRegistry(),
		Extra: func(name string) (string, bool) { return cfgFile, name == "grub/grub.cfg" }})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(conn)
	t.Cleanup(s.Shutdown)
	port := strconv.Itoa(conn.LocalAddr().(*net.UDPAddr).Port)
	fetch := func(name string) ([]byte, error) {
		out := filepath.Join(t.TempDir(), "out")
		if b, err := exec.Command("atftp", "--get", "-r", name, "-l", out, "127.0.0.1", port).CombinedOutput(); err != nil {
			return b, err
		}
		return os.ReadFile(out)
	}
	for _, n := range []string{"/grub/grub.cfg", "grub/grub.cfg"} {
		got, err := fetch(n)
		if err != nil || string(got) != "set timeout=0\n" {
			t.Errorf("%s: %v %q", n, err, got)
		}
	}
	for _, n := range []string{"//grub/grub.cfg", "/grub/../secret", filepath.Join(outside, "secret"), "grub/grub.cfg-01-52-54-00-00-00-01"} {
		if got, err := fetch(n); err == nil {
			t.Errorf("%s served: %q", n, got)
		}
	}
}
