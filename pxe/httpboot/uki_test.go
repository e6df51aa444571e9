package httpboot

import (
	"bytes"
	"context"
	"debug/pe"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/secureboot"
	"github.com/herdlab/herd/site"
)

const hostStub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub" // Debian's systemd-boot-efi

// publishStubImage publishes a current image with random kernel, initrd and
// rootfs and the host's systemd-stub (the efi stage's artifact).
func publishStubImage(t *testing.T, state string) string {
	t.Helper()
	id := publishTestImage(t, state, map[string]int{manifest.Kernel: 1 << 20, manifest.Initrd: 1 << 19, manifest.Rootfs: 1 << 20}, true)
	dir := filepath.Join(state, "images", id)
	stub, err := os.ReadFile(hostStub)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, manifest.Stub), stub, 0o644)
	m, err := manifest.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	a, err := manifest.HashFile(filepath.Join(dir, manifest.Stub))
	if err != nil {
		t.Fatal(err)
	}
	m.Artifacts[manifest.Stub] = a
	m.ID = m.ComputeID()
	if err := m.Write(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dir, filepath.Join(state, "images", m.ID)); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(state, "current"), []byte(m.ID+"\n"), 0o644)
	return m.ID
}

// TestUKICmdlineHasNoPerNodeValues: the signed command line is the same for
// every node of a generation: no herd.node, no herd.cache, no node
// kernel_args; it carries the image's sha256 and verity root hash.
func TestUKICmdlineHasNoPerNodeValues(t *testing.T) {
	f := newFixture(t, "ignore")
	cfg := *f.cfg
	cfg.SecureBoot = site.SecureBootHerd
	cfg.KernelArgs = "no_timer_check"
	m, _ := manifest.Read(filepath.Join(f.state, "images", f.id))
	m.Verity = &manifest.Verity{RootHash: strings.Repeat("ab", 32), DataBlocks: 1280}
	line, err := UKICmdline(&cfg, f.id, m)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"boot=herd", "herd.sha256=" + m.Artifacts[manifest.Rootfs].SHA256, "herd.verity=" + strings.Repeat("ab", 32) + ":1280",
		"herd.id=" + f.id, "herd.server=" + f.url, "herd.image=" + f.url + "/images/" + f.id + "/rootfs.squashfs", "no_timer_check"} {
		if !strings.Contains(" "+line+" ", " "+want+" ") {
			t.Errorf("UKI command line lacks %s:\n%s", want, line)
		}
	}
	for _, bad := range []string{"herd.node=", "herd.cache=", "nvidia.NVreg_X"} {
		if strings.Contains(line, bad) {
			t.Errorf("UKI command line carries per-node %s:\n%s", bad, line)
		}
	}
	// The iPXE path gets the site's kernel_args too, before the node's.
	s, err := Script(&cfg, &cfg.Nodes[0], f.id, m)
	if err != nil || !strings.Contains(s, "no_timer_check nvidia.NVreg_X=1") {
		t.Errorf("iPXE script without site then node kernel_args (%v):\n%s", err, s)
	}
}

