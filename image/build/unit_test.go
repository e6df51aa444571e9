package build

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/image/recipe"
)

func TestParseInst(t *testing.T) {
	out := []byte(`Reading package lists...
Inst libc6 (2.39-0ubuntu8.4 Ubuntu:24.04/noble-updates [amd64])
Inst kmod [30-1] (31+20240202-2ubuntu7.2 Ubuntu:24.04/noble-updates, Ubuntu:24.04/noble-security [amd64])
Conf libc6 (2.39-0ubuntu8.4 Ubuntu:24.04/noble-updates [amd64])
`)
	got := parseInst(out)
	if len(got) != 2 || got["libc6"] != "2.39-0ubuntu8.4" || got["kmod"] != "31+20240202-2ubuntu7.2" {
		t.Fatalf("parseInst: %v", got)
	}
}

func testBuilder(t *testing.T) *builder {
	r, err := recipe.Load("../../recipes/test-noble-minimal.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	return &builder{recipe: r}
}

// apt's refusals become errors naming the package and both versions.
func TestExplainAptRefusals(t *testing.T) {
	b := testBuilder(t)
	wanted := map[string]pinWant{"nvidia-utils-580-server": {"580.1-1", "lock file x.lock"}}
	err := b.explain("E: Version '580.1-1' for 'nvidia-utils-580-server' was not found\n", wanted, func(p string) string { return "580.178.04-0ubuntu0.24.04.1" })
	var pd *PinDriftError
	if !errors.As(err, &pd) || pd.Source != "lock file x.lock" ||
		!strings.HasPrefix(err.Error(), "pinned package nvidia-utils-580-server: lock file x.lock wants version 580.1-1, but the archive resolves it to 580.178.04-0ubuntu0.24.04.1; ") ||
		!strings.Contains(err.Error(), "rebuild with --update-lock") {
		t.Fatalf("version not found: %v", err)
	}
	err = b.explain("E: Version '1' for 'gone' was not found\n", wanted, func(string) string { return "" })
	if !strings.Contains(err.Error(), "resolves it to no installable version; change the version in the recipe") {
		t.Fatalf("no candidate: %v", err)
	}
	err = b.explain("E: Unable to locate package linux-image-6.8.0-999-generic\n", wanted, nil)
	if !strings.Contains(err.Error(), "package linux-image-6.8.0-999-generic is not in ubuntu noble (components main)") {
		t.Fatalf("unknown package: %v", err)
	}
	err = b.explain("The following packages have unmet dependencies:\n foo : Depends: bar (= 2) but 3 is to be installed\nE: Unable to correct problems, you have held broken packages.\n", wanted, nil)
	if !strings.Contains(err.Error(), "foo : Depends: bar (= 2) but 3 is to be installed") {
		t.Fatalf("unmet dependencies: %v", err)
	}
}

// A download failure in the log is reported with the package and URL.
func TestFetchErrorNamesPackageAndURL(t *testing.T) {
	b := testBuilder(t)
	b.logPath = filepath.Join(t.TempDir(), "build.log")
	os.WriteFile(b.logPath, []byte("Get:1 ...\nE: Failed to fetch http://mirror.invalid/ubuntu/pool/restricted/l/linux-restricted-modules/linux-modules-nvidia-580-server-6.8.0-151-generic_6.8.0-151.151_amd64.deb  404  Not Found [IP: 10.0.0.1 80]\n"), 0o644)
	err := b.fetchError(errors.New("exit status 100"))
	want := "download of package linux-modules-nvidia-580-server-6.8.0-151-generic failed: http://mirror.invalid/ubuntu/pool/restricted/l/linux-restricted-modules/linux-modules-nvidia-580-server-6.8.0-151-generic_6.8.0-151.151_amd64.deb 404  Not Found"
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v", err)
	}
	os.WriteFile(b.logPath, []byte("nothing to see\n"), 0o644)
	if err := b.fetchError(errors.New("x")); err.Error() != "x" {
		t.Fatalf("unrelated failure rewritten: %v", err)
	}
}

func TestProgressPlainLines(t *testing.T) {
	var buf bytes.Buffer
	p := newProgress(&buf, false)
	p.start("bootstrap")
	p.done("bootstrap", 1500*time.Millisecond, false, nil)
	p.start("packages")
	p.done("packages", 0, true, nil)
	p.start("pack")
	p.done("pack", time.Second, false, errors.New("x"))
	want := "stage bootstrap: started\nstage bootstrap: done in 1.5s\nstage packages: started\nstage packages: cached in 0.0s\nstage pack: started\nstage pack: FAILED in 1.0s\n"
	if buf.String() != want {
		t.Fatalf("got %q", buf.String())
	}
	buf.Reset()
	p = newProgress(&buf, true)
	p.start("pack")
	p.done("pack", 2*time.Second, false, nil)
	if !strings.Contains(buf.String(), "\r\x1b[K  pack         2.0s  done\n") {
		t.Fatalf("terminal output %q", buf.String())
	}
}

