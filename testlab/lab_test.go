package testlab

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/internal/testenv"
)

// fakeImage publishes an image of small placeholder artifacts: enough for
// the server to hand out scripts and files, no node boots it.
func fakeImage(t *testing.T) string {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "source"))
	if err != nil {
		t.Fatal(err)
	}
	dir, err := st.StagingDir()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range store.Artifacts {
		if err := os.WriteFile(filepath.Join(dir, n), bytes.Repeat([]byte(n), 1000), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	id, err := st.Publish(dir, &manifest.Manifest{Created: time.Now().UTC(), Recipe: "lab-test"})
	if err != nil {
		t.Fatal(err)
	}
	img, err := st.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	return img.Dir
}

func TestLabServesAndStops(t *testing.T) {
	testenv.RequireNetns(t)
	testenv.RequireCommands(t, "ganesha.nfsd", "slapd")
	herd := testenv.Bin(t, "HERD_BIN")
	img := fakeImage(t)
	dir := t.TempDir()
	lab, err := StartLab(context.Background(), LabConfig{Dir: dir, HerdBin: herd, ImageDir: img})
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	if lab.ImageID != filepath.Base(img) {
		t.Fatalf("lab serves %s, want %s", lab.ImageID, filepath.Base(img))
	}
	// The source store is untouched: the lab has its own state.
	if cur, err := store.ReadOnly(filepath.Dir(filepath.Dir(img))).Current(); err != nil || cur != "" {
		t.Fatalf("lab promoted %q in the source store (%v)", cur, err)
	}
	code, body, err := lab.HTTPGet("http://10.77.0.1:8080/boot/52:54:00:77:00:11.ipxe")
	if err != nil || code != 200 {
		t.Fatalf("boot script: %d %v (%s)", code, err, lab.Logs())
	}
	for _, want := range []string{"herd.id=" + lab.ImageID, "herd.node=gpu01", "#!ipxe"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("boot script lacks %q:\n%s", want, body)
		}
	}
	if code, _, _ := lab.HTTPGet("http://10.77.0.1:8080/boot/52:54:00:99:99:99.ipxe"); code == 200 {
		t.Errorf("unknown MAC got a boot script")
	}
	// The user a test creates through herd lands in the lab's slapd, with a
	// home directory on the NAS export owned by her uid.
	uid, gid, err := lab.AddUser(context.Background(), "alice", "wonder-land-42")
	if err != nil {
		t.Fatalf("%v (%s)", err, lab.Logs())
	}
	fi, err := os.Stat(filepath.Join(lab.HomesDir, "alice"))
	if err != nil {
		t.Fatal(err)
	}
	if st := statOwner(fi); st[0] != uid || st[1] != gid || uid < 1000 {
		t.Errorf("home owned by %v, want %d:%d", st, uid, gid)
	}
	ns := lab.Netns.Name
	if err := lab.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/run/netns/" + ns); err == nil {
		t.Fatalf("namespace %s left behind", ns)
	}
}

