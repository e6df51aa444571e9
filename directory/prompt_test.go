package directory_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/herdlab/herd/directory"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/testlab"
)

// pty is a pseudo-terminal pair: herd gets the slave as stdin/stderr, the
// test types into and reads from the master, like an admin at a terminal.
type pty struct {
	master, slave *os.File
	mu            sync.Mutex
	seen          bytes.Buffer
	done          chan struct{}
}

func openPTY(t *testing.T) *pty {
	t.Helper()
	testenv.RequirePTY(t)
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	p := &pty{master: m, slave: s, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		buf := make([]byte, 4096)
		for {
			k, err := m.Read(buf)
			p.mu.Lock()
			p.seen.Write(buf[:k])
			p.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { s.Close(); m.Close() })
	return p
}

// output is everything herd wrote to the terminal so far.
func (p *pty) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen.String()
}

// typeAfter waits (bounded) for prompt to appear and for echo to be off on
// the terminal, then types line. Waiting for echo-off matters: characters
// typed before herd switches echo off would be echoed back in clear.
func (p *pty) typeAfter(t *testing.T, prompt, line string, occurrence int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		tio, err := unix.IoctlGetTermios(int(p.slave.Fd()), unix.TCGETS)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Count(p.output(), prompt) >= occurrence && tio.Lflag&unix.ECHO == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no prompt %q with echo off; terminal shows %q", prompt, p.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := p.master.Write([]byte(line + "\n")); err != nil {
		t.Fatal(err)
	}
}

func TestPasswdPromptsOnTerminal(t *testing.T) {
	bin := testenv.Bin(t, "HERD_BIN")
	testenv.RequireCommands(t, "ldapwhoami")
	dir := t.TempDir()
	s, pwFile := directory.StartTestSlapd(t, dir, testlab.SlapdConfig{})
	cfg := filepath.Join(dir, "herd.yaml")
	writeSite(t, cfg, s, s.URI(), "none", "", pwFile)
	h := &herdRun{t: t, bin: bin, cfg: cfg, state: filepath.Join(dir, "state")}
	h.ok("", "group", "add", "members")
	h.ok("old-Pass-1\n", "user", "add", "alice", "--password-stdin")
	dn := "uid=alice," + s.PeopleDN

	run := func(first, second string) (string, string, error) {
		p := openPTY(t)
		cmd := exec.Command(bin, "--config", cfg, "--state", h.state, "user", "passwd", "alice")
		var out bytes.Buffer
		cmd.Stdin, cmd.Stdout, cmd.Stderr = p.slave, &out, p.slave
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		p.typeAfter(t, "New password for alice: ", first, 1)
		p.typeAfter(t, "Retype new password for alice: ", second, 1)
		err := cmd.Wait()
		// With the last slave descriptor closed the master reads EIO, so
		// the reader has drained everything herd wrote.
		p.slave.Close()
		<-p.done
		return out.String(), p.output(), err
	}

	// Two different entries: refused, old password still works.
	out, term, err := run("typo-Pass-2", "typo-Pass-3")
	if err == nil || !strings.Contains(term, "the two passwords differ; nothing changed") {
		t.Fatalf("mismatch accepted: %v\n%s%s", err, out, term)
	}
	if !whoamiOK(t, s.URI(), dn, "old-Pass-1") {
		t.Fatal("old password broken by a refused change")
	}
	// Same twice: set, and never echoed to the terminal.
	out, term, err = run("new-Pass-4", "new-Pass-4")
	if err != nil || !strings.Contains(out, "password of alice set") {
		t.Fatalf("passwd on a terminal: %v\n%s%s", err, out, term)
	}
	if !whoamiOK(t, s.URI(), dn, "new-Pass-4") || whoamiOK(t, s.URI(), dn, "old-Pass-1") {
		t.Fatal("the password typed at the prompt is not the one in effect")
	}
	for _, secret := range []string{"typo-Pass-2", "typo-Pass-3", "new-Pass-4"} {
		if strings.Contains(term+out, secret) {
			t.Fatalf("password echoed: %q", term+out)
		}
	}
}
