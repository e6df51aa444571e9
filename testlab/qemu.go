package testlab

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/herdlab/herd/internal/qemuaccel"
)

// Firmware files of the ovmf package (4 MiB flash layout).
const (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
	// OVMFSecureCode and OVMFMSVars are OVMF built for Secure Boot (SMM) and
	// a variable store with Microsoft's keys enrolled and Secure Boot on
	// (Debian's ovmf package).
	OVMFSecureCode = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
	OVMFMSVars     = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
)

// DefaultAccel is software emulation: /dev/kvm exists on the test machines but
// Ubuntu's 6.8 kernel dies under it there (ENVIRONMENT.md), so KVM is opt-in.
// It is multi-threaded TCG: a lab boots many nodes one after another, and a
// 2-vCPU node boots about 1.4 times faster so. Where that QEMU can run stale
// code (qemuaccel.StaleCodeRace), StartVM watches each node's console and
// resets a node whose kernel oopses (watchOops).
func DefaultAccel() string { return qemuaccel.Multi }

// VMConfig describes one QEMU node.
type VMConfig struct {
	// Netns runs QEMU inside a namespace (so its tap lives there); nil runs it
	// in the caller's namespace (herd vm run on a real bridge).
	Netns *Netns
	Name  string
	// Tap is an existing tap device for the NIC; MAC is the NIC's address.
	Tap string
	MAC string
	// UEFI boots OVMF with the firmware's own PXE; otherwise SeaBIOS, whose
	// virtio-net option ROM is iPXE.
	UEFI bool
	// SecureBoot (with UEFI) boots OVMF's Secure Boot build with Microsoft's
	// keys enrolled and Secure Boot enforced: only signed loaders run.
	SecureBoot bool
	// SetupMode (with SecureBoot) starts from OVMF's blank variable store
	// instead: no PK, so the firmware is in Setup Mode and runs unsigned
	// code until keys are enrolled (secure_boot: herd's enrollment path).
	SetupMode bool
	// Disk is the virtual SSD (qcow2); created blank with DiskSize when
	// missing and kept across reboots and restarts. "" means no SSD.
	Disk     string
	DiskSize string
	// MemoryMiB and CPUs size the machine (defaults 2048 and 2).
	MemoryMiB int
	CPUs      int
	// Accel and CPU are QEMU's -accel and -cpu (defaults DefaultAccel(), "max").
	Accel string
	CPU   string
	// Dir holds serial.log, qmp.sock, qemu.log and the UEFI vars copy.
	Dir string
	// NoReboot makes a guest reboot end QEMU instead of resetting.
	NoReboot bool
	// NICs are more NICs after the boot NIC (never booted from).
	NICs []NIC
	// SerialTCP (host:port) makes the serial port a telnet server there (for
	// a BMC's serial-over-LAN), still logged to serial.log; "" logs only.
	SerialTCP string
	// TPM attaches a TPM 2.0 (a real swtpm process started with QEMU, its
	// state in Dir/tpm kept across restarts) as a tpm-tis device.
	TPM bool
	// Extra arguments appended to the command line.
	Extra []string
}

// tpmSocket is swtpm's control socket for a VM with TPM.
func (c VMConfig) tpmSocket() string { return filepath.Join(c.Dir, "tpm", "swtpm.sock") }

// NIC is an extra network card: a tap, its MAC and the netdev id (for QMP
// set_link; default net<N>).
type NIC struct {
	Tap, MAC, ID string
}

// VM is a running QEMU process started by this process.
type VM struct {
	Config     VMConfig
	SerialPath string
	QMPPath    string
	LogPath    string
	Console    *Console
	cmd        *exec.Cmd
	tpm        *exec.Cmd // swtpm, when Config.TPM
	done       chan struct{}
	waitErr    error
	resets     atomic.Int32 // by watchOops
}

