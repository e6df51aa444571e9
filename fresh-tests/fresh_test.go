// Package fresh_test checks the README's promise that `make` works on a fresh
// Debian 12 or Ubuntu 24.04 machine with no Go: it runs `make build` inside
// fresh minbase trees made with mmdebstrap, where the only Go the Makefile
// finds is the one it brings itself (scripts/go).
package fresh_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/image/build"
	"github.com/herdlab/herd/image/recipe"
	"github.com/herdlab/herd/internal/testenv"
)

// treeMaxAge is how long a cached pristine minbase tree stays fresh enough:
// it stands for a newly installed machine, so it only has to be recent.
const treeMaxAge = 7 * 24 * time.Hour

type distro struct {
	name, suite string
	include     string
	recipe      string // recipe whose pinned archive key signs the suite; "" for the host's own
}

// TestMakeBuildInFreshTree runs `make build` (the build step of the README's
// first command) in a fresh Debian 12 and a fresh Ubuntu 24.04 minbase tree
// that have make but no Go, then runs the herd it built.
//
// Network: a chroot shares the host's network, which reaches only the package
// archives and the Go module proxy; that is all the build may use. The host's
// trust store is copied in (SSL_CERT_FILE), as ENVIRONMENT.md says.
//
// Kept between runs in $HERD_FRESH_CACHE (/var/tmp/herd-fresh): the pristine
// trees (tarballs, remade after a week) and apt's downloaded .debs. Nothing
// of Go is kept: each tree starts with no Go and no module cache, so its old
// Go really fetches the toolchain module from the proxy; the second tree
// reuses the first one's build cache (see below).
func TestMakeBuildInFreshTree(t *testing.T) {
	testenv.Long(t)
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "mmdebstrap", "unshare", "chroot", "tar", "git", "gpg")
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	cache := os.Getenv("HERD_FRESH_CACHE")
	if cache == "" {
		cache = "/var/tmp/herd-fresh"
	}
	// One build cache for both trees of this run (never kept): the first
	// tree compiles everything with the toolchain it fetched; the second
	// proves its own old Go fetches and runs the toolchain, which then
	// finds the compiled packages and links. The module cache, where the
	// toolchain lands, is never shared: that fetch is what is tested.
	if err := os.MkdirAll(cache, 0o755); err != nil { // a fresh machine has none yet
		t.Fatal(err)
	}
	gocache, err := os.MkdirTemp(cache, "gocache-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(gocache)
	for _, d := range []distro{
		// minbase from a Debian host leaves apt out of an Ubuntu tree: every
		// real Ubuntu machine has it.
		{name: "debian12", suite: "bookworm", include: "make"},
		{name: "ubuntu2404", suite: "noble", include: "make,apt,ubuntu-keyring", recipe: "test-noble-minimal.yaml"},
	} {
		t.Run(d.name, func(t *testing.T) { freshBuild(t, repo, cache, gocache, d) })
	}
}

