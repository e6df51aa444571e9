package testlab

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/overlays"
	"github.com/herdlab/herd/site"
)

// imageFor renders the autofs and ldap overlays of a site (the real
// templates) into a tree and packs it with mksquashfs: the parts of an
// image SiteFromImage reads.
func imageFor(t *testing.T, nas, ldap string) string {
	t.Helper()
	testenv.RequireRoot(t) // overlays.Apply sets owners
	testenv.RequireCommands(t, "mksquashfs")
	names := []string{"base"}
	if nas != "" {
		names = append(names, "autofs")
	}
	if ldap != "" {
		names = append(names, "ldap")
	}
	yaml := "server: {interface: br-herd, address: 10.77.0.1}\noverlays: [" + strings.Join(names, ", ") + "]\n" + nas + ldap
	cfg, err := site.Parse("site.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	files, err := overlays.Render(cfg, names)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	if err := os.Mkdir(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := overlays.Apply(files, tree); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "rootfs.squashfs")
	if out, err := exec.Command("mksquashfs", tree, img, "-quiet", "-noappend").CombinedOutput(); err != nil {
		t.Fatalf("mksquashfs: %v: %s", err, out)
	}
	return img
}

const physicsNAS = `nas:
  address: 10.88.5.2
  nfs_version: "4.1"
  homes: /tank/home
  public: /tank/shared
`

func physicsLDAP(uri, tls string) string {
	return "ldap:\n  uri: " + uri + "\n  base: dc=physics,dc=example\n  tls: " + tls + "\n"
}

func TestSiteFromImageReadsWhatTheImageBaked(t *testing.T) {
	ref := DefaultLabSite()
	for _, c := range []struct {
		name, nas, ldap string
		want            LabSite
		notes           []string
	}{
		{"addresses", physicsNAS, physicsLDAP("ldap://10.88.5.3:3389/", "none"),
			LabSite{NASAddr: "10.88.5.2", Homes: "/tank/home", Public: "/tank/shared", NFSVersion: "4.1",
				LDAPAddr: "10.88.5.3", LDAPPort: 3389, Base: "dc=physics,dc=example",
				HomeRoot: ref.HomeRoot, UsersOU: ref.UsersOU, GroupsOU: ref.GroupsOU, SudoGroup: ref.SudoGroup, NTP: NoNTP}, nil},
		{"directory layout, bind DN, home root, sudo group and NTP", physicsNAS + "  home_root: /users\n",
			physicsLDAP("ldap://10.88.5.3/", "none") + "  users_ou: ou=staff,ou=accounts\n  groups_ou: ou=unixgroups\n" +
				"  bind_dn: cn=nodes,ou=services,dc=physics,dc=example\n  bind_password_file: /nonexistent\nsudo: {group: physicists}\n" +
				"ntp: [10.88.5.1, ntp.physics.example]\n",
			LabSite{NASAddr: "10.88.5.2", Homes: "/tank/home", Public: "/tank/shared", NFSVersion: "4.1",
				LDAPAddr: "10.88.5.3", LDAPPort: 389, Base: "dc=physics,dc=example", HomeRoot: "/users",
				UsersOU: "ou=staff,ou=accounts", GroupsOU: "ou=unixgroups", BindDN: "cn=nodes,ou=services,dc=physics,dc=example",
				SudoGroup: "physicists", NTP: "10.88.5.1 ntp.physics.example"}, nil},
		{"sudo limited to some commands", physicsNAS, physicsLDAP("ldap://10.88.5.3/", "none") + "sudo: {commands: [/usr/bin/nvidia-smi]}\n",
			LabSite{NASAddr: "10.88.5.2", Homes: "/tank/home", Public: "/tank/shared", NFSVersion: "4.1",
				LDAPAddr: "10.88.5.3", LDAPPort: 389, Base: "dc=physics,dc=example",
				HomeRoot: ref.HomeRoot, UsersOU: ref.UsersOU, GroupsOU: ref.GroupsOU, SudoGroup: "members", NTP: NoNTP},
			[]string{"sudo for %members is limited to sudo.commands in the image's /etc/sudoers.d/herd: the fscache-hits check, which drops the page cache with sudo sh, will fail"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, notes, err := SiteFromImage(imageFor(t, c.nas, c.ldap))
			if err != nil {
				t.Fatal(err)
			}
			if got != c.want || strings.Join(notes, "\n") != strings.Join(c.notes, "\n") {
				t.Errorf("got %+v notes %q, want %+v notes %q", got, notes, c.want, c.notes)
			}
		})
	}
}

func TestSiteFromImageWithoutOverlaysKeepsTheReferenceLab(t *testing.T) {
	img := imageFor(t, "", "")
	got, notes, err := SiteFromImage(img)
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultLabSite()
	want.NTP = NoNTP // the image sets no NTP servers
	if got != want {
		t.Errorf("got %+v, want the reference lab", got)
	}
	if len(notes) != 2 || !strings.Contains(notes[0], "/etc/auto.home") || !strings.Contains(notes[1], "/etc/sssd/sssd.conf") {
		t.Errorf("notes %q", notes)
	}
}

func TestSiteFromImageRefusesWhatTheLabCannotPlay(t *testing.T) {
	for _, c := range []struct{ name, ldap, want string }{
		{"host name", physicsLDAP("ldap://ldap.physics.example/", "none"),
			`image /etc/sssd/sssd.conf ldap_uri: "ldap://ldap.physics.example/": the host is not an IPv4 address`},
		{"ldaps", physicsLDAP("ldaps://10.88.5.3/", "ldaps"),
			`image /etc/sssd/sssd.conf ldap_uri: "ldaps://10.88.5.3/": the lab serves plain ldap:// only`},
		{"starttls", physicsLDAP("ldap://10.88.5.3/", "starttls"),
			`image /etc/sssd/sssd.conf uses StartTLS (ldap.tls: starttls)`},
		{"bind DN outside the base", physicsLDAP("ldap://10.88.5.3/", "none") + "  bind_dn: cn=nodes,dc=other\n  bind_password_file: /x\n",
			`image /etc/sssd/sssd.conf ldap_default_bind_dn: bind DN "cn=nodes,dc=other" is not under the base "dc=physics,dc=example": the lab's directory has that one suffix`},
		{"users not in an ou", physicsLDAP("ldap://10.88.5.3/", "none") + "  users_ou: cn=users\n",
			`lab: the directory cannot be seeded: slapd: "cn=users": only ou= entries can be seeded`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := SiteFromImage(imageFor(t, physicsNAS, c.ldap))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("err %v, want it to contain %q", err, c.want)
			}
		})
	}
}

