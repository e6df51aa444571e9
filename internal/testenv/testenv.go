// Package testenv decides whether a test that needs root, network namespaces,
// QEMU or an external program can run here. Outside CI a missing prerequisite
// skips the test with a clear message; under CI=true it fails the test,
// because CI installs everything and a skip there would hide a broken set-up.
package testenv

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
)

// InCI reports whether the tests run under CI (CI=true).
func InCI() bool { return os.Getenv("CI") == "true" }

// missing skips (or, in CI, fails) t with why.
func missing(t testing.TB, why string) {
	t.Helper()
	if InCI() {
		t.Fatalf("prerequisite missing in CI: %s", why)
	}
	t.Skipf("prerequisite missing: %s", why)
}

// RequireRoot needs uid 0 (namespaces, mounts, mmdebstrap, taps).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "needs root")
	}
}

// RequireCommands needs each program on PATH.
func RequireCommands(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			missing(t, n+" is not installed (make deps installs it)")
		}
	}
}

// RequireNetns needs root and the ip tool to create network namespaces.
func RequireNetns(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	RequireCommands(t, "ip")
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		missing(t, "kernel has no network namespaces")
	}
}

// RequireQEMU needs qemu-system-x86_64 (TCG works without /dev/kvm).
func RequireQEMU(t testing.TB) {
	t.Helper()
	RequireCommands(t, "qemu-system-x86_64", "qemu-img")
}

// DeliberatePrefix starts the reason of every skip that is a choice (a
// benchmark run only by bench/*.sh, a long test under -short), not a missing
// prerequisite; `make test`'s summary counts the two kinds apart.
const DeliberatePrefix = "deliberate: "

// Deliberate skips t on purpose (never a failure, in CI neither); why says
// how to run it.
func Deliberate(t testing.TB, why string) {
	t.Helper()
	t.Skip(DeliberatePrefix + why)
}

// Long skips t under -short: the test builds images or boots VMs.
func Long(t testing.TB) {
	t.Helper()
	if testing.Short() {
		Deliberate(t, "long test skipped under -short")
	}
}

// RequireFiles needs each path to exist; pkg names what installs them.
func RequireFiles(t testing.TB, pkg string, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			missing(t, p+" is missing (install "+pkg+"; make deps does)")
		}
	}
}

// RequirePTY needs pseudo-terminals (/dev/ptmx that opens).
func RequirePTY(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		missing(t, "no pseudo-terminals: "+err.Error())
		return
	}
	f.Close()
}

// Bin returns the path of a herd binary built by `make build` (HERD_BIN or
// HERD_BOOT_BIN), or skips/fails when it was not built.
func Bin(t testing.TB, env string) string {
	t.Helper()
	p := os.Getenv(env)
	if p == "" {
		missing(t, env+" is not set (run through `make test`, which builds bin/)")
	}
	if _, err := os.Stat(p); err != nil {
		missing(t, env+"="+p+" does not exist (run `make build`)")
	}
	return p
}
