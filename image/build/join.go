package build

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The driver and packages stages are each installed on the bootstrap alone,
// so a driver bump does not reinstall the users' packages and an added
// package does not reinstall the driver. Stacked, their upper layers hide
// each other's copy of the few files every dpkg run rewrites (the dpkg
// status, apt's and debconf's databases, the linker cache...). The join
// stage merges exactly those, three-way against the bootstrap, and reruns
// ldconfig and depmod where both layers changed their output. Any other path
// both layers changed differently (two packages adding system users with
// the same uid, an alternative both set...) makes the join install the
// users' packages on top of the driver instead: slower, never wrong.

// mergeKind says how the join combines a file both layers changed.
type mergeKind int

const (
	mergeNone     mergeKind = iota // not mergeable: install on top instead
	mergeStanzas                   // deb822 paragraphs keyed by fields
	mergeLines                     // lines keyed by their first ':' field (passwd, group...)
	mergeLineSet                   // a set of lines
	mergeLog                       // append-only log: both layers' additions
	mergeUpper                     // a backup or cache nothing reads: the upper's copy
	mergeLdconfig                  // ldconfig's output: rerun ldconfig
	mergeDepmod                    // depmod's output: rerun depmod for that kernel
	mergeDriver                    // only the driver changed it: the driver's copy
	mergeTriples                   // dpkg's diversions: entries of three lines
)

// mergeRule is how a path both layers changed is merged.
type mergeRule struct {
	kind mergeKind
	keys []string // stanza fields that identify a paragraph
}

// mergeRuleFor returns the merge rule for a path relative to the root.
func mergeRuleFor(rel string) mergeRule {
	switch rel {
	case "var/lib/dpkg/status", "var/lib/apt/extended_states":
		return mergeRule{kind: mergeStanzas, keys: []string{"Package", "Architecture"}}
	case "var/cache/debconf/config.dat", "var/cache/debconf/templates.dat", "var/cache/debconf/passwords.dat":
		return mergeRule{kind: mergeStanzas, keys: []string{"Name"}}
	case "etc/passwd", "etc/group", "etc/shadow", "etc/gshadow", "etc/subuid", "etc/subgid":
		return mergeRule{kind: mergeLines}
	case "var/lib/dpkg/diversions":
		return mergeRule{kind: mergeTriples}
	case "etc/shells", "var/lib/ucf/hashfile", "var/lib/ucf/registry":
		return mergeRule{kind: mergeLineSet}
	case "etc/ld.so.cache", "var/cache/ldconfig/aux-cache":
		return mergeRule{kind: mergeLdconfig}
	}
	switch {
	case strings.HasPrefix(rel, "var/lib/dpkg/triggers/") && rel != "var/lib/dpkg/triggers/Lock":
		return mergeRule{kind: mergeLineSet}
	case strings.HasSuffix(rel, "-old") && (strings.HasPrefix(rel, "var/lib/dpkg/") || strings.HasPrefix(rel, "var/cache/debconf/")),
		strings.HasPrefix(rel, "etc/") && strings.HasSuffix(rel, "-") && !strings.Contains(rel[4:], "/"),
		strings.HasPrefix(rel, "var/cache/apt/"):
		return mergeRule{kind: mergeUpper}
	case strings.HasPrefix(rel, "var/log/"):
		return mergeRule{kind: mergeLog}
	}
	for _, mods := range []string{"usr/lib/modules/", "lib/modules/"} {
		if rest, ok := strings.CutPrefix(rel, mods); ok {
			if _, file, ok := strings.Cut(rest, "/"); ok && strings.HasPrefix(file, "modules.") && !strings.Contains(file, "/") &&
				file != "modules.order" && file != "modules.builtin" && file != "modules.builtin.modinfo" {
				return mergeRule{kind: mergeDepmod}
			}
		}
	}
	return mergeRule{}
}

// joinPlan is what stacking the packages layer on the driver layer needs.
type joinPlan struct {
	merges  map[string]mergeRule // paths both changed differently, mergeable
	blocker string               // why they cannot be merged ("" when they can)
	depmod  []string             // kernel releases whose module indices to redo
}