// Args returns QEMU's command line for c (without the program name).
func (c VMConfig) Args() []string {
	a := []string{
		"-name", c.Name,
		"-accel", c.Accel, "-cpu", c.CPU,
		"-smp", strconv.Itoa(c.CPUs), "-m", strconv.Itoa(c.MemoryMiB),
		"-display", "none", "-monitor", "none", "-vga", "none",
		"-chardev", c.serialChardev(),
		"-serial", "chardev:ser0",
		"-qmp", "unix:" + filepath.Join(c.Dir, "qmp.sock") + ",server=on,wait=off",
		"-netdev", "tap,id=net0,ifname=" + c.Tap + ",script=no,downscript=no",
		"-boot", "order=n",
	}
	nic := "virtio-net-pci,netdev=net0,mac=" + c.MAC + ",bootindex=1"
	if c.UEFI {
		// An empty romfile drops the NIC's iPXE ROM, so OVMF's own PXE (with
		// its UEFI client architecture 7) is what asks for a boot file.
		nic += ",romfile="
		code, machine := OVMFCode, "q35"
		if c.SecureBoot {
			// The Secure Boot build keeps its variables behind SMM, so
			// the guest cannot rewrite db/PK from the OS.
			code, machine = OVMFSecureCode, "q35,smm=on"
			a = append(a, "-global", "driver=cfi.pflash01,property=secure,value=on")
		}
		a = append(a,
			"-machine", machine,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+code,
			"-drive", "if=pflash,format=raw,unit=1,file="+filepath.Join(c.Dir, "OVMF_VARS.fd"))
	} else {
		// SeaBIOS writes its own and the option ROM's text to the serial
		// port only when fw_cfg names the port (2 bytes, little endian 0x3f8).
		a = append(a, "-fw_cfg", "name=etc/sercon-port,file="+filepath.Join(c.Dir, "sercon-port"))
	}
	a = append(a, "-device", nic)
	for i, x := range c.NICs {
		id := x.ID
		if id == "" {
			id = fmt.Sprintf("net%d", i+1)
		}
		// No option ROM: only the first NIC boots.
		a = append(a, "-netdev", "tap,id="+id+",ifname="+x.Tap+",script=no,downscript=no",
			"-device", "virtio-net-pci,netdev="+id+",mac="+x.MAC+",romfile=")
	}
	if c.Disk != "" {
		// A serial number gives the disk a stable /dev/disk/by-id name.
		a = append(a,
			"-drive", "if=none,id=ssd0,format=qcow2,cache=unsafe,file="+c.Disk,
			"-device", "virtio-blk-pci,drive=ssd0,serial=herd-"+c.Name)
	}
	if c.TPM {
		a = append(a, "-chardev", "socket,id=chrtpm,path="+c.tpmSocket(),
			"-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0")
	}
	if c.NoReboot {
		a = append(a, "-no-reboot")
	}
	return append(a, c.Extra...)
}

// serialChardev is the -chardev of the serial port: a file, or a telnet
// server that logs to the same file.
func (c VMConfig) serialChardev() string {
	log := filepath.Join(c.Dir, "serial.log")
	if host, port, err := net.SplitHostPort(c.SerialTCP); err == nil {
		return "socket,id=ser0,host=" + host + ",port=" + port + ",server=on,wait=off,telnet=on,logfile=" + log + ",logappend=on"
	}
	return "file,id=ser0,path=" + log + ",append=on"
}

func (c *VMConfig) defaults() error {
	if c.Name == "" || c.Tap == "" || c.MAC == "" || c.Dir == "" {
		return errors.New("qemu: Name, Tap, MAC and Dir are required")
	}
	if _, err := net.ParseMAC(c.MAC); err != nil {
		return fmt.Errorf("qemu: MAC %q: %w", c.MAC, err)
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = 2048
	}
	if c.CPUs == 0 {
		c.CPUs = 2
	}
	if c.Accel == "" {
		c.Accel = DefaultAccel()
	}
	if c.CPU == "" {
		c.CPU = "max"
	}
	if c.DiskSize == "" {
		c.DiskSize = "8G"
	}
	return nil
}

// prepare fills defaults and makes the firmware files and the SSD that the
// command line of Args names.
func (c *VMConfig) prepare(ctx context.Context) error {
	if err := c.defaults(); err != nil {
		return err
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	if c.UEFI {
		vars := filepath.Join(c.Dir, "OVMF_VARS.fd")
		if _, err := os.Stat(vars); err != nil {
			src := OVMFVars
			if c.SecureBoot && !c.SetupMode {
				src = OVMFMSVars
			}
			b, err := os.ReadFile(src)
			if err != nil {
				return fmt.Errorf("qemu: UEFI needs the ovmf package: %w", err)
			}
			if err := os.WriteFile(vars, b, 0o644); err != nil {
				return fmt.Errorf("qemu: %w", err)
			}
		}
	} else if err := os.WriteFile(filepath.Join(c.Dir, "sercon-port"), []byte{0xf8, 0x03}, 0o644); err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	if c.Disk != "" {
		if _, err := os.Stat(c.Disk); errors.Is(err, os.ErrNotExist) {
			if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", c.Disk, c.DiskSize).CombinedOutput(); err != nil {
				return fmt.Errorf("qemu-img create %s %s: %w: %s", c.Disk, c.DiskSize, err, strings.TrimSpace(string(out)))
			}
		}
	}
	return nil
}

