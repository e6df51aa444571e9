package server

import (
	"bytes"
	"context"
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
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/internal/qemuaccel"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/pxe/inventory"
	"github.com/herdlab/herd/site"
	"github.com/herdlab/herd/testlab"
)

// bootKernel finds a real kernel (and its initrd, if any) for the QEMU
// test: $HERD_TEST_KERNEL (+ $HERD_TEST_INITRD), the builder's test store,
// the host's /boot, else iPXE's own ipxe.lkrn — a bzImage loaded through
// the same Linux boot protocol, so the boot chain up to "kernel started"
// is the same. real reports whether it is a Linux kernel that logs
// "Linux version" on ttyS0.
func bootKernel(t *testing.T, uefi bool) (kernel, initrd string, real bool) {
	if k := os.Getenv("HERD_TEST_KERNEL"); k != "" {
		return k, os.Getenv("HERD_TEST_INITRD"), true
	}
	// The builder's test store: its current image, else any published one
	// (the build tests publish without promoting).
	var dirs []string
	imgs, _ := store.ReadOnly(testlab.TestStore).List()
	for _, im := range imgs {
		if im.Current {
			dirs = append([]string{im.Dir}, dirs...)
		} else {
			dirs = append(dirs, im.Dir)
		}
	}
	for _, dir := range dirs {
		k, i := filepath.Join(dir, manifest.Kernel), filepath.Join(dir, manifest.Initrd)
		if _, err := os.Stat(k); err == nil {
			return k, i, true
		}
	}
	if ks, _ := filepath.Glob("/boot/vmlinuz-*"); len(ks) > 0 {
		k := ks[len(ks)-1]
		i := strings.Replace(k, "vmlinuz", "initrd.img", 1)
		if _, err := os.Stat(i); err != nil {
			i = ""
		}
		return k, i, true
	}
	// Last resort: an iPXE binary loaded as the "kernel". Under UEFI it
	// must be an EFI image (ipxe.lkrn is a BIOS bzImage that UEFI iPXE
	// refuses, so the script would stop before fetching the initrds).
	fallback := "/usr/lib/ipxe/ipxe.lkrn"
	if uefi {
		fallback = "/usr/lib/ipxe/ipxe.efi"
	}
	testenv.RequireFiles(t, "package ipxe (or set HERD_TEST_KERNEL)", fallback)
	return fallback, "", false
}

// publishFiles publishes an image whose artifacts are copies of the given
// files (a missing one becomes a small random file) and makes it current.
func publishFiles(t *testing.T, state string, files map[string]string) string {
	t.Helper()
	return publishWith(t, state, "qemu-test", func(name, dst string) error {
		if src := files[name]; src != "" {
			b, err := os.ReadFile(src)
			if err != nil {
				return err
			}
			return os.WriteFile(dst, b, 0o644)
		}
		return os.WriteFile(dst, bytes.Repeat([]byte(name), 4096), 0o644)
	})
}

// TestQEMUNetbootToKernel boots a SeaBIOS QEMU node whose virtio-net ROM
// is iPXE, with herd's own DHCP in full mode: DHCP (reserved address) →
// /boot/<mac>.ipxe → kernel, initrd and overlay over HTTP, all from the real
// `herd serve` binary inside a test namespace.
func TestQEMUNetbootToKernel(t *testing.T) { qemuNetboot(t, false, site.DHCPFull) }

// TestQEMUUEFINetbootViaTFTP boots an OVMF node with the firmware's own PXE
// (NIC ROM disabled) against herd's full-mode DHCP: its TFTP client (tsize,
// then blksize 1468 + windowsize 4) fetches snponly.efi from herd's TFTP,
// which then runs as iPXE and continues over HTTP as in the BIOS case.
func TestQEMUUEFINetbootViaTFTP(t *testing.T) { qemuNetboot(t, true, site.DHCPFull) }

// TestQEMUProxyDHCPBesideSiteDHCP: the site's DHCP (dnsmasq, addresses
// only) and herd in proxy mode (boot information only) on one segment.
func TestQEMUProxyDHCPBesideSiteDHCP(t *testing.T) { qemuNetboot(t, false, site.DHCPProxy) }

// TestQEMUSiteDHCPPointsAtHerd: dhcp.mode off; the site's DHCP (dnsmasq)
// hands out the boot script URL and herd only serves TFTP and HTTP.
func TestQEMUSiteDHCPPointsAtHerd(t *testing.T) { qemuNetboot(t, false, site.DHCPOff) }

