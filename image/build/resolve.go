package build

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/herdlab/herd/image/recipe"
	"github.com/herdlab/herd/internal/fsutil"
)

// PinDriftError says a pinned package would resolve to another version than
// the recipe or the lock file asks for (an end-of-life NVIDIA branch turning
// into a transitional package, an archive dropping an old version...).
type PinDriftError struct {
	Package string
	Wanted  string // the version the recipe or lock asks for
	Source  string // "recipe" or the lock file's path
	Archive string // what the archive resolves it to ("" when it has none)
}

func (e *PinDriftError) Error() string {
	have := e.Archive
	if have == "" {
		have = "no installable version"
	}
	msg := fmt.Sprintf("pinned package %s: %s wants version %s, but the archive resolves it to %s", e.Package, e.Source, e.Wanted, have)
	if strings.HasPrefix(e.Source, "lock file ") {
		// Ubuntu's -updates and -security pockets index only each
		// package's newest version: a locked one is gone once superseded.
		return msg + "; the archive no longer offers the locked version (an update superseded it): rebuild with --update-lock to accept the archive's versions (then review the lock file's diff), or set the recipe's mirror to a snapshot of the archive that still has it"
	}
	return msg + "; change the version in the recipe"
}

// pinWant is the version a pinned package must have and who asks for it.
type pinWant struct{ version, source string }

// resolution is what the archive would install for the recipe.
type resolution struct {
	pinned  recipe.Lock       // every pinned package -> exact version
	base    map[string]string // closure of the bootstrap packages (the recipe's base)
	driver  map[string]string // closure of base + driver (the driver stage installs the difference)
	users   map[string]string // closure of base + the recipe's packages (the packages stage)
	all     map[string]string // union of the two: what the image carries
	efi     map[string]string // Secure Boot packages (efi.go): taken apart, never installed
	changed bool              // the lock file needs (re)writing
}

// digest hashes a closure for stage keys.
func digest(m map[string]string) string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	h := sha256.New()
	for _, n := range names {
		fmt.Fprintf(h, "%s=%s\n", n, m[n])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// resolve makes sure the archive's package indices (verified with keyring)
// are fresh (indices.go) and asks apt, without installing anything, which
// exact versions the recipe's packages and their dependencies resolve to.
// It fails with a PinDriftError when a pinned version is not what apt would
// install.
func (b *builder) resolve(ctx context.Context, keyring string) (*resolution, error) {
	r := b.recipe
	idx, err := b.indices(ctx, keyring)
	if err != nil {
		return nil, err
	}
	tree := b.treeDir()
	lock, err := recipe.ReadLock(r.LockPath())
	if err != nil {
		return nil, err
	}
	if b.opts.UpdateLock {
		lock = nil
	}
	res := &resolution{pinned: recipe.Lock{}, changed: lock == nil}
	// wanted: the version each pinned package must have, and who says so.
	wanted := map[string]pinWant{}
	spec := func(pkgs []recipe.Package) []string {
		var out []string
		for _, p := range pkgs {
			w := pinWant{}
			switch {
			case p.Version != "":
				w = pinWant{p.Version, "the recipe"}
			case lock[p.Name] != "":
				w = pinWant{lock[p.Name], "lock file " + r.LockPath()}
			}
			wanted[p.Name] = w
			if w.version != "" {
				out = append(out, p.Name+"="+w.version)
			} else {
				out = append(out, p.Name)
			}
		}
		return out
	}
	apt := func(extra ...string) *exec.Cmd {
		a := []string{"-o", "Dir=" + tree, "-o", "Dir::State::status=" + filepath.Join(tree, "var/lib/dpkg/status"),
			"-o", "Dir::Etc::Trusted=" + keyring, "-o", "Debug::NoLocking=true",
			"-o", "Dir::State::Lists=" + filepath.Join(tree, "var/lib/apt/lists")}
		return exec.CommandContext(ctx, extra[0], append(a, extra[1:]...)...)
	}
	simulate := func(specs []string) (map[string]string, error) {
		cmd := apt(append([]string{"apt-get", "install", "-s", "-q", "--no-install-recommends"}, specs...)...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.Env = append(os.Environ(), "LC_ALL=C")
		t0 := time.Now()
		err := cmd.Run()
		fmt.Fprintf(b.log, "+ %s (%.1fs)\n", strings.Join(cmd.Args, " "), time.Since(t0).Seconds())
		b.log.Write(out.Bytes())
		if err != nil {
			return nil, b.explain(out.String(), wanted, func(pkg string) string {
				pol := apt("apt-cache", "policy", pkg)
				o, _ := pol.Output()
				if m := regexp.MustCompile(`Candidate: (\S+)`).FindSubmatch(o); m != nil && string(m[1]) != "(none)" {
					return string(m[1])
				}
				return ""
			})
		}
		return parseInst(out.Bytes()), nil
	}
	baseSpecs := spec(r.BasePackages())
	drvSpecs := spec(r.DriverPackages())
	userSpecs := spec(r.ExtraPackages())
	// apt's answer depends only on the indices and the specs: within one
	// fetch of the indices each set's is kept (<state>/apt-resolved/), so a
	// no-change rebuild does not run apt at all, and one added package
	// resolves only the recipe's packages again.
	reused := true
	closure := func(specs []string) (map[string]string, error) {
		key := hashKey(idx.stamp, strings.Join(specs, " "))
		if c := b.loadResolved(key); c != nil {
			return c, nil
		}
		reused = false
		c, err := simulate(specs)
		if err == nil {
			b.saveResolved(key, c)
		}
		return c, err
	}
	if res.base, err = closure(baseSpecs); err != nil {
		return nil, err
	}
	res.driver = res.base
	if len(drvSpecs) > 0 {
		if res.driver, err = closure(append(append([]string(nil), baseSpecs...), drvSpecs...)); err != nil {
			return nil, err
		}
	}
	res.users = res.base
	if len(userSpecs) > 0 {
		if res.users, err = closure(append(append([]string(nil), baseSpecs...), userSpecs...)); err != nil {
			return nil, err
		}
	}
	if reused {
		fmt.Fprintf(b.opts.Progress, "package set: resolved before against these indices, reused\n")
	}
	// The driver and the packages stages install on the bootstrap each on
	// their own: a package both pull in must come out the same in both.
	res.all = map[string]string{}
	for p, v := range res.driver {
		res.all[p] = v
	}
	for _, p := range sortedKeys(res.users) {
		v := res.users[p]
		if dv, ok := res.driver[p]; ok && dv != v {
			return nil, fmt.Errorf("package %s: the driver needs version %s, the recipe's packages %s: pin %s=%s under packages", p, dv, v, p, dv)
		}
		res.all[p] = v
	}
	for _, p := range r.AllPinned() {
		got, ok := res.all[p.Name]
		if !ok {
			return nil, fmt.Errorf("package %s: apt would not install it (already provided?); remove it from the recipe", p.Name)
		}
		if w := wanted[p.Name]; w.version != "" && w.version != got {
			return nil, &PinDriftError{Package: p.Name, Wanted: w.version, Source: w.source, Archive: got}
		}
		res.pinned[p.Name] = got
		if lock != nil && lock[p.Name] != got {
			res.changed = true
		}
	}
	if res.efi, err = b.resolveEFI(ctx, keyring, idx.stamp, lock); err != nil {
		return nil, err
	}
	for p, v := range res.efi {
		if lock != nil && lock[p] != v {
			res.changed = true
		}
	}
	if lock != nil && len(lock) != len(res.pinned)+len(res.efi) {
		res.changed = true
	}
	return res, nil
}

var instRE = regexp.MustCompile(`^Inst (\S+) (?:\[\S+\] )?\((\S+) `)

// parseInst reads "Inst name (version suite [arch])" lines of apt-get -s.
func parseInst(out []byte) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if s := instRE.FindStringSubmatch(sc.Text()); s != nil {
			m[s[1]] = s[2]
		}
	}
	return m
}

