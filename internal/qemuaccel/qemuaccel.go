// Package qemuaccel picks the QEMU accelerator for herd's QEMU nodes: software
// emulation (TCG, see ENVIRONMENT.md for why not KVM), multi-threaded only
// where this host's QEMU runs a Linux guest that way without corrupting it, or
// where the caller watches for the corruption (StaleCodeRace).
package qemuaccel

import (
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// Multi and Single are TCG with one host thread per vCPU and with one host
// thread taking turns over all vCPUs.
const (
	Multi  = "tcg,thread=multi"
	Single = "tcg,thread=single"
)

// Before 8.1, QEMU's multi-threaded TCG could translate a code page on one
// vCPU while another vCPU's write invalidated it, and keep the stale
// translation (fixed upstream in 8.1 by "accel/tcg: Always lock pages before
// translation"). A Linux guest rewrites its own text at run time (static keys,
// alternatives: text_poke), so now and then it runs code that is no longer
// there and dies: here (QEMU 7.2, Debian 12) guests oopsed in __kmalloc and
// tcp_v4_connect and in efi_enter_virtual_mode after a reset, each time with
// an EFLAGS no CPU can hold, one guest in each of three full test runs. One
// host thread taking turns over the vCPUs has no such race, but a 2-vCPU
// guest boots about 1.4 times slower with it (bench/boot.sh).
const firstSafeMajor, firstSafeMinor = 8, 1

var (
	once          sync.Once
	major, minor  int
	versionProbed bool
)

// probe reads this host's QEMU version once.
func probe() {
	once.Do(func() {
		out, err := exec.Command("qemu-system-x86_64", "--version").Output()
		if err != nil {
			return
		}
		if a, b, err := ParseVersion(string(out)); err == nil {
			major, minor, versionProbed = a, b, true
		}
	})
}

// Default returns the accelerator for a boot that cannot recover from a
// corrupted guest: Multi from QEMU 8.1 on, Single before it or when the
// version cannot be read.
func Default() string {
	probe()
	if !versionProbed {
		return Single
	}
	return ForVersion(major, minor)
}

// StaleCodeRace says whether a guest under accel on this host's QEMU can run
// stale code (multi-threaded TCG before 8.1, or an unknown version): such a
// guest's console must be watched for the oopses that follow (Oops).
func StaleCodeRace(accel string) bool {
	if !strings.HasPrefix(accel, "tcg") || strings.Contains(accel, "thread=single") {
		return false
	}
	probe()
	return !versionProbed || ForVersion(major, minor) == Single
}

// ForVersion returns the accelerator for QEMU major.minor.
func ForVersion(major, minor int) string {
	if major > firstSafeMajor || major == firstSafeMajor && minor >= firstSafeMinor {
		return Multi
	}
	return Single
}

var versionRE = regexp.MustCompile(`QEMU emulator version (\d+)\.(\d+)`)

// ParseVersion reads major and minor from `qemu-system-x86_64 --version`.
func ParseVersion(out string) (major, minor int, err error) {
	m := versionRE.FindStringSubmatch(out)
	if m == nil {
		return 0, 0, fmt.Errorf("qemuaccel: no %q in %q", "QEMU emulator version", out)
	}
	major, _ = strconv.Atoi(m[1])
	minor, _ = strconv.Atoi(m[2])
	return major, minor, nil
}

// Oops matches the first line of a guest kernel's report of a CPU exception
// in kernel code, the way the stale-code race shows on a serial console, and
// the EFI runtime mapping failure it caused once after a reset. It does not
// match "Kernel panic" alone: a boot that panics on its own (no root, init
// died) is the code under test failing, not the emulator.
var Oops = regexp.MustCompile(`(?m)^\[ *[0-9]+\.[0-9]+\] (general protection fault|BUG: unable to handle page fault|int3: 0000 \[#|invalid opcode: 0000 \[#|stack segment: 0000 \[#|double fault: 0000 \[#|Oops: |efi: Error mapping PA )[^\r\n]*`)
