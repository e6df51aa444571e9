package testlab

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/herdlab/herd/internal/qemuaccel"
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

// fixtureNet makes a namespace (closed when t ends) with bridge br0 at
// 10.78.0.1/24 and tap0 on it, for one fixture VM and dnsmasq.
func fixtureNet(t *testing.T, name string) *Netns {
	t.Helper()
	ns, err := NewNetns(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	if err := ns.AddBridge("br0", "10.78.0.1/24"); err != nil {
		t.Fatal(err)
	}
	if err := ns.AddTap("tap0", "br0"); err != nil {
		t.Fatal(err)
	}
	return ns
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
			ns := fixtureNet(t, "vm")
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

// TestVMResetOnOops: on a QEMU whose multi-threaded TCG can run stale code, a
// kernel oops on a node's console makes StartVM's watch press reset once. The
// race cannot be started on demand, so the oops line is written into the
// serial log here (the one mocked part); QEMU, its reset and the firmware's
// second boot are real.
func TestVMResetOnOops(t *testing.T) {
	testenv.Long(t)
	testenv.RequireNetns(t)
	testenv.RequireQEMU(t)
	testenv.RequireCommands(t, "dnsmasq")
	if !qemuaccel.StaleCodeRace(qemuaccel.Multi) {
		t.Skip("deliberate: this QEMU's multi-threaded TCG has no stale-code race, so nothing watches for oopses")
	}
	ns := fixtureNet(t, "vmoops")
	dir := t.TempDir()
	const mac = "52:54:00:78:00:22"
	startDnsmasq(t, ns, dir, "--dhcp-range=10.78.0.100,10.78.0.150,1h", "--dhcp-host="+mac+",10.78.0.22")
	vm, err := StartVM(context.Background(), VMConfig{Netns: ns, Name: "fxoops", Tap: "tap0", MAC: mac,
		Dir: filepath.Join(dir, "vm"), MemoryMiB: 512, CPUs: 2, Accel: qemuaccel.Multi})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Stop()
	got := regexp.MustCompile(`net0: 10\.78\.0\.22/`)
	if _, err := vm.Console.Expect(context.Background(), got, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	// A line a guest kernel's own panic prints is not the emulator's fault.
	appendSerial(t, vm, "[    3.245804] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n")
	time.Sleep(5 * time.Second)
	if n := vm.OopsResets(); n != 0 {
		t.Fatalf("reset %d times for a panic of the guest's own", n)
	}
	vm.Console.Mark()
	appendSerial(t, vm, "[   62.100237] general protection fault, probably for non-canonical address 0x1a7de42ff0000: 0000 [#1] PREEMPT SMP NOPTI\n")
	deadline := time.Now().Add(time.Minute)
	for vm.OopsResets() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no reset a minute after the oops")
		}
		time.Sleep(time.Second)
	}
	// The reset machine starts its firmware again (SeaBIOS's own retry
	// comes only after 60 s of "No bootable device").
	if _, err := vm.Console.Expect(context.Background(), regexp.MustCompile(`SeaBIOS \(version`), 30*time.Second); err != nil {
		t.Fatalf("after the reset: %v", err)
	}
	if _, err := vm.Console.Expect(context.Background(), got, 3*time.Minute); err != nil {
		t.Fatalf("after the reset: %v", err)
	}
	b, err := os.ReadFile(vm.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`fxoops: EMULATOR FAULT: .*pressing reset \(1 of 2\)`).Match(b) {
		t.Fatalf("qemu.log does not record the reset:\n%s", b)
	}
}

// appendSerial writes line to vm's serial log as if the guest printed it.
func appendSerial(t *testing.T, vm *VM, line string) {
	t.Helper()
	f, err := os.OpenFile(vm.SerialPath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(line); err != nil {
		t.Fatal(err)
	}
}