// planJoin compares the two upper layers (users on top of driver, both over
// base) path by path where both have an entry.
func planJoin(users, driver, base string) (*joinPlan, error) {
	p := &joinPlan{merges: map[string]mergeRule{}}
	kernels := map[string]bool{}
	// A directory opaque in the users' layer (overlayfs makes new ones so,
	// and ones a package script emptied and refilled) hides the driver's
	// copy: everything in that copy must be in the users' too.
	var hiding []string
	err := filepath.WalkDir(driver, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(driver, path)
		if err != nil || rel == "." {
			return err
		}
		block := func(why string) error {
			p.blocker = fmt.Sprintf("both layers change /%s (%s)", rel, why)
			return fs.SkipAll
		}
		up := filepath.Join(users, rel)
		ui, err := os.Lstat(up)
		if errors.Is(err, fs.ErrNotExist) {
			for _, h := range hiding {
				if strings.HasPrefix(rel, h+"/") {
					return block("the packages' new directory would hide the driver's files")
				}
			}
			if e.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if err != nil {
			return block(err.Error())
		}
		di, err := os.Lstat(path)
		if err != nil {
			return err
		}
		if di.IsDir() && ui.IsDir() {
			if isOpaque(up) {
				hiding = append(hiding, rel)
			} else if isOpaque(path) {
				// The driver's copy hides the bootstrap's, which the
				// packages' layer expects to see.
				if _, err := os.Lstat(filepath.Join(base, rel)); !errors.Is(err, fs.ErrNotExist) {
					return block("a directory replaced whole")
				}
			}
			if di.Mode() != ui.Mode() || owner(di) != owner(ui) {
				return block("directory mode or owner")
			}
			return nil
		}
		if same, err := sameEntry(path, up, di, ui); err != nil || same {
			return err
		}
		if bi, err := os.Lstat(filepath.Join(base, rel)); err == nil {
			// A layer that rewrote a file to what it was changed nothing.
			if same, err := sameEntry(path, filepath.Join(base, rel), di, bi); err != nil || same {
				return err
			}
			if same, err := sameEntry(up, filepath.Join(base, rel), ui, bi); err != nil {
				return err
			} else if same && di.Mode().IsRegular() {
				p.merges[rel] = mergeRule{kind: mergeDriver}
				return nil
			}
		}
		r := mergeRuleFor(rel)
		if r.kind == mergeNone || !di.Mode().IsRegular() || !ui.Mode().IsRegular() {
			return block("not a file the join knows how to merge")
		}
		if r.kind == mergeDepmod {
			rest := strings.TrimPrefix(strings.TrimPrefix(rel, "usr/"), "lib/modules/")
			kernels[strings.SplitN(rest, "/", 2)[0]] = true
		}
		p.merges[rel] = r
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("compare the driver and packages layers: %w", err)
	}
	for k := range kernels {
		p.depmod = append(p.depmod, k)
	}
	sort.Strings(p.depmod)
	return p, nil
}

// isOpaque says whether overlayfs marked a directory of an upper layer as
// replacing the one below.
func isOpaque(path string) bool {
	buf := make([]byte, 8)
	n, err := unix.Lgetxattr(path, "trusted.overlay.opaque", buf)
	return err == nil && n > 0 && buf[0] == 'y'
}

// owner is a file's uid and gid.
func owner(fi fs.FileInfo) [2]uint32 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return [2]uint32{st.Uid, st.Gid}
	}
	return [2]uint32{^uint32(0), ^uint32(0)}
}

// sameEntry says whether two upper-layer entries are identical (a package
// both layers installed, a whiteout of the same file).
func sameEntry(a, b string, ai, bi fs.FileInfo) (bool, error) {
	if ai.Mode() != bi.Mode() || owner(ai) != owner(bi) {
		return false, nil
	}
	switch {
	case ai.Mode()&fs.ModeSymlink != 0:
		la, err1 := os.Readlink(a)
		lb, err2 := os.Readlink(b)
		return la == lb, errors.Join(err1, err2)
	case ai.Mode()&fs.ModeCharDevice != 0: // whiteouts are 0:0
		return rdev(ai) == rdev(bi), nil
	case ai.Mode().IsRegular():
		if ai.Size() != bi.Size() {
			return false, nil
		}
		da, err := os.ReadFile(a)
		if err != nil {
			return false, err
		}
		db, err := os.ReadFile(b)
		if err != nil {
			return false, err
		}
		return bytes.Equal(da, db), nil
	}
	return false, nil
}

func rdev(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Rdev
	}
	return ^uint64(0)
}

