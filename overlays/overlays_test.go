package overlays

import (
	"bytes"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"testing/fstest"

	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/site"
)

var update = flag.Bool("update", false, "rewrite testdata/golden from the current render")

const testPassword = "s3cret-bind-pw"

func richSite(t *testing.T) *site.Config {
	t.Helper()
	cfg, err := site.Load("testdata/site.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func testSecrets(t *testing.T) RuntimeSecrets {
	t.Helper()
	priv, err := os.ReadFile("testdata/hostkey_ed25519")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := os.ReadFile("testdata/hostkey_ed25519.pub")
	if err != nil {
		t.Fatal(err)
	}
	return RuntimeSecrets{
		MachineID:        "5f1c0d2a9b8e4c7d8e1f2a3b4c5d6e7f",
		SSHHostKeys:      []HostKey{{Type: "ed25519", Private: priv, Public: pub}},
		LDAPBindPassword: testPassword,
	}
}

// index is one line per entry: kind, octal mode, owner, path (and link).
func index(files []File) string {
	var b strings.Builder
	for _, f := range files {
		fmt.Fprintf(&b, "%-4s %s %d:%d /%s", f.Kind(), OctalMode(f), f.UID, f.GID, f.Path)
		if f.Link != "" {
			fmt.Fprintf(&b, " -> %s", f.Link)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// golden compares (or, with -update, rewrites) testdata/golden/<name>/:
// _index lists every entry with owner and mode, and each file's content
// sits at its path.
func golden(t *testing.T, name string, files []File) {
	t.Helper()
	dir := filepath.Join("testdata", "golden", name)
	if *update {
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "_index"), []byte(index(files)), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if f.Dir || f.Link != "" {
				continue
			}
			p := filepath.Join(dir, f.Path)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, f.Data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return
	}
	want, err := os.ReadFile(filepath.Join(dir, "_index"))
	if err != nil {
		t.Fatalf("%v (run go test ./overlays -update)", err)
	}
	if got := index(files); got != string(want) {
		t.Errorf("%s: index differs (go test ./overlays -update rewrites it)\ngot:\n%s\nwant:\n%s", name, got, want)
	}
	seen := map[string]bool{"_index": true}
	for _, f := range files {
		if f.Dir || f.Link != "" {
			continue
		}
		seen[f.Path] = true
		w, err := os.ReadFile(filepath.Join(dir, f.Path))
		if err != nil {
			t.Errorf("%s: /%s has no golden file: %v", name, f.Path, err)
			continue
		}
		if !bytes.Equal(w, f.Data) {
			t.Errorf("%s: /%s differs from golden\ngot:\n%s\nwant:\n%s", name, f.Path, f.Data, w)
		}
	}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			if !seen[rel] {
				t.Errorf("%s: golden file %s is no longer rendered", name, rel)
			}
		}
		return nil
	})
}

func byOverlay(files []File) map[string][]File {
	m := map[string][]File{}
	for _, f := range files {
		m[f.Overlay] = append(m[f.Overlay], f)
	}
	return m
}

func TestGoldenRichSite(t *testing.T) {
	cfg := richSite(t)
	files, err := Render(cfg, site.AllOverlays)
	if err != nil {
		t.Fatal(err)
	}
	groups := byOverlay(files)
	for _, name := range site.AllOverlays {
		if len(groups[name]) == 0 {
			t.Errorf("overlay %s rendered no files", name)
		}
		golden(t, name, groups[name])
	}
	node, _ := cfg.NodeByName("gpu01")
	rt, err := RenderRuntime(cfg, node, testSecrets(t))
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "runtime", rt)
}

// The example site: anonymous bind, no TLS, no scratch/swap, no keys.
func TestGoldenExampleSite(t *testing.T) {
	cfg, err := site.Load("../examples/herd.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	files, err := Render(cfg, cfg.Overlays)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "example-site", files)
	node, _ := cfg.NodeByName("gpu02")
	rt, err := RenderRuntime(cfg, node, RuntimeSecrets{MachineID: "00112233445566778899aabbccddeeff"})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "example-runtime", rt)
}

func find(files []File, p string) (File, bool) {
	for _, f := range files {
		if f.Path == p {
			return f, true
		}
	}
	return File{}, false
}

