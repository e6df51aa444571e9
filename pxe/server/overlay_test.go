package server

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herdlab/herd/internal/cpio"
	"github.com/herdlab/herd/pxe/httpboot"
	"github.com/herdlab/herd/site"
)

// TestRuntimeOverlayWithRealTemplates renders the overlays package's
// runtime tree for a node with an LDAP bind password and packs it the way
// POST /nodes/<name>/overlay seals it.
func TestRuntimeOverlayWithRealTemplates(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "bind.secret")
	os.WriteFile(pw, []byte("n0de-pass\n"), 0o600)
	cfg, err := site.Parse("herd.yaml", []byte(`server:
  address: 10.0.0.1
dhcp:
  mode: off
nas:
  address: 10.0.0.2
  homes: /export/homes
ldap:
  uri: ldap://10.0.0.2/
  base: dc=lab,dc=test
  bind_dn: cn=node,dc=lab,dc=test
  bind_password_file: `+pw+`
nodes:
  - name: gpu7
    mac: 52:54:00:00:00:07
    ip: 10.0.0.17
`))
	if err != nil {
		t.Fatal(err)
	}
	node := &cfg.Nodes[0]
	sec, err := httpboot.NodeSecrets(dir, node.Name)
	if err != nil {
		t.Fatal(err)
	}
	files, err := RuntimeOverlay(cfg, node, sec, "n0de-pass")
	if err != nil {
		t.Fatal(err)
	}
	data, err := httpboot.PackOverlay(files)
	if err != nil {
		t.Fatal(err)
	}
	es, err := cpio.ReadAll(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]cpio.Entry{}
	for _, e := range es {
		got[strings.TrimPrefix(e.Name, "herd/overlay/")] = e
	}
	want := map[string]uint32{
		"etc/hostname":                   cpio.TypeReg | 0o644,
		"etc/machine-id":                 cpio.TypeReg | 0o444,
		"etc/sssd/conf.d/herd-bind.conf": cpio.TypeReg | 0o600,
		"etc/sssd":                       cpio.TypeDir | 0o711, // as Ubuntu's sssd-common: non-root sssd helpers traverse it
		"etc/ssh/ssh_host_ed25519_key":   cpio.TypeReg | 0o600,
		"etc/ssh/ssh_host_ecdsa_key":     cpio.TypeReg | 0o600,
		"etc/ssh/ssh_host_rsa_key":       cpio.TypeReg | 0o600,
		"etc/ssh/ssh_host_rsa_key.pub":   cpio.TypeReg | 0o644,
	}
	for p, mode := range want {
		e, ok := got[p]
		if !ok {
			t.Errorf("%s missing from the overlay", p)
			continue
		}
		if e.Mode != mode || e.UID != 0 {
			t.Errorf("%s: mode %o uid %d, want %o root", p, e.Mode, e.UID, mode)
		}
	}
	if h := string(got["etc/hostname"].Data); strings.TrimSpace(h) != "gpu7" {
		t.Errorf("hostname %q", h)
	}
	if m := string(got["etc/machine-id"].Data); strings.TrimSpace(m) != sec.MachineID {
		t.Errorf("machine-id %q, want %s", m, sec.MachineID)
	}
	if b := string(got["etc/sssd/conf.d/herd-bind.conf"].Data); !strings.Contains(b, "n0de-pass") {
		t.Errorf("bind conf lacks the password:\n%s", b)
	}
}
