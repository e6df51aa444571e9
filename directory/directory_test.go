package directory

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/go-ldap/ldap/v3"

	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/testlab"
)

// StartTestSlapd starts a real slapd on a loopback port (c, its files in
// dir/slapd) for the test's length and writes its admin password to
// dir/admin.secret (0600), which it returns. Exported for this package's
// external tests (cli_test.go and co.).
func StartTestSlapd(t *testing.T, dir string, c testlab.SlapdConfig) (*testlab.Slapd, string) {
	t.Helper()
	testenv.RequireCommands(t, "/usr/sbin/slapd", "/usr/sbin/slapadd")
	c.Dir = filepath.Join(dir, "slapd")
	s, err := testlab.StartSlapd(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop() })
	pwFile := filepath.Join(dir, "admin.secret")
	if err := s.WriteAdminPassword(pwFile); err != nil {
		t.Fatal(err)
	}
	return s, pwFile
}

// RequireDistinctUIDs fails the test when two of users share a uid.
// Exported for this package's external tests.
func RequireDistinctUIDs(t *testing.T, users []User) {
	t.Helper()
	seen := map[int]string{}
	for _, u := range users {
		if other, dup := seen[u.UID]; dup {
			t.Fatalf("uid %d given to both %s and %s", u.UID, other, u.Name)
		}
		seen[u.UID] = u.Name
	}
}

// startDirectory starts a real slapd on a loopback port and returns its
// settings with the admin password in a 0600 file.
func startDirectory(t *testing.T, tls bool) (*testlab.Slapd, Settings) {
	t.Helper()
	s, pwFile := StartTestSlapd(t, t.TempDir(), testlab.SlapdConfig{TLS: tls})
	return s, Settings{
		URI: s.URI(), Base: s.Base, AdminDN: s.AdminDN, AdminPasswordFile: pwFile, TLS: "none",
		UsersOU: "ou=people", GroupsOU: "ou=groups", UIDMin: 10000, GIDMin: 10000,
		DefaultShell: "/bin/bash", DefaultGroup: "members", HomeRoot: "/home",
		NASHomes: "/export/homes", NASAddress: "10.77.0.2",
	}
}