func TestSecretsOnlyInRuntimeOverlay(t *testing.T) {
	cfg := richSite(t)
	files, err := Render(cfg, site.AllOverlays)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if bytes.Contains(f.Data, []byte(testPassword)) {
			t.Errorf("system overlay %s /%s holds the bind password", f.Overlay, f.Path)
		}
		if strings.HasPrefix(f.Path, "etc/ssh/ssh_host_") {
			t.Errorf("system overlay %s ships a host key /%s", f.Overlay, f.Path)
		}
	}
	conf, ok := find(files, "etc/sssd/sssd.conf")
	if !ok || conf.Mode != 0o600 || conf.UID != 0 || conf.GID != 0 {
		t.Fatalf("sssd.conf = %+v, want 0600 root", conf)
	}
	if !bytes.Contains(conf.Data, []byte("ldap_default_bind_dn = cn=nodes,dc=lab,dc=internal")) {
		t.Errorf("sssd.conf lacks the bind DN:\n%s", conf.Data)
	}
	node, _ := cfg.NodeByName("gpu02")
	rt, err := RenderRuntime(cfg, node, testSecrets(t))
	if err != nil {
		t.Fatal(err)
	}
	var holders []string
	for _, f := range rt {
		if bytes.Contains(f.Data, []byte(testPassword)) {
			holders = append(holders, f.Path)
			if f.Mode != 0o600 || f.UID != 0 || f.GID != 0 {
				t.Errorf("/%s holds the password with mode %s owner %d:%d, want 0600 root", f.Path, OctalMode(f), f.UID, f.GID)
			}
		}
	}
	if strings.Join(holders, ",") != "etc/sssd/conf.d/herd-bind.conf" {
		t.Errorf("password found in %v, want only etc/sssd/conf.d/herd-bind.conf", holders)
	}
	key, ok := find(rt, "etc/ssh/ssh_host_ed25519_key")
	if !ok || key.Mode != 0o600 {
		t.Errorf("host key = %+v, want 0600", key)
	}
	host, _ := find(rt, "etc/hostname")
	if string(host.Data) != "gpu02\n" {
		t.Errorf("hostname = %q", host.Data)
	}
	// Anonymous bind: no secret file at all.
	rt, err = RenderRuntime(cfg, node, RuntimeSecrets{MachineID: "5f1c0d2a9b8e4c7d8e1f2a3b4c5d6e7f"})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := find(rt, "etc/sssd/conf.d/herd-bind.conf"); ok {
		t.Error("bind conf rendered without a password")
	}
}

func TestRuntimeRejectsBadSecrets(t *testing.T) {
	cfg := richSite(t)
	node, _ := cfg.NodeByName("gpu01")
	good := testSecrets(t)
	cases := []struct {
		name string
		mod  func(*RuntimeSecrets)
		want string
	}{
		{"short machine-id", func(s *RuntimeSecrets) { s.MachineID = "abc" }, "not 32 lower-case hex"},
		{"upper machine-id", func(s *RuntimeSecrets) { s.MachineID = strings.ToUpper(good.MachineID) }, "not 32 lower-case hex"},
		{"newline password", func(s *RuntimeSecrets) { s.LDAPBindPassword = "a\nldap_uri = ldap://evil/" }, "newline"},
		{"key type", func(s *RuntimeSecrets) { s.SSHHostKeys[0].Type = "dsa" }, `"dsa" is not ed25519`},
		{"not a key", func(s *RuntimeSecrets) { s.SSHHostKeys[0].Private = []byte("hello") }, "not an OpenSSH key pair"},
		{"dup key", func(s *RuntimeSecrets) { s.SSHHostKeys = append(s.SSHHostKeys, s.SSHHostKeys[0]) }, "two SSH host keys"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := testSecrets(t)
			c.mod(&s)
			_, err := RenderRuntime(cfg, node, s)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
		})
	}
}

