package setup

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/site"
)

func answers(mode string) Answers {
	return Answers{Interface: "eno1", Address: "10.0.0.1", Subnet: "10.0.0.0/24", HTTPPort: 8080, Mode: mode,
		Rival: "10.0.0.254 via 10.0.0.254", NASAddress: "nas.lab", Homes: "/export/homes", Public: "none",
		LDAPURI: "ldap://nas.lab/", LDAPBase: "dc=lab,dc=example", LDAPAdminDN: "cn=admin,dc=lab,dc=example",
		LDAPAdminPasswordFile: "/etc/herd/a secret: #1"}
}

// Every mode renders a file the site loader accepts with the answers in it,
// odd characters quoted.
func TestRenderValidates(t *testing.T) {
	for _, mode := range []string{site.DHCPProxy, site.DHCPFull, site.DHCPOff} {
		data, err := Render(answers(mode), time.Unix(0, 0))
		if err != nil {
			t.Fatal(err)
		}
		c, err := site.Parse("herd.yaml", data)
		if err != nil {
			t.Fatalf("%s: %v\n%s", mode, err, data)
		}
		if c.DHCP.Mode != mode || c.Server.Interface != "eno1" || c.NAS.Public != "" || c.LDAP.AdminPasswordFile != "/etc/herd/a secret: #1" {
			t.Errorf("%s: read back %+v %+v\n%s", mode, c.DHCP, c.LDAP, data)
		}
		if mode == site.DHCPFull && c.DHCP.Subnet != "10.0.0.0/24" {
			t.Errorf("full mode without the subnet:\n%s", data)
		}
	}
}

// Write never replaces without force, and refuses a file that does not validate.
func TestWrite(t *testing.T) {
	p := filepath.Join(t.TempDir(), "herd.yaml")
	data, _ := Render(answers(site.DHCPProxy), time.Now())
	if err := Write(p, data, false); err != nil {
		t.Fatal(err)
	}
	other, _ := Render(answers(site.DHCPOff), time.Now())
	if err := Write(p, other, false); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "--force") {
		t.Errorf("second Write: %v", err)
	}
	if err := Write(p, []byte("dhcp: {mode: sideways}\n"), true); err == nil {
		t.Error("an invalid file was written")
	}
	if got, _ := os.ReadFile(p); string(got) != string(data) {
		t.Errorf("file changed:\n%s", got)
	}
}

// Without a terminal, a missing answer is an error naming its flag, and
// nothing is asked or written.
func TestNonInteractiveNamesFlag(t *testing.T) {
	p := filepath.Join(t.TempDir(), "herd.yaml")
	ifs, _ := Interfaces()
	a := Answers{Mode: site.DHCPOff}
	if len(ifs) > 0 {
		a.Interface = ifs[0].Name
	}
	_, err := Run(context.Background(), a, Options{Path: p, Flags: map[string]string{"nas": "--nas", "interface": "--interface"}})
	if err == nil || (!strings.Contains(err.Error(), "--nas") && !strings.Contains(err.Error(), "--interface")) {
		t.Errorf("missing answers: %v", err)
	}
	if _, serr := os.Stat(p); serr == nil {
		t.Error("a file was written")
	}
}

// CheckNFSExport against something that is not an NFS server says so.
func TestNFSCheckNoServer(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Write([]byte("SSH-2.0-not-nfs\r\n"))
			c.Close()
		}
	}()
	defer l.Close()
	if err := CheckNFSExport(context.Background(), l.Addr().String(), "/export/homes"); err == nil {
		t.Error("a non-NFS server passed the export check")
	}
	if err := CheckNFSExport(context.Background(), "127.0.0.1:1", "/export/homes"); err == nil || !strings.Contains(err.Error(), "no NFS server answers") {
		t.Errorf("closed port: %v", err)
	}
}