var (
	versionNotFoundRE = regexp.MustCompile(`Version '([^']+)' for '([^']+)' was not found`)
	unableLocateRE    = regexp.MustCompile(`Unable to locate package (\S+)`)
)

// explain turns apt's refusal into an error naming the package and both
// versions where it can.
func (b *builder) explain(out string, wanted map[string]pinWant, candidate func(string) string) error {
	if m := versionNotFoundRE.FindStringSubmatch(out); m != nil {
		w := wanted[m[2]]
		src := w.source
		if src == "" {
			src = "the recipe"
		}
		return &PinDriftError{Package: m[2], Wanted: m[1], Source: src, Archive: candidate(m[2])}
	}
	if m := unableLocateRE.FindStringSubmatch(out); m != nil {
		return fmt.Errorf("package %s is not in %s %s (components %s): check the name, kernel.abi or nvidia.branch",
			m[1], b.recipe.Distribution, b.recipe.Suite, strings.Join(b.recipe.Components, ","))
	}
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "E: ") || strings.Contains(l, "Depends:") || strings.Contains(l, "Conflicts:") {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	return fmt.Errorf("apt cannot resolve the recipe's packages:\n  %s", strings.Join(lines, "\n  "))
}

// listsDir caches apt's package indices across builds: with them in place
// apt-get update only asks whether they changed (If-Modified-Since), so a
// rebuild does not download the archive's indices again.
func (b *builder) listsDir() string { return filepath.Join(b.state, "apt-lists") }

// listsHook is an mmdebstrap --setup-hook seeding the tree with cached indices.
func (b *builder) listsHook() string {
	return "--setup-hook=mkdir -p \"$1/var/lib/apt/lists\" && if [ -d " + shq(b.listsDir()) + " ]; then cp -a " +
		shq(b.listsDir()) + "/. \"$1/var/lib/apt/lists/\"; fi"
}

// keepLists makes the fresh indices in lists the shared cache (hard links:
// apt replaces index files, never rewrites them), leaving lists in place for
// the apt tree they belong to.
func (b *builder) keepLists(lists string) error {
	os.RemoveAll(filepath.Join(lists, "lock"))
	if err := fsutil.RemoveTree(b.listsDir()); err != nil {
		return err
	}
	if out, err := exec.Command("cp", "-al", lists, b.listsDir()).CombinedOutput(); err != nil {
		return fmt.Errorf("keep package indices: %v: %s", err, out)
	}
	return nil
}
