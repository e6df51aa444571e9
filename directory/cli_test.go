package directory_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-ldap/ldap/v3"

	"github.com/herdlab/herd/directory"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/testlab"
)

// herdRun runs the herd binary against one site file and keeps everything it
// printed, so the test can prove no password ever shows up.
type herdRun struct {
	t          *testing.T
	bin, cfg   string
	state      string
	transcript bytes.Buffer
}

// run executes herd -vv --config cfg args... with stdin; it returns stdout,
// stderr and the exit code.
func (h *herdRun) run(stdin string, args ...string) (string, string, int) {
	h.t.Helper()
	cmd := h.cmd(stdin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		h.t.Fatalf("run herd %v: %v", args, err)
	}
	fmt.Fprintf(&h.transcript, "$ herd %s\n%s%s", strings.Join(args, " "), out.String(), errb.String())
	return out.String(), errb.String(), code
}

func (h *herdRun) cmd(stdin string, args ...string) *exec.Cmd {
	full := append([]string{"-vv", "--config", h.cfg, "--state", h.state}, args...)
	cmd := exec.Command(h.bin, full...)
	cmd.Stdin = strings.NewReader(stdin)
	return cmd
}

// ok runs herd and fails the test unless it exits 0.
func (h *herdRun) ok(stdin string, args ...string) string {
	h.t.Helper()
	out, errs, code := h.run(stdin, args...)
	if code != 0 {
		h.t.Fatalf("herd %v exited %d:\n%s%s", args, code, out, errs)
	}
	return out
}

// fails runs herd, wants a non-zero exit and wantErr in stderr.
func (h *herdRun) fails(stdin, wantErr string, args ...string) string {
	h.t.Helper()
	out, errs, code := h.run(stdin, args...)
	if code == 0 || !strings.Contains(errs, wantErr) {
		h.t.Fatalf("herd %v: exit %d, stderr %q; want failure with %q", args, code, errs, wantErr)
	}
	return out
}