// apply writes the merged files into root (the stacked tree).
func (p *joinPlan) apply(root, base, users, driver string) (ldconfig bool, err error) {
	rels := make([]string, 0, len(p.merges))
	for rel := range p.merges {
		rels = append(rels, rel)
	}
	sort.Strings(rels)
	for _, rel := range rels {
		r := p.merges[rel]
		read := func(dir string) ([]byte, error) {
			data, err := os.ReadFile(filepath.Join(dir, rel))
			if errors.Is(err, fs.ErrNotExist) {
				return nil, nil
			}
			return data, err
		}
		b, err1 := read(base)
		d, err2 := read(driver)
		u, err3 := read(users)
		if err := errors.Join(err1, err2, err3); err != nil {
			return false, err
		}
		var out []byte
		switch r.kind {
		case mergeStanzas:
			out, err = mergeItems(b, d, u, splitStanzas, func(s string) string { return stanzaKey(s, r.keys) }, "\n\n")
		case mergeLines:
			out, err = mergeItems(b, d, u, splitLines, func(s string) string { k, _, _ := strings.Cut(s, ":"); return k }, "\n")
			if err == nil && (rel == "etc/passwd" || rel == "etc/group") {
				err = uniqueIDs(out)
			}
		case mergeTriples:
			out, err = mergeItems(b, d, u, splitTriples, func(s string) string { k, _, _ := strings.Cut(s, "\n"); return k }, "\n")
		case mergeDriver:
			out = d
		case mergeLineSet:
			out, err = mergeItems(b, d, u, splitLines, func(s string) string { return s }, "\n")
		case mergeLog:
			if bytes.HasPrefix(d, b) && bytes.HasPrefix(u, b) {
				out = append(append([]byte(nil), d...), u[len(b):]...)
			} else {
				out = u
			}
		case mergeLdconfig:
			ldconfig, out = true, u
		case mergeUpper, mergeDepmod:
			out = u
		}
		if err != nil {
			return false, &mergeError{fmt.Errorf("merge /%s: %w", rel, err)}
		}
		if !bytes.Equal(out, u) {
			// The merged tree shows the users' copy: rewriting it in place
			// keeps its mode and owner.
			if err := os.WriteFile(filepath.Join(root, rel), out, 0); err != nil {
				return false, err
			}
		}
	}
	return ldconfig, nil
}

// mergeItems merges three versions of a file of keyed items: each layer's
// changes against base (added, changed, removed items) are applied; both
// changing one item differently is an error. Base's order is kept, then the
// driver's new items, then the users'.
func mergeItems(base, driver, users []byte, split func([]byte) []string, key func(string) string, sep string) ([]byte, error) {
	type set struct {
		order []string
		items map[string]string
	}
	index := func(data []byte) set {
		s := set{items: map[string]string{}}
		for _, it := range split(data) {
			k := key(it)
			if _, dup := s.items[k]; !dup {
				s.order = append(s.order, k)
			}
			s.items[k] = it
		}
		return s
	}
	b, d, u := index(base), index(driver), index(users)
	var order []string
	seen := map[string]bool{}
	for _, s := range []set{b, d, u} {
		for _, k := range s.order {
			if !seen[k] {
				seen[k] = true
				order = append(order, k)
			}
		}
	}
	var out strings.Builder
	for _, k := range order {
		bv, inB := b.items[k]
		dv, inD := d.items[k]
		uv, inU := u.items[k]
		dChanged := inD != inB || dv != bv
		uChanged := inU != inB || uv != bv
		v, in := bv, inB
		switch {
		case dChanged && uChanged && (inD != inU || dv != uv):
			return nil, fmt.Errorf("%q changed differently by the driver and the packages", k)
		case dChanged:
			v, in = dv, inD
		case uChanged:
			v, in = uv, inU
		}
		if in {
			out.WriteString(v)
			out.WriteString(sep)
		}
	}
	return []byte(out.String()), nil
}