// StartVM prepares the firmware files and the SSD and starts QEMU; it returns
// once the QMP socket answers.
func StartVM(ctx context.Context, c VMConfig) (*VM, error) {
	if err := c.prepare(ctx); err != nil {
		return nil, err
	}
	v := &VM{
		Config:     c,
		SerialPath: filepath.Join(c.Dir, "serial.log"),
		QMPPath:    filepath.Join(c.Dir, "qmp.sock"),
		LogPath:    filepath.Join(c.Dir, "qemu.log"),
		done:       make(chan struct{}),
	}
	v.Console = NewConsole(v.SerialPath)
	v.Console.Mark()
	os.Remove(v.QMPPath)
	log, err := os.OpenFile(v.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	if c.TPM {
		if v.tpm, err = startSWTPM(c, log); err != nil {
			log.Close()
			return nil, err
		}
	}
	args := c.Args()
	if c.Netns != nil {
		v.cmd = c.Netns.Command(context.Background(), "qemu-system-x86_64", args...)
	} else {
		v.cmd = exec.Command("qemu-system-x86_64", args...)
	}
	v.cmd.Stdout, v.cmd.Stderr = log, log
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	fmt.Fprintf(log, "# %s\n", strings.Join(v.cmd.Args, " "))
	if err := v.cmd.Start(); err != nil {
		v.stopTPM()
		log.Close()
		return nil, fmt.Errorf("qemu: start: %w", err)
	}
	if qemuaccel.StaleCodeRace(c.Accel) {
		go v.watchOops(log)
	}
	go func() { v.waitErr = v.cmd.Wait(); v.stopTPM(); log.Close(); close(v.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := v.QMP("query-status"); err == nil {
			return v, nil
		} else if time.Now().After(deadline) {
			v.Kill()
			return nil, fmt.Errorf("qemu: QMP never answered: %w (log %s:\n%s)", err, v.LogPath, tailFile(v.LogPath, 20))
		}
		select {
		case <-v.done:
			return nil, fmt.Errorf("qemu exited at start: %v (log %s:\n%s)", v.waitErr, v.LogPath, tailFile(v.LogPath, 20))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// startSWTPM starts the VM's software TPM 2.0 and waits for its socket.
// --terminate ends it when QEMU closes the connection; stopTPM makes sure.
func startSWTPM(c VMConfig, log *os.File) (*exec.Cmd, error) {
	dir := filepath.Dir(c.tpmSocket())
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("swtpm: %w", err)
	}
	os.Remove(c.tpmSocket())
	cmd := exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+dir,
		"--ctrl", "type=unixio,path="+c.tpmSocket(), "--terminate",
		"--log", "file="+filepath.Join(dir, "swtpm.log"))
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	fmt.Fprintf(log, "# %s\n", strings.Join(cmd.Args, " "))
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("swtpm (package swtpm): %w", err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		if unixListening(cmd.Process.Pid, c.tpmSocket()) {
			return cmd, nil
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			return nil, fmt.Errorf("swtpm made no socket %s (log %s)", c.tpmSocket(), filepath.Join(dir, "swtpm.log"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// unixListening reports whether process pid listens on the Unix socket
// path. swtpm binds the name before it listens, so the file alone is not
// enough (QEMU's connect would be refused); a probe connection is not an
// option either, since --terminate ends swtpm when that connection closes.
// The table is read in the process's own network namespace.
func unixListening(pid int, path string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/unix", pid))
	if err != nil {
		return false
	}
	// Num RefCount Protocol Flags Type St Inode Path; Flags 00010000 is
	// __SO_ACCEPTCON, set by listen(2).
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 8 && f[3] == "00010000" && strings.Join(f[7:], " ") == path {
			return true
		}
	}
	return false
}

// stopTPM ends the VM's swtpm (by its PID) once QEMU is gone.
func (v *VM) stopTPM() {
	if v.tpm == nil {
		return
	}
	done := make(chan struct{})
	go func() { v.tpm.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		v.tpm.Process.Kill()
		<-done
	}
}

// QMP runs one QMP command (after the capabilities handshake) and returns
// its "return" value. Each call uses a fresh connection to the Unix socket,
// which lives in the file system and so works from any network namespace.
func (v *VM) QMP(command string) (json.RawMessage, error) {
	return v.QMPWith(command, nil)
}

// QMPWith runs one QMP command with arguments (nil for none).
func (v *VM) QMPWith(command string, args any) (json.RawMessage, error) {
	c, err := net.DialTimeout("unix", v.QMPPath, 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	type reply struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class, Desc string
		} `json:"error"`
		Event string `json:"event"`
		QMP   any    `json:"QMP"`
	}
	read := func() (reply, error) {
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return reply{}, err
			}
			var m reply
			if err := json.Unmarshal(line, &m); err != nil {
				return reply{}, fmt.Errorf("qmp: %w", err)
			}
			if m.Event == "" { // events are interleaved; skip them
				return m, nil
			}
		}
	}
	if _, err := read(); err != nil { // greeting
		return nil, err
	}
	for _, cmd := range []string{"qmp_capabilities", command} {
		req := map[string]any{"execute": cmd}
		if cmd == command && args != nil {
			req["arguments"] = args
		}
		line, err := json.Marshal(req)
		if err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		if _, err := c.Write(append(line, '\n')); err != nil {
			return nil, err
		}
		m, err := read()
		if err != nil {
			return nil, err
		}
		if m.Error != nil {
			return nil, fmt.Errorf("qmp %s: %s: %s", cmd, m.Error.Class, m.Error.Desc)
		}
		if cmd == command {
			return m.Return, nil
		}
	}
	return nil, nil
}

// maxOopsResets bounds how often watchOops resets one VM: a guest that keeps
// oopsing has a fault of its own, which its test must see.
const maxOopsResets = 2

// watchOops resets the VM when its kernel reports a CPU exception in kernel
// code (qemuaccel.Oops) on a QEMU whose multi-threaded TCG can run stale code:
// such a guest is corrupted by the emulator, not by the code under test, and
// a reset is what a BMC's power cycle would do on real hardware. Each reset is
// written to qemu.log and to stderr, so the test output shows it.
func (v *VM) watchOops(log io.Writer) {
	off := int64(0)
	if fi, err := os.Stat(v.SerialPath); err == nil {
		off = fi.Size()
	}
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-v.done:
			return
		case <-t.C:
		}
		data, err := readFrom(v.SerialPath, off)
		end := bytes.LastIndexByte(data, '\n')
		if err != nil || end < 0 {
			continue
		}
		off += int64(end + 1)
		m := qemuaccel.Oops.Find(data[:end+1])
		if m == nil {
			continue
		}
		n := int(v.resets.Add(1))
		msg := fmt.Sprintf("testlab: %s: EMULATOR FAULT: its kernel oopsed (%q) under multi-threaded TCG on a QEMU before 8.1, which can run stale code (qemuaccel)", v.Config.Name, bytes.TrimSpace(m))
		switch {
		case n > maxOopsResets:
			msg += fmt.Sprintf("; not reset: already reset %d times", maxOopsResets)
		case v.Config.NoReboot:
			msg += "; not reset: -no-reboot makes a reset end QEMU"
		default:
			msg += fmt.Sprintf("; pressing reset (%d of %d)", n, maxOopsResets)
		}
		fmt.Fprintln(log, msg)
		fmt.Fprintln(os.Stderr, msg)
		if n > maxOopsResets || v.Config.NoReboot {
			continue
		}
		// Let the kernel finish printing the oops, so the log keeps it.
		select {
		case <-v.done:
			return
		case <-time.After(3 * time.Second):
		}
		if err := v.Reset(); err != nil {
			fmt.Fprintf(log, "testlab: %s: reset after the oops: %v\n", v.Config.Name, err)
		}
		if fi, err := os.Stat(v.SerialPath); err == nil {
			off = fi.Size()
		}
	}
}

// OopsResets is how often watchOops has reset the VM.
func (v *VM) OopsResets() int { return int(v.resets.Load()) }

// Reset presses the machine's reset button (QMP system_reset): a hard
// reboot that keeps the SSD and the UEFI variables.
func (v *VM) Reset() error {
	_, err := v.QMP("system_reset")
	return err
}

// PID is QEMU's process id.
func (v *VM) PID() int { return v.cmd.Process.Pid }

// Done is closed when QEMU has exited.
func (v *VM) Done() <-chan struct{} { return v.done }

// Stop asks QEMU to quit (QMP), then kills it by PID if it does not.
func (v *VM) Stop() error {
	select {
	case <-v.done:
		return nil
	default:
	}
	v.QMP("quit")
	select {
	case <-v.done:
		return nil
	case <-time.After(5 * time.Second):
	}
	return stopProcess(v.cmd, v.done, 5*time.Second)
}

// Kill ends QEMU at once by its PID.
func (v *VM) Kill() {
	if v.cmd.Process != nil {
		_ = syscall.Kill(-v.cmd.Process.Pid, syscall.SIGKILL)
	}
	<-v.done
}