// writeSite writes a herd.yaml pointing at the fixture.
func writeSite(t *testing.T, path string, s *testlab.Slapd, uri, tls, ca, pwFile string) {
	t.Helper()
	y := fmt.Sprintf(`dhcp:
  mode: "off"
nas:
  address: 10.77.0.2
  homes: /export/homes
ldap:
  uri: %s/
  base: %s
  admin_dn: %s
  admin_password_file: %s
  tls: %s
`, uri, s.Base, s.AdminDN, pwFile, tls)
	if ca != "" {
		y += "  ca_file: " + ca + "\n"
	}
	if err := os.WriteFile(path, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
}

func whoamiOK(t *testing.T, uri, dn, pw string) bool {
	t.Helper()
	f := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(f, []byte(pw), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ldapwhoami", "-x", "-H", uri, "-D", dn, "-y", f).CombinedOutput()
	return err == nil && strings.Contains(string(out), "dn:"+dn)
}

func TestHerdUserGroupCommands(t *testing.T) {
	bin := testenv.Bin(t, "HERD_BIN")
	testenv.RequireCommands(t, "ldapwhoami")
	dir := t.TempDir()
	s, pwFile := directory.StartTestSlapd(t, dir, testlab.SlapdConfig{TLS: true, DebugLevel: "stats"})
	cfg := filepath.Join(dir, "herd.yaml")
	writeSite(t, cfg, s, s.URI(), "starttls", s.CAFile, pwFile)
	h := &herdRun{t: t, bin: bin, cfg: cfg, state: filepath.Join(dir, "state")}

	const pw1, pw2 = "first-Secret-9f3a", "second-Secret-77b1"

	h.fails(pw1+"\n", "primary group members does not exist: create it first with `herd group add members`", "user", "add", "alice", "--password-stdin")
	h.fails("", "--password-stdin: stdin held no password", "user", "add", "alice", "--password-stdin")
	if out := h.ok("", "group", "add", "members"); !strings.Contains(out, "gid 10000") {
		t.Fatalf("group add: %s", out)
	}
	out := h.ok(pw1+"\n", "user", "add", "alice", "--gecos", "Alice Liddell", "--password-stdin")
	for _, want := range []string{"added user alice: uid 10000, gid 10000 (members), home /home/alice, shell /bin/bash",
		"password set (password modify extended operation)",
		"mkdir /export/homes/alice", "chown 10000:10000 /export/homes/alice", "chmod 700 /export/homes/alice"} {
		if !strings.Contains(out, want) {
			t.Fatalf("user add output lacks %q:\n%s", want, out)
		}
	}
	aliceDN := "uid=alice," + s.PeopleDN
	if !whoamiOK(t, s.URI(), aliceDN, pw1) {
		t.Fatal("alice cannot bind with the password herd set")
	}
	h.fails("", "user alice already exists", "user", "add", "alice")
	if os.Geteuid() == 0 {
		// With the homes export mounted here, herd makes the home itself.
		homes := filepath.Join(dir, "homes")
		os.Mkdir(homes, 0o755)
		out := h.ok("", "user", "add", "hilda", "--no-password", "--create-home-in", homes)
		if !strings.Contains(out, "created home "+filepath.Join(homes, "hilda")+" (owner 10001:10000, mode 0700)") || strings.Contains(out, "mkdir") {
			t.Fatalf("user add --create-home-in:\n%s", out)
		}
		// An unusable export falls back to the instructions.
		out = h.ok("", "user", "add", "ida", "--no-password", "--create-home-in", filepath.Join(dir, "nohomes"))
		if !strings.Contains(out, "could not create the home") || !strings.Contains(out, "mkdir /export/homes/ida") {
			t.Fatalf("user add with a missing export:\n%s", out)
		}
		h.ok("", "user", "del", "hilda")
		h.ok("", "user", "del", "ida")
	}

	// Without a terminal and without --password-stdin, passwd refuses.
	h.fails("", "stdin is not a terminal: pass the password on stdin with --password-stdin", "user", "passwd", "alice")
	h.ok(pw2+"\n", "user", "passwd", "alice", "--password-stdin")
	if !whoamiOK(t, s.URI(), aliceDN, pw2) || whoamiOK(t, s.URI(), aliceDN, pw1) {
		t.Fatal("after passwd only the new password may work")
	}

	h.ok("", "group", "add", "gpu", "--gid", "12000")
	h.ok("", "group", "add-member", "gpu", "alice")
	h.fails("", "alice is already a member of gpu", "group", "add-member", "gpu", "alice")
	var groups []directory.Group
	if err := json.Unmarshal([]byte(h.ok("", "group", "list", "--json")), &groups); err != nil {
		t.Fatal(err)
	}
	if len(groups) != 2 || groups[0].Name != "gpu" || groups[0].GID != 12000 || strings.Join(groups[0].Members, ",") != "alice" {
		t.Fatalf("group list: %+v", groups)
	}
	var u directory.User
	if err := json.Unmarshal([]byte(h.ok("", "user", "show", "alice", "--json")), &u); err != nil {
		t.Fatal(err)
	}
	if u.UID != 10000 || u.Group != "members" || u.Gecos != "Alice Liddell" || !u.HasPassword || strings.Join(u.Groups, ",") != "gpu" {
		t.Fatalf("user show: %+v", u)
	}
	if out := h.ok("", "user", "list"); !strings.Contains(out, "alice") || !strings.Contains(out, "Alice Liddell") {
		t.Fatalf("user list: %s", out)
	}
	h.ok("", "group", "rm-member", "gpu", "alice")
	h.ok("", "group", "rm", "gpu")
	h.fails("", "group gpu: not found", "group", "rm", "gpu")

	// Several herd processes adding users at the same moment.
	const procs = 6
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for i := range procs {
		c := h.cmd("", "user", "add", fmt.Sprintf("p%d", i))
		var b bytes.Buffer
		c.Stdout, c.Stderr = &b, &b
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, outs = append(cmds, c), append(outs, &b)
	}
	for i, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Fatalf("concurrent herd user add p%d: %v\n%s", i, err, outs[i])
		}
		h.transcript.Write(outs[i].Bytes())
	}
	var users []directory.User
	if err := json.Unmarshal([]byte(h.ok("", "user", "list", "--json")), &users); err != nil {
		t.Fatal(err)
	}
	directory.RequireDistinctUIDs(t, users)
	if len(users) != procs+1 {
		t.Fatalf("%d users after concurrent adds, want %d", len(users), procs+1)
	}

	if out := h.ok("", "ldap", "check"); !strings.Contains(out, "(TLS)") || !strings.Contains(out, "7 users, 1 groups; nodes (anonymous) see 7 users") || !strings.Contains(out, "no problems found") {
		t.Fatalf("ldap check on a clean directory:\n%s", out)
	}

	// Plant a duplicate uidNumber and a user without a primary group.
	admin, err := s.Admin()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct{ name, uid, gid string }{{"mallory", "10000", "10000"}, {"orphan", "30000", "4242"}} {
		add := ldap.NewAddRequest("uid="+p.name+","+s.PeopleDN, nil)
		add.Attribute("objectClass", []string{"account", "posixAccount"})
		add.Attribute("uid", []string{p.name})
		add.Attribute("cn", []string{p.name})
		add.Attribute("uidNumber", []string{p.uid})
		add.Attribute("gidNumber", []string{p.gid})
		add.Attribute("homeDirectory", []string{"/home/" + p.name})
		add.Attribute("loginShell", []string{"/bin/bash"})
		if err := admin.Add(add); err != nil {
			t.Fatal(err)
		}
	}
	admin.Close()
	out = h.fails("", "ldap check found 2 problem(s)", "ldap", "check")
	for _, want := range []string{"PROBLEM: uidNumber 10000 is used by 2 users: [alice mallory]",
		"PROBLEM: user orphan: primary group gidNumber 4242 does not exist"} {
		if !strings.Contains(out, want) {
			t.Fatalf("ldap check lacks %q:\n%s", want, out)
		}
	}

	h.ok("", "user", "del", "alice")
	h.fails("", "user alice: not found", "user", "show", "alice")

	// ldaps with the fixture CA works too.
	ldapsCfg := filepath.Join(dir, "herd-ldaps.yaml")
	writeSite(t, ldapsCfg, s, s.LDAPSURI(), "ldaps", s.CAFile, pwFile)
	hl := &herdRun{t: t, bin: bin, cfg: ldapsCfg, state: h.state}
	hl.ok("", "group", "list")
	h.transcript.Write(hl.transcript.Bytes())

	// Wrong admin password: the clear error, and a lax file mode refused.
	wrong := filepath.Join(dir, "wrong.secret")
	os.WriteFile(wrong, []byte("wrong-Admin-pw\n"), 0o600)
	writeSite(t, cfg, s, s.URI(), "starttls", s.CAFile, wrong)
	h.fails("", fmt.Sprintf("bind as %s failed: invalid credentials (check ldap.admin_password_file %s)", s.AdminDN, wrong), "user", "list")
	os.Chmod(pwFile, 0o640)
	writeSite(t, cfg, s, s.URI(), "starttls", s.CAFile, pwFile)
	h.fails("", cfg+":10:24: field ldap.admin_password_file: "+pwFile+" is readable by group or others (mode 0640); run: chmod 600 "+pwFile, "user", "list")
	// Server down names the URI.
	os.Chmod(pwFile, 0o600)
	s.Stop()
	h.fails("", "cannot reach the LDAP server at "+s.URI(), "user", "list")

	// No password in anything herd printed (with -vv logging on), nor in
	// slapd's operation log.
	slapdLog, _ := os.ReadFile(s.LogPath)
	for _, secret := range []string{pw1, pw2, s.AdminPassword, "wrong-Admin-pw"} {
		if strings.Contains(h.transcript.String(), secret) {
			t.Fatalf("a password appears in herd's output:\n%s", h.transcript.String())
		}
		if bytes.Contains(slapdLog, []byte(secret)) {
			t.Fatalf("a password appears in slapd's log %s", s.LogPath)
		}
	}
	if os.Getenv("HERD_SHOW_TRANSCRIPT") != "" {
		t.Log(h.transcript.String())
	}
	if !strings.Contains(h.transcript.String(), "ldap bound") {
		t.Fatal("the -vv transcript has no debug log lines; the leak check would prove little")
	}
}
