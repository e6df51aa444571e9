package build

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/herdlab/herd/image/chunks"
	"github.com/herdlab/herd/image/initramfs"
	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/recipe"
	"github.com/herdlab/herd/image/verity"
	"github.com/herdlab/herd/internal/atomicfile"
	"github.com/herdlab/herd/internal/fsutil"
)

// stageVersion changes when a stage's implementation changes what it
// produces, so old cache entries are not reused by a newer herd.
const stageVersion = "herd-stage-v4"

// mkfsTime fixes the squashfs creation time so identical trees give
// identical bytes (and so the same image ID).
const mkfsTime = "1700000000"

// stage is one build step, debos style: Verify says whether its cached
// output is complete, Run produces it, Cleanup removes its scratch space.
type stage struct {
	b     *builder
	name  string
	key   string
	layer string   // "root", "upper", or "" for a stage whose output is not a tree
	deps  []string // the stages whose layers this one is built on, top first
	work  string   // scratch dir under <state>/tmp while running
	run   func(ctx context.Context, out string, lowers []string) error
}

// dir is where the stage's finished output lives.
func (s *stage) dir() string { return filepath.Join(s.b.state, "stages", s.key) }

// Verify reports whether a complete cached output exists for the key.
func (s *stage) Verify() bool {
	_, err := os.Stat(filepath.Join(s.dir(), "done"))
	return err == nil
}

// Run builds the stage's output in scratch space and renames it into the
// cache only when complete, marked by a "done" file.
func (s *stage) Run(ctx context.Context, lowers []string) error {
	w, err := os.MkdirTemp(s.b.tmp, "stage-"+s.name+"-")
	if err != nil {
		return fmt.Errorf("scratch dir: %w", err)
	}
	s.work = w
	// apt drops privileges to _apt for downloads; let it reach the tree.
	if err := os.Chmod(w, 0o755); err != nil {
		return err
	}
	out := filepath.Join(w, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		return err
	}
	if err := s.run(ctx, out, lowers); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "done"), []byte(s.key+"\n"), 0o644); err != nil {
		return err
	}
	unix.Sync()
	if _, err := os.Stat(s.dir()); err == nil { // --no-cache: replace the old entry
		old := filepath.Join(w, "old")
		if err := os.Rename(s.dir(), old); err != nil {
			return fmt.Errorf("replace cached stage: %w", err)
		}
	}
	if err := os.Rename(out, s.dir()); err != nil {
		return fmt.Errorf("store stage output: %w", err)
	}
	return nil
}

// Cleanup removes the stage's scratch space.
func (s *stage) Cleanup() {
	if s.work != "" {
		fsutil.RemoveTree(s.work)
		s.work = ""
	}
}

// hashKey chains a stage key from its parts.
func hashKey(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:%s\n", len(p), p)
	}
	return hex.EncodeToString(h.Sum(nil))[:24]
}

