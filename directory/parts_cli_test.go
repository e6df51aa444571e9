package directory_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herdlab/herd/directory"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/testlab"
)

// `herd user list` (and the other directory commands) work with a site file
// holding only ldap and nas: no server, dhcp or nodes, which those commands
// never use. Against a real slapd.
func TestUserListWithOnlyLDAPAndNAS(t *testing.T) {
	bin := testenv.Bin(t, "HERD_BIN")
	dir := t.TempDir()
	s, pwFile := directory.StartTestSlapd(t, dir, testlab.SlapdConfig{})
	cfg := filepath.Join(dir, "herd.yaml")
	site := fmt.Sprintf("nas:\n  address: 10.77.0.2\n  homes: /export/homes\nldap:\n  uri: %s/\n  base: %s\n  admin_dn: %s\n  admin_password_file: %s\n",
		s.URI(), s.Base, s.AdminDN, pwFile)
	if err := os.WriteFile(cfg, []byte(site), 0o644); err != nil {
		t.Fatal(err)
	}
	h := &herdRun{t: t, bin: bin, cfg: cfg, state: filepath.Join(dir, "state")}
	// Before the change this failed: server.interface is required for DHCP
	// proxy mode (the default), though the command never serves.
	h.ok("", "group", "add", "members")
	h.ok("", "user", "add", "zoe", "--no-password")
	if out := h.ok("", "user", "list"); !strings.Contains(out, "zoe") {
		t.Fatalf("user list lacks zoe:\n%s", out)
	}
	// Only ldap, without nas, works too.
	onlyLDAP := site[strings.Index(site, "ldap:"):]
	if err := os.WriteFile(cfg, []byte(onlyLDAP), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := h.ok("", "user", "list"); !strings.Contains(out, "zoe") {
		t.Fatalf("user list (ldap only) lacks zoe:\n%s", out)
	}
	// The parts the command uses are still checked, with file:line:col.
	bad := strings.Replace(site, "uri: ldap", "uri: http", 1)
	if err := os.WriteFile(cfg, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	h.fails("", cfg+":5:8: field ldap.uri:", "user", "list")
	// And doctor, which checks the whole file for serve, still refuses it.
	if err := os.WriteFile(cfg, []byte(site), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errs, code := h.run("", "doctor")
	if code == 0 || !strings.Contains(out+errs, "field server.interface: required when dhcp.mode is proxy") {
		t.Fatalf("doctor on an ldap+nas file: exit %d\n%s%s", code, out, errs)
	}
}