func connect(t *testing.T, st Settings) *Dir {
	t.Helper()
	d, err := Connect(st)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestUsersAndGroups(t *testing.T) {
	s, st := startDirectory(t, false)
	d := connect(t, st)

	// The default group must exist first; the error says how to make it.
	if _, err := d.AddUser(NewUser{Name: "alice"}); err == nil || !strings.Contains(err.Error(), "herd group add members") {
		t.Fatalf("add without the default group: %v", err)
	}
	members, err := d.AddGroup("members", 0)
	if err != nil {
		t.Fatal(err)
	}
	if members.GID != 10000 {
		t.Fatalf("first gid = %d, want 10000", members.GID)
	}
	if _, err := d.AddGroup("members", 0); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("duplicate group: %v", err)
	}
	gpu, err := d.AddGroup("gpu", 0)
	if err != nil || gpu.GID != 10001 {
		t.Fatalf("second group: %+v %v", gpu, err)
	}

	alice, err := d.AddUser(NewUser{Name: "alice", Gecos: "Alice Liddell"})
	if err != nil {
		t.Fatal(err)
	}
	if alice.UID != 10000 || alice.GID != 10000 || alice.Group != "members" || alice.Home != "/home/alice" ||
		alice.Shell != "/bin/bash" || alice.Gecos != "Alice Liddell" || alice.DN != "uid=alice,ou=people,"+s.Base {
		t.Fatalf("alice = %+v", alice)
	}
	bob, err := d.AddUser(NewUser{Name: "bob", Group: "gpu", Shell: "/bin/zsh", Home: "/srv/bob"})
	if err != nil {
		t.Fatal(err)
	}
	if bob.UID != 10001 || bob.GID != gpu.GID || bob.Shell != "/bin/zsh" || bob.Home != "/srv/bob" {
		t.Fatalf("bob = %+v", bob)
	}
	// Explicit uid: taken is refused, free is used.
	if _, err := d.AddUser(NewUser{Name: "carol", UID: 10000}); !errors.Is(err, errNumberTaken) {
		t.Fatalf("carol with alice's uid: %v", err)
	}
	carol, err := d.AddUser(NewUser{Name: "carol", UID: 20000})
	if err != nil || carol.UID != 20000 {
		t.Fatalf("carol: %+v %v", carol, err)
	}
	// The next automatic number jumps over the highest in use.
	dave, err := d.AddUser(NewUser{Name: "dave"})
	if err != nil || dave.UID != 20001 {
		t.Fatalf("dave: %+v %v", dave, err)
	}
	// Duplicate name and bad names refused.
	if _, err := d.AddUser(NewUser{Name: "alice"}); err == nil || !strings.Contains(err.Error(), "user alice already exists") {
		t.Fatalf("duplicate user: %v", err)
	}
	for _, bad := range []string{"Alice", "1x", "a b", "x,ou=evil", ""} {
		if _, err := d.AddUser(NewUser{Name: bad}); err == nil || !strings.Contains(err.Error(), "not valid") {
			t.Fatalf("name %q: %v", bad, err)
		}
	}

	// Membership.
	if err := d.AddMember("gpu", "alice"); err != nil {
		t.Fatal(err)
	}
	if err := d.AddMember("gpu", "alice"); err == nil || !strings.Contains(err.Error(), "already a member") {
		t.Fatalf("double add-member: %v", err)
	}
	if err := d.AddMember("gpu", "nobody"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("add-member of a missing user: %v", err)
	}
	if err := d.AddMember("gpu", "carol"); err != nil {
		t.Fatal(err)
	}
	u, err := d.User("alice")
	if err != nil || strings.Join(u.Groups, ",") != "gpu" {
		t.Fatalf("alice's groups: %+v %v", u, err)
	}
	if err := d.RemoveMember("gpu", "carol"); err != nil {
		t.Fatal(err)
	}
	if err := d.RemoveMember("gpu", "carol"); err == nil || !strings.Contains(err.Error(), "not a member") {
		t.Fatalf("double rm-member: %v", err)
	}

	// A group that is someone's primary group cannot go.
	if err := d.DeleteGroup("gpu"); err == nil || !strings.Contains(err.Error(), "primary group of 1 user") {
		t.Fatalf("delete gpu: %v", err)
	}

	users, err := d.Users()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range users {
		names = append(names, u.Name)
	}
	if strings.Join(names, ",") != "alice,bob,carol,dave" {
		t.Fatalf("users = %v", names)
	}

	// Deleting alice also drops her memberUid.
	if err := d.DeleteUser("alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.User("alice"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("alice after delete: %v", err)
	}
	g, err := d.Group("gpu")
	if err != nil || len(g.Members) != 0 {
		t.Fatalf("gpu after deleting alice: %+v %v", g, err)
	}
	if err := d.DeleteUser("alice"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if err := d.DeleteUser("bob"); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteGroup("gpu"); err != nil {
		t.Fatal(err)
	}

	// Everything is visible to an independent client too.
	out, err := exec.Command("ldapsearch", "-x", "-LLL", "-H", s.URI(), "-b", s.PeopleDN, "(uid=dave)", "uidNumber", "gidNumber").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "uidNumber: 20001") || !strings.Contains(string(out), "gidNumber: 10000") {
		t.Fatalf("ldapsearch dave: %v\n%s", err, out)
	}

	// Instructions for the NAS name the exact commands.
	ins := d.HomeInstructions(dave)
	for _, want := range []string{"mkdir /export/homes/dave", "chown 20001:10000 /export/homes/dave", "chmod 700 /export/homes/dave"} {
		if !strings.Contains(ins, want) {
			t.Fatalf("instructions lack %q:\n%s", want, ins)
		}
	}
}