func qemuNetboot(t *testing.T, uefi bool, mode string) {
	testenv.Long(t)
	testenv.RequireNetns(t)
	testenv.RequireQEMU(t)
	if mode != site.DHCPFull {
		testenv.RequireCommands(t, "dnsmasq")
	}
	herd := testenv.Bin(t, "HERD_BIN")
	kernel, initrd, realKernel := bootKernel(t, uefi)
	t.Logf("booting kernel %s (Linux: %v)", kernel, realKernel)

	ns, err := testlab.NewNetns("pxeqemu")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	const (
		srv = "10.93.0.1"
		mac = "52:54:00:93:00:11"
		nip = "10.93.0.11"
	)
	if err := ns.AddBridge("br0", srv+"/24"); err != nil {
		t.Fatal(err)
	}
	if err := ns.AddTap("tap0", "br0"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	id := publishFiles(t, state, map[string]string{manifest.Kernel: kernel, manifest.Initrd: initrd})
	cfgPath := filepath.Join(dir, "herd.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`server:
  interface: br0
  address: %s
  http_port: 8080
dhcp:
  mode: %s
  subnet: 10.93.0.0/24
  lease_time: 1h
cache:
  disk: none
overlays: [base]
nodes:
  - name: qnode1
    mac: "%s"
    ip: %s
`, srv, mode, mac, nip)), 0o644)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	startIn := func(in *testlab.Netns, name string, logf string, args ...string) *exec.Cmd {
		f, err := os.Create(filepath.Join(dir, logf))
		if err != nil {
			t.Fatal(err)
		}
		c := in.Command(ctx, name, args...)
		c.Stdout, c.Stderr = f, f
		c.Cancel = func() error { return c.Process.Signal(syscall.SIGTERM) }
		if err := c.Start(); err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
		t.Cleanup(func() {
			c.Process.Signal(syscall.SIGTERM)
			c.Wait()
			f.Close()
		})
		return c
	}
	start := func(name string, logf string, args ...string) *exec.Cmd { return startIn(ns, name, logf, args...) }
	start(herd, "herd.log", "-v", "--config", cfgPath, "--state", state, "serve")
	siteDHCP := []string{"--keep-in-foreground", "--log-facility=-", "--conf-file=/dev/null",
		"--port=0", "--interface=eth0", "--bind-interfaces", "-u", "root",
		"--pid-file=" + filepath.Join(dir, "dnsmasq.pid"), "--dhcp-leasefile=" + filepath.Join(dir, "leases"),
		"--dhcp-range=10.93.0.100,10.93.0.150,1h", "--dhcp-host=" + mac + "," + nip, "--log-dhcp"}
	var siteNS *testlab.Netns
	if mode != site.DHCPFull {
		// The site's DHCP server is another host on the segment: its own
		// namespace, joined to the bridge by a veth pair.
		if siteNS, err = testlab.NewNetns("pxesite"); err != nil {
			t.Fatal(err)
		}
		defer siteNS.Close()
		if err := ns.AddVethPeer("vsite", "br0", siteNS, "eth0", "10.93.0.2/24"); err != nil {
			t.Fatal(err)
		}
	}
	switch mode {
	case site.DHCPOff:
		// The site's DHCP points at herd: iPXE (user class "iPXE") gets its
		// script URL; plain PXE firmware gets snponly.efi from herd's TFTP.
		startIn(siteNS, "dnsmasq", "dnsmasq.log", append(siteDHCP, "--dhcp-userclass=set:ipxe,iPXE",
			"--dhcp-boot=tag:ipxe,http://"+srv+":8080/boot/"+mac+".ipxe",
			"--dhcp-boot=tag:!ipxe,snponly.efi,,"+srv)...)
	case site.DHCPProxy:
		// Addresses only; the boot information comes from herd's proxy DHCP.
		startIn(siteNS, "dnsmasq", "dnsmasq.log", siteDHCP...)
	}
	serial := filepath.Join(dir, "serial.log")
	// QEMU records the node's traffic (filter-dump, pcap): its DHCP
	// messages are checked below and, with HERD_WRITE_FUZZ_SEEDS=1, kept as
	// pxe/dhcp's captured fuzz seeds.
	pcap := filepath.Join(dir, "net.pcap")
	args := []string{"-accel", qemuaccel.Default(), "-cpu", "max", "-m", "1024",
		"-display", "none", "-monitor", "none", "-serial", "file:" + serial, "-no-reboot",
		"-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
		"-object", "filter-dump,id=dump0,netdev=n0,file=" + pcap + ",maxlen=2048"}
	if uefi {
		code := "/usr/share/OVMF/OVMF_CODE_4M.fd"
		testenv.RequireFiles(t, "package ovmf", code, "/usr/share/OVMF/OVMF_VARS_4M.fd")
		vars, err := os.ReadFile("/usr/share/OVMF/OVMF_VARS_4M.fd")
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "vars.fd"), vars, 0o644)
		args = append(args, "-machine", "q35",
			"-drive", "if=pflash,format=raw,readonly=on,file="+code,
			"-drive", "if=pflash,format=raw,file="+filepath.Join(dir, "vars.fd"),
			// romfile= empty: no iPXE ROM, the firmware's own PXE client runs.
			"-device", "virtio-net-pci,netdev=n0,romfile=,mac="+mac)
	} else {
		args = append(args, "-boot", "n", "-device", "virtio-net-pci,netdev=n0,mac="+mac)
	}
	start("qemu-system-x86_64", "qemu.log", args...)

	read := func(name string) string { b, _ := os.ReadFile(filepath.Join(dir, name)); return string(b) }
	got := func(path string) bool {
		for _, l := range strings.Split(read("herd.log"), "\n") {
			if strings.Contains(l, "path="+path+" ") && strings.Contains(l, "status=200") && strings.Contains(l, "remote="+nip) {
				return true
			}
		}
		return false
	}
	kpath := "/images/" + id + "/vmlinuz"
	// Bounded by attempts: under TCG the ROM needs tens of seconds.
	for i := 0; i < 600 && !(got(kpath) && got("/images/"+id+"/initrd.img")); i++ {
		time.Sleep(500 * time.Millisecond)
	}
	if uefi && !strings.Contains(read("herd.log"), "tftp transfer done") {
		t.Errorf("no TFTP transfer of snponly.efi in the herd log:\n%s", tail(read("herd.log")))
	}
	if !got("/boot/" + mac + ".ipxe") {
		t.Fatalf("the node never fetched its script.\nherd log:\n%s\ndnsmasq log:\n%s", tail(read("herd.log")), tail(read("dnsmasq.log")))
	}
	if !got(kpath) {
		t.Fatalf("the node never downloaded %s.\nherd log:\n%s", kpath, tail(read("herd.log")))
	}
	if !got("/images/" + id + "/initrd.img") {
		t.Errorf("initrd not downloaded")
	}
	if strings.Contains(read("herd.log"), "overlay.cpio") {
		t.Errorf("iPXE asked for an overlay.cpio: no secret is ever an initrd")
	}
	if strings.Contains(read("herd.log"), "rootfs.squashfs") {
		t.Errorf("iPXE fetched the root image; only the initramfs should")
	}
	if mode != site.DHCPOff {
		frames, err := dhcpFromPcap(pcap, hw(mac))
		if err != nil {
			t.Errorf("capture %s: %v", pcap, err)
		} else if len(frames) == 0 {
			t.Errorf("no DHCP message from %s in the capture", mac)
		} else if os.Getenv("HERD_WRITE_FUZZ_SEEDS") == "1" {
			fw := map[bool]string{false: "seabios", true: "ovmf"}[uefi] + "-" + mode
			writeCapturedSeeds(t, fw, frames)
		}
	}
	if mode == site.DHCPFull {
		// herd's DHCP reported the lease to the inventory (herd node list).
		inv, err := inventory.Load(state)
		if err != nil {
			t.Fatal(err)
		}
		if r, ok := inv.Get(mac); !ok || r.LastDHCPIP != nip || r.Name != "qnode1" {
			t.Errorf("inventory after DHCP: %+v", r)
		}
	}
	if realKernel && !uefi {
		for i := 0; i < 600 && !strings.Contains(read("serial.log"), "Linux version"); i++ {
			time.Sleep(500 * time.Millisecond)
		}
		if !strings.Contains(read("serial.log"), "Linux version") {
			t.Errorf("the kernel did not start on ttyS0:\n%s", tail(read("serial.log")))
		}
	}
}

func hw(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func tail(s string) string {
	if len(s) > 4000 {
		return "..." + s[len(s)-4000:]
	}
	return s
}
