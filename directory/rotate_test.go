package directory_test

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/go-ldap/ldap/v3"

	"github.com/herdlab/herd/directory"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/testlab"
)

// TestRotateBind: `herd ldap rotate-bind` against a real slapd. The node
// bind password an attacker took (from a forgotten node, or an old
// overlay) stops working in the directory; the new one, in
// ldap.bind_password_file (0600) where herd serve reads it for every
// overlay, works; the password never shows in herd's output.
func TestRotateBind(t *testing.T) {
	bin := testenv.Bin(t, "HERD_BIN")
	testenv.RequireCommands(t, "ldapwhoami")
	dir := t.TempDir()
	s, adminPw := directory.StartTestSlapd(t, dir, testlab.SlapdConfig{})
	const oldPw = "old-Bind-Secret-41c2"
	bindDN := "cn=herd-nodes," + s.Base
	conn, err := s.Admin()
	if err != nil {
		t.Fatal(err)
	}
	add := ldap.NewAddRequest(bindDN, nil)
	add.Attribute("objectClass", []string{"applicationProcess", "simpleSecurityObject"})
	add.Attribute("cn", []string{"herd-nodes"})
	add.Attribute("userPassword", []string{oldPw})
	if err := conn.Add(add); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	bindFile := filepath.Join(dir, "ldap-bind.secret")
	os.WriteFile(bindFile, []byte(oldPw+"\n"), 0o600)
	// Owned by the user herd serve runs as (--user): it must stay so.
	os.Chown(bindFile, 65534, 65534)
	if !whoamiOK(t, s.URI(), bindDN, oldPw) {
		t.Fatal("the fixture's bind password does not work")
	}
	cfg := filepath.Join(dir, "herd.yaml")
	writeSite(t, cfg, s, s.URI(), "none", "", adminPw)
	f, _ := os.OpenFile(cfg, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("  bind_dn: " + bindDN + "\n  bind_password_file: " + bindFile + "\n")
	f.Close()
	h := &herdRun{t: t, bin: bin, cfg: cfg, state: filepath.Join(dir, "state")}

	out := h.ok("", "ldap", "rotate-bind")
	if !strings.Contains(out, "new password for "+bindDN) {
		t.Errorf("rotate-bind said: %s", out)
	}
	b, err := os.ReadFile(bindFile)
	if err != nil {
		t.Fatal(err)
	}
	newPw := strings.TrimSpace(string(b))
	if st, _ := os.Stat(bindFile); st.Mode().Perm() != 0o600 || st.Sys().(*syscall.Stat_t).Uid != 65534 {
		t.Errorf("%s mode %v owner %d, want 0600 and its owner before (65534)", bindFile, st.Mode(), st.Sys().(*syscall.Stat_t).Uid)
	}
	if len(newPw) < 24 || newPw == oldPw {
		t.Fatalf("new bind password %d bytes", len(newPw))
	}
	if whoamiOK(t, s.URI(), bindDN, oldPw) {
		t.Error("attack: the old (taken) bind password still binds after rotate-bind")
	}
	if !whoamiOK(t, s.URI(), bindDN, newPw) {
		t.Error("the new bind password from the file does not bind")
	}
	if strings.Contains(h.transcript.String(), newPw) {
		t.Error("herd printed the bind password")
	}
	if _, err := os.Stat(bindFile + ".new"); err == nil {
		t.Error("a .new file was left behind")
	}
	// Anonymous nodes: nothing to rotate, said by field.
	writeSite(t, cfg, s, s.URI(), "none", "", adminPw)
	h.fails("", "ldap.bind_dn", "ldap", "rotate-bind")
}