func TestRenderChoices(t *testing.T) {
	cfg := richSite(t)
	files, err := Render(cfg, site.AllOverlays)
	if err != nil {
		t.Fatal(err)
	}
	must := map[string][]string{
		"etc/auto.home":                           {"* -fstype=nfs4,vers=4.2,rw,hard,noatime,nodiratime,tcp,actimeo=120,rsize=262144,wsize=262144,fsc 10.77.0.2:/export/homes/&"},
		"etc/auto.master":                         {"/home /etc/auto.home", "/- /etc/auto.public"},
		"etc/auto.public":                         {"/media/Public -fstype=nfs4"},
		"etc/nsswitch.conf":                       {"passwd:         files systemd sss", "automount:      files"},
		"etc/cachefilesd.conf":                    {"dir /var/cache/herd/fscache", "brun 30%", "bcull 25%", "bstop 20%"},
		"etc/sysctl.d/60-herd-tuning.conf":        {"net.core.rmem_default = 8388608", "net.core.wmem_max = 16777216"},
		"etc/tmpfiles.d/tmp.conf":                 {"D /tmp 1777 root root 7d"},
		"etc/sssd/sssd.conf":                      {"ldap_id_use_start_tls = true", "ldap_tls_reqcert = demand", "ldap_tls_cacert = /etc/sssd/herd-ca.pem", "override_shell = /bin/bash", "cache_credentials = true", "enumerate = false"},
		"etc/modprobe.d/herd-nvidia.conf":         {"blacklist nouveau", "options nvidia NVreg_PreserveVideoMemoryAllocations=1", "options nvidia_drm modeset=1"},
		"etc/sudoers.d/herd":                      {`%members ALL=(root) /usr/bin/nvidia-smi, /usr/bin/systemctl restart autofs.service, /usr/sbin/reboot`},
		"etc/systemd/timesyncd.conf.d/herd.conf":  {"NTP=10.77.0.1 ntp.lab.internal"},
		"etc/systemd/system/herd-swap.service":    {"ExecStart=/usr/lib/herd/swap-on-ssd 16G", "ConditionPathIsMountPoint=/var/cache/herd"},
		"etc/systemd/system/herd-scratch.service": {"ExecStart=/bin/mount --mkdir=0755 --bind /var/cache/herd/scratch \"/scratch\""},
		"etc/tmpfiles.d/herd-scratch.conf":        {"d /var/cache/herd/scratch 0755 root root -"},
		"etc/systemd/system/cachefilesd.service":  {"RequiresMountsFor=/var/cache/herd", "ConditionPathIsMountPoint=/var/cache/herd", "Before=autofs.service", "CacheDirectory=herd/fscache"},
		"etc/modules-load.d/herd-cachefiles.conf": {"\ncachefiles\n"},
	}
	for p, subs := range must {
		f, ok := find(files, p)
		if !ok {
			t.Errorf("/%s not rendered", p)
			continue
		}
		for _, s := range subs {
			if !bytes.Contains(f.Data, []byte(s)) {
				t.Errorf("/%s lacks %q:\n%s", p, s, f.Data)
			}
		}
	}
	for _, s := range []string{"nss", "pam", "pam-priv"} {
		if f, ok := find(files, "etc/systemd/system/sssd-"+s+".socket"); !ok || f.Link != "/dev/null" {
			t.Errorf("sssd-%s.socket not masked: %+v", s, f)
		}
	}
	if f, _ := find(files, "etc/sssd/herd-ca.pem"); !bytes.Contains(f.Data, []byte("BEGIN CERTIFICATE")) {
		t.Error("CA certificate not shipped")
	}

	// Without ldap: nsswitch has no sss, and autofs v3 uses fstype nfs.
	cfg.NAS.NFSVersion = "3"
	files, err = Render(cfg, []string{"base", "autofs"})
	if err != nil {
		t.Fatal(err)
	}
	ns, _ := find(files, "etc/nsswitch.conf")
	if bytes.Contains(ns.Data, []byte("sss")) {
		t.Errorf("nsswitch without ldap still uses sss:\n%s", ns.Data)
	}
	home, _ := find(files, "etc/auto.home")
	if !bytes.Contains(home.Data, []byte("-fstype=nfs,vers=3,")) {
		t.Errorf("NFSv3 map: %s", home.Data)
	}
}

