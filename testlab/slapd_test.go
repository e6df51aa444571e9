package testlab

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/go-ldap/ldap/v3"

	"github.com/herdlab/herd/internal/testenv"
)

// requireSlapd skips (or fails in CI) when Debian's slapd is missing.
func requireSlapd(t *testing.T) {
	t.Helper()
	testenv.RequireCommands(t, "/usr/sbin/slapd", "/usr/sbin/slapadd")
}

func TestSlapdSeedsBaseAndGuardsPasswords(t *testing.T) {
	requireSlapd(t)
	s, err := StartSlapd(context.Background(), SlapdConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()

	admin, err := s.Admin()
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	res, err := admin.Search(ldap.NewSearchRequest(s.Base, ldap.ScopeSingleLevel, ldap.NeverDerefAliases, 0, 0, false,
		"(objectClass=organizationalUnit)", []string{"ou"}, nil))
	if err != nil {
		t.Fatal(err)
	}
	var ous []string
	for _, e := range res.Entries {
		ous = append(ous, e.GetAttributeValue("ou"))
	}
	if strings.Join(ous, ",") != "people,groups" && strings.Join(ous, ",") != "groups,people" {
		t.Fatalf("seeded OUs = %v, want people and groups", ous)
	}

	// A user with a password, added as admin.
	dn := "uid=alice," + s.PeopleDN
	add := ldap.NewAddRequest(dn, nil)
	add.Attribute("objectClass", []string{"inetOrgPerson", "posixAccount", "shadowAccount"})
	for k, v := range map[string]string{"uid": "alice", "cn": "alice", "sn": "alice", "uidNumber": "10000",
		"gidNumber": "10000", "homeDirectory": "/home/alice", "loginShell": "/bin/bash"} {
		add.Attribute(k, []string{v})
	}
	hash, err := SSHA("alice-secret")
	if err != nil {
		t.Fatal(err)
	}
	add.Attribute("userPassword", []string{hash})
	if err := admin.Add(add); err != nil {
		t.Fatal(err)
	}

	// Anonymous (what SSSD does): reads the user but never the password.
	anon, err := s.dial(s.URI())
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	res, err = anon.Search(ldap.NewSearchRequest(s.PeopleDN, ldap.ScopeSingleLevel, ldap.NeverDerefAliases, 0, 0, false,
		"(uid=alice)", []string{"uidNumber", "userPassword"}, nil))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Entries) != 1 || res.Entries[0].GetAttributeValue("uidNumber") != "10000" {
		t.Fatalf("anonymous search: %+v", res.Entries)
	}
	if v := res.Entries[0].GetAttributeValue("userPassword"); v != "" {
		t.Fatalf("anonymous read userPassword %q", v)
	}

	// The {SSHA} computed in Go is accepted by slapd; a wrong one is not.
	self, err := s.dial(s.URI())
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	if err := self.Bind(dn, "wrong"); !ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
		t.Fatalf("bind with a wrong password: %v", err)
	}
	if err := self.Bind(dn, "alice-secret"); err != nil {
		t.Fatalf("bind as alice: %v", err)
	}
	// Self-write of the password through Password Modify.
	if _, err := self.PasswordModify(ldap.NewPasswordModifyRequest("", "alice-secret", "alice-new")); err != nil {
		t.Fatalf("alice changes her own password: %v", err)
	}
	if err := self.Bind(dn, "alice-new"); err != nil {
		t.Fatalf("bind with the new password: %v", err)
	}
	// But she may not change someone else's entry.
	mod := ldap.NewModifyRequest(s.PeopleDN, nil)
	mod.Replace("description", []string{"x"})
	if err := self.Modify(mod); !ldap.IsErrorWithCode(err, ldap.LDAPResultInsufficientAccessRights) {
		t.Fatalf("alice modifies ou=people: %v, want insufficient access", err)
	}

	// ldapwhoami from ldap-utils agrees (a second, independent client).
	if _, err := exec.LookPath("ldapwhoami"); err == nil {
		out, err := exec.Command("ldapwhoami", "-x", "-H", s.URI(), "-D", dn, "-w", "alice-new").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "dn:"+dn) {
			t.Fatalf("ldapwhoami: %v: %s", err, out)
		}
	}

	// Stop really ends the process we started.
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := net.Dial("tcp", net.JoinHostPort(s.Config.Addr, strconv.Itoa(s.Config.Port))); err == nil {
		t.Fatal("slapd still accepts connections after Stop")
	}
}

func TestSlapdTLS(t *testing.T) {
	requireSlapd(t)
	s, err := StartSlapd(context.Background(), SlapdConfig{Dir: t.TempDir(), TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	tc, err := s.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}

	// ldaps with the fixture CA.
	c, err := ldap.DialURL(s.LDAPSURI(), ldap.DialWithTLSConfig(tc))
	if err != nil {
		t.Fatalf("ldaps: %v", err)
	}
	if err := c.Bind(s.AdminDN, s.AdminPassword); err != nil {
		t.Fatalf("bind over ldaps: %v", err)
	}
	if st, ok := c.TLSConnectionState(); !ok || !st.HandshakeComplete {
		t.Fatal("ldaps connection is not TLS")
	}
	c.Close()

	// StartTLS on the plain port.
	c, err = ldap.DialURL(s.URI())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.StartTLS(tc); err != nil {
		t.Fatalf("StartTLS: %v", err)
	}
	if err := c.Bind(s.AdminDN, s.AdminPassword); err != nil {
		t.Fatalf("bind after StartTLS: %v", err)
	}
	c.Close()

	// Without the CA the certificate is refused.
	_, err = ldap.DialURL(s.LDAPSURI(), ldap.DialWithTLSConfig(&tls.Config{ServerName: s.Config.Addr}))
	var unk x509.UnknownAuthorityError
	if err == nil || !errors.As(err, &unk) && !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("ldaps without the CA: %v, want unknown authority", err)
	}
}

func TestSlapdInNetns(t *testing.T) {
	requireSlapd(t)
	testenv.RequireNetns(t)
	ns, err := NewNetns("slapd")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := ns.IP("link", "set", "lo", "up"); err != nil {
		t.Fatal(err)
	}
	if err := ns.AddBridge("br0", "10.77.0.1/24"); err != nil {
		t.Fatal(err)
	}
	s, err := StartSlapd(context.Background(), SlapdConfig{Dir: t.TempDir(), Netns: ns, Addr: "10.77.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	if s.URI() != "ldap://10.77.0.1:389" {
		t.Fatalf("URI = %s", s.URI())
	}
	// ldapsearch inside the namespace sees the base; outside it there is no such address.
	out, err := ns.Command(context.Background(), "ldapsearch", "-x", "-H", s.URI(), "-b", s.Base, "-s", "one", "ou").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ou: people") {
		t.Fatalf("ldapsearch in the namespace: %v: %s", err, out)
	}
}