func TestParseAutofsEntry(t *testing.T) {
	addr, path, vers, err := parseAutofsEntry("# comment\n* -fstype=nfs4,vers=4.2,rw,fsc 10.1.2.3:/export/homes/&\n", "*")
	if err != nil || addr != "10.1.2.3" || path != "/export/homes/&" || vers != "4.2" {
		t.Errorf("got %q %q %q %v", addr, path, vers, err)
	}
	if _, _, _, err := parseAutofsEntry("* -fstype=nfs4 nas.lab:/export/homes/&\n", "*"); err == nil || !strings.Contains(err.Error(), `NAS "nas.lab" is a host name`) {
		t.Errorf("host name: %v", err)
	}
	if _, _, _, err := parseAutofsEntry("# only a comment\n", "*"); err == nil {
		t.Error("empty map accepted")
	}
}

func TestLabSiteValidate(t *testing.T) {
	for _, c := range []struct {
		site LabSite
		want string
	}{
		{LabSite{}, ""},
		{LabSite{NASAddr: "192.168.10.5", LDAPAddr: "192.168.10.6"}, ""},
		{LabSite{NASAddr: LabServer}, "is the lab's own server address"},
		{LabSite{LDAPAddr: "10.77.0.11"}, "is the lab node gpu01's address"},
		{LabSite{NASAddr: "fd00::2"}, "is not an IPv4 address"},
		{LabSite{NFSVersion: "3"}, "serves NFSv4 only"},
		{LabSite{Base: "o=physics", UsersOU: "ou=staff,ou=accounts"}, ""},
		{LabSite{Base: "cn=physics"}, `lab: the directory cannot be seeded: slapd: base "cn=physics" must start with dc=, o= or ou=`},
		{LabSite{BindDN: "uid=sssd,ou=people,dc=lab,dc=internal"}, ""},
		{LabSite{BindDN: "ou=nodes,dc=lab,dc=internal"}, `lab: bind DN "ou=nodes,dc=lab,dc=internal": the lab can only create a cn= or uid= entry to bind as`},
		{LabSite{BindDN: "cn=nodes,o=x,dc=lab,dc=internal"}, `lab: bind DN "cn=nodes,o=x,dc=lab,dc=internal": the lab can only create ou= entries above it`},
		{LabSite{HomeRoot: "users"}, `lab: home root "users" is not an absolute path`},
	} {
		err := c.site.Validate()
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%+v: err %v, want %q", c.site, err, c.want)
		}
	}
}