func TestOverlayNeedsSiteFields(t *testing.T) {
	// A site file that lists only base but whose image recipe asks for
	// autofs and ldap: an error naming the fields.
	cfg, err := site.Parse("herd.yaml", []byte("overlays: [base]\ndhcp: {mode: off}\n"))
	if err != nil {
		t.Fatal(err)
	}
	for o, want := range map[string]string{
		"autofs": "overlay autofs needs nas.address and nas.homes, which the site config herd.yaml does not set",
		"ldap":   "overlay ldap needs ldap.uri and ldap.base, which the site config herd.yaml does not set",
	} {
		if _, err := Render(cfg, []string{"base", o}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want %q", o, err, want)
		}
	}
	// No site file at all (built-in defaults, `herd image build` before
	// the site is configured): those overlays are left out, not broken.
	def, err := site.LoadOrDefault("/nonexistent/herd.yaml", true)
	if err != nil {
		t.Fatal(err)
	}
	files, err := Render(def, site.AllOverlays)
	if err != nil {
		t.Fatal(err)
	}
	groups := byOverlay(files)
	if len(groups["autofs"]) != 0 || len(groups["ldap"]) != 0 || len(groups["base"]) == 0 || len(groups["cachefilesd"]) == 0 {
		t.Errorf("defaults rendered overlays %v", sortedKeys(groups))
	}
	ns, _ := find(files, "etc/nsswitch.conf")
	if bytes.Contains(ns.Data, []byte("sss")) {
		t.Errorf("nsswitch uses sss although ldap was left out:\n%s", ns.Data)
	}
}

func TestUnknownOverlay(t *testing.T) {
	_, err := Render(richSite(t), []string{"base", "gpu"})
	if err == nil || !strings.Contains(err.Error(), `unknown overlay "gpu"`) {
		t.Fatalf("err = %v", err)
	}
}

// withTrees swaps the embedded trees for a test tree.
func withTrees(t *testing.T, m fstest.MapFS) {
	old := source
	source = m
	t.Cleanup(func() { source = old })
}

func TestTemplateErrorsNameFileAndLine(t *testing.T) {
	cfg := richSite(t)
	cases := []struct {
		name string
		tree fstest.MapFS
		want string
	}{
		{"unknown field", fstest.MapFS{"base/etc/x.tmpl": {Data: []byte("ok\n{{.Site.NoSuchField}}\n")}}, "overlays/base/etc/x.tmpl:2:"},
		{"parse error", fstest.MapFS{"base/etc/x.tmpl": {Data: []byte("a\nb\n{{if}}\n")}}, "overlays/base/etc/x.tmpl:3:"},
		{"node in system overlay", fstest.MapFS{"base/etc/x.tmpl": {Data: []byte("{{.Node.Name}}")}}, "overlays/base/etc/x.tmpl:1:"},
		{"meta unknown key", fstest.MapFS{"base/etc/x": {Data: []byte("x")}, "base/_meta.yaml": {Data: []byte("files:\n  etc/x: {mode: \"0600\", owner: root}\n")}}, "overlays/base/_meta.yaml:2:"},
		{"meta bad mode", fstest.MapFS{"base/etc/x": {Data: []byte("x")}, "base/_meta.yaml": {Data: []byte("files:\n  etc/x: {mode: \"rw\"}\n")}}, `overlays/base/_meta.yaml: files.etc/x: mode "rw" is not an octal mode`},
		{"meta missing file", fstest.MapFS{"base/etc/x": {Data: []byte("x")}, "base/_meta.yaml": {Data: []byte("files:\n  etc/y: {mode: \"0600\"}\n")}}, "files.etc/y: no such file in the tree"},
		{"meta escaping link", fstest.MapFS{"base/etc/x": {Data: []byte("x")}, "base/_meta.yaml": {Data: []byte("links:\n  ../etc/y: /x\n")}}, "must be clean and relative"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			withTrees(t, c.tree)
			_, err := Render(cfg, []string{"base"})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v\nwant it to contain %q", err, c.want)
			}
		})
	}
}

func TestConflictingOverlays(t *testing.T) {
	withTrees(t, fstest.MapFS{
		"base/etc/motd":   {Data: []byte("a")},
		"tuning/etc/motd": {Data: []byte("b")},
	})
	_, err := Render(richSite(t), []string{"base", "tuning"})
	if err == nil || !strings.Contains(err.Error(), "overlays base and tuning both write /etc/motd") {
		t.Fatalf("err = %v", err)
	}
}

