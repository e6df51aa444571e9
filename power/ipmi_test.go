package power_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/testlab"
)

// syncBuf is a bytes.Buffer safe for a writer goroutine and a polling reader.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestPowerThroughIPMISim drives a QEMU node through a real BMC emulator:
// OpenIPMI's ipmi_sim on IPMI-over-LAN inside a namespace, which starts and
// kills QEMU itself (startcmd) and talks to QEMU's ipmi-bmc-extern device.
// `herd node power` and `herd node console` run inside that namespace as an
// admin would on the management network. The node needs no image: SeaBIOS
// printing its banner on the serial line shows that it (re)started.
func TestPowerThroughIPMISim(t *testing.T) {
	testenv.Long(t)
	testenv.RequireNetns(t)
	testenv.RequireQEMU(t)
	testenv.RequireCommands(t, "ipmi_sim", "ipmitool")
	herd := testenv.Bin(t, "HERD_BIN")
	ctx := context.Background()
	ns, err := testlab.NewNetns("bmc")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := ns.AddBridge("br0", "10.79.0.1/24"); err != nil {
		t.Fatal(err)
	}
	if err := ns.AddTap("tap0", "br0"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bmc, err := testlab.StartBMC(ctx, testlab.BMCConfig{Netns: ns, Addr: "127.0.0.1:6230",
		VM: testlab.VMConfig{Name: "pw01", Tap: "tap0", MAC: "52:54:00:79:00:11", Dir: filepath.Join(dir, "vm"), MemoryMiB: 256, CPUs: 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer bmc.Stop()
	cfg := filepath.Join(dir, "herd.yaml")
	site := fmt.Sprintf("overlays: []\ndhcp: {mode: off}\nnodes:\n  - name: pw01\n    mac: '52:54:00:79:00:11'\n    bmc:\n      address: 127.0.0.1:6230\n      user: admin\n      password_file: %s\n      cipher_suite: 3\n", bmc.PasswordFile)
	if err := os.WriteFile(cfg, []byte(site), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		c := ns.Command(ctx, herd, append([]string{"--config", cfg, "--state", filepath.Join(dir, "state"), "node"}, args...)...)
		out, err := c.CombinedOutput()
		return string(out), err
	}
	mustStatus := func(want string) {
		t.Helper()
		out, err := run("power", "pw01", "status")
		if err != nil || strings.TrimSpace(out) != "pw01: "+want {
			t.Fatalf("power status = %q, %v; want %s", out, err, want)
		}
	}
	banner := regexp.MustCompile(`SeaBIOS \(version`)
	t.Run("off-at-start", func(t *testing.T) {
		mustStatus("off")
		if pid := bmc.QEMUPID(); pid != 0 {
			t.Fatalf("QEMU %d runs while the BMC says off", pid)
		}
	})
	t.Run("on", func(t *testing.T) {
		if out, err := run("power", "pw01", "on"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if _, err := bmc.Console.Expect(ctx, banner, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		mustStatus("on")
	})
	t.Run("cycle-reboots", func(t *testing.T) {
		before := bmc.QEMUPID()
		if before == 0 {
			t.Fatal("no QEMU after power on")
		}
		if out, err := run("power", "pw01", "cycle"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		// A new power-on shows a new banner on the console.
		if _, err := bmc.Console.Expect(ctx, banner, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		mustStatus("on")
		if after := bmc.QEMUPID(); after == 0 || after == before {
			t.Fatalf("QEMU pid %d before the cycle, %d after: the machine was not power-cycled", before, after)
		}
	})
	t.Run("console-sol", func(t *testing.T) {
		// ipmitool sol activate needs a terminal on stdin; script(1) gives it one.
		testenv.RequirePTY(t)
		testenv.RequireCommands(t, "script")
		line := fmt.Sprintf("%s --config %s --state %s node console pw01 --force", herd, cfg, filepath.Join(dir, "state"))
		c := ns.Command(ctx, "script", "-qfec", line, "/dev/null")
		in, err := c.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		var out syncBuf
		c.Stdout, c.Stderr = &out, &out
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- c.Wait() }()
		wait := func(re *regexp.Regexp, from int) int {
			t.Helper()
			for deadline := time.Now().Add(3 * time.Minute); !re.MatchString(out.String()[from:]); {
				if time.Now().After(deadline) {
					c.Process.Kill()
					t.Fatalf("console never showed %q; it showed:\n%s", re, out.String())
				}
				time.Sleep(200 * time.Millisecond)
			}
			return len(out.String())
		}
		// The earlier boot has ended ("No bootable device."), so the
		// firmware's text seen after the cycle comes from the new power-on
		// (ipmi_sim reconnects SOL to the new QEMU's serial port, so the
		// first lines, the banner among them, may come before it does).
		mark := wait(regexp.MustCompile(`SOL Session operational`), 0)
		if o, err := run("power", "pw01", "cycle"); err != nil {
			t.Fatalf("%v: %s", err, o)
		}
		wait(regexp.MustCompile(`No bootable device`), mark)
		io.WriteString(in, "\r~.")
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			c.Process.Kill()
			t.Fatalf("~. did not end the console:\n%s", out.String())
		}
	})
	t.Run("off", func(t *testing.T) {
		if out, err := run("power", "pw01", "off"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		mustStatus("off")
		for deadline := time.Now().Add(30 * time.Second); bmc.QEMUPID() != 0; time.Sleep(200 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("QEMU still runs after power off")
			}
		}
	})
	// A LAN attacker who does not hold the password gets no session: the
	// command fails rather than reporting a state.
	t.Run("attack-wrong-password", func(t *testing.T) {
		bad := filepath.Join(dir, "wrong.pass")
		if err := os.WriteFile(bad, []byte("guessed\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := ns.Command(ctx, "ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", "6230", "-U", "admin", "-f", bad, "chassis", "power", "on").CombinedOutput()
		if err == nil {
			t.Fatalf("power on with a wrong password succeeded: %s", out)
		}
		if pid := bmc.QEMUPID(); pid != 0 {
			t.Fatal("a wrong password powered the node on")
		}
	})
}
