package solo

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/secureboot"
	"github.com/herdlab/herd/testlab"
)

// secureBootImage is the small test recipe with universe added (its
// systemd-boot-efi gives the efi stage the UKI stub), built into the test
// store; $HERD_E2E_SB_IMAGE overrides. No site file: the recipe has no
// overlays.
func secureBootImage(t *testing.T, herd string) string {
	if p := os.Getenv("HERD_E2E_SB_IMAGE"); p != "" {
		return p
	}
	data, err := os.ReadFile(filepath.Join("..", "..", "recipes", "test-noble-minimal.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	data = regexp.MustCompile(`(?m)^components: \[main\]$`).ReplaceAll(data, []byte("components: [main, universe]"))
	tmp := t.TempDir()
	recipe := filepath.Join(tmp, "test-noble-minimal.yaml")
	if err := os.WriteFile(recipe, data, 0o644); err != nil {
		t.Fatal(err)
	}
	dir, err := testlab.BuildImage(context.Background(), herd, testlab.TestStore, recipe, filepath.Join(tmp, "no-site.yaml"), filepath.Join(tmp, "build.log"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, manifest.Stub)); err != nil {
		t.Fatalf("the image has no UKI stub: %v", err)
	}
	return dir
}

// replaceFile writes data over path through a new file and a rename, so a
// hard link into the shared test store is never written through.
func replaceFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestSecureBootHerd: secure_boot: herd on one UEFI node whose OVMF (Secure
// Boot build) starts with blank variables, i.e. in Setup Mode.
//   - Enrollment: `herd secureboot enroll gpu02`; the node boots herd's UKI
//     over PXE (the firmware runs it unchecked in Setup Mode), herd-boot
//     writes herd's db, KEK and PK through efivarfs and reboots.
//   - Attack (flipped byte in the UKI's initrd, i.e. an initrd swapped in
//     flight): the firmware, now enforcing, refuses the served UKI.
//   - Attack (image swapped in flight): with the genuine UKI back, the
//     node boots with Secure Boot enabled and lockdown on, but refuses the
//     rootfs whose sha256 differs from the signed command line; the server
//     records the refusal; with the genuine image back it boots to
//     multi-user.
//   - Attack (loader-supplied command line): QEMU's -kernel/-append hands
//     the firmware the signed UKI with an attacker's command line;
//     systemd-stub ignores it under Secure Boot.
//
// SeaBIOS and secure_boot: off UEFI nodes are TestLab's.
func TestSecureBootHerd(t *testing.T) {
	herd := testlab.RequireLab(t)
	testenv.RequireCommands(t, "sbsign", "sbvarsign")
	testenv.RequireFiles(t, "package ovmf", testlab.OVMFSecureCode, testlab.OVMFVars)
	ctx := context.Background()

	img := secureBootImage(t, herd)
	dir := testlab.TempLabDir(t)
	nodes := []testlab.LabNode{{Name: "gpu02", MAC: "52:54:00:77:00:12", IP: "10.77.0.12"}}
	// no_timer_check: TCG with SMM (see TestSecureBootDistro). It is
	// site-wide: the signed command line has no per-node arguments.
	lab, err := testlab.StartLab(ctx, testlab.LabConfig{Dir: dir, HerdBin: herd, ImageDir: img, Nodes: nodes,
		SetupMode: true, ExtraYAML: "secure_boot: herd\nkernel_args: no_timer_check\n"})
	if err != nil {
		t.Fatal(err)
	}
	var vm *testlab.VM
	t.Cleanup(func() {
		if t.Failed() {
			if vm != nil {
				t.Logf("--- serial console (%s) ---\n%s", vm.SerialPath, vm.Console.Tail(80))
			}
			t.Logf("--- server log (%s) ---\n%s", lab.ServerLog, testlab.TailLines([]byte(lab.ServerLogText()), 60))
		}
		if vm != nil {
			vm.Stop()
		}
		lab.Close()
	})
	expect := func(re string, d time.Duration) []string {
		t.Helper()
		m, err := vm.Console.Expect(ctx, regexp.MustCompile(re), d)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}

	if _, err := lab.Herd(ctx, "", "secureboot", "enroll", "gpu02"); err != nil {
		t.Fatal(err)
	}
	out, err := lab.Herd(ctx, "", "secureboot", "uki")
	if err != nil {
		t.Fatal(err)
	}
	ukiPath := strings.TrimSpace(string(out))
	uki, err := os.ReadFile(ukiPath)
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Read(img)
	if err != nil {
		t.Fatal(err)
	}
	sha := m.Artifacts[manifest.Rootfs].SHA256

	// Boot 1, Setup Mode: the UKI over PXE, then the one-shot enrollment.
	if vm, err = lab.StartNode(ctx, "gpu02", true); err != nil {
		t.Fatal(err)
	}
	expect(`secure boot: disabled \(firmware in Setup Mode\)`, 15*time.Minute)
	// The firmware has loaded the UKI; the next fetch gets one with a byte
	// of its initrd flipped (an initrd swapped in flight).
	off, size, err := secureboot.PESection(uki, ".initrd")
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), uki...)
	bad[off+size/2] ^= 0x01
	replaceFile(t, ukiPath, bad)
	expect(`secure boot: wrote PK`, 5*time.Minute)
	expect(`herd's keys enrolled; rebooting`, time.Minute)

	t.Run("flipped-byte-uki-refused-by-firmware", func(t *testing.T) {
		m, err := vm.Console.Expect(ctx, regexp.MustCompile(`(?i)(access denied|security violation)|(Linux version|herd: hints)`), 10*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if m[2] != "" {
			t.Fatalf("the firmware ran a UKI with a flipped byte (%q on the console)", m[2])
		}
		if n := strings.Count(lab.ServerLogText(), "file="+secureboot.UKIFile); n < 2 {
			t.Errorf("the server log shows %d TFTP transfers of %s, want the refused one too", n, secureboot.UKIFile)
		}
	})

	// Boot 2: the genuine UKI, an image swapped in flight.
	replaceFile(t, ukiPath, uki)
	rootfs := filepath.Join(lab.StateDir, "images", lab.ImageID, manifest.Rootfs)
	genuine, err := os.ReadFile(rootfs)
	if err != nil {
		t.Fatal(err)
	}
	swapped := append([]byte(nil), genuine...)
	swapped[len(swapped)/3] ^= 0x01
	replaceFile(t, rootfs, swapped)
	vm.Console.Mark()
	if err := vm.Reset(); err != nil {
		t.Fatal(err)
	}
	cmdline := expect(`Command line: ([^\r\n]*)\r?\n`, 10*time.Minute)[1]
	t.Run("signed-command-line", func(t *testing.T) {
		if !strings.Contains(cmdline, "herd.sha256="+sha) || strings.Contains(cmdline, "herd.node=") {
			t.Errorf("kernel command line %q: want the signed one (herd.sha256=%s, no herd.node)", cmdline, sha)
		}
	})
	state := expect(`secure boot: (\w+), lockdown: (\w+)`, 5*time.Minute)
	t.Run("secure-boot-enforced", func(t *testing.T) {
		if state[1] != "enabled" {
			t.Errorf("Secure Boot %s after enrollment, want enabled", state[1])
		}
		if state[2] != "integrity" && state[2] != "confidentiality" {
			t.Errorf("kernel lockdown %q, want integrity or confidentiality", state[2])
		}
	})
	t.Run("swapped-image-refused-by-initramfs", func(t *testing.T) {
		if _, err := vm.Console.Expect(ctx, regexp.MustCompile(`image refused: sha256 mismatch`), 10*time.Minute); err != nil {
			t.Fatal(err)
		}
		replaceFile(t, rootfs, genuine)
		deadline := time.Now().Add(2 * time.Minute)
		for !strings.Contains(lab.ServerLogText(), "image refused: sha256 mismatch") && time.Now().Before(deadline) {
			time.Sleep(2 * time.Second)
		}
		if !strings.Contains(lab.ServerLogText(), "image refused: sha256 mismatch") {
			t.Errorf("the server did not record the node's refusal")
		}
	})
	replaceFile(t, rootfs, genuine)
	expect(`Reached target.*[Mm]ulti-[Uu]ser`, 15*time.Minute)
	t.Run("enrollment-recorded", func(t *testing.T) {
		log := lab.ServerLogText()
		for _, want := range []string{"one-shot key enrollment", `file=db-append.auth`, `file=KEK-append.auth`, `file=PK.auth`} {
			if !strings.Contains(log, want) {
				t.Errorf("server log lacks %s", want)
			}
		}
		if strings.Contains(log, "file=snponly.efi") {
			t.Errorf("the UEFI node was handed iPXE")
		}
	})

	// Boot 3: the signed UKI started by a loader that passes its own
	// command line: systemd-boot (the host's, signed with herd's db key
	// here, as an admin might) on a FAT disk (QEMU vvfat) booted before the
	// NIC, with a Type #1 entry whose options are an attacker's.
	t.Run("loader-command-line-ignored", func(t *testing.T) {
		testenv.RequireFiles(t, "package systemd-boot-efi", sdBoot)
		vm.Stop()
		ks, err := secureboot.Load(lab.StateDir)
		if err != nil {
			t.Fatal(err)
		}
		esp := filepath.Join(dir, "esp")
		for _, d := range []string{"EFI/BOOT", "loader/entries"} {
			if err := os.MkdirAll(filepath.Join(esp, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := secureboot.Sign(ctx, ks.DB(), sdBoot, filepath.Join(esp, "EFI/BOOT/BOOTX64.EFI")); err != nil {
			t.Fatal(err)
		}
		evil := "console=ttyS0,115200n8 no_timer_check boot=herd ip=dhcp herd.image=http://10.77.0.1:8080/evil.squashfs herd.sha256=" +
			strings.Repeat("0", 64) + " herd.node=mallory herd.attack=loader"
		files := map[string][]byte{
			"herd.efi":                 uki,
			"loader/loader.conf":       []byte("default evil.conf\ntimeout 0\n"),
			"loader/entries/evil.conf": []byte("title evil\nefi /herd.efi\noptions " + evil + "\n"),
		}
		for name, data := range files {
			if err := os.WriteFile(filepath.Join(esp, name), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		before := strings.Count(lab.ServerLogText(), "file="+secureboot.UKIFile)
		if vm, err = lab.StartNodeArgs(ctx, "gpu02", true,
			"-drive", "if=none,id=esp,format=raw,readonly=on,file=fat:16:"+esp,
			"-device", "virtio-blk-pci,drive=esp,bootindex=0"); err != nil {
			t.Fatal(err)
		}
		got := expect(`Command line: ([^\r\n]*)\r?\n`, 10*time.Minute)[1]
		if strings.Contains(got, "herd.attack") || strings.Contains(got, "mallory") || !strings.Contains(got, "herd.sha256="+sha) {
			t.Fatalf("kernel command line %q: the loader's replaced the signed one", got)
		}
		h := expect(`herd: hints from \S+: node (\S+),`, 5*time.Minute)
		if h[1] != "gpu02" {
			t.Errorf("node booted as %q", h[1])
		}
		if after := strings.Count(lab.ServerLogText(), "file="+secureboot.UKIFile); after != before {
			t.Errorf("the node fetched the UKI over PXE (%d → %d TFTP transfers): it did not boot through the loader", before, after)
		}
	})
}

// sdBoot is Debian's systemd-boot (package systemd-boot-efi), the loader of
// TestSecureBootHerd's loader-command-line case.
const sdBoot = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
