package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/site"
	"github.com/herdlab/herd/testlab"
)

// initLab is the segment herd init meets on a real lab: herd's namespace
// with bridge br0 (10.79.0.1/24) and, on a veth behind it, a "campus"
// namespace at 10.79.0.2 running a rival DHCP server (dnsmasq), the NAS's
// NFSv4 server (nfs-ganesha) and its directory (slapd). The state dir holds
// a promoted image so `herd doctor` can pass.
type initLab struct {
	ns, campus *testlab.Netns
	slapd      *testlab.Slapd
	rival      *exec.Cmd // dnsmasq
	state      string
	dir        string
	bin        string
}

func newInitLab(t *testing.T) *initLab {
	t.Helper()
	testenv.RequireNetns(t)
	testenv.RequireCommands(t, "tmux", "dnsmasq", "slapd", "ganesha.nfsd", "mksquashfs")
	testenv.RequireFiles(t, "package ipxe", "/usr/lib/ipxe/undionly.kpxe")
	l := &initLab{bin: herdBinary(t), dir: t.TempDir()}
	var err error
	if l.ns, err = testlab.NewNetns("init"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.ns.Close() })
	if l.campus, err = testlab.NewNetns("initcampus"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.campus.Close() })
	if err := l.ns.AddBridge("br0", "10.79.0.1/24"); err != nil {
		t.Fatal(err)
	}
	if err := l.ns.AddVethPeer("vcampus", "br0", l.campus, "eth0", "10.79.0.2/24"); err != nil {
		t.Fatal(err)
	}

	// The rival: a real DHCP server handing out addresses on the segment.
	dns := l.campus.Command(context.Background(), "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
		"--port=0", "--interface=eth0", "--bind-interfaces", "--user=root",
		"--dhcp-range=10.79.0.100,10.79.0.199,1h", "--dhcp-leasefile="+filepath.Join(l.dir, "dnsmasq.leases"),
		"--pid-file="+filepath.Join(l.dir, "dnsmasq.pid"), "--log-dhcp", "--log-facility="+filepath.Join(l.dir, "dnsmasq.log"))
	if out, err := os.Create(filepath.Join(l.dir, "dnsmasq.out")); err == nil {
		dns.Stdout, dns.Stderr = out, out
	}
	if err := dns.Start(); err != nil {
		t.Fatalf("start dnsmasq: %v", err)
	}
	l.rival = dns
	t.Cleanup(func() {
		l.stopRival()
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(l.dir, "dnsmasq.log"))
			if len(log) > 4000 {
				log = log[len(log)-4000:]
			}
			t.Logf("dnsmasq log (end):\n%s", log)
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	g, err := testlab.StartGanesha(ctx, testlab.GaneshaConfig{Netns: l.campus, Addr: "10.79.0.2", Dir: filepath.Join(l.dir, "ganesha"),
		Exports: []testlab.Export{{Pseudo: "/export/homes", Path: filepath.Join(l.dir, "homes")}, {Pseudo: "/export/Public", Path: filepath.Join(l.dir, "public")}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Stop() })
	l.slapd, err = testlab.StartSlapd(ctx, testlab.SlapdConfig{Dir: filepath.Join(l.dir, "slapd"), Netns: l.campus, Addr: "10.79.0.2", Base: "dc=lab,dc=internal"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.slapd.Stop() })

	l.state = filepath.Join(l.dir, "state")
	st, err := store.Open(l.state)
	if err != nil {
		t.Fatal(err)
	}
	id := publishImage(t, st, "gpu", "", map[string]string{"autofs": "5.1.9-1"})
	if _, err := st.Promote(context.Background(), id, false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // published images are read-only dirs
		filepath.WalkDir(l.dir, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				os.Chmod(p, 0o755)
			}
			return nil
		})
	})
	return l
}

// stopRival ends dnsmasq (by the PID this test holds), once.
func (l *initLab) stopRival() {
	if l.rival != nil {
		l.rival.Process.Kill()
		l.rival.Wait()
		l.rival = nil
	}
}

// herd runs the herd binary inside herd's namespace.
func (l *initLab) herd(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := l.ns.Command(ctx, l.bin, args...).CombinedOutput()
	return string(out), err
}

// doctorAccepts runs herd doctor on cfg and fails t unless every check passes.
func (l *initLab) doctorAccepts(t *testing.T, cfg string) {
	t.Helper()
	out, err := l.herd("--config", cfg, "--state", l.state, "doctor")
	if err != nil {
		t.Fatalf("herd doctor refuses what herd init wrote (%v):\n%s", err, out)
	}
	if !strings.Contains(out, "PASS  other dhcp server: 10.79.0.2") || !strings.Contains(out, "fine in proxy mode") {
		t.Errorf("doctor did not see the rival as fine in proxy mode:\n%s", out)
	}
	t.Logf("herd doctor:\n%s", out)
}

