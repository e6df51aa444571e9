package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/overlays"
	"github.com/herdlab/herd/site"
)

// publishSiteImage publishes an image whose root holds the autofs and ldap
// overlays rendered (with the real templates) for siteYAML: the files
// `herd image test` reads to stand its lab where the image will look.
func publishSiteImage(t *testing.T, st *store.Store, siteYAML string) string {
	t.Helper()
	cfg, err := site.Parse("site.yaml", []byte("server: {interface: eno1, address: 192.168.10.1}\noverlays: [autofs, ldap]\n"+siteYAML))
	if err != nil {
		t.Fatal(err)
	}
	files, err := overlays.Render(cfg, []string{"autofs", "ldap"})
	if err != nil {
		t.Fatal(err)
	}
	tree := t.TempDir()
	for _, f := range files { // owners are not needed here, so no root either
		p := filepath.Join(tree, f.Path)
		if f.Dir {
			os.MkdirAll(p, 0o755)
			continue
		}
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, f.Data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return publishTree(t, st, tree, siteYAML, &manifest.Manifest{Created: time.Now().UTC(), Recipe: "site-test", Overlays: overlays.Set(files).Files()})
}

// TestImageTestRefusesSitesTheLabCannotPlay: an image whose sssd.conf names
// its LDAP server by host name or over TLS fails at once, with the setting,
// its value and what to build instead; no lab starts (so neither root nor
// QEMU is needed), and the failure is recorded for promote --require-test.
func TestImageTestRefusesSitesTheLabCannotPlay(t *testing.T) {
	testenv.RequireCommands(t, "mksquashfs", "go")
	const nas = "nas: {address: 192.168.10.5, homes: /tank/home}\n"
	bin := herdBinary(t)
	for _, c := range []struct{ name, ldap, want string }{
		{"host name", "ldap: {uri: 'ldap://ldap.physics.example/', base: 'dc=physics,dc=example'}\n",
			`image /etc/sssd/sssd.conf ldap_uri: "ldap://ldap.physics.example/": the host is not an IPv4 address; the lab has no DNS for the site's names, so build the image under test with the LDAP server's address`},
		{"ldaps", "ldap: {uri: 'ldaps://192.168.10.6/', base: 'dc=physics,dc=example', tls: ldaps}\n",
			`image /etc/sssd/sssd.conf ldap_uri: "ldaps://192.168.10.6/": the lab serves plain ldap:// only (it has no certificate from the site's CA); test an image built with ldap.uri ldap://<address>/ and ldap.tls: none`},
		{"starttls", "ldap: {uri: 'ldap://192.168.10.6/', base: 'dc=physics,dc=example', tls: starttls}\n",
			`image /etc/sssd/sssd.conf uses StartTLS (ldap.tls: starttls): the lab's slapd cannot present a certificate from the site's CA; test an image built with ldap.tls: none`},
		{"nas host name", "ldap: {uri: 'ldap://192.168.10.6/', base: 'dc=physics,dc=example'}\n",
			`image /etc/auto.home: map entry "* -fstype=nfs4,vers=4.2,rw,hard,noatime,nodiratime,tcp,actimeo=120,rsize=262144,wsize=262144,fsc nas.physics.example:/tank/home/&": NAS "nas.physics.example" is a host name; the lab can only stand in for an IP address`},
	} {
		t.Run(c.name, func(t *testing.T) {
			state := t.TempDir()
			st, err := store.Open(state)
			if err != nil {
				t.Fatal(err)
			}
			n := nas
			if c.name == "nas host name" {
				n = strings.Replace(nas, "192.168.10.5", "nas.physics.example", 1)
			}
			id := publishSiteImage(t, st, n+c.ldap)
			h := &cli{t: t, bin: bin, state: state, config: filepath.Join(state, "none.yaml")}
			out, errOut, ok := h.run("image", "test", id, "--dir", t.TempDir())
			if ok {
				t.Fatalf("herd image test passed:\n%s", out)
			}
			if line := fmt.Sprintf("FAIL %-26s %s", "site-settings", c.want); !strings.Contains(out, line+"\n") {
				t.Errorf("output lacks\n%s\n%s", line, out)
			}
			if strings.Contains(out, "lab-up") {
				t.Errorf("a lab was started:\n%s", out)
			}
			if !strings.Contains(errOut, "image "+id+" failed: 0/1 checks passed") {
				t.Errorf("stderr %q", errOut)
			}
			var rows []struct {
				ID, Tested string
			}
			if err := json.Unmarshal([]byte(h.ok("image", "list", "--json")), &rows); err != nil || len(rows) != 1 || rows[0].Tested != "failed" {
				t.Errorf("image list after the refusal: %+v %v", rows, err)
			}
		})
	}
}