func TestSiteYAMLUsesTheLabSite(t *testing.T) {
	def := SiteYAML(LabConfig{}, "cn=admin,dc=lab,dc=internal", "/s")
	for _, want := range []string{"address: 10.77.0.2\n", "homes: /export/homes\n", "uri: ldap://10.77.0.2/\n", "base: dc=lab,dc=internal\n", `nfs_version: "4.2"`, "ntp: [10.77.0.1]\n"} {
		if !strings.Contains(def, want) {
			t.Errorf("reference lab herd.yaml lacks %q:\n%s", want, def)
		}
	}
	phys := SiteYAML(LabConfig{Site: LabSite{NASAddr: "10.88.5.2", Homes: "/tank/home", LDAPAddr: "10.88.5.3", LDAPPort: 3389, Base: "dc=physics,dc=example"}}, "cn=admin,dc=physics,dc=example", "/s")
	for _, want := range []string{"address: 10.88.5.2\n", "homes: /tank/home\n", "public: /export/Public\n", "uri: ldap://10.88.5.3:3389/\n", "base: dc=physics,dc=example\n"} {
		if !strings.Contains(phys, want) {
			t.Errorf("lab herd.yaml lacks %q:\n%s", want, phys)
		}
	}
	if _, err := site.Parse("lab.yaml", []byte(phys)); err != nil {
		t.Errorf("the lab's herd.yaml does not load: %v", err)
	}
	// The whole directory layout of a site, as the lab writes it and as an
	// image built from that herd.yaml would bake it.
	full := LabConfig{Dir: "/lab", Site: LabSite{Base: "dc=physics,dc=example", HomeRoot: "/users", UsersOU: "ou=staff,ou=accounts",
		GroupsOU: "ou=unixgroups", BindDN: "cn=nodes,ou=services,dc=physics,dc=example", SudoGroup: "physicists",
		NTP: "10.88.5.1 ntp.physics.example"}}
	cfg, err := site.Parse("lab.yaml", []byte(SiteYAML(full, "cn=admin,dc=physics,dc=example", "/s")))
	if err != nil {
		t.Fatalf("the lab's herd.yaml does not load: %v", err)
	}
	if cfg.NAS.HomeRoot != "/users" || cfg.LDAP.UsersOU != "ou=staff,ou=accounts" || cfg.LDAP.GroupsOU != "ou=unixgroups" ||
		cfg.LDAP.BindDN != full.Site.BindDN || cfg.LDAP.BindPasswordFile != "/lab/ldap-bind.secret" ||
		cfg.LDAP.DefaultGroup != "physicists" || cfg.Sudo.Group != "physicists" ||
		strings.Join(cfg.NTP, " ") != "10.88.5.1 ntp.physics.example" {
		t.Errorf("lab herd.yaml: nas %+v ldap %+v sudo %+v ntp %q", cfg.NAS, cfg.LDAP, cfg.Sudo, cfg.NTP)
	}
	// The reference lab's herd.yaml says what site's defaults would: images
	// built from it (the e2e suite's) render the same files as before.
	ref, err := site.Parse("lab.yaml", []byte(def))
	if err != nil {
		t.Fatal(err)
	}
	if ref.LDAP.BindDN != "" || ref.NAS.HomeRoot != "/home" || ref.LDAP.UsersOU != "ou=people" || ref.LDAP.DefaultGroup != "members" || ref.Sudo.Group != "members" {
		t.Errorf("reference lab herd.yaml: nas %+v ldap %+v sudo %+v", ref.NAS, ref.LDAP, ref.Sudo)
	}
	if y := SiteYAML(LabConfig{Site: LabSite{NTP: NoNTP}}, "cn=admin,dc=lab,dc=internal", "/s"); strings.Contains(y, "ntp:") {
		t.Errorf("a site without NTP servers got an ntp line:\n%s", y)
	}
}

