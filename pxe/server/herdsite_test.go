package server

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// herdSite is a site for the built herd binary in a temporary directory:
// herd.yaml (cfg), the state directory and serve's log.
type herdSite struct {
	t                    *testing.T
	bin, dir, cfg, state string
}

// newHerdSite makes an empty site in a fresh temporary directory for the
// herd binary bin.
func newHerdSite(t *testing.T, bin string) *herdSite {
	dir := t.TempDir()
	return &herdSite{t: t, bin: bin, dir: dir, cfg: filepath.Join(dir, "herd.yaml"), state: filepath.Join(dir, "state")}
}

// write writes the site's herd.yaml.
func (h *herdSite) write(yaml string) {
	h.t.Helper()
	if err := os.WriteFile(h.cfg, []byte(yaml), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

// command is `herd --config cfg --state state args...`.
func (h *herdSite) command(args ...string) *exec.Cmd {
	return exec.Command(h.bin, append([]string{"--config", h.cfg, "--state", h.state}, args...)...)
}

// run runs a herd command and returns its combined output.
func (h *herdSite) run(args ...string) (string, error) {
	out, err := h.command(args...).CombinedOutput()
	return string(out), err
}

// must runs a herd command and fails the test if it fails.
func (h *herdSite) must(args ...string) string {
	h.t.Helper()
	out, err := h.run(args...)
	if err != nil {
		h.t.Fatalf("herd %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// serve starts `herd -v serve` on the site (HTTP on httpPort, which
// herd.yaml must name; TFTP on tftpPort; log in dir/herd.log), waits until
// it answers /healthz and kills it by its PID when the test ends. It returns
// the process and the HTTP base URL.
func (h *herdSite) serve(httpPort, tftpPort int) (*exec.Cmd, string) {
	h.t.Helper()
	logf, err := os.Create(filepath.Join(h.dir, "herd.log"))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { logf.Close() })
	srv := exec.Command(h.bin, "-v", "--config", h.cfg, "--state", h.state, "serve", "--tftp-port", fmt.Sprint(tftpPort))
	srv.Stdout, srv.Stderr = logf, logf
	if err := srv.Start(); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	waitFor(h.t, "herd serve to answer", func() bool { return status(base+"/healthz") == 200 })
	return srv, base
}