func TestCreateHome(t *testing.T) {
	testenv.RequireRoot(t) // chown to another uid
	root := t.TempDir()
	u := &User{Name: "alice", UID: 10007, GID: 10003}
	dir, err := CreateHome(root, u)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if st.Mode().Perm() != 0o700 || !st.IsDir() || sys.Uid != 10007 || sys.Gid != 10003 {
		t.Fatalf("home %s: mode %v owner %d:%d", dir, st.Mode(), sys.Uid, sys.Gid)
	}
	// An existing one is reported and left alone.
	os.Chown(dir, 0, 0)
	if _, err := CreateHome(root, u); err == nil || !strings.Contains(err.Error(), "already exists; left as it is") {
		t.Fatalf("second create: %v", err)
	}
	if st, _ := os.Stat(dir); st.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Fatal("existing home re-owned")
	}
	if _, err := CreateHome(filepath.Join(root, "missing"), u); err == nil || !strings.Contains(err.Error(), "homes export") {
		t.Fatalf("missing export: %v", err)
	}
}

func TestPasswordModifyAndLogin(t *testing.T) {
	testenv.RequireCommands(t, "ldapwhoami")
	s, st := startDirectory(t, false)
	d := connect(t, st)
	if _, err := d.AddGroup("members", 0); err != nil {
		t.Fatal(err)
	}
	u, err := d.AddUser(NewUser{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if u.HasPassword {
		t.Fatal("new user has a password")
	}
	ok, err := d.SupportsPasswordModify()
	if err != nil || !ok {
		t.Fatalf("slapd should offer password modify: %v %v", ok, err)
	}
	const pw = "Corr3ct-h0rse-battery"
	method, err := d.SetPassword("alice", pw)
	if err != nil || !strings.Contains(method, "extended operation") {
		t.Fatalf("set password: %q %v", method, err)
	}
	whoami(t, s.URI(), u.DN, pw, true)
	whoami(t, s.URI(), u.DN, "wrong", false)

	// The fallback for servers without the extended operation writes
	// {SSHA} itself. slapd always offers the operation, so force it.
	d.noPasswordModify = true
	method, err = d.SetPassword("alice", "second-pass")
	d.noPasswordModify = false
	if err != nil || !strings.Contains(method, "{SSHA}") {
		t.Fatalf("fallback: %q %v", method, err)
	}
	whoami(t, s.URI(), u.DN, "second-pass", true)
	whoami(t, s.URI(), u.DN, pw, false)
	admin, err := s.Admin()
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	res, err := admin.Search(ldap.NewSearchRequest(u.DN, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false,
		"(objectClass=*)", []string{"userPassword", "shadowLastChange"}, nil))
	if err != nil || len(res.Entries) != 1 {
		t.Fatal(err)
	}
	// slapd itself verified the hash above (whoami binds with it); here only
	// its form: salted SHA-1, never the password in clear.
	if v := res.Entries[0].GetAttributeValue("userPassword"); !strings.HasPrefix(v, "{SSHA}") || strings.Contains(v, "second-pass") {
		t.Fatalf("stored userPassword is not a salted hash: %q", v)
	}
	if res.Entries[0].GetAttributeValue("shadowLastChange") == "" {
		t.Fatal("shadowLastChange not set")
	}

	if _, err := d.SetPassword("alice", ""); err == nil {
		t.Fatal("empty password accepted")
	}
	if _, err := d.SetPassword("nobody", pw); !errors.Is(err, ErrNotFound) {
		t.Fatalf("password for a missing user: %v", err)
	}
	u, _ = d.User("alice")
	if !u.HasPassword {
		t.Fatal("HasPassword false after setting one")
	}
}

// whoami runs ldapwhoami with the password in a 0600 file (never in argv).
func whoami(t *testing.T, uri, dn, pw string, wantOK bool) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(f, []byte(pw), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ldapwhoami", "-x", "-H", uri, "-D", dn, "-y", f).CombinedOutput()
	if wantOK && (err != nil || !strings.Contains(string(out), "dn:"+dn)) {
		t.Fatalf("ldapwhoami as %s: %v: %s", dn, err, out)
	}
	if !wantOK && err == nil {
		t.Fatalf("ldapwhoami as %s succeeded with a wrong password: %s", dn, out)
	}
}

func TestConcurrentAddsGetDistinctNumbers(t *testing.T) {
	_, st := startDirectory(t, false)
	d := connect(t, st)
	if _, err := d.AddGroup("members", 0); err != nil {
		t.Fatal(err)
	}
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := Connect(st)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if _, err := c.AddUser(NewUser{Name: fmt.Sprintf("u%d", i)}); err != nil {
				errs <- err
			}
			if _, err := c.AddGroup(fmt.Sprintf("g%d", i), 0); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	users, err := d.Users()
	if err != nil {
		t.Fatal(err)
	}
	RequireDistinctUIDs(t, users)
	if len(users) != n {
		t.Fatalf("%d users, want %d", len(users), n)
	}
	groups, _ := d.Groups()
	gseen := map[int]string{}
	for _, g := range groups {
		if other, dup := gseen[g.GID]; dup {
			t.Fatalf("gid %d given to %s and %s", g.GID, other, g.Name)
		}
		gseen[g.GID] = g.Name
	}
	rep, err := d.Check()
	if err != nil || len(rep.Problems) != 0 {
		t.Fatalf("check after concurrent adds: %+v %v", rep, err)
	}

	// Several admins asking for the same explicit uid at once: never two
	// entries with it; every loser gets the "in use" error.
	var mu sync.Mutex
	won := 0
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := Connect(st)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			_, err = c.AddUser(NewUser{Name: fmt.Sprintf("x%d", i), UID: 15000})
			switch {
			case err == nil:
				mu.Lock()
				won++
				mu.Unlock()
			case !errors.Is(err, errNumberTaken):
				t.Errorf("x%d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	same, err := d.search("(uidNumber=15000)", "uid")
	if err != nil {
		t.Fatal(err)
	}
	if len(same) > 1 || len(same) != won {
		t.Fatalf("%d entries carry uid 15000, %d adds reported success", len(same), won)
	}
}

func TestConnectErrors(t *testing.T) {
	s, st := startDirectory(t, false)

	// Wrong password: names the DN and the file, not the password.
	wrong := filepath.Join(t.TempDir(), "wrong.secret")
	if err := os.WriteFile(wrong, []byte("not-the-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := st
	bad.AdminPasswordFile = wrong
	_, err := Connect(bad)
	want := fmt.Sprintf("bind as %s failed: invalid credentials (check ldap.admin_password_file %s)", s.AdminDN, wrong)
	if err == nil || err.Error() != want {
		t.Fatalf("wrong password: %v\nwant %s", err, want)
	}
	if strings.Contains(err.Error(), "not-the-password") || strings.Contains(err.Error(), s.AdminPassword) {
		t.Fatal("error leaks a password")
	}

	// A password file readable by others is refused before any traffic.
	lax := filepath.Join(t.TempDir(), "lax.secret")
	if err := os.WriteFile(lax, []byte(s.AdminPassword), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(lax, 0o644); err != nil {
		t.Fatal(err)
	}
	bad = st
	bad.AdminPasswordFile = lax
	if _, err := Connect(bad); err == nil || !strings.Contains(err.Error(), "readable by group or others (mode 0644); run: chmod 600 "+lax) {
		t.Fatalf("lax mode: %v", err)
	}

	// Missing or empty files and settings name the field.
	empty := filepath.Join(t.TempDir(), "empty.secret")
	os.WriteFile(empty, nil, 0o600)
	for _, c := range []struct {
		mod  func(*Settings)
		want string
	}{
		{func(s *Settings) { s.AdminPasswordFile = empty }, "ldap.admin_password_file: " + empty + " is empty"},
		{func(s *Settings) { s.AdminPasswordFile = empty + ".none" }, "ldap.admin_password_file: stat " + empty + ".none: no such file"},
		{func(s *Settings) { s.AdminPasswordFile = "" }, "ldap.admin_password_file: not set"},
		{func(s *Settings) { s.AdminDN = "" }, "ldap.admin_dn: not set"},
		{func(s *Settings) { s.URI = "" }, "ldap.uri: not set"},
		{func(s *Settings) { s.TLS, s.CAFile = "starttls", empty }, "ldap.ca_file: " + empty + " holds no PEM certificate"},
	} {
		bad := st
		c.mod(&bad)
		if _, err := Connect(bad); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("got %v, want %q", err, c.want)
		}
	}

	// Server down: names the URI.
	s.Stop()
	if _, err := Connect(st); err == nil || !strings.Contains(err.Error(), "cannot reach the LDAP server at "+st.URI) {
		t.Fatalf("server down: %v", err)
	}
}

func TestTLSModes(t *testing.T) {
	s, st := startDirectory(t, true)
	st.CAFile = s.CAFile

	st.TLS = "starttls"
	d, err := Connect(st)
	if err != nil {
		t.Fatalf("StartTLS: %v", err)
	}
	if !d.TLS {
		t.Fatal("StartTLS connection not marked TLS")
	}
	if _, ok := d.Conn().TLSConnectionState(); !ok {
		t.Fatal("no TLS state after StartTLS")
	}
	d.Close()

	ls := st
	ls.TLS, ls.URI = "ldaps", s.LDAPSURI()
	d, err = Connect(ls)
	if err != nil {
		t.Fatalf("ldaps: %v", err)
	}
	if st, ok := d.Conn().TLSConnectionState(); !ok || !st.HandshakeComplete {
		t.Fatal("ldaps not encrypted")
	}
	d.Close()

	// A CA that did not sign the server is refused.
	other := filepath.Join(t.TempDir(), "other-ca.pem")
	s2, err := testlab.StartSlapd(context.Background(), testlab.SlapdConfig{Dir: t.TempDir(), TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	s2.Stop()
	data, _ := os.ReadFile(s2.CAFile)
	os.WriteFile(other, data, 0o644)
	ls.CAFile = other
	if _, err := Connect(ls); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("ldaps with a foreign CA: %v", err)
	}
	st.CAFile = other
	if _, err := Connect(st); err == nil || !strings.Contains(err.Error(), "StartTLS") {
		t.Fatalf("StartTLS with a foreign CA: %v", err)
	}
}

func TestCheckFindsProblems(t *testing.T) {
	s, st := startDirectory(t, false)
	d := connect(t, st)
	if _, err := d.AddGroup("members", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.AddUser(NewUser{Name: "alice"}); err != nil {
		t.Fatal(err)
	}
	rep, err := d.Check()
	if err != nil || len(rep.Problems) != 0 || rep.Users != 1 || rep.Groups != 1 {
		t.Fatalf("clean directory: %+v %v", rep, err)
	}
	// Plant entries directly with the admin connection, as another tool might.
	admin, err := s.Admin()
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	plant := func(name, uid, gid string) {
		add := ldap.NewAddRequest("uid="+name+","+s.PeopleDN, nil)
		add.Attribute("objectClass", []string{"account", "posixAccount"})
		add.Attribute("uid", []string{name})
		add.Attribute("cn", []string{name})
		add.Attribute("uidNumber", []string{uid})
		add.Attribute("gidNumber", []string{gid})
		add.Attribute("homeDirectory", []string{"/home/" + name})
		if err := admin.Add(add); err != nil {
			t.Fatal(err)
		}
	}
	plant("mallory", "10000", "10000") // alice's uid; no loginShell
	plant("orphan", "10500", "55555")  // primary group missing; no loginShell
	dupGroup := ldap.NewAddRequest("cn=clone,"+s.GroupsDN, nil)
	dupGroup.Attribute("objectClass", []string{"posixGroup"})
	dupGroup.Attribute("cn", []string{"clone"})
	dupGroup.Attribute("gidNumber", []string{"10000"}) // members' gid
	if err := admin.Add(dupGroup); err != nil {
		t.Fatal(err)
	}
	rep, err = d.Check()
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(rep.Problems, "\n")
	for _, want := range []string{
		"uidNumber 10000 is used by 2 users: [alice mallory]",
		"user orphan: primary group gidNumber 55555 does not exist",
		"user mallory: no loginShell",
		"gidNumber 10000 is used by 2 groups: [clone members]",
	} {
		if !strings.Contains(all, want) {
			t.Fatalf("check lacks %q:\n%s", want, all)
		}
	}
	if rep.Users != 3 || rep.NodeView != "anonymous" || rep.NodeUsers != 3 {
		t.Fatalf("report = %+v", rep)
	}
}

func TestCheckNodeView(t *testing.T) {
	// A lax server: everyone may read everything, password hashes included.
	s, pwFile := StartTestSlapd(t, t.TempDir(), testlab.SlapdConfig{Access: "access to * by * read"})
	st := Settings{URI: s.URI(), Base: s.Base, AdminDN: s.AdminDN, AdminPasswordFile: pwFile,
		UsersOU: "ou=people", GroupsOU: "ou=groups", UIDMin: 10000, GIDMin: 10000, DefaultGroup: "members"}
	d := connect(t, st)
	d.AddGroup("members", 0)
	d.AddUser(NewUser{Name: "alice"})
	if _, err := d.SetPassword("alice", "alice-Pass-1"); err != nil {
		t.Fatal(err)
	}
	rep, err := d.Check()
	if err != nil {
		t.Fatal(err)
	}
	if all := strings.Join(rep.Problems, "\n"); !strings.Contains(all, "nodes (anonymous) can read the userPassword of 1 users") {
		t.Fatalf("lax server not reported: %+v", rep)
	}

	// A strict one: anonymous sees nothing, nodes bind as a service DN.
	s2, pw2 := StartTestSlapd(t, t.TempDir(), testlab.SlapdConfig{
		Access: "access to attrs=userPassword by self write by anonymous auth by * none\naccess to * by users read by * auth"})
	st2 := st
	st2.URI, st2.Base, st2.AdminDN, st2.AdminPasswordFile = s2.URI(), s2.Base, s2.AdminDN, pw2
	d2 := connect(t, st2)
	d2.AddGroup("members", 0)
	d2.AddUser(NewUser{Name: "sssd"})
	d2.AddUser(NewUser{Name: "bob"})
	if _, err := d2.SetPassword("sssd", "node-Bind-7"); err != nil {
		t.Fatal(err)
	}
	rep, err = d2.Check()
	if err != nil {
		t.Fatal(err)
	}
	if all := strings.Join(rep.Problems, "\n"); !strings.Contains(all, "nodes (anonymous) see 0 of 2 users") {
		t.Fatalf("anonymous blindness not reported: %+v", rep)
	}
	bindFile := filepath.Join(t.TempDir(), "bind.secret")
	os.WriteFile(bindFile, []byte("node-Bind-7\n"), 0o600)
	d2.S.BindDN, d2.S.BindPasswordFile = "uid=sssd,"+s2.PeopleDN, bindFile
	rep, err = d2.Check()
	if err != nil || len(rep.Problems) != 0 || rep.NodeUsers != 2 {
		t.Fatalf("nodes binding as sssd: %+v %v", rep, err)
	}
	os.WriteFile(bindFile, []byte("wrong\n"), 0o600)
	rep, _ = d2.Check()
	if all := strings.Join(rep.Problems, "\n"); !strings.Contains(all, "nodes bind as uid=sssd,"+s2.PeopleDN+" (ldap.bind_dn) and that fails") {
		t.Fatalf("wrong node bind password not reported: %+v", rep)
	}
}