// splitStanzas splits deb822 text into paragraphs (without blank lines).
func splitStanzas(data []byte) []string {
	var out []string
	for _, p := range strings.Split(strings.ReplaceAll(string(data), "\r\n", "\n"), "\n\n") {
		if p = strings.Trim(p, "\n"); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// splitLines splits text into its non-empty lines.
func splitLines(data []byte) []string {
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

// splitTriples splits dpkg's diversions file into its three-line entries.
func splitTriples(data []byte) []string {
	lines := splitLines(data)
	var out []string
	for i := 0; i+3 <= len(lines); i += 3 {
		out = append(out, strings.Join(lines[i:i+3], "\n"))
	}
	return out
}

// stanzaKey is the values of a paragraph's key fields.
func stanzaKey(par string, fields []string) string {
	vals := make([]string, len(fields))
	for _, l := range strings.Split(par, "\n") {
		for i, f := range fields {
			if v, ok := strings.CutPrefix(l, f+":"); ok {
				vals[i] = strings.TrimSpace(v)
			}
		}
	}
	return strings.Join(vals, "\x00")
}

// uniqueIDs fails when two passwd or group lines share a numeric id (two
// packages that each added a system user on the same bootstrap).
func uniqueIDs(data []byte) error {
	seen := map[string]string{}
	for _, l := range splitLines(data) {
		f := strings.Split(l, ":")
		if len(f) < 3 {
			continue
		}
		if other, dup := seen[f[2]]; dup {
			return fmt.Errorf("%s and %s both have id %s", other, f[0], f[2])
		}
		seen[f[2]] = f[0]
	}
	return nil
}

// initramfsInputs lists what a layer adds that update-initramfs would take
// in (hooks, scripts, its configuration): the initramfs is built from the
// bootstrap and the overlays only, so these do not reach it.
func initramfsInputs(layer string) []string {
	var out []string
	for _, dir := range []string{"usr/share/initramfs-tools/hooks", "usr/share/initramfs-tools/scripts", "etc/initramfs-tools"} {
		filepath.WalkDir(filepath.Join(layer, dir), func(path string, e fs.DirEntry, err error) error {
			if err == nil && !e.IsDir() && e.Type()&fs.ModeCharDevice == 0 {
				rel, _ := filepath.Rel(layer, path)
				out = append(out, "/"+rel)
			}
			return nil
		})
	}
	return out
}

// join stacks the packages layer on the driver layer (lowers: packages,
// driver, bootstrap; or packages, bootstrap without a driver), merges what
// both changed, and finishes the tree: post commands, apt pins, no shared
// SSH host keys. When the layers cannot be merged it installs the users'
// packages on the driver itself and records that its layer replaces the
// packages stage's.
func (b *builder) join(ctx context.Context, out string, lowers []string, keyring string, userPins []string, pinned map[string]string) error {
	if hooks := initramfsInputs(lowers[0]); len(hooks) > 0 {
		fmt.Fprintf(b.log, "warning: the recipe's packages add %s, which the initramfs does not get (it is built from base): list the package under base if the initramfs needs it\n",
			strings.Join(hooks, ", "))
	}
	if len(lowers) < 3 {
		return b.onOverlay(ctx, out, lowers, true, func(root string) error {
			return b.finish(ctx, root, pinned)
		})
	}
	users, driver, base := lowers[0], lowers[1], lowers[len(lowers)-1]
	jp, err := planJoin(users, driver, base)
	if err != nil {
		return err
	}
	if jp.blocker == "" {
		err = b.onOverlay(ctx, out, lowers, true, func(root string) error {
			ldconfig, err := jp.apply(root, base, users, driver)
			if err != nil {
				return err
			}
			if ldconfig {
				if err := inChroot(ctx, b.log, root, "ldconfig"); err != nil {
					return err
				}
			}
			for _, k := range jp.depmod {
				if err := inChroot(ctx, b.log, root, "depmod -a "+shq(k)); err != nil {
					return err
				}
			}
			return b.finish(ctx, root, pinned)
		})
		var me *mergeError
		if !errors.As(err, &me) {
			return err
		}
		jp.blocker = err.Error()
		// Start again from an empty upper layer.
		if err := os.RemoveAll(filepath.Join(out, "upper")); err != nil {
			return err
		}
	}
	fmt.Fprintf(b.log, "join: %s: installing the recipe's packages on top of the driver instead\n", jp.blocker)
	if err := os.WriteFile(filepath.Join(out, replacesFile), []byte("packages\n"), 0o644); err != nil {
		return err
	}
	return b.onOverlay(ctx, out, lowers[1:], true, func(root string) error {
		if err := b.install(ctx, root, keyring, userPins); err != nil {
			return err
		}
		return b.finish(ctx, root, pinned)
	})
}

// replacesFile in a stage's output names stages whose layers it replaces.
const replacesFile = "replaces"

// mergeError is a file both layers changed in ways that do not merge.
type mergeError struct{ err error }

func (e *mergeError) Error() string { return e.err.Error() }
func (e *mergeError) Unwrap() error { return e.err }
