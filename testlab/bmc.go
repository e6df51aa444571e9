package testlab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/herdlab/herd/internal/qemuaccel"
)

// BMCConfig describes an emulated baseboard management controller: OpenIPMI's
// ipmi_sim, reachable over IPMI-over-LAN (RMCP+) inside a namespace, that
// powers one QEMU node. ipmi_sim itself starts QEMU (its startcmd) on power
// on and kills it on power off; QEMU's ipmi-bmc-extern device connects back
// to ipmi_sim over a socket (reset, graceful power off, the guest's KCS
// interface), and the node's serial port is a telnet server that ipmi_sim
// bridges to serial-over-LAN.
type BMCConfig struct {
	// Netns is where ipmi_sim (and so QEMU) runs; required.
	Netns *Netns
	// VM is the node; its Dir also holds the BMC's files. SerialTCP and the
	// IPMI devices are set by StartBMC.
	VM VMConfig
	// Addr is the LAN address ipmi_sim listens on (default 127.0.0.1:623).
	Addr string
	// User and Password are the one admin account (defaults admin, a random
	// password).
	User, Password string
	// VMPort and SOLPort are loopback ports inside Netns for QEMU's BMC link
	// and serial console (defaults 9002, 9003; distinct per BMC in one netns).
	VMPort, SOLPort int
	// PowerOn starts the node with ipmi_sim (startnow); otherwise it waits
	// for a power on.
	PowerOn bool
}

// BMC is a running ipmi_sim started by this process.
type BMC struct {
	Config BMCConfig
	// PasswordFile holds Password (0600), for ipmitool -f / herd.yaml.
	PasswordFile string
	// Console follows the node's serial log across power cycles.
	Console *Console
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
}

// StartBMC writes ipmi_sim's configuration and starts it; it returns once the
// LAN port answers an RMCP ping (ipmi_sim is ready for ipmitool).
func StartBMC(ctx context.Context, c BMCConfig) (*BMC, error) {
	if c.Netns == nil {
		return nil, errors.New("bmc: Netns is required")
	}
	if c.Addr == "" {
		c.Addr = "127.0.0.1:623"
	}
	if c.User == "" {
		c.User = "admin"
	}
	if c.Password == "" {
		c.Password = "pw" + randHex(6)
	}
	if c.VMPort == 0 {
		c.VMPort = 9002
	}
	if c.SOLPort == 0 {
		c.SOLPort = 9003
	}
	host, port, err := net.SplitHostPort(c.Addr)
	if err != nil {
		return nil, fmt.Errorf("bmc: Addr %q: %w", c.Addr, err)
	}
	vm := c.VM
	if vm.Accel == "" {
		// ipmi_sim starts this QEMU, not StartVM: nothing watches its
		// console for the stale-code oopses of multi-threaded TCG.
		vm.Accel = qemuaccel.Default()
	}
	vm.SerialTCP = net.JoinHostPort("127.0.0.1", strconv.Itoa(c.SOLPort))
	vm.Extra = append(append([]string{}, vm.Extra...),
		"-chardev", fmt.Sprintf("socket,id=ipmi0,host=127.0.0.1,port=%d,reconnect=1", c.VMPort),
		"-device", "ipmi-bmc-extern,chardev=ipmi0,id=bmc0",
		"-device", "isa-ipmi-kcs,bmc=bmc0")
	if err := vm.prepare(ctx); err != nil {
		return nil, err
	}
	c.VM = vm
	var qemu []string
	for _, a := range append([]string{"qemu-system-x86_64"}, vm.Args()...) {
		if strings.ContainsAny(a, "\"'\\ \t\n") {
			return nil, fmt.Errorf("bmc: QEMU argument %q cannot go in ipmi_sim's startcmd", a)
		}
		qemu = append(qemu, a)
	}
	qemuLog := filepath.Join(vm.Dir, "qemu.log")
	startcmd := strings.Join(qemu, " ") + " >>" + qemuLog + " 2>&1"
	startnow := "false"
	if c.PowerOn {
		startnow = "true"
	}
	// One MC (0x20) with one LAN channel; md5 or RMCP+ only, admin only.
	conf := fmt.Sprintf(`name "%s"
set_working_mc 0x20
  startlan 1
    addr %s %s
    priv_limit admin
    allowed_auths_callback md5
    allowed_auths_user md5
    allowed_auths_operator md5
    allowed_auths_admin md5
    guid a123456789abcdefa123456789abcdef
  endlan
  serial 15 127.0.0.1 %d codec VM ipmb 0x20
  sol "telnet:127.0.0.1:%d" 115200
  startcmd "%s"
  startnow %s
  poweroff_wait 10
  kill_wait 5
  user 2 true "%s" "%s" admin 10 md5
`, vm.Name, host, port, c.VMPort, c.SOLPort, startcmd, startnow, c.User, c.Password)
	emu := "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nsel_enable 0x20 1000 0x0a\nmc_enable 0x20\n"
	dir := filepath.Join(vm.Dir, "bmc")
	if err := os.MkdirAll(filepath.Join(dir, "state"), 0o700); err != nil {
		return nil, fmt.Errorf("bmc: %w", err)
	}
	b := &BMC{Config: c, PasswordFile: filepath.Join(dir, "password"), LogPath: filepath.Join(dir, "ipmi_sim.log"),
		Console: NewConsole(filepath.Join(vm.Dir, "serial.log")), done: make(chan struct{})}
	b.Console.Mark()
	for name, data := range map[string]string{"lan.conf": conf, "bmc.emu": emu, "password": c.Password + "\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			return nil, fmt.Errorf("bmc: %w", err)
		}
	}
	log, err := os.OpenFile(b.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("bmc: %w", err)
	}
	b.cmd = c.Netns.Command(context.Background(), "ipmi_sim", "-n", "-c", filepath.Join(dir, "lan.conf"),
		"-f", filepath.Join(dir, "bmc.emu"), "-s", filepath.Join(dir, "state"))
	b.cmd.Stdout, b.cmd.Stderr = log, log
	// Its own process group: Stop ends ipmi_sim and the QEMU it started.
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := b.cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("bmc: start ipmi_sim: %w", err)
	}
	go func() { b.cmd.Wait(); log.Close(); close(b.done) }()
	if err := b.waitPing(ctx, 20*time.Second); err != nil {
		b.Stop()
		return nil, fmt.Errorf("bmc: %w (log %s:\n%s)", err, b.LogPath, tailFile(b.LogPath, 20))
	}
	return b, nil
}

