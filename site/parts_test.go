package site

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A file holding only ldap and nas serves the directory commands, while the
// commands that serve or render overlays still refuse it; a bad value in a
// part that is checked keeps its file:line error, and a syntax or type error
// anywhere still counts.
func TestLoadPartsChecksOnlyThoseParts(t *testing.T) {
	dir := t.TempDir()
	write := func(name, src string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	only := write("only.yaml", "ldap:\n  uri: ldap://10.0.0.2/\n  base: dc=lab,dc=example\nnas:\n  homes: /export/homes\n")
	c, err := LoadParts(only, "ldap", "nas")
	if err != nil {
		t.Fatalf("ldap+nas file for the directory commands: %v", err)
	}
	if c.LDAP.URI != "ldap://10.0.0.2/" || c.LDAP.UsersOU != "ou=people" || c.NAS.HomeRoot != "/home" {
		t.Fatalf("defaults not applied: %+v %+v", c.LDAP, c.NAS)
	}
	_, err = Load(only, nil)
	for _, want := range []string{"field server.interface: required when dhcp.mode is proxy", "field nas.address: required when the autofs overlay is enabled"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("full validation of the same file: %v\nwant %q", err, want)
		}
	}

	for _, c := range []struct{ name, src, want string }{
		{"bad uri", "ldap:\n  uri: http://x/\n  base: dc=x\n", `bad uri.yaml:2:8: field ldap.uri: "http://x/" must start with ldap:// or ldaps://`},
		{"relative homes", "ldap: {uri: 'ldap://x/', base: dc=x}\nnas:\n  homes: export\n", `relative homes.yaml:3:10: field nas.homes: "export" must be an absolute path`},
		{"unknown key", "ldap: {uri: 'ldap://x/', base: dc=x}\nserver: {interfce: eth0}\n", `field server.interfce: unknown field "interfce"`},
		{"wrong type", "ldap: {uri: 'ldap://x/', base: dc=x}\ndhcp: {lease_time: soon}\n", "dhcp.lease_time"},
	} {
		_, err := LoadParts(write(c.name+".yaml", c.src), "ldap", "nas")
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error = %v\nwant it to contain %q", c.name, err, c.want)
		}
	}
	// A part that is not asked for is not judged.
	if _, err := LoadParts(write("badserver.yaml", "ldap: {uri: 'ldap://x/', base: dc=x}\nserver: {http_port: 0}\ndhcp: {mode: full}\n"), "ldap", "nas"); err != nil {
		t.Errorf("server and dhcp problems must not stop a directory command: %v", err)
	}
}