func TestLabPrefix(t *testing.T) {
	if labPrefix("10.77.0.2") != "/24" || labPrefix("192.168.10.5") != "/32" {
		t.Error("prefixes")
	}
}

// TestParseLabLDAPURI: the one form the lab can serve is accepted; every
// other one is refused with the reason and what to build instead.
func TestParseLabLDAPURI(t *testing.T) {
	for _, c := range []struct {
		uri, addr string
		port      int
		err       string
	}{
		{uri: "ldap://10.88.5.3/", addr: "10.88.5.3", port: 389},
		{uri: "ldap://10.88.5.3", addr: "10.88.5.3", port: 389},
		{uri: "ldap://192.168.10.6:3389/", addr: "192.168.10.6", port: 3389},
		{uri: "ldap://10.88.5.3/, ldap://10.88.5.4/", addr: "10.88.5.3", port: 389},
		{uri: "ldap://ldap.physics.example/",
			err: `"ldap://ldap.physics.example/": the host is not an IPv4 address; the lab has no DNS for the site's names, so build the image under test with the LDAP server's address`},
		{uri: "ldaps://10.88.5.3/",
			err: `"ldaps://10.88.5.3/": the lab serves plain ldap:// only (it has no certificate from the site's CA); test an image built with ldap.uri ldap://<address>/ and ldap.tls: none`},
		{uri: "ldap://[fd00::3]/",
			err: `"ldap://[fd00::3]/": the host is not an IPv4 address; the lab has no DNS for the site's names, so build the image under test with the LDAP server's address`},
		{uri: "ldap://10.88.5.3:0/", err: `"ldap://10.88.5.3:0/": bad port`},
		{uri: "", err: `"" is not a URI`},
	} {
		addr, port, err := parseLabLDAPURI(c.uri)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != c.err || addr != c.addr || port != c.port {
			t.Errorf("parseLabLDAPURI(%q) = %q, %d, %q; want %q, %d, %q", c.uri, addr, port, got, c.addr, c.port, c.err)
		}
	}
}

func TestSeedLDIF(t *testing.T) {
	got, err := seedLDIF("o=physics", "ou=staff,ou=accounts", "ou=groups,ou=accounts")
	if err != nil {
		t.Fatal(err)
	}
	want := `dn: o=physics
objectClass: organization
o: physics

dn: ou=accounts,o=physics
objectClass: organizationalUnit
ou: accounts

dn: ou=staff,ou=accounts,o=physics
objectClass: organizationalUnit
ou: staff

dn: ou=groups,ou=accounts,o=physics
objectClass: organizationalUnit
ou: groups
`
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if _, err := seedLDIF("dc=lab,dc=internal", "uid=x"); err == nil || err.Error() != `slapd: "uid=x": only ou= entries can be seeded` {
		t.Errorf("uid=x: %v", err)
	}
}