// waitPing sends RMCP presence pings (ASF, the IPMI LAN discovery message)
// to the LAN port until one is answered.
func (b *BMC) waitPing(ctx context.Context, timeout time.Duration) error {
	ping := []byte{0x06, 0x00, 0xff, 0x06, 0x00, 0x00, 0x11, 0xbe, 0x80, 0x00, 0x00, 0x00}
	return waitReady(ctx, timeout, 200*time.Millisecond, b.done,
		func() error {
			return b.Config.Netns.Do(func() error {
				c, err := net.Dial("udp", b.Config.Addr)
				if err != nil {
					return err
				}
				defer c.Close()
				if _, err := c.Write(ping); err != nil {
					return err
				}
				c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
				buf := make([]byte, 64)
				_, err = c.Read(buf)
				return err
			})
		},
		func(err error) error {
			return fmt.Errorf("ipmi_sim did not answer an RMCP ping on %s: %w", b.Config.Addr, err)
		},
		func() error { return errors.New("ipmi_sim exited at start") })
}

// QEMUPID is the pid of the node's QEMU (a child of ipmi_sim), 0 when the
// node is powered off.
func (b *BMC) QEMUPID() int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", b.cmd.Process.Pid, b.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, f := range strings.Fields(string(data)) {
		pid, _ := strconv.Atoi(f)
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if strings.HasPrefix(string(comm), "qemu-system") {
			return pid
		}
		// startcmd runs through a shell that may stay as QEMU's parent.
		sub, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		for _, g := range strings.Fields(string(sub)) {
			gp, _ := strconv.Atoi(g)
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", gp))
			if strings.HasPrefix(string(comm), "qemu-system") {
				return gp
			}
		}
	}
	return 0
}

// PID is ipmi_sim's process id (of `ip netns exec`, which execs it).
func (b *BMC) PID() int { return b.cmd.Process.Pid }

// Stop ends ipmi_sim and the QEMU it started (their process group).
func (b *BMC) Stop() error { return stopProcess(b.cmd, b.done, 5*time.Second) }
