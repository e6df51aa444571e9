package nodeboot

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// efivarfs stand-in: a directory (efivarfs itself needs UEFI firmware; the
// QEMU test TestSecureBootHerd writes the real one).
func fakeEFI(t *testing.T, setupMode byte) string {
	sys := t.TempDir()
	dir := filepath.Join(sys, "firmware/efi/efivars")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "SetupMode-"+efiGlobalGUID), []byte{6, 0, 0, 0, setupMode}, 0o644)
	return sys
}

func hintsServer(t *testing.T, hints string) (*httptest.Server, map[string][]byte) {
	updates := map[string][]byte{
		"db-append.auth":  append([]byte{0x67, 0, 0, 0}, bytes.Repeat([]byte("d"), 100)...),
		"KEK-append.auth": append([]byte{0x67, 0, 0, 0}, bytes.Repeat([]byte("k"), 100)...),
		"PK.auth":         append([]byte{0x27, 0, 0, 0}, bytes.Repeat([]byte("p"), 100)...),
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/boot/52:54:00:77:00:12.json":
			w.Write([]byte(hints))
		case strings.HasPrefix(r.URL.Path, "/secureboot/"):
			b, ok := updates[strings.TrimPrefix(r.URL.Path, "/secureboot/")]
			if !ok {
				http.NotFound(w, r)
				return
			}
			w.Write(b)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, updates
}

func TestHintsNameTheNode(t *testing.T) {
	srv, _ := hintsServer(t, `{"node":"gpu02","cache":"none"}`)
	s := &System{RunDir: t.TempDir(), Cmdline: filepath.Join(t.TempDir(), "cmdline"), RoundWait: time.Millisecond}
	os.WriteFile(s.Cmdline, []byte("boot=herd herd.image="+srv.URL+"/images/x/rootfs.squashfs herd.sha256="+strings.Repeat("a", 64)+" herd.server="+srv.URL+"\n"), 0o644)
	p, err := ReadCmdline(s.Cmdline)
	if err != nil {
		t.Fatal(err)
	}
	h := s.fetchHints(context.Background(), p, "52:54:00:77:00:12")
	if h == nil || p.Node != "gpu02" || p.Cache != "none" {
		t.Fatalf("hints %+v gave node %q cache %q", h, p.Node, p.Cache)
	}
	// Later agent commands (report-up, verity-watch) see the same.
	p2, err := s.Params()
	if err != nil || p2.Node != "gpu02" || p2.Cache != "none" {
		t.Fatalf("Params after hints: %+v %v", p2, err)
	}
	// A command line naming the node (iPXE path) is not overridden, and a
	// malformed hint is ignored.
	p3 := &Params{Node: "gpu01", Cache: "auto", Server: srv.URL}
	if s.fetchHints(context.Background(), p3, "52:54:00:77:00:12") != nil || p3.Node != "gpu01" {
		t.Errorf("hints fetched although the command line names %s", p3.Node)
	}
	bad := &Hints{Node: "../../etc", Cache: "/dev/../etc/passwd"}
	p4 := &Params{Cache: "auto"}
	bad.apply(p4)
	if p4.Node != "" || p4.Cache != "auto" {
		t.Errorf("malformed hints applied: %+v", p4)
	}
	// Unknown MAC: no hints after the retries, boot goes on nameless.
	p5 := &Params{Server: srv.URL, Cache: "auto"}
	if h := s.fetchHints(context.Background(), p5, "52:54:00:77:00:99"); h != nil || p5.Node != "" {
		t.Errorf("unknown MAC got hints %+v", h)
	}
}

func TestEnrollKeysInSetupMode(t *testing.T) {
	srv, updates := hintsServer(t, `{}`)
	sys := fakeEFI(t, 1)
	s := &System{SysRoot: sys, RoundWait: time.Millisecond}
	order := []string{"db-append.auth", "KEK-append.auth", "PK.auth"}
	if err := s.EnrollKeys(context.Background(), srv.URL, order); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(sys, "firmware/efi/efivars")
	for name, file := range map[string]string{"db-append.auth": "db-" + efiImageGUID, "KEK-append.auth": "KEK-" + efiGlobalGUID, "PK.auth": "PK-" + efiGlobalGUID} {
		got, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil || !bytes.Equal(got, updates[name]) {
			t.Errorf("%s: %v (%d bytes, want the %d of %s)", file, err, len(got), len(updates[name]), name)
		}
	}
	rebooted := false
	s.Reboot = func() error { rebooted = true; return nil }
	s.enrollAndReboot(context.Background(), srv.URL, order)
	if !rebooted {
		t.Error("no reboot after enrollment")
	}
}

func TestEnrollKeysRefused(t *testing.T) {
	srv, _ := hintsServer(t, `{}`)
	t.Run("not-setup-mode", func(t *testing.T) {
		sys := fakeEFI(t, 0)
		s := &System{SysRoot: sys, RoundWait: time.Millisecond}
		err := s.EnrollKeys(context.Background(), srv.URL, []string{"db-append.auth", "KEK-append.auth", "PK.auth"})
		if !errors.Is(err, ErrNotSetupMode) {
			t.Fatalf("user mode: %v, want ErrNotSetupMode", err)
		}
		if m, _ := filepath.Glob(filepath.Join(sys, "firmware/efi/efivars/PK-*")); len(m) != 0 {
			t.Errorf("PK written outside Setup Mode")
		}
		rebooted := false
		s.Reboot = func() error { rebooted = true; return nil }
		s.enrollAndReboot(context.Background(), srv.URL, []string{"PK.auth"})
		if rebooted {
			t.Error("rebooted although nothing was enrolled")
		}
	})
	t.Run("hints-name-other-files", func(t *testing.T) {
		// A forged hint cannot make the agent write another variable.
		s := &System{SysRoot: fakeEFI(t, 1), RoundWait: time.Millisecond}
		for _, n := range []string{"../../../etc/passwd", "dbx.auth", "BootOrder.auth", "PK.auth/../x"} {
			if err := s.EnrollKeys(context.Background(), srv.URL, []string{n}); err == nil {
				t.Errorf("update %q accepted", n)
			}
		}
	})
	t.Run("missing-update-writes-nothing", func(t *testing.T) {
		sys := fakeEFI(t, 1)
		s := &System{SysRoot: sys, RoundWait: time.Millisecond}
		if err := s.EnrollKeys(context.Background(), srv.URL, []string{"db-append.auth", "KEK.auth", "PK.auth"}); err == nil {
			t.Fatal("an update the server lacks did not fail the enrollment")
		}
		if m, _ := filepath.Glob(filepath.Join(sys, "firmware/efi/efivars/db-*")); len(m) != 0 {
			t.Errorf("db written although a later update was missing: %v", m)
		}
	})
	t.Run("not-uefi", func(t *testing.T) {
		s := &System{SysRoot: t.TempDir()}
		if err := s.EnrollKeys(context.Background(), srv.URL, []string{"PK.auth"}); err == nil || !strings.Contains(err.Error(), "UEFI") {
			t.Errorf("BIOS boot: %v", err)
		}
	})
}

func TestSecureBootState(t *testing.T) {
	sys := fakeEFI(t, 0)
	os.WriteFile(filepath.Join(sys, "firmware/efi/efivars/SecureBoot-"+efiGlobalGUID), []byte{6, 0, 0, 0, 1}, 0o644)
	os.MkdirAll(filepath.Join(sys, "kernel/security"), 0o755)
	os.WriteFile(filepath.Join(sys, "kernel/security/lockdown"), []byte("none [integrity] confidentiality\n"), 0o644)
	s := &System{SysRoot: sys}
	if got := s.SecureBootState(); got != "secure boot: enabled, lockdown: integrity" {
		t.Errorf("got %q", got)
	}
	if got := (&System{SysRoot: t.TempDir()}).SecureBootState(); got != "secure boot: no (BIOS boot)" {
		t.Errorf("BIOS: %q", got)
	}
}