// TestSecureBootHerdServing: with secure_boot: herd, TFTP herd-uki.efi and
// HTTP /secureboot/herd-uki.efi are the current image's UKI signed by
// herd's db key (made on first need, 0600), whose .cmdline is
// UKICmdline; /boot/<mac>.json gives the node's hints and, once, its key
// enrollment; the signed updates are served. Off, none of it is served.
func TestSecureBootHerdServing(t *testing.T) {
	testenv.RequireCommands(t, "sbsign", "sbverify", "sbvarsign")
	testenv.RequireFiles(t, "package systemd-boot-efi", hostStub)
	f := newFixture(t, "ignore")
	id := publishStubImage(t, f.state)
	for _, p := range []string{"/secureboot/herd-uki.efi", "/secureboot/db.auth", "/boot/52:54:00:aa:bb:01.json"} {
		if code, _ := get(t, f.url+p); code != 404 {
			t.Errorf("secure_boot off: %s answered %d, want 404", p, code)
		}
	}
	if _, ok := f.srv.TFTPFile(secureboot.UKIFile); ok {
		t.Error("secure_boot off: TFTP serves the UKI")
	}
	cfg := *f.cfg
	cfg.SecureBoot = site.SecureBootHerd
	f.srv.SetConfig(&cfg)

	p, ok := f.srv.TFTPFile(secureboot.UKIFile)
	if !ok {
		t.Fatalf("TFTP does not serve %s; log:\n%s", secureboot.UKIFile, f.logs.String())
	}
	ks, err := secureboot.Load(f.state)
	if err != nil {
		t.Fatalf("keys not made on first need: %v", err)
	}
	if fi, err := os.Stat(ks.DB().KeyPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("db key mode %v %v", fi.Mode().Perm(), err)
	}
	if err := secureboot.Verify(context.Background(), ks.DB().CertPath, p); err != nil {
		t.Fatalf("served UKI is not signed by herd's db key: %v", err)
	}
	uki, _ := os.ReadFile(p)
	pf, err := pe.NewFile(bytes.NewReader(uki))
	if err != nil {
		t.Fatal(err)
	}
	cl, _ := pf.Section(".cmdline").Data()
	m, _ := manifest.Read(filepath.Join(f.state, "images", id))
	want, _ := UKICmdline(&cfg, id, m)
	if got := strings.TrimRight(string(cl), "\x00"); got != want {
		t.Errorf("UKI .cmdline %q, want %q", got, want)
	}
	code, body := get(t, f.url+"/secureboot/herd-uki.efi")
	if code != 200 || body != string(uki) {
		t.Errorf("HTTP boot UKI: %d, %d bytes (TFTP's is %d)", code, len(body), len(uki))
	}
	for _, n := range []string{"db.auth", "db-append.auth", "KEK-append.auth", "PK.auth", "db.crt", "db.cer"} {
		if code, _ := get(t, f.url+"/secureboot/"+n); code != 200 {
			t.Errorf("/secureboot/%s: %d", n, code)
		}
	}
	for _, n := range []string{"db.key", "keys/db.key", "../secureboot/keys/db.key", "PK-append.auth", "owner-guid"} {
		if code, body := get(t, f.url+"/secureboot/"+n); code == 200 {
			t.Errorf("/secureboot/%s served (%d bytes): private or unknown files must not be", n, len(body))
		}
	}

	hints := func(mac string) (int, Hints) {
		code, body := get(t, f.url+"/boot/"+mac+".json")
		var h Hints
		if code == 200 {
			if err := json.Unmarshal([]byte(body), &h); err != nil {
				t.Fatalf("hints %q: %v", body, err)
			}
		}
		return code, h
	}
	if code, h := hints("52:54:00:aa:bb:01"); code != 200 || h.Node != "gpu1" || h.Cache != "auto" || h.Enroll != nil {
		t.Errorf("hints gpu1: %d %+v", code, h)
	}
	if code, _ := hints("52:54:00:aa:bb:99"); code != 404 {
		t.Errorf("unknown MAC: %d, want 404", code)
	}
	if err := secureboot.MarkEnroll(f.state, "gpu1", secureboot.Enrollment{Until: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := secureboot.MarkEnroll(f.state, "gpu3", secureboot.Enrollment{Until: time.Now().Add(-time.Minute), DropMicrosoft: true}); err != nil {
		t.Fatal(err)
	}
	_, h := hints("52-54-00-AA-BB-01")
	if fmt.Sprint(h.Enroll) != "[db-append.auth KEK-append.auth PK.auth]" {
		t.Errorf("enrollment %v, want db, KEK (appended: Microsoft's stay), then PK", h.Enroll)
	}
	if _, h := hints("52:54:00:aa:bb:01"); h.Enroll != nil {
		t.Errorf("enrollment given twice: %v (one shot)", h.Enroll)
	}
	if _, h := hints("52:54:00:aa:bb:03"); h.Enroll != nil {
		t.Errorf("expired enrollment given: %v", h.Enroll)
	}
	if !strings.Contains(f.logs.String(), "one-shot key enrollment") {
		t.Errorf("the server log does not record the enrollment")
	}
	// A new generation gets its own UKI.
	id2 := publishStubImage(t, f.state)
	p2, ok := f.srv.TFTPFile(secureboot.UKIFile)
	if !ok || p2 == p || !strings.Contains(filepath.Base(p2), id2) {
		t.Errorf("after promoting %s the UKI is %s (was %s)", id2, p2, p)
	}
}
