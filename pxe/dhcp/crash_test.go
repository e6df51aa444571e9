package dhcp

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestMain lets this test binary act as a lease writer that the crash test
// kills with SIGKILL in the middle of its writes.
func TestMain(m *testing.M) {
	if path := os.Getenv("HERD_TEST_LEASE_WRITER"); path != "" {
		l := NewLeases()
		for i := 0; ; i++ {
			for j := 0; j < 200; j++ {
				l.set(Lease{MAC: fmt.Sprintf("52:54:00:00:%02x:%02x", j>>8, j&0xff), IP: netip.AddrFrom4([4]byte{10, 77, byte(j >> 8), byte(j)}),
					Hostname: fmt.Sprintf("n%d", j), Expires: time.Now().Add(time.Duration(i) * time.Second)})
			}
			if err := l.Save(path); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(2)
			}
		}
	}
	os.Exit(m.Run())
}

// TestKill9DuringLeaseWrite: herd serve killed with SIGKILL while it
// rewrites leases.json (a power cut, the OOM killer) leaves a leases.json
// that loads and holds every lease of one complete write.
func TestKill9DuringLeaseWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "leases.json")
	for round := 0; round < 15; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "HERD_TEST_LEASE_WRITER="+path)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(50+round*17) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		l, err := LoadLeases(path)
		if err != nil {
			t.Fatalf("round %d: leases.json after kill -9: %v", round, err)
		}
		if n := len(l.All()); n != 200 && n != 0 {
			t.Fatalf("round %d: %d leases after kill -9, want all 200 of a complete write", round, n)
		}
	}
	if l, _ := LoadLeases(path); len(l.All()) != 200 {
		t.Fatalf("no complete write survived: %d leases", len(l.All()))
	}
}
