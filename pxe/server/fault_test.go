package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/site"
)

// fakeDHCP stands in for pxe/dhcp in these fault tests (a mock: the real
// service cannot be made to fail or refuse a config on demand; pxe/dhcp's
// own tests run it for real). It refuses configs whose dhcp.domain is
// "refuse.example" and, when told, reports that it stopped serving.
type fakeDHCP struct {
	mu      sync.Mutex
	domains []string
	env     DHCPEnv
}

func (f *fakeDHCP) SetConfig(cfg *site.Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if cfg.DHCP.Domain == "refuse.example" {
		return errors.New("refused on purpose")
	}
	f.domains = append(f.domains, cfg.DHCP.Domain)
	return nil
}
func (f *fakeDHCP) Lease(string) (string, bool)    { return "", false }
func (f *fakeDHCP) Shutdown(context.Context) error { return nil }

const faultYAML = `server:
  address: 127.0.0.1
  interface: lo
  http_port: %d
  tftp_root: %s
dhcp:
  mode: proxy
  domain: %s
overlays: [base]
`

func runWithFakeDHCP(t *testing.T, cfgPath string) (*fakeDHCP, *logBuf, chan error, int, func()) {
	t.Helper()
	state := t.TempDir()
	tftpPort := freePort(t, "udp")
	fake := &fakeDHCP{}
	logs := &logBuf{}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{StateDir: state, ConfigPath: cfgPath, TFTPPort: tftpPort,
			Log:   slog.New(slog.NewJSONHandler(logs, nil)),
			Ready: func(string, string) { close(ready) },
			DHCP: func(_ context.Context, _ *site.Config, env DHCPEnv) (DHCP, error) {
				fake.env = env
				return fake, nil
			}})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	return fake, logs, done, tftpPort, cancel
}

// TestDHCPStoppingStopsServe: if the DHCP service stops on its own, herd
// serve stops with an error (exit status non-zero) instead of serving on
// without DHCP. Fails if Run keeps running or returns nil.
func TestDHCPStoppingStopsServe(t *testing.T) {
	cfgPath := filepath.Join(t.TempDir(), "herd.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(faultYAML, freePort(t, "tcp"), "/usr/lib/ipxe", "lab.example")), 0o644)
	fake, _, done, _, cancel := runWithFakeDHCP(t, cfgPath)
	defer cancel()
	fake.env.Failed(errors.New("read udp/67: socket gone"))
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "dhcp") {
			t.Fatalf("Run returned %v after DHCP stopped, want an error naming dhcp", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("herd serve kept running 60 s after its DHCP service stopped")
	}
}

// TestReloadAllOrNothing: SIGHUP with a config DHCP refuses changes
// nothing, the TFTP root included; one DHCP accepts changes everything.
// Fails if the TFTP root changes before (or without) DHCP's accepting.
func TestReloadAllOrNothing(t *testing.T) {
	testenv.RequireCommands(t, "curl")
	testenv.RequireFiles(t, "package ipxe", "/usr/lib/ipxe/undionly.kpxe")
	newRoot := t.TempDir()
	os.WriteFile(filepath.Join(newRoot, "marker.bin"), []byte("new root\n"), 0o644)
	cfgPath := filepath.Join(t.TempDir(), "herd.yaml")
	httpPort := freePort(t, "tcp")
	write := func(root, domain string) {
		os.WriteFile(cfgPath, []byte(fmt.Sprintf(faultYAML, httpPort, root, domain)), 0o644)
	}
	write("/usr/lib/ipxe", "lab.example")
	fake, logs, done, tftpPort, cancel := runWithFakeDHCP(t, cfgPath)
	defer func() { cancel(); <-done }()
	fetch := func(name string) error {
		out := filepath.Join(t.TempDir(), "f")
		b, err := exec.Command("curl", "-sS", "--max-time", "20", "-o", out, fmt.Sprintf("tftp://127.0.0.1:%d/%s", tftpPort, name)).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, b)
		}
		return nil
	}
	hup := func(want string) {
		n := strings.Count(logs.String(), want)
		syscall.Kill(os.Getpid(), syscall.SIGHUP)
		waitFor(t, want, func() bool { return strings.Count(logs.String(), want) > n })
	}

	write(newRoot, "refuse.example")
	hup("DHCP refused the new config")
	if err := fetch("undionly.kpxe"); err != nil {
		t.Errorf("after a refused reload the old TFTP root is gone: %v", err)
	}
	if err := fetch("marker.bin"); err == nil {
		t.Error("a reload DHCP refused switched the TFTP root anyway")
	}

	write(newRoot, "new.example")
	hup("config reloaded")
	if err := fetch("marker.bin"); err != nil {
		t.Errorf("after an accepted reload the new TFTP root is not served: %v", err)
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if len(fake.domains) != 1 || fake.domains[0] != "new.example" {
		t.Errorf("DHCP configs accepted: %v", fake.domains)
	}
}

// TestRefusesReadableBindPassword: the LDAP bind password file (handed to
// every node) readable by group or others makes herd serve refuse to
// start, naming the field; mode 0600 starts.
func TestRefusesReadableBindPassword(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "bind.secret")
	os.WriteFile(pw, []byte("s3cret\n"), 0o644)
	cfgPath := filepath.Join(dir, "herd.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(serveYAML, freePort(t, "tcp"))+
		"ldap:\n  uri: ldap://127.0.0.1\n  base: dc=lab\n  bind_dn: cn=nodes,dc=lab\n  bind_password_file: "+pw+"\n"), 0o644)
	opt := Options{StateDir: t.TempDir(), ConfigPath: cfgPath, TFTPPort: freePort(t, "udp"), Log: slog.New(slog.NewJSONHandler(&logBuf{}, nil))}
	err := Run(context.Background(), opt)
	if err == nil || !strings.Contains(err.Error(), "ldap.bind_password_file") || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("Run with a 0644 bind password file: %v, want a refusal naming ldap.bind_password_file", err)
	}
	os.Chmod(pw, 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	opt.Ready = func(string, string) { close(ready) }
	done := make(chan error, 1)
	go func() { done <- Run(ctx, opt) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run with a 0600 bind password file: %v", err)
	}
	cancel()
	<-done
}