// checkProxySite reads what herd init wrote and checks the answers landed.
func checkProxySite(t *testing.T, cfg, pwFile string) {
	t.Helper()
	c, err := site.Load(cfg, nil)
	if err != nil {
		t.Fatalf("herd.yaml from herd init: %v", err)
	}
	data, _ := os.ReadFile(cfg)
	if c.DHCP.Mode != site.DHCPProxy || c.Server.Interface != "br0" || c.Server.Address != "10.79.0.1" ||
		c.NAS.Address != "10.79.0.2" || c.NAS.Homes != "/export/homes" || c.NAS.Public != "/export/Public" ||
		c.LDAP.URI != "ldap://10.79.0.2/" || c.LDAP.Base != "dc=lab,dc=internal" ||
		c.LDAP.AdminDN != "cn=admin,dc=lab,dc=internal" || c.LDAP.AdminPasswordFile != pwFile {
		t.Errorf("herd.yaml from herd init:\n%s", data)
	}
	if !strings.Contains(string(data), "another DHCP server (10.79.0.2") {
		t.Errorf("herd.yaml does not say why proxy mode:\n%s", data)
	}
	if st, err := os.Stat(cfg); err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("herd.yaml mode: %v %v", st.Mode(), err)
	}
}

// tmux is one private tmux server (its own socket) running a command in a
// pane; Close ends exactly that server.
type tmux struct {
	t    *testing.T
	sock string
}

func startTmux(t *testing.T, command string) *tmux {
	t.Helper()
	x := &tmux{t: t, sock: filepath.Join(t.TempDir(), "tmux.sock")}
	// The pane's shell prints the exit status and stays, so the end is readable.
	if out, err := x.cmd("new-session", "-d", "-s", "init", "-x", "200", "-y", "60", command+`; echo "EXIT=$?"; sleep 600`).CombinedOutput(); err != nil {
		t.Fatalf("tmux new-session: %v\n%s", err, out)
	}
	t.Cleanup(func() { x.cmd("kill-server").Run() })
	return x
}

func (x *tmux) cmd(args ...string) *exec.Cmd {
	return exec.Command("tmux", append([]string{"-S", x.sock}, args...)...)
}

// screen is the pane's whole history.
func (x *tmux) screen() string {
	out, err := x.cmd("capture-pane", "-p", "-J", "-S", "-", "-t", "init").Output()
	if err != nil {
		x.t.Fatalf("tmux capture-pane: %v", err)
	}
	return string(out)
}

