package server

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/secureboot"
	"github.com/herdlab/herd/site"
)

// TestSecureBootHerdDelivery: `herd serve` with secure_boot: herd hands a
// real TFTP client (curl) herd-uki.efi, the current image's UKI signed by
// herd's db key (sbverify), the same bytes as /secureboot/herd-uki.efi over
// HTTP, and the signed key updates; a UKI tampered on the server's disk
// no longer verifies (the firmware's refusal is TestSecureBootHerd's).
// DHCP is the fault tests' fake (pxe/dhcp's tests check the boot file
// names); the image has random kernel and initrd and Debian's systemd-stub.
func TestSecureBootHerdDelivery(t *testing.T) {
	testenv.RequireCommands(t, "curl", "sbsign", "sbverify", "sbvarsign")
	const stub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
	testenv.RequireFiles(t, "package systemd-boot-efi", stub)
	testenv.RequireFiles(t, "package ipxe", "/usr/lib/ipxe/undionly.kpxe")
	state := t.TempDir()
	st, err := store.Open(state)
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := st.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	staging, err := st.StagingDir()
	if err != nil {
		t.Fatal(err)
	}
	for name, size := range map[string]int{manifest.Kernel: 2 << 20, manifest.Initrd: 1 << 20, manifest.Rootfs: 1 << 20} {
		os.WriteFile(filepath.Join(staging, name), bytes.Repeat([]byte(name[:1]), size), 0o644)
	}
	s, _ := os.ReadFile(stub)
	os.WriteFile(filepath.Join(staging, manifest.Stub), s, 0o644)
	id, err := st.Publish(staging, &manifest.Manifest{Created: time.Now().UTC(), Recipe: "sb"})
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Promote(context.Background(), id, false); err != nil {
		t.Fatal(err)
	}

	cfgPath := filepath.Join(t.TempDir(), "herd.yaml")
	httpPort, tftpPort := freePort(t, "tcp"), freePort(t, "udp")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(faultYAML, httpPort, "/usr/lib/ipxe", "lab.example")+"secure_boot: herd\n"), 0o644)
	logs := &logBuf{}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{StateDir: state, ConfigPath: cfgPath, TFTPPort: tftpPort,
			Log:   slog.New(slog.NewJSONHandler(logs, nil)),
			Ready: func(string, string) { close(ready) },
			DHCP: func(_ context.Context, _ *site.Config, env DHCPEnv) (DHCP, error) {
				return &fakeDHCP{env: env}, nil
			}})
	}()
	defer func() { cancel(); <-done }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	fetch := func(url string) ([]byte, error) {
		out := filepath.Join(t.TempDir(), "f")
		if b, err := exec.Command("curl", "-sS", "-f", "--max-time", "60", "-o", out, url).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("%s: %v: %s", url, err, b)
		}
		return os.ReadFile(out)
	}
	tftpURL := fmt.Sprintf("tftp://127.0.0.1:%d/%s", tftpPort, secureboot.UKIFile)
	uki, err := fetch(tftpURL)
	if err != nil {
		t.Fatalf("TFTP %s: %v\n%s", secureboot.UKIFile, err, logs.String())
	}
	ks, err := secureboot.Load(state)
	if err != nil {
		t.Fatalf("serve did not make herd's keys on first need: %v", err)
	}
	got := filepath.Join(t.TempDir(), "uki.efi")
	os.WriteFile(got, uki, 0o644)
	if err := secureboot.Verify(context.Background(), ks.DB().CertPath, got); err != nil {
		t.Fatalf("the UKI served over TFTP is not signed by herd's db key: %v", err)
	}
	if _, _, err := secureboot.PESection(uki, ".cmdline"); err != nil {
		t.Errorf("served UKI: %v", err)
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	viaHTTP, err := fetch(base + secureboot.UKIHTTPPath)
	if err != nil || !bytes.Equal(viaHTTP, uki) {
		t.Errorf("HTTP boot UKI differs from TFTP's (%v)", err)
	}
	for _, n := range []string{"db-append.auth", "KEK-append.auth", "PK.auth", "db.cer"} {
		if _, err := fetch(base + "/secureboot/" + n); err != nil {
			t.Errorf("signed update: %v", err)
		}
	}
	// Attack: the UKI changed on the way (here: on the server's disk) by
	// one byte no longer carries a valid signature.
	files, _ := filepath.Glob(filepath.Join(state, "secureboot", "uki", "*.efi"))
	if len(files) != 1 {
		t.Fatalf("UKIs on disk: %v", files)
	}
	off, size, _ := secureboot.PESection(uki, ".cmdline")
	bad := append([]byte(nil), uki...)
	copy(bad[off:off+size], strings.Replace(string(bad[off:off+size]), "herd.id=", "herd.ID=", 1))
	os.WriteFile(files[0]+".tmp", bad, 0o644)
	os.Rename(files[0]+".tmp", files[0])
	tampered, err := fetch(tftpURL)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(got, tampered, 0o644)
	if bytes.Equal(tampered, uki) {
		t.Fatal("the tampered UKI was not served (test setup)")
	}
	if err := secureboot.Verify(context.Background(), ks.DB().CertPath, got); err == nil {
		t.Error("a UKI whose command line was changed still verifies")
	}
}
