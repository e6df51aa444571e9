package build

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/herdlab/herd/internal/testenv"
)

// layers writes a bootstrap tree and the driver's and packages' upper
// layers from path → content maps, plus a stacked root (the packages' copy
// on the driver's on the base, as overlayfs shows them).
func layers(t *testing.T, base, driver, users map[string]string) (b, d, u, root string) {
	t.Helper()
	dir := t.TempDir()
	b, d, u, root = filepath.Join(dir, "base"), filepath.Join(dir, "driver"), filepath.Join(dir, "users"), filepath.Join(dir, "root")
	for _, l := range []struct {
		dirs  []string
		files map[string]string
	}{{[]string{b, root}, base}, {[]string{d, root}, driver}, {[]string{u, root}, users}} {
		for p, c := range l.files {
			for _, top := range l.dirs {
				f := filepath.Join(top, p)
				if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(f, []byte(c), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	return b, d, u, root
}

func TestJoinMergesDpkgDatabases(t *testing.T) {
	status := func(pkgs ...string) string {
		var s strings.Builder
		for _, p := range pkgs {
			s.WriteString("Package: " + p + "\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1\n\n")
		}
		return s.String()
	}
	base := map[string]string{"var/lib/dpkg/status": status("libc6", "systemd"), "etc/passwd": "root:x:0:0::/root:/bin/sh\nsshd:x:105:65534::/run/sshd:/usr/sbin/nologin\n",
		"var/lib/dpkg/diversions": "/a\n/a.distrib\nx\n", "etc/motd": "hello\n"}
	driver := map[string]string{"var/lib/dpkg/status": status("libc6", "systemd", "nvidia-utils", "binutils"),
		"etc/passwd":              base["etc/passwd"] + "nvidia-persistenced:x:106:104::/nonexistent:/usr/sbin/nologin\n",
		"var/lib/dpkg/diversions": base["var/lib/dpkg/diversions"], // rewritten unchanged
		"etc/motd":                "driver\n",                      // the packages left it alone
		"usr/bin/ld":              "same binary", "etc/ld.so.cache": "driver cache"}
	users := map[string]string{"var/lib/dpkg/status": status("libc6", "systemd", "binutils", "vim"),
		"etc/passwd":              base["etc/passwd"],
		"var/lib/dpkg/diversions": base["var/lib/dpkg/diversions"] + "/v\n/v.tiny\nvim\n",
		"etc/motd":                base["etc/motd"],
		"usr/bin/ld":              "same binary", "etc/ld.so.cache": "users cache"}
	b, d, u, root := layers(t, base, driver, users)
	jp, err := planJoin(u, d, b)
	if err != nil || jp.blocker != "" {
		t.Fatalf("plan: %v %q", err, jp.blocker)
	}
	ld, err := jp.apply(root, b, u, d)
	if err != nil {
		t.Fatal(err)
	}
	if !ld {
		t.Error("both layers changed ld.so.cache but the join would not rerun ldconfig")
	}
	got, _ := os.ReadFile(filepath.Join(root, "var/lib/dpkg/status"))
	if want := status("libc6", "systemd", "nvidia-utils", "binutils", "vim"); string(got) != want {
		t.Errorf("status:\n%s\nwant:\n%s", got, want)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "etc/passwd")); string(got) != driver["etc/passwd"] {
		t.Errorf("passwd (only the driver added a user):\n%s", got)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "var/lib/dpkg/diversions")); string(got) != users["var/lib/dpkg/diversions"] {
		t.Errorf("diversions:\n%s", got)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "etc/motd")); string(got) != "driver\n" {
		t.Errorf("a file only the driver changed shows %q", got)
	}
}

// Two packages that each add a system user get the same uid when both are
// installed on the same bootstrap: the merge must refuse (the join then
// installs the packages on top of the driver).
func TestJoinRefusesUIDClash(t *testing.T) {
	base := map[string]string{"etc/passwd": "root:x:0:0::/root:/bin/sh\n"}
	b, d, u, root := layers(t, base,
		map[string]string{"etc/passwd": base["etc/passwd"] + "nvidia-persistenced:x:106:104::/:/usr/sbin/nologin\n"},
		map[string]string{"etc/passwd": base["etc/passwd"] + "postfix:x:106:110::/:/usr/sbin/nologin\n"})
	jp, err := planJoin(u, d, b)
	if err != nil || jp.blocker != "" {
		t.Fatalf("plan: %v %q", err, jp.blocker)
	}
	_, err = jp.apply(root, b, u, d)
	var me *mergeError
	if !errors.As(err, &me) || !strings.Contains(err.Error(), "id 106") {
		t.Fatalf("want a mergeError naming id 106, got %v", err)
	}
}

// A file the join has no rule for, changed differently by both, blocks the
// merge and is named.
func TestJoinBlocksUnknownConflict(t *testing.T) {
	b, d, u, _ := layers(t, map[string]string{"etc/alternatives/editor": "a"},
		map[string]string{"etc/alternatives/editor": "nano"}, map[string]string{"etc/alternatives/editor": "vim"})
	jp, err := planJoin(u, d, b)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(jp.blocker, "/etc/alternatives/editor") {
		t.Fatalf("blocker %q does not name the file", jp.blocker)
	}
}

// A directory new in both layers is opaque in the packages' layer: it hides
// the driver's copy, so a file only the driver put there blocks the merge.
func TestJoinOpaqueDirHidingDriverFiles(t *testing.T) {
	testenv.RequireRoot(t) // trusted.* xattrs
	b, d, u, _ := layers(t, map[string]string{"etc/x": "x"},
		map[string]string{"usr/lib/compat-ld/ld": "ld", "usr/lib/compat-ld/only-driver": "d"},
		map[string]string{"usr/lib/compat-ld/ld": "ld"})
	if err := unix.Setxattr(filepath.Join(u, "usr/lib/compat-ld"), "trusted.overlay.opaque", []byte("y"), 0); err != nil {
		t.Fatal(err)
	}
	jp, err := planJoin(u, d, b)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(jp.blocker, "/usr/lib/compat-ld/only-driver") {
		t.Fatalf("blocker %q", jp.blocker)
	}
	os.Remove(filepath.Join(d, "usr/lib/compat-ld/only-driver"))
	if jp, err = planJoin(u, d, b); err != nil || jp.blocker != "" {
		t.Fatalf("same content under an opaque dir must merge: %v %q", err, jp.blocker)
	}
}

func TestMergeRules(t *testing.T) {
	for rel, want := range map[string]mergeKind{
		"var/lib/dpkg/status":                                    mergeStanzas,
		"var/cache/debconf/config.dat":                           mergeStanzas,
		"var/lib/dpkg/status-old":                                mergeUpper,
		"etc/passwd-":                                            mergeUpper,
		"etc/ssh/sshd_config-":                                   mergeNone,
		"var/lib/dpkg/triggers/File":                             mergeLineSet,
		"var/lib/dpkg/triggers/Lock":                             mergeNone,
		"usr/lib/modules/6.8.0-149-generic/modules.dep":          mergeDepmod,
		"usr/lib/modules/6.8.0-149-generic/modules.order":        mergeNone,
		"usr/lib/modules/6.8.0-149-generic/kernel/x/modules.dep": mergeNone,
		"var/log/dpkg.log":                                       mergeLog,
		"usr/bin/vim":                                            mergeNone,
	} {
		if got := mergeRuleFor(rel).kind; got != want {
			t.Errorf("%s: kind %d, want %d", rel, got, want)
		}
	}
	if _, err := mergeItems([]byte("a\n"), []byte("a\nb:1\n"), []byte("a\nb:2\n"), splitLines, func(s string) string { k, _, _ := strings.Cut(s, ":"); return k }, "\n"); err == nil {
		t.Error("both layers changing one entry differently must not merge")
	}
	out, err := mergeItems([]byte("a\nb\n"), []byte("a\n"), []byte("a\nb\nc\n"), splitLines, func(s string) string { return s }, "\n")
	if err != nil || string(out) != "a\nc\n" {
		t.Errorf("removal by one layer, addition by the other: %q %v", out, err)
	}
}