// plan computes every stage's key and work. The stages form a small tree
// over the bootstrap, not a chain, so a change reruns only what depends on
// it:
//
//	bootstrap ─┬─ driver ───┐
//	           ├─ packages ─┴─ join ─┐
//	           └─ overlays ── initramfs ─┴─ pack
//
// driver (the NVIDIA packages) and packages (the recipe's packages, for the
// lab's users) are each installed on the bootstrap alone and keyed by their
// own pins; join stacks them, merges the few files both change (join.go) and
// runs the post commands and apt pins. overlays and the initramfs are built
// on the bootstrap too, so neither a new package nor a driver bump rebuilds
// the initramfs. pack stacks every layer. Each stage lists the layers it
// stands on (deps, top first); its key covers theirs.
func (b *builder) plan(keyring string, res *resolution, files OverlaySet, agent string) ([]*stage, error) {
	r := b.recipe
	pins := func(pkgs []recipe.Package) []string {
		var out []string
		for _, p := range pkgs {
			out = append(out, p.Name+"="+res.pinned[p.Name])
		}
		return out
	}
	basePins, drvPins, userPins := pins(r.BasePackages()), pins(r.DriverPackages()), pins(r.ExtraPackages())
	var allPins []string
	for _, p := range r.AllPinned() {
		allPins = append(allPins, p.Name+"="+res.pinned[p.Name])
	}
	keyBytes, err := os.ReadFile(keyring)
	if err != nil {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	bootKey := hashKey(stageVersion, "bootstrap", r.Distribution, r.Suite, strings.Join(r.Components, ","), r.Mirror,
		string(keyBytes), strings.Join(basePins, " "), digest(res.base))
	pkgKey := hashKey(bootKey, "packages", strings.Join(userPins, " "), digest(res.users))
	joinParts := []string{pkgKey, "join", strings.Join(r.Post, "\x00"), strings.Join(allPins, " ")}
	var drvKey string
	if len(drvPins) > 0 {
		drvKey = hashKey(bootKey, "driver", strings.Join(drvPins, " "), digest(res.driver))
		joinParts = append(joinParts, drvKey)
	}
	joinKey := hashKey(joinParts...)
	ovlKey := hashKey(bootKey, "overlays", filesDigest(files.Files()))
	initDigest, err := initramfsDigest(agent, r.Initramfs.Modules)
	if err != nil {
		return nil, err
	}
	initKey := hashKey(ovlKey, "initramfs", r.KernelRelease(), initDigest)
	packKey := hashKey(initKey, joinKey, "pack/4", "zstd-3", "nofrag", mkfsTime, "verity-sha256-4k-nosalt", "chunks-gear-16k-64k-256k")

	ss := []*stage{
		{name: "bootstrap", key: bootKey, layer: "root", run: func(ctx context.Context, out string, _ []string) error {
			return b.bootstrap(ctx, keyring, basePins, filepath.Join(out, "root"))
		}},
	}
	joinDeps := []string{"packages", "bootstrap"}
	if drvKey != "" {
		ss = append(ss, &stage{name: "driver", key: drvKey, layer: "upper", deps: []string{"bootstrap"},
			run: func(ctx context.Context, out string, lowers []string) error {
				return b.onOverlay(ctx, out, lowers, true, func(root string) error {
					return b.driver(ctx, root, keyring, drvPins)
				})
			}})
		joinDeps = []string{"packages", "driver", "bootstrap"}
	}
	ss = append(ss,
		&stage{name: "packages", key: pkgKey, layer: "upper", deps: []string{"bootstrap"},
			run: func(ctx context.Context, out string, lowers []string) error {
				return b.onOverlay(ctx, out, lowers, true, func(root string) error {
					return b.packages(ctx, root, keyring, userPins)
				})
			}},
		&stage{name: "join", key: joinKey, layer: "upper", deps: joinDeps,
			run: func(ctx context.Context, out string, lowers []string) error {
				return b.join(ctx, out, lowers, keyring, userPins, res.pinned)
			}},
		&stage{name: "overlays", key: ovlKey, layer: "upper", deps: []string{"bootstrap"},
			run: func(ctx context.Context, out string, lowers []string) error {
				return b.onOverlay(ctx, out, lowers, false, func(root string) error {
					return files.Apply(root)
				})
			}},
		&stage{name: "initramfs", key: initKey, layer: "upper", deps: []string{"overlays", "bootstrap"},
			run: func(ctx context.Context, out string, lowers []string) error {
				return b.onOverlay(ctx, out, lowers, true, func(root string) error {
					return b.initramfs(ctx, root, agent)
				})
			}},
		&stage{name: "pack", key: packKey, deps: append([]string{"initramfs", "overlays", "join"}, joinDeps...),
			run: func(ctx context.Context, out string, lowers []string) error {
				return b.pack(ctx, out, lowers)
			}},
	)
	if res.efi != nil {
		var v []string
		for _, p := range sortedKeys(res.efi) {
			v = append(v, p+"="+res.efi[p])
		}
		ss = append(ss, &stage{name: "efi", key: hashKey(stageVersion, "efi", strings.Join(v, " ")),
			run: func(ctx context.Context, out string, _ []string) error {
				return b.efi(ctx, out, keyring, res.efi)
			}})
	}
	// Each key also covers the code of its stage and of every stage it
	// stands on (codekey.go), so a changed herd never reuses a stale output.
	code := map[string]string{}
	for _, s := range ss {
		s.b = b
		c, err := stageCode(s.name)
		if err != nil {
			return nil, err
		}
		parts := []string{s.name, c}
		for _, d := range s.deps {
			parts = append(parts, code[d])
		}
		code[s.name] = hashKey(parts...)
		s.key = hashKey(s.key, code[s.name])
	}
	return ss, nil
}

// filesDigest hashes rendered overlay files (paths, owners, modes, content).
func filesDigest(files []manifest.OverlayFile) string {
	sorted := append([]manifest.OverlayFile(nil), files...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Path < sorted[j].Path })
	h := sha256.New()
	for _, f := range sorted {
		fmt.Fprintf(h, "%s\x00%s\x00%s\x00%d\x00%d\x00%s\x00%s\n", f.Overlay, f.Path, f.Mode, f.UID, f.GID, f.Link, f.SHA256)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// initramfsDigest hashes exactly what initramfs.Install would write (it is
// run into a scratch tree) plus the module list, so a new agent or boot
// script rebuilds the initramfs stage and nothing before it.
func initramfsDigest(agent string, modules []string) (string, error) {
	dir, err := os.MkdirTemp("", "herd-initramfs-digest-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	hf := filepath.Join(dir, "usr/share/initramfs-tools/hook-functions")
	if err := os.MkdirAll(filepath.Dir(hf), 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(hf, nil, 0o644); err != nil {
		return "", err
	}
	if err := initramfs.Install(dir, agent); err != nil {
		return "", fmt.Errorf("initramfs: %w", err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "modules=%s\n", strings.Join(modules, ","))
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %o\n", rel, fi.Mode())
		if fi.Mode()&fs.ModeSymlink != 0 {
			l, _ := os.Readlink(p)
			fmt.Fprintf(h, "-> %s\n", l)
		} else if fi.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			h.Write(data)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// bootstrap runs mmdebstrap with the pinned base packages. Downloaded .debs
// are hard-linked in from <state>/debs before and back out after, so no
// package is downloaded twice across builds.
func (b *builder) bootstrap(ctx context.Context, keyring string, pins []string, root string) error {
	r := b.recipe
	debs := filepath.Join(b.state, "debs")
	args := []string{"--variant=minbase", "--keyring=" + keyring,
		"--components=" + strings.Join(r.Components, ","),
		"--include=" + strings.Join(pins, ","),
		"--skip=download/empty",
		b.listsHook(),
		// Package scripts must not start services in the build tree.
		"--setup-hook=mkdir -p \"$1/var/cache/apt/archives\" && find " + shq(debs) + " -maxdepth 1 -name '*.deb' -exec cp -l -t \"$1/var/cache/apt/archives/\" {} +",
		"--customize-hook=find \"$1/var/cache/apt/archives\" -maxdepth 1 -name '*.deb' -exec cp -l -n -t " + shq(debs) + " {} +",
		// The initramfs stage builds the one initramfs the image ships; the
		// kernel's and drivers' hooks would only build throwaway ones here.
		"--essential-hook=chroot \"$1\" sh -c '" + divertInitramfs + "'",
		"--customize-hook=chroot \"$1\" sh -c '" + undivertInitramfs + "'",
		// mmdebstrap copies the build host's hostname and resolver into the
		// tree; a node gets its own from the runtime overlay and DHCP.
		"--customize-hook=rm -f \"$1/etc/resolv.conf\" && echo localhost > \"$1/etc/hostname\"",
		r.Suite, root}
	args = append(args, b.mirrorArgs()...)
	return inMountNS(func() error { return run(command(ctx, b.log, "mmdebstrap", args...)) })
}

// divertInitramfs replaces update-initramfs with a no-op while packages are
// installed (dpkg keeps the real one aside), undivertInitramfs restores it.
const (
	divertInitramfs   = "dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs && ln -sf /bin/true /usr/sbin/update-initramfs"
	undivertInitramfs = "rm -f /usr/sbin/update-initramfs && dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs"
)

func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// onOverlay mounts the earlier layers with out/upper on top and runs fn on
// the merged tree; with chroot it also mounts proc, sys, dev and run.
func (b *builder) onOverlay(ctx context.Context, out string, lowers []string, chroot bool, fn func(root string) error) error {
	upper, work, merged := filepath.Join(out, "upper"), filepath.Join(out, "..", "ovl-work"), filepath.Join(out, "..", "merged")
	for _, d := range []string{upper, work, merged} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	return inMountNS(func() error {
		var m mounts
		defer m.unmountAll()
		if err := m.overlay(lowers, upper, work, merged); err != nil {
			return err
		}
		if chroot {
			if err := m.chrootMounts(merged); err != nil {
				return err
			}
		}
		if err := fn(merged); err != nil {
			return err
		}
		return m.unmountAll()
	})
}

// driver installs the NVIDIA packages (pinned) on the bootstrap.
func (b *builder) driver(ctx context.Context, root, keyring string, pins []string) error {
	return b.install(ctx, root, keyring, pins)
}

// packages installs the recipe's packages (pinned) on the bootstrap.
func (b *builder) packages(ctx context.Context, root, keyring string, pins []string) error {
	return b.install(ctx, root, keyring, pins)
}

// install installs pinned packages with the image's own apt, from the
// indices the resolve step fetched (no apt-get update: the image asks the
// archive nothing the resolution did not see). It leaves no package index
// or apt cache behind.
func (b *builder) install(ctx context.Context, root, keyring string, pins []string) error {
	if len(pins) == 0 {
		return nil
	}
	var m mounts
	defer m.unmountAll()
	archives := filepath.Join(root, "var/cache/apt/archives")
	if err := os.MkdirAll(archives, 0o755); err != nil {
		return err
	}
	if err := m.mount(filepath.Join(b.state, "debs"), archives, "", unix.MS_BIND, ""); err != nil {
		return err
	}
	// The image may not carry the archive key yet; lend it ours for the build.
	tmpKey := filepath.Join(root, "etc/apt/trusted.gpg.d/herd-build.gpg")
	if err := os.MkdirAll(filepath.Dir(tmpKey), 0o755); err != nil {
		return err
	}
	if err := atomicfile.Copy(keyring, tmpKey, 0o644); err != nil {
		return fmt.Errorf("lend keyring: %w", err)
	}
	defer os.Remove(tmpKey)
	rcd := filepath.Join(root, "usr/sbin/policy-rc.d")
	if err := os.WriteFile(rcd, []byte("#!/bin/sh\n# herd build: no service starts inside the image tree\nexit 101\n"), 0o755); err != nil {
		return err
	}
	defer os.Remove(rcd)
	// Seed the image's apt with the indices the resolve step fetched.
	if err := os.MkdirAll(filepath.Join(root, "var/lib/apt/lists"), 0o755); err != nil {
		return err
	}
	if out, err := exec.Command("cp", "-a", b.listsDir()+"/.", filepath.Join(root, "var/lib/apt/lists")+"/").CombinedOutput(); err != nil {
		return fmt.Errorf("seed package indices: %v: %s", err, out)
	}
	// force-unsafe-io: dpkg skips its fsync per unpacked file. A build
	// that dies leaves an unfinished stage, which is never used, so the
	// syncs buy nothing here and cost most of the stage's time.
	script := divertInitramfs + " && apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-unsafe-io " +
		strings.Join(pins, " ") + " && " + undivertInitramfs +
		// Package lists and apt's caches are only needed while building.
		" && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin && mkdir -p /var/lib/apt/lists/partial"
	if err := inChroot(ctx, b.log, root, script); err != nil {
		return err
	}
	return m.unmountAll()
}

// finish runs the recipe's post commands in the joined tree, pins every
// pinned package (apt preferences at priority 1001 plus apt-mark hold) so an
// `apt upgrade` on a node cannot drift the kernel or the driver, and drops
// the SSH host keys openssh-server's postinst made at build time: every node
// would share them (a node gets its own from the runtime overlay, or makes
// fresh ones at boot).
func (b *builder) finish(ctx context.Context, root string, pinned map[string]string) error {
	r := b.recipe
	for i, c := range r.Post {
		if err := inChroot(ctx, b.log, root, c); err != nil {
			return fmt.Errorf("post[%d]: %w", i, err)
		}
	}
	names := make([]string, 0, len(pinned))
	for n := range pinned {
		names = append(names, n)
	}
	sort.Strings(names)
	var pref strings.Builder
	pref.WriteString("# Written by herd: the kernel and driver are pinned together; do not upgrade them on a node.\n")
	for _, n := range names {
		fmt.Fprintf(&pref, "\nPackage: %s\nPin: version %s\nPin-Priority: 1001\n", n, pinned[n])
	}
	if err := os.MkdirAll(filepath.Join(root, "etc/apt/preferences.d"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "etc/apt/preferences.d/herd-pins"), []byte(pref.String()), 0o644); err != nil {
		return err
	}
	return inChroot(ctx, b.log, root, "apt-mark hold "+strings.Join(names, " ")+" >/dev/null && rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub /var/cache/apt/*.bin")
}

// initramfs puts herd's boot path and module list into the tree and runs
// the image's own update-initramfs for the pinned kernel.
func (b *builder) initramfs(ctx context.Context, root, agent string) error {
	r := b.recipe
	if err := initramfs.Install(root, agent); err != nil {
		return err
	}
	var mods strings.Builder
	mods.WriteString("# Written by herd from the recipe's initramfs.modules: NIC, squashfs and\n# overlay drivers a netbooting node needs before its root exists.\n")
	for _, mod := range r.Initramfs.Modules {
		mods.WriteString(mod + "\n")
	}
	if err := os.WriteFile(filepath.Join(root, "etc/initramfs-tools/modules"), []byte(mods.String()), 0o644); err != nil {
		return err
	}
	rel := r.KernelRelease()
	return inChroot(ctx, b.log, root, "rm -f /boot/initrd.img-"+rel+" && update-initramfs -c -k "+rel)
}

// verityFile is the pack stage's record of the hash tree (manifest.Verity).
const verityFile = "verity.json"

// pack turns the merged layers into rootfs.squashfs (zstd level 3: nearly
// as small as the default level at a tenth of the time, because most of the
// tree is already-compressed modules and firmware) and copies out the
// kernel and initrd, plus the installed package list for the manifest. The
// tree gets systemd's update stamps first (StampUpdated).
func (b *builder) pack(ctx context.Context, out string, lowers []string) error {
	rel := b.recipe.KernelRelease()
	// The merged tree gets a scratch upper for the two stamp files, and
	// nothing else writes to it.
	merged, upper, work := filepath.Join(out, "..", "merged"), filepath.Join(out, "..", "stamps"), filepath.Join(out, "..", "ovl-work")
	for _, d := range []string{merged, upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := matchDir(lowers[0], upper); err != nil {
		return err
	}
	return inMountNS(func() error {
		var m mounts
		defer m.unmountAll()
		if err := m.overlay(lowers, upper, work, merged); err != nil {
			return err
		}
		if err := StampUpdated(merged); err != nil {
			return err
		}
		sq := filepath.Join(out, manifest.Rootfs)
		// The initrd stays out of the root image: nodes get it as its own
		// artifact, and it is a compressed archive rebuilt on every image
		// change (5 % of the default image, all of it new each generation,
		// so it would dominate every delta update). No fragments: a small
		// file's tail gets its own compressed block instead of sharing a
		// 128 KiB fragment with its neighbours, so a node reading one unit
		// file verifies and decompresses that file alone (the kernel keeps
		// 3 fragments), at 1 % of the image's size.
		if err := run(command(ctx, b.log, "mksquashfs", merged, sq, "-comp", "zstd", "-Xcompression-level", "3",
			"-noappend", "-no-progress", "-no-fragments", "-mkfs-time", mkfsTime,
			"-e", "boot/initrd.img-"+rel, "boot/initrd.img", "boot/initrd.img.old")); err != nil {
			return err
		}
		// The dm-verity hash tree goes after the squashfs in the same file
		// (image/verity): one artifact, one download, one sha256.
		v, err := verity.Format(ctx, sq, b.log)
		if err != nil {
			return err
		}
		vj, err := json.Marshal(v)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(out, verityFile), vj, 0o644); err != nil {
			return err
		}
		// The chunk index nodes fetch updates by (image/chunks).
		idx, err := chunks.SplitFile(sq)
		if err != nil {
			return err
		}
		ib, _ := idx.MarshalBinary()
		if err := os.WriteFile(filepath.Join(out, chunks.IndexName), ib, 0o644); err != nil {
			return err
		}
		for src, dst := range map[string]string{"boot/vmlinuz-" + rel: manifest.Kernel, "boot/initrd.img-" + rel: manifest.Initrd} {
			if err := atomicfile.Copy(filepath.Join(merged, src), filepath.Join(out, dst), 0o644); err != nil {
				return fmt.Errorf("copy %s out of the image: %w", src, err)
			}
		}
		var list strings.Builder
		cmd := command(ctx, &list, "dpkg-query", "--admindir="+filepath.Join(merged, "var/lib/dpkg"), "-W",
			"-f=${db:Status-Abbrev}\t${Package}\t${Version}\n")
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("dpkg-query: %w: %s", err, list.String())
		}
		var pk strings.Builder
		for _, l := range strings.Split(list.String(), "\n") {
			f := strings.Split(l, "\t")
			// Status-Abbrev is want/status/error; held packages read "hi".
			if len(f) == 3 && len(f[0]) >= 2 && f[0][1] == 'i' {
				fmt.Fprintf(&pk, "%s\t%s\n", f[1], f[2])
			}
		}
		if err := os.WriteFile(filepath.Join(out, "packages.tsv"), []byte(pk.String()), 0o644); err != nil {
			return err
		}
		return m.unmountAll()
	})
}

var fetchRE = regexp.MustCompile(`(?:Failed to fetch|Could not download|Failed to download) (\S+)\s*(.*)`)

// fetchError names the package and URL when apt failed to download one.
func (b *builder) fetchError(err error) error {
	for _, l := range tailLines(b.logPath, 200) {
		if m := fetchRE.FindStringSubmatch(l); m != nil {
			url := m[1]
			pkg := filepath.Base(url)
			if strings.HasSuffix(pkg, ".deb") {
				pkg = strings.SplitN(pkg, "_", 2)[0]
			}
			return fmt.Errorf("download of package %s failed: %s %s: %w", pkg, url, strings.TrimSpace(m[2]), err)
		}
	}
	return err
}