func freshBuild(t *testing.T, repo, cache, gocache string, d distro) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	start := time.Now()
	tarball, err := pristineTree(ctx, t, repo, cache, d)
	if err != nil {
		t.Fatal(err)
	}
	treeDone := time.Now()

	work, err := os.MkdirTemp(cache, "run-"+d.name+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	tree := filepath.Join(work, "tree")
	if err := os.Mkdir(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	mustRun(t, exec.Command("tar", "-C", tree, "--numeric-owner", "-xpf", tarball))

	// The source as the admin has it (tracked and new files, not bin/).
	src := filepath.Join(tree, "root", "herd")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	mustRun(t, exec.Command("bash", "-c", `set -o pipefail
git -C "$1" ls-files -z --cached --others --exclude-standard |
	tar -C "$1" --null --ignore-failed-read -T - -cf - | tar -C "$2" -xf -`, "copy", repo, src))

	// The host's trust store and resolver, as on a machine of this network.
	ca := os.Getenv("SSL_CERT_FILE")
	if ca == "" {
		ca = "/etc/ssl/certs/ca-certificates.crt"
	}
	copyFile(t, ca, filepath.Join(tree, "etc", "herd-host-ca.crt"))
	os.Remove(filepath.Join(tree, "etc", "resolv.conf"))
	copyFile(t, "/etc/resolv.conf", filepath.Join(tree, "etc", "resolv.conf"))

	debs := filepath.Join(cache, d.suite+"-debs")
	if err := os.MkdirAll(filepath.Join(debs, "partial"), 0o755); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/root", "LANG=C.UTF-8", "SSL_CERT_FILE=/etc/herd-host-ca.crt"}
	// The Go module proxy and checksum database this machine is set up for
	// (a fresh machine on this network would be given the same).
	for _, k := range []string{"GOPROXY", "GOSUMDB", "GONOSUMDB", "GOPRIVATE"} {
		if out, err := exec.Command("go", "env", k).Output(); err == nil && len(bytes.TrimSpace(out)) > 0 {
			env = append(env, k+"="+strings.TrimSpace(string(out)))
		}
	}
	inner := `set -e
cd /root/herd
if command -v go; then echo "FAIL: the fresh tree already has a go"; exit 1; fi
make build
echo "== second run"
make build
echo "== go used: $(scripts/go version)"
echo "== distribution go: $(cd / && GOTOOLCHAIN=local go version)"
echo "== herd --version: $(bin/herd --version)"
`
	outer := `set -e
t=$1; debs=$2; gocache=$3; shift 3
mount -t proc proc "$t/proc"
mount --bind /dev "$t/dev"
mount --bind "$debs" "$t/var/cache/apt/archives"
mkdir -p "$t/root/.cache/go-build"
mount --bind "$gocache" "$t/root/.cache/go-build"
exec chroot "$t" env -i "$@"
`
	args := append([]string{"--mount", "--pid", "--fork", "--kill-child=SIGKILL", "bash", "-c", outer, "outer", tree, debs, gocache},
		append(env, "bash", "-c", inner)...)
	cmd := exec.CommandContext(ctx, "unshare", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	logPath := filepath.Join(cache, d.name+"-last.log")
	os.WriteFile(logPath, out.Bytes(), 0o644)
	if err != nil {
		t.Fatalf("make build in a fresh %s tree: %v (log %s)\n%s", d.name, err, logPath, tail(out.String(), 60))
	}
	log := out.String()
	want := goModVersion(t, repo)
	for _, c := range []struct{ what, re string }{
		{"the old Go fetched the toolchain module", `fetching golang\.org/toolchain@v0\.0\.1-go` + regexp.QuoteMeta(want) + `\.linux-`},
		{"the build ran that toolchain", `== go used: go version go` + regexp.QuoteMeta(want) + ` `},
		{"herd runs", `== herd --version: herd version \S+`},
	} {
		if !regexp.MustCompile(c.re).MatchString(log) {
			t.Errorf("%s: no match for %q in the log (%s)\n%s", c.what, c.re, logPath, tail(log, 40))
		}
	}
	old := regexp.MustCompile(`== distribution go: go version go([0-9.]+)`).FindStringSubmatch(log)
	if old == nil || old[1] == want {
		t.Errorf("the distribution's go should be older than %s, got %v", want, old)
	}
	second := log[strings.Index(log, "== second run"):]
	if strings.Contains(second, "fetching") || strings.Contains(second, "installing") {
		t.Errorf("the second make build fetched or installed again:\n%s", tail(second, 20))
	}
	t.Logf("%s: pristine tree %s, make build from no Go %s (distribution go %s)", d.name,
		treeDone.Sub(start).Round(time.Second), time.Since(treeDone).Round(time.Second), old[1])
}

// pristineTree returns a tarball of a fresh minbase tree of d with make in it,
// made by mmdebstrap and cached under cache (which the test creates) for
// treeMaxAge.
func pristineTree(ctx context.Context, t *testing.T, repo, cache string, d distro) (string, error) {
	tarball := filepath.Join(cache, d.suite+"-minbase.tar")
	if fi, err := os.Stat(tarball); err == nil && time.Since(fi.ModTime()) < treeMaxAge {
		return tarball, nil
	}
	args := []string{"--variant=minbase", "--include=" + d.include}
	if d.recipe != "" {
		r, err := recipe.Load(filepath.Join(repo, "recipes", d.recipe), nil)
		if err != nil {
			return "", err
		}
		key, err := build.ArchiveKeyring(ctx, r, filepath.Join(cache, "keys"), io.Discard)
		if err != nil {
			return "", fmt.Errorf("archive key for %s: %w", d.suite, err)
		}
		args = append(args, "--keyring="+key, "--components="+strings.Join(r.Components, ","))
	}
	tmp := filepath.Join(cache, d.suite+"-minbase.new.tar") // mmdebstrap picks the format by the name
	args = append(args, d.suite, tmp)
	cmd := exec.CommandContext(ctx, "unshare", append([]string{"--mount", "--pid", "--fork", "--kill-child=SIGKILL", "mmdebstrap"}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("mmdebstrap %s: %w\n%s", strings.Join(args, " "), err, tail(string(out), 30))
	}
	return tarball, os.Rename(tmp, tarball)
}

// goModVersion is the Go version go.mod asks for (toolchain line first).
func goModVersion(t *testing.T, repo string) string {
	b, err := os.ReadFile(filepath.Join(repo, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`(?m)^toolchain go([0-9.]+)`).FindSubmatch(b); m != nil {
		return string(m[1])
	}
	m := regexp.MustCompile(`(?m)^go ([0-9.]+)`).FindSubmatch(b)
	if m == nil {
		t.Fatal("go.mod has no go line")
	}
	return string(m[1])
}

func mustRun(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, tail(string(out), 30))
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