// visudo is sudo's own checker: the rendered rule must parse.
func TestSudoersPassesVisudo(t *testing.T) {
	testenv.RequireCommands(t, "visudo")
	for _, tc := range []struct {
		name string
		cmds []string
	}{
		{"limited", []string{"/usr/bin/nvidia-smi", "/usr/bin/systemctl restart autofs.service", "/usr/bin/env A=b,c:d"}},
		{"all", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := richSite(t)
			cfg.Sudo.Commands = tc.cmds
			files, err := Render(cfg, []string{"base"})
			if err != nil {
				t.Fatal(err)
			}
			f, _ := find(files, "etc/sudoers.d/herd")
			if f.Mode != 0o440 {
				t.Errorf("sudoers mode %s, want 0440", OctalMode(f))
			}
			p := filepath.Join(t.TempDir(), "herd")
			if err := os.WriteFile(p, f.Data, 0o440); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command("visudo", "-c", "-f", p).CombinedOutput()
			if err != nil {
				t.Fatalf("visudo -c rejects the rule: %v\n%s\n%s", err, out, f.Data)
			}
			if tc.cmds == nil && !bytes.Contains(f.Data, []byte("%members ALL=(ALL:ALL) ALL")) {
				t.Errorf("no ALL rule:\n%s", f.Data)
			}
		})
	}
}

// sh -n parses the boot-time scripts the overlays install.
func TestScriptsParse(t *testing.T) {
	testenv.RequireCommands(t, "sh")
	files, err := Render(richSite(t), site.AllOverlays)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range files {
		if f.Mode&0o111 == 0 || f.Dir || f.Link != "" {
			continue
		}
		n++
		cmd := exec.Command("sh", "-n")
		cmd.Stdin = bytes.NewReader(f.Data)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("/%s: sh -n: %v\n%s", f.Path, err, out)
		}
	}
	if n < 4 {
		t.Errorf("only %d executable scripts found", n)
	}
}

func TestApplyWritesOwnersModesLinks(t *testing.T) {
	testenv.RequireRoot(t)
	cfg := richSite(t)
	files, err := Render(cfg, site.AllOverlays)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	// What an image already has: a file Apply must replace, a symlink to
	// replace with a file, and an absolute symlink that must not lead out.
	outside := t.TempDir()
	mustWrite(t, filepath.Join(root, "etc/nsswitch.conf"), "old")
	os.MkdirAll(filepath.Join(root, "etc/sssd"), 0o755)
	os.Symlink("/etc/auto.master.old", filepath.Join(root, "etc/auto.master"))
	os.MkdirAll(filepath.Join(root, "etc/systemd"), 0o755)
	os.Symlink(outside, filepath.Join(root, "etc/systemd/network"))

	err = Apply(files, root)
	if err == nil {
		t.Fatal("Apply followed an absolute symlink out of the root")
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("Apply wrote outside the root: %v", ents)
	}
	os.Remove(filepath.Join(root, "etc/systemd/network"))
	if err := Apply(files, root); err != nil {
		t.Fatal(err)
	}
	// Twice is the same as once.
	if err := Apply(files, root); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		p := filepath.Join(root, f.Path)
		fi, err := os.Lstat(p)
		if err != nil {
			t.Errorf("%s: %v", f.Path, err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		if int(st.Uid) != f.UID || int(st.Gid) != f.GID {
			t.Errorf("/%s owner %d:%d, want %d:%d", f.Path, st.Uid, st.Gid, f.UID, f.GID)
		}
		switch {
		case f.Dir:
			if !fi.IsDir() || fi.Mode().Perm() != f.Mode.Perm() {
				t.Errorf("/%s: %v, want dir %v", f.Path, fi.Mode(), f.Mode)
			}
		case f.Link != "":
			got, err := os.Readlink(p)
			if err != nil || got != f.Link {
				t.Errorf("/%s -> %q (%v), want %q", f.Path, got, err, f.Link)
			}
		default:
			if !fi.Mode().IsRegular() || fi.Mode().Perm() != f.Mode.Perm() {
				t.Errorf("/%s: %v, want file %v", f.Path, fi.Mode(), f.Mode)
			}
			data, _ := os.ReadFile(p)
			if !bytes.Equal(data, f.Data) {
				t.Errorf("/%s content differs", f.Path)
			}
		}
	}
	if fi, _ := os.Stat(filepath.Join(root, "etc/sssd/sssd.conf")); fi.Mode().Perm() != 0o600 {
		t.Errorf("sssd.conf mode %v", fi.Mode())
	}
	if fi, _ := os.Stat(filepath.Join(root, "etc/sssd")); fi.Mode().Perm() != 0o711 {
		t.Errorf("/etc/sssd mode %v, want the existing dir chmod'ed to 0711", fi.Mode())
	}
	// No temp files left behind.
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.Contains(d.Name(), ".herd-") {
			t.Errorf("leftover temp file %s", p)
		}
		return nil
	})
	// A directory is never replaced by a file.
	os.MkdirAll(filepath.Join(root, "x/dir"), 0o755)
	if err := Apply([]File{{Overlay: "t", Path: "x/dir", Mode: 0o644, Data: []byte("x")}}, root); err == nil || !strings.Contains(err.Error(), "exists as a directory") {
		t.Errorf("err = %v", err)
	}
}

