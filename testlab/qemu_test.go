package testlab

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/herdlab/herd/internal/testenv"
)

// startDnsmasq runs dnsmasq (the reference DHCP server, not herd's) in ns so
// the fixture test does not depend on herd serve; it is killed by PID.
func startDnsmasq(t *testing.T, ns *Netns, dir string, args ...string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "dnsmasq.log"))
	if err != nil {
		t.Fatal(err)
	}
	base := []string{"--keep-in-foreground", "--log-facility=-", "--conf-file=/dev/null", "--port=0",
		"--interface=br0", "--bind-interfaces", "-u", "root", "--log-dhcp",
		"--pid-file=" + filepath.Join(dir, "dnsmasq.pid"), "--dhcp-leasefile=" + filepath.Join(dir, "leases")}
	c := ns.Command(context.Background(), "dnsmasq", append(base, args...)...)
	c.Stdout, c.Stderr = f, f
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-c.Process.Pid, syscall.SIGTERM); c.Wait(); f.Close() })
}

func TestVMNetbootsOnTapAndResets(t *testing.T) {
	testenv.Long(t)
	testenv.RequireNetns(t)
	testenv.RequireQEMU(t)
	testenv.RequireCommands(t, "dnsmasq")
	for _, uefi := range []bool{false, true} {
		name := "seabios"
		if uefi {
			name = "ovmf"
		}
		t.Run(name, func(t *testing.T) {
			ns, err := NewNetns("vm")
			if err != nil {
				t.Fatal(err)
			}
			defer ns.Close()
			if err := ns.AddBridge("br0", "10.78.0.1/24"); err != nil {
				t.Fatal(err)
			}
			if err := ns.AddTap("tap0", "br0"); err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			const mac = "52:54:00:78:00:21"
			dargs := []string{"--dhcp-range=10.78.0.100,10.78.0.150,1h", "--dhcp-host=" + mac + ",10.78.0.21"}
			if uefi {
				// UEFI PXE ignores offers without a boot file.
				dargs = append(dargs, "--enable-tftp", "--tftp-root=/usr/lib/ipxe", "--dhcp-boot=snponly.efi")
			}
			startDnsmasq(t, ns, dir, dargs...)
			vm, err := StartVM(context.Background(), VMConfig{Netns: ns, Name: "fx" + name, Tap: "tap0", MAC: mac, UEFI: uefi,
				Dir: filepath.Join(dir, "vm"), Disk: filepath.Join(dir, "ssd.qcow2"), DiskSize: "64M", MemoryMiB: 512, CPUs: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer vm.Stop()
			// Each firmware shows on the serial line that it got the reserved
			// address from the DHCP server across tap and bridge.
			got := regexp.MustCompile(`net0: 10\.78\.0\.21/`)
			if uefi {
				got = regexp.MustCompile(`Station IP address is 10\.78\.0\.21`)
			}
			if _, err := vm.Console.Expect(context.Background(), got, 3*time.Minute); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(dir, "ssd.qcow2")); err != nil {
				t.Fatalf("SSD image not created: %v", err)
			}
			if err := vm.Reset(); err != nil {
				t.Fatal(err)
			}
			if _, err := vm.Console.Expect(context.Background(), got, 3*time.Minute); err != nil {
				t.Fatalf("after reset: %v", err)
			}
			pid := vm.PID()
			if err := vm.Stop(); err != nil {
				t.Fatal(err)
			}
			if err := syscall.Kill(pid, 0); err == nil {
				t.Fatalf("qemu pid %d alive after Stop", pid)
			}
		})
	}
}