// expect waits (bounded) until the screen's last non-empty line matches re.
func (x *tmux) expect(re string) string {
	x.t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(60 * time.Second)
	for {
		s := x.screen()
		// tmux pads with blanks: compare the last non-empty line, trimmed.
		lines := strings.Split(strings.TrimRight(s, "\n "), "\n")
		if rx.MatchString(strings.TrimSpace(lines[len(lines)-1])) {
			return s
		}
		if time.Now().After(deadline) {
			x.t.Fatalf("herd init never showed %q; screen:\n%s", re, s)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// answer types a line into the pane (literally, then Enter).
func (x *tmux) answer(s string) {
	x.t.Helper()
	if s != "" {
		if out, err := x.cmd("send-keys", "-t", "init", "-l", s).CombinedOutput(); err != nil {
			x.t.Fatalf("tmux send-keys: %v %s", err, out)
		}
	}
	if out, err := x.cmd("send-keys", "-t", "init", "Enter").CombinedOutput(); err != nil {
		x.t.Fatalf("tmux send-keys: %v %s", err, out)
	}
}

// TestInit drives `herd init` on a segment with a rival DHCP server, a real
// NFSv4 NAS and slapd: under tmux as an admin would, once with flags, and
// against binds and exports that fail (nothing written).
func TestInit(t *testing.T) {
	l := newInitLab(t)
	pw := filepath.Join(l.dir, "ldap-admin.secret")
	if err := l.slapd.WriteAdminPassword(pw); err != nil {
		t.Fatal(err)
	}

	t.Run("interactive-under-tmux", func(t *testing.T) {
		cfg := filepath.Join(t.TempDir(), "herd.yaml")
		x := startTmux(t, fmt.Sprintf("ip netns exec %s %s --config %s init", l.ns.Name, l.bin, cfg))
		x.expect(`^Interface facing the nodes .*:$`)
		x.answer("br0")
		s := x.expect(`^DHCP mode: .* \[proxy\]:$`)
		if !strings.Contains(s, "found another DHCP server: 10.79.0.2") {
			t.Errorf("the rival was not reported:\n%s", s)
		}
		x.answer("") // take the proposed proxy
		x.expect(`^NAS address .*:$`)
		x.answer("10.79.0.2")
		x.expect(`^Homes export .*\[/export/homes\]:$`)
		x.answer("")
		x.expect(`^Shared export .*\[/export/Public\]:$`)
		x.answer("")
		x.expect(`^LDAP server URI \[ldap://10.79.0.2/\]:$`)
		x.answer("")
		x.expect(`^LDAP base DN \[dc=lab,dc=internal\]:$`) // read from the root DSE
		x.answer("")
		x.expect(`^DN herd binds as .*\[cn=admin,dc=lab,dc=internal\]:$`)
		x.answer("")
		x.expect(`^File holding that DN's password .*:$`)
		x.answer(pw)
		s = x.expect(`^EXIT=\d+$`)
		t.Logf("herd init under tmux:\n%s", s)
		if !strings.Contains(s, "EXIT=0") || !strings.Contains(s, "Wrote "+cfg) {
			t.Fatalf("herd init failed:\n%s", s)
		}
		checkProxySite(t, cfg, pw)
		l.doctorAccepts(t, cfg)
	})

	flags := func(cfg string, extra ...string) []string {
		return append([]string{"--config", cfg, "init", "--non-interactive", "--interface", "br0",
			"--nas", "10.79.0.2", "--ldap-base", "dc=lab,dc=internal", "--ldap-admin-password-file", pw}, extra...)
	}
	t.Run("flags", func(t *testing.T) {
		cfg := filepath.Join(t.TempDir(), "herd.yaml")
		out, err := l.herd(flags(cfg)...)
		if err != nil {
			t.Fatalf("herd init with flags: %v\n%s", err, out)
		}
		checkProxySite(t, cfg, pw)
		l.doctorAccepts(t, cfg)
		// An existing file is never replaced without --force.
		before, _ := os.ReadFile(cfg)
		out, err = l.herd(flags(cfg, "--public", "none")...)
		if after, _ := os.ReadFile(cfg); err == nil || !strings.Contains(out, "--force") || string(after) != string(before) {
			t.Errorf("herd init over an existing file (err %v) changed it or did not say --force:\n%s", err, out)
		}
		if out, err := l.herd(flags(cfg, "--public", "none", "--force")...); err != nil {
			t.Fatalf("herd init --force: %v\n%s", err, out)
		}
		if c, err := site.Load(cfg, nil); err != nil || c.NAS.Public != "" {
			t.Errorf("after --force: public %q, %v", c.NAS.Public, err)
		}
		// Full mode beside the rival is refused: doctor would fail it too.
		other := filepath.Join(t.TempDir(), "herd.yaml")
		out, err = l.herd(flags(other, "--dhcp-mode", "full")...)
		if _, serr := os.Stat(other); err == nil || serr == nil || !strings.Contains(out, "would fight") {
			t.Errorf("full mode beside a rival (err %v, file %v):\n%s", err, serr, out)
		}
	})

	t.Run("ldap-refuses-bind", func(t *testing.T) {
		cfg := filepath.Join(t.TempDir(), "herd.yaml")
		wrong := filepath.Join(t.TempDir(), "wrong.secret")
		if err := os.WriteFile(wrong, []byte("not-the-password\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := l.herd(append(flags(cfg), "--ldap-admin-password-file", wrong)...)
		t.Logf("herd init with a refused bind (%v):\n%s", err, out)
		if err == nil || !strings.Contains(out, "invalid credentials") || !strings.Contains(out, "nothing written") {
			t.Errorf("a refused bind was not reported clearly (err %v):\n%s", err, out)
		}
		if _, err := os.Stat(cfg); !os.IsNotExist(err) {
			t.Errorf("herd init wrote %s although the bind was refused (%v)", cfg, err)
		}
		if ents, _ := os.ReadDir(filepath.Dir(cfg)); len(ents) != 0 {
			t.Errorf("files left behind: %v", ents)
		}
	})

	// Last: with the rival gone, the probe finds nobody and herd init
	// proposes full mode, which doctor accepts too.
	defer t.Run("no-rival-full-mode", func(t *testing.T) {
		l.stopRival()
		cfg := filepath.Join(t.TempDir(), "herd.yaml")
		out, err := l.herd(flags(cfg)...)
		if err != nil || !strings.Contains(out, "no other DHCP server answered") {
			t.Fatalf("herd init without a rival (%v):\n%s", err, out)
		}
		c, err := site.Load(cfg, nil)
		if err != nil || c.DHCP.Mode != site.DHCPFull || c.DHCP.Subnet != "10.79.0.0/24" {
			data, _ := os.ReadFile(cfg)
			t.Fatalf("without a rival: %v\n%s", err, data)
		}
		if out, err := l.herd("--config", cfg, "--state", l.state, "doctor"); err != nil || !strings.Contains(out, "PASS  other dhcp server: none answered on br0") {
			t.Errorf("doctor on the full-mode file (%v):\n%s", err, out)
		}
	})

	t.Run("missing-export", func(t *testing.T) {
		cfg := filepath.Join(t.TempDir(), "herd.yaml")
		out, err := l.herd(flags(cfg, "--homes", "/export/nohomes")...)
		if err == nil || !strings.Contains(out, `has no "nohomes" (NFS4ERR_NOENT)`) {
			t.Errorf("a missing export was not reported (err %v):\n%s", err, out)
		}
		if _, err := os.Stat(cfg); !os.IsNotExist(err) {
			t.Errorf("herd init wrote %s although the export is missing", cfg)
		}
	})
}