func TestApplySetuidAndRuntime(t *testing.T) {
	testenv.RequireRoot(t)
	root := t.TempDir()
	files := []File{{Overlay: "t", Path: "usr/bin/x", Mode: 0o755 | fs.ModeSetuid, UID: 0, GID: 0, Data: []byte("#!/bin/sh\n")}}
	cfg := richSite(t)
	node, _ := cfg.NodeByName("gpu01")
	rt, err := RenderRuntime(cfg, node, testSecrets(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := Apply(append(files, rt...), root); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(filepath.Join(root, "usr/bin/x"))
	if fi.Mode()&fs.ModeSetuid == 0 {
		t.Errorf("setuid bit lost: %v", fi.Mode())
	}
	fi, _ = os.Stat(filepath.Join(root, "etc/sssd/conf.d/herd-bind.conf"))
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("bind conf mode %v", fi.Mode())
	}
	var names []string
	ents, _ := os.ReadDir(filepath.Join(root, "etc/ssh"))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if strings.Join(names, " ") != "herd-node-keys ssh_host_ed25519_key ssh_host_ed25519_key.pub" {
		t.Errorf("etc/ssh = %v", names)
	}
}

func mustWrite(t *testing.T, p, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// has-nvidia-gpu decides whether nvidia-persistenced runs: run it against
// sysfs trees with and without an NVIDIA GPU, and against the host's own.
func TestHasNvidiaGPUScript(t *testing.T) {
	testenv.RequireCommands(t, "sh")
	files, err := Render(richSite(t), []string{"nvidia"})
	if err != nil {
		t.Fatal(err)
	}
	f, ok := find(files, "usr/lib/herd/has-nvidia-gpu")
	if !ok {
		t.Fatal("script not rendered")
	}
	script := filepath.Join(t.TempDir(), "has-nvidia-gpu")
	if err := os.WriteFile(script, f.Data, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(sysfs string) bool {
		cmd := exec.Command(script)
		cmd.Env = append(os.Environ(), "HERD_SYSFS="+sysfs)
		err := cmd.Run()
		if _, isExit := err.(*exec.ExitError); err != nil && !isExit {
			t.Fatal(err)
		}
		return err == nil
	}
	fake := func(devs ...[2]string) string {
		root := t.TempDir()
		for i, d := range devs {
			dir := filepath.Join(root, "bus/pci/devices", fmt.Sprintf("0000:00:%02x.0", i))
			mustWrite(t, filepath.Join(dir, "vendor"), d[0]+"\n")
			mustWrite(t, filepath.Join(dir, "class"), d[1]+"\n")
		}
		return root
	}
	if !run(fake([2]string{"0x8086", "0x060000"}, [2]string{"0x10de", "0x030200"})) {
		t.Error("a 3D controller from NVIDIA was not recognised")
	}
	if run(fake([2]string{"0x10de", "0x068000"}, [2]string{"0x1af4", "0x020000"})) {
		t.Error("an NVIDIA bridge (no GPU) counted as a GPU")
	}
	if run(fake()) {
		t.Error("an empty PCI bus counted as a GPU")
	}
	// The host: the script must agree with a look at /sys from Go.
	want := false
	devs, _ := filepath.Glob("/sys/bus/pci/devices/*")
	for _, d := range devs {
		v, _ := os.ReadFile(filepath.Join(d, "vendor"))
		c, _ := os.ReadFile(filepath.Join(d, "class"))
		if strings.TrimSpace(string(v)) == "0x10de" && strings.HasPrefix(string(c), "0x03") {
			want = true
		}
	}
	if got := run("/sys"); got != want {
		t.Errorf("on this host has-nvidia-gpu = %v, /sys says %v", got, want)
	}
}

// The runtime overlay is rendered on every node boot (the server's
// /nodes/<name>/overlay.cpio), the system overlays once per image build.
func BenchmarkRenderRuntime(b *testing.B) {
	cfg, err := site.Load("testdata/site.yaml", nil)
	if err != nil {
		b.Fatal(err)
	}
	node, _ := cfg.NodeByName("gpu01")
	priv, _ := os.ReadFile("testdata/hostkey_ed25519")
	pub, _ := os.ReadFile("testdata/hostkey_ed25519.pub")
	sec := RuntimeSecrets{MachineID: "5f1c0d2a9b8e4c7d8e1f2a3b4c5d6e7f", SSHHostKeys: []HostKey{{Type: "ed25519", Private: priv, Public: pub}}, LDAPBindPassword: testPassword}
	for b.Loop() {
		if _, err := RenderRuntime(cfg, node, sec); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRenderAll(b *testing.B) {
	cfg, err := site.Load("testdata/site.yaml", nil)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := Render(cfg, site.AllOverlays); err != nil {
			b.Fatal(err)
		}
	}
}

// The server renders runtime overlays for many booting nodes at once.
func TestConcurrentRuntimeRenders(t *testing.T) {
	cfg := richSite(t)
	sec := testSecrets(t)
	want := map[string][]File{}
	for _, n := range cfg.Nodes {
		files, err := RenderRuntime(cfg, &n, sec)
		if err != nil {
			t.Fatal(err)
		}
		want[n.Name] = files
	}
	errs := make(chan error, 16)
	for i := 0; i < 16; i++ {
		go func(i int) {
			n := cfg.Nodes[i%len(cfg.Nodes)]
			files, err := RenderRuntime(cfg, &n, sec)
			if err == nil && index(files) != index(want[n.Name]) {
				err = fmt.Errorf("%s: concurrent render differs", n.Name)
			}
			errs <- err
		}(i)
	}
	for i := 0; i < 16; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// TestGoldenNetworks renders the runtime overlay of each node of a
// two-network site: a NIC by MAC (gpu01), an LACP bond with a VLAN (gpu02),
// a NIC by name pattern on DHCP plus a VLAN on an address-less
// active-backup bond (gpu03), and a node with no interfaces (gpu04), which
// must get exactly the files it got before networks existed.
func TestGoldenNetworks(t *testing.T) {
	cfg, err := site.Load("testdata/networks.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"gpu01", "gpu02", "gpu03", "gpu04"} {
		node, _ := cfg.NodeByName(name)
		rt, err := RenderRuntime(cfg, node, RuntimeSecrets{MachineID: "00112233445566778899aabbccddeeff"})
		if err != nil {
			t.Fatal(err)
		}
		golden(t, "networks-"+name, rt)
		_, guard := find(rt, guardDropIn)
		if want := name != "gpu04"; guard != want {
			t.Errorf("%s: NAS guard drop-in present = %v, want %v", name, guard, want)
		}
		for _, f := range rt {
			if strings.HasPrefix(f.Path, networkdDir) && !strings.HasPrefix(f.Path, networkdDir+networkPrefix) && f.Path != guardDropIn {
				t.Errorf("%s: %s does not sort before base's 10-herd-boot.network", name, f.Path)
			}
		}
	}
	// nas.allow_fallback: no guard route, so NFS may take the boot network.
	cfg.NAS.AllowFallback = true
	node, _ := cfg.NodeByName("gpu01")
	rt, err := RenderRuntime(cfg, node, RuntimeSecrets{MachineID: "00112233445566778899aabbccddeeff"})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := find(rt, guardDropIn); ok {
		t.Errorf("allow_fallback: the guard drop-in is still rendered")
	}
}
