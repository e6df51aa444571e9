package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/herdlab/herd/testlab"
)

// vmExit carries a process exit code through cobra to main.
type vmExit struct {
	code int
	msg  string
}

func (e vmExit) Error() string { return e.msg }
func (e vmExit) ExitCode() int { return e.code }

func init() {
	var (
		name, mac, disk, dir, netns, accel, until string
		uefi, noDisk                              bool
		memory, cpus                              int
		timeout                                   time.Duration
	)
	vmCmd := &cobra.Command{Use: "vm", Short: "Try images on QEMU nodes against a running herd serve"}
	run := &cobra.Command{
		Use:   "run",
		Short: "Boot one QEMU node on the server's bridge; its serial console is printed until it exits",
		Long: `Boots one QEMU node (TCG by default) whose NIC is a new tap on the bridge
herd serve listens on (server.interface), so it netboots like a real server.
The node's MAC comes from herd.yaml (--name) or --mac. Its virtual SSD is
kept in --dir across runs, so the second boot shows the SSD cache at work.
With --until the command ends (exit 0) once the console matches the regular
expression, or fails after --timeout. Ctrl-C stops the node.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadSite(false)
			if err != nil {
				return err
			}
			if mac == "" {
				n, ok := cfg.NodeByName(name)
				if !ok {
					return fmt.Errorf("node %q is not in %s: add it (herd node add) or pass --mac", name, cfg.Path)
				}
				mac = n.MAC
			}
			if _, err := net.ParseMAC(mac); err != nil {
				return fmt.Errorf("--mac %q: %w", mac, err)
			}
			var re *regexp.Regexp
			if until != "" {
				if re, err = regexp.Compile(until); err != nil {
					return fmt.Errorf("--until: %w", err)
				}
			}
			bridge := cfg.Server.Interface
			if bridge == "" {
				return fmt.Errorf("%s: server.interface is empty; herd vm run attaches to that bridge", cfg.Path)
			}
			if dir == "" {
				dir = filepath.Join("/var/tmp/herd-vms", name)
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			ipArgs := func(a ...string) []string {
				if netns != "" {
					return append([]string{"-n", netns}, a...)
				}
				return a
			}
			if out, err := exec.Command("ip", ipArgs("-d", "link", "show", bridge)...).CombinedOutput(); err != nil || !strings.Contains(string(out), "bridge") {
				return fmt.Errorf("server.interface %s is not a bridge%s (herd vm run needs one to plug a tap into): %s",
					bridge, map[bool]string{true: " in namespace " + netns}[netns != ""], strings.TrimSpace(string(out)))
			}
			tap := fmt.Sprintf("hvm%d", os.Getpid()%100000)
			for _, step := range [][]string{{"tuntap", "add", "dev", tap, "mode", "tap"}, {"link", "set", tap, "master", bridge}, {"link", "set", tap, "up"}} {
				if out, err := exec.Command("ip", ipArgs(step...)...).CombinedOutput(); err != nil {
					exec.Command("ip", ipArgs("link", "del", tap)...).Run()
					return fmt.Errorf("ip %s: %w: %s", strings.Join(step, " "), err, strings.TrimSpace(string(out)))
				}
			}
			defer exec.Command("ip", ipArgs("link", "del", tap)...).Run()

			vc := testlab.VMConfig{Name: name, Tap: tap, MAC: mac, UEFI: uefi, Dir: dir,
				MemoryMiB: memory, CPUs: cpus, Accel: accel, DiskSize: disk}
			if !noDisk {
				vc.Disk = filepath.Join(dir, "ssd.qcow2")
			}
			if netns != "" {
				vc.Netns = &testlab.Netns{Name: netns} // not ours: never Close it
			}
			ctx := cmd.Context()
			vm, err := testlab.StartVM(ctx, vc)
			if err != nil {
				return err
			}
			defer vm.Stop()
			fmt.Fprintf(cmd.ErrOrStderr(), "herd vm: %s (MAC %s, %s) pid %d, serial log %s, SSD %s\n",
				name, mac, map[bool]string{true: "UEFI", false: "BIOS"}[uefi], vm.PID(), vm.SerialPath, vc.Disk)
			fctx, stop := context.WithCancel(ctx)
			defer stop()
			go vm.Console.Follow(fctx, cmd.OutOrStdout(), !term.IsTerminal(int(os.Stdout.Fd())))
			if re != nil {
				_, err := vm.Console.Expect(ctx, re, timeout)
				time.Sleep(300 * time.Millisecond) // let Follow print the match
				if err != nil {
					if errors.Is(ctx.Err(), context.Canceled) {
						return ctx.Err()
					}
					return vmExit{1, fmt.Sprintf("vm %s: console never matched %q within %s (serial log %s)", name, until, timeout, vm.SerialPath)}
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "\nherd vm: %s matched %q; stopping it\n", name, until)
				return nil
			}
			select {
			case <-vm.Done():
				return nil
			case <-ctx.Done():
				return nil
			}
		},
	}
	f := run.Flags()
	f.StringVar(&name, "name", "vm1", "node name (its MAC is taken from herd.yaml unless --mac is given)")
	f.StringVar(&mac, "mac", "", "MAC address of the node's NIC")
	f.BoolVar(&uefi, "uefi", false, "boot with UEFI firmware (OVMF) instead of SeaBIOS")
	f.StringVar(&disk, "disk", "8G", "size of the virtual SSD created on first use")
	f.BoolVar(&noDisk, "no-disk", false, "no SSD: the node runs from RAM")
	f.StringVar(&dir, "dir", "", "where the SSD, serial log and firmware vars live (default /var/tmp/herd-vms/NAME)")
	f.StringVar(&netns, "netns", "", "network namespace herd serve runs in (the bridge is looked up there)")
	f.StringVar(&accel, "accel", "", "QEMU accelerator (default TCG, multi-threaded from QEMU 8.1; kvm works only where the guest kernel survives it)")
	f.IntVar(&memory, "memory", 2048, "memory in MiB")
	f.IntVar(&cpus, "cpus", 2, "virtual CPUs")
	f.StringVar(&until, "until", "", "stop the node and exit 0 once the console matches this regular expression")
	f.DurationVar(&timeout, "timeout", 10*time.Minute, "with --until: fail after this long")
	vmCmd.AddCommand(run)
	root.AddCommand(vmCmd)
}