// TestLabPlaysASiteOutsideItsSubnet stands the NAS and LDAP at a real
// site's addresses (outside 10.77.0.0/24, on two hosts, LDAP on a
// non-default port and base, its own directory layout and a DN nodes bind
// as), as `herd image test` does for an image built for that site: NFSv4
// answers at the NAS address with the site's export paths, `herd user add`
// reaches slapd through the lab's herd.yaml, and the user is where the
// image's SSSD will look for her, found as it will bind.
func TestLabPlaysASiteOutsideItsSubnet(t *testing.T) {
	testenv.RequireNetns(t)
	testenv.RequireCommands(t, "ganesha.nfsd", "slapd")
	herd := testenv.Bin(t, "HERD_BIN")
	img := fakeImage(t)
	s := LabSite{NASAddr: "10.88.5.2", Homes: "/tank/home", Public: "/tank/shared", NFSVersion: "4.1",
		LDAPAddr: "10.88.5.3", LDAPPort: 3389, Base: "dc=physics,dc=example", HomeRoot: "/users",
		UsersOU: "ou=staff,ou=accounts", GroupsOU: "ou=unixgroups", BindDN: "cn=nodes,ou=services,dc=physics,dc=example", SudoGroup: "physicists"}
	lab, err := StartLab(context.Background(), LabConfig{Dir: t.TempDir(), HerdBin: herd, ImageDir: img, Site: s})
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	out, err := exec.Command("ip", "-n", lab.Netns.Name, "-o", "addr", "show", "dev", LabBridge).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "10.88.5.2/32") || !strings.Contains(string(out), "10.88.5.3/32") {
		t.Errorf("bridge addresses: %v\n%s", err, out)
	}
	conf, _ := os.ReadFile(lab.NAS.ConfPath)
	if !strings.Contains(string(conf), `Pseudo = "/tank/home";`) || !strings.Contains(string(conf), "Bind_Addr = 10.88.5.2;") {
		t.Errorf("ganesha config is not the site's:\n%s", conf)
	}
	var conn net.Conn
	if err := lab.Netns.Do(func() (err error) { conn, err = net.DialTimeout("tcp", "10.88.5.2:2049", 5*time.Second); return }); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if st, err := nfsNull(conn, 9, 4); err != nil || st != 0 {
		t.Fatalf("NFSv4 NULL at the site's NAS address: accept_stat %d, %v (%s)", st, err, lab.Logs())
	}
	// The exports resolve at the site's paths, as the image's autofs maps
	// will mount them; the reference lab's path is not there.
	for _, c := range []struct {
		path string
		want uint32
	}{{"/tank/home", 0}, {"/tank/shared", 0}, {"/export/homes", 2}} {
		if st, err := nfs4Lookup(conn, 10, c.path); err != nil || st != c.want {
			t.Errorf("NFSv4 lookup of %s at the site's NAS: status %d, %v; want %d", c.path, st, err, c.want)
		}
	}
	if _, _, err := lab.AddUser(context.Background(), "bob", "physics-42-lab"); err != nil {
		t.Fatalf("herd user add against the site's LDAP: %v (%s)", err, lab.Logs())
	}
	// Nodes bind as ldap.bind_dn, with the password herd serve hands them
	// from the lab's bind_password_file, at the URI baked into the image,
	// and search the site's users and groups bases.
	pw, err := os.ReadFile(filepath.Join(lab.Config.Dir, "ldap-bind.secret"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(SiteYAML(lab.Config, "", ""), "bind_password_file: "+filepath.Join(lab.Config.Dir, "ldap-bind.secret")) {
		t.Errorf("lab herd.yaml does not hand out the bind password")
	}
	var people, groups int
	if err := lab.Netns.Do(func() error {
		conn, err := ldap.DialURL("ldap://10.88.5.3:3389/", ldap.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}))
		if err != nil {
			return err
		}
		defer conn.Close()
		if err := conn.Bind("cn=nodes,ou=services,dc=physics,dc=example", strings.TrimSpace(string(pw))); err != nil {
			return err
		}
		res, err := conn.Search(ldap.NewSearchRequest("ou=staff,ou=accounts,dc=physics,dc=example", ldap.ScopeSingleLevel, ldap.NeverDerefAliases, 0, 10, false,
			"(&(objectClass=posixAccount)(uid=bob))", []string{"uidNumber"}, nil))
		if err != nil {
			return err
		}
		people = len(res.Entries)
		if res, err = conn.Search(ldap.NewSearchRequest("ou=unixgroups,dc=physics,dc=example", ldap.ScopeSingleLevel, ldap.NeverDerefAliases, 0, 10, false,
			"(&(objectClass=posixGroup)(cn=physicists))", []string{"gidNumber"}, nil)); err != nil {
			return err
		}
		groups = len(res.Entries)
		return nil
	}); err != nil || people != 1 || groups != 1 {
		t.Errorf("search as the nodes' bind DN at the site's LDAP: bob %d, physicists %d, %v", people, groups, err)
	}
	if _, err := os.Stat(filepath.Join(lab.HomesDir, "bob")); err != nil {
		t.Errorf("bob's home on the NAS export: %v", err)
	}
	if !strings.Contains(SiteYAML(lab.Config, "", ""), "uri: ldap://10.88.5.3:3389/") {
		t.Errorf("lab herd.yaml does not name the site's LDAP")
	}
}

// TestAddTapConcurrently: nodes boot together, each on its own tap (two
// boots once raced for tap0 and one failed with "Device or resource busy").
func TestAddTapConcurrently(t *testing.T) {
	testenv.RequireNetns(t)
	ns, err := NewNetns("taps")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := ns.AddBridge(LabBridge, LabServer+"/24"); err != nil {
		t.Fatal(err)
	}
	l := &Lab{Netns: ns}
	const n = 6
	names := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			names[i], errs[i] = l.AddTap()
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for i := range n {
		if errs[i] != nil {
			t.Errorf("AddTap: %v", errs[i])
		}
		if seen[names[i]] {
			t.Errorf("tap %s handed out twice", names[i])
		}
		seen[names[i]] = true
	}
}