func TestBuildErrorShowsTailAndPath(t *testing.T) {
	p := filepath.Join(t.TempDir(), "b.log")
	var lines []string
	for i := range 30 {
		lines = append(lines, "line "+string(rune('a'+i%26)))
	}
	os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
	e := &BuildError{Err: errors.New("stage bootstrap: boom"), LogPath: p, Tail: tailLines(p, 20)}
	s := e.Error()
	if !strings.HasPrefix(s, "stage bootstrap: boom\n--- last 20 lines of "+p+" ---\n") || strings.Count(s, "\n") != 21 {
		t.Fatalf("got %q", s)
	}
}

func TestStageKeysChain(t *testing.T) {
	a := hashKey("x", "bootstrap", "p=1")
	if a != hashKey("x", "bootstrap", "p=1") || a == hashKey("x", "bootstrap", "p=2") || a == hashKey("xbootstrap", "p=1") {
		t.Fatal("keys must be deterministic and separate their parts")
	}
	if digest(map[string]string{"a": "1", "b": "2"}) != digest(map[string]string{"b": "2", "a": "1"}) {
		t.Fatal("digest depends on map order")
	}
}

func TestMirrorArgs(t *testing.T) {
	b := testBuilder(t)
	if got := b.mirrorArgs(); got != nil {
		t.Fatalf("default mirror must be left to mmdebstrap, got %v", got)
	}
	b.recipe.Mirror = "http://mirror.invalid/ubuntu"
	got := strings.Join(b.mirrorArgs(), "|")
	if got != "deb http://mirror.invalid/ubuntu noble main|deb http://mirror.invalid/ubuntu noble-updates main|deb http://mirror.invalid/ubuntu noble-security main" {
		t.Fatalf("got %s", got)
	}
}

// Each stage is keyed by what it installs and the stages it stands on:
// adding a package to the recipe's packages changes packages, join and pack
// only; a driver change changes driver, join and pack only; a base change
// changes all but efi.
func TestPackageChangeKeepsBootstrapKey(t *testing.T) {
	dir := t.TempDir()
	keyring := filepath.Join(dir, "k.gpg")
	if err := os.WriteFile(keyring, []byte("key"), 0o644); err != nil {
		t.Fatal(err)
	}
	agent := testAgent(t)
	nvidia := []string{"components=[main,restricted]", "nvidia.branch=\"580\"", "nvidia.version=580.178.04-0ubuntu0.24.04.1"}
	keys := func(sets ...string) map[string]string {
		t.Helper()
		bump := ""
		if len(sets) == 1 && strings.HasPrefix(sets[0], "bump=") {
			bump, sets = strings.TrimPrefix(sets[0], "bump="), nil
		}
		r, err := recipe.Load("../../recipes/test-noble-minimal.yaml", append(append([]string(nil), nvidia...), sets...))
		if err != nil {
			t.Fatal(err)
		}
		res := &resolution{pinned: recipe.Lock{}, base: map[string]string{}, driver: map[string]string{}, users: map[string]string{}}
		for _, p := range r.AllPinned() {
			res.pinned[p.Name] = "1.0"
		}
		// A driver bump: the same packages at another version.
		for _, p := range r.DriverPackages() {
			if bump != "" {
				res.pinned[p.Name] = bump
			}
		}
		for _, p := range r.BasePackages() {
			res.base[p.Name] = res.pinned[p.Name]
		}
		for _, p := range r.DriverPackages() {
			res.driver[p.Name] = res.pinned[p.Name]
		}
		for _, p := range r.ExtraPackages() {
			res.users[p.Name] = res.pinned[p.Name]
		}
		ss, err := (&builder{recipe: r}).plan(keyring, res, emptySet{}, agent)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, s := range ss {
			out[s.name] = s.key
		}
		return out
	}
	plain := keys()
	check := func(what string, got map[string]string, changed ...string) {
		t.Helper()
		for name, k := range plain {
			want := slices.Contains(changed, name)
			if (got[name] != k) != want {
				t.Errorf("%s: stage %s key changed=%v, want %v", what, name, got[name] != k, want)
			}
		}
	}
	check("one package added", keys("packages=[htop]"), "packages", "join", "pack")
	check("driver bump", keys("bump=580.999"), "driver", "join", "pack")
	check("post command", keys("post=[true]"), "join", "pack")
	check("base package added", keys("base=[systemd-sysv, initramfs-tools, udev, kmod, iproute2, htop]"),
		"bootstrap", "driver", "packages", "join", "overlays", "initramfs", "pack")
}
