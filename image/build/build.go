// Package build turns a recipe into an image. Stages: bootstrap
// (mmdebstrap of the base set), then on the bootstrap each on its own:
// driver (the pinned NVIDIA packages), packages (the recipe's packages) and
// overlays (system overlay files); join stacks driver and packages, merges
// the dpkg/apt/debconf files both changed and runs the post commands and
// apt pins; initramfs (on bootstrap + overlays); pack (mksquashfs of every
// layer). Each stage's output is cached under <state>/stages/<key>, where
// the key hashes the keys of the stages it stands on, the stage's code and
// the exact package versions or files it puts in, so a driver bump reruns
// driver, join and pack, one added package reruns packages, join and pack,
// and an unchanged recipe returns the same image without redoing work.
//
// Stages after bootstrap work on an overlayfs over the layers they stand on
// and keep only their upper directory, so the cache stores each
// change once. All mounts live in a private mount namespace of one thread
// and all commands in their own PID namespace: a killed build leaves no
// mount and no process behind, and the store's lock plus an atomic publish
// leave no partial image.
package build

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/herdlab/herd/image/chunks"
	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/recipe"
	"github.com/herdlab/herd/internal/atomicfile"
	"github.com/herdlab/herd/internal/fsutil"
)

// Store is the part of image/store a build needs (see HACKING.md).
type Store interface {
	Lock(ctx context.Context) (unlock func(), err error)
	StagingDir() (string, error)
	Publish(stagingDir string, m *manifest.Manifest) (id string, err error)
}

// Options configure one build.
type Options struct {
	// StateDir is herd's state directory (stages/, debs/, keyrings/, tmp/).
	StateDir string
	Store    Store
	// Overlays renders the recipe's system overlays (package overlays, wired
	// by cmd/herd with the site config); nil only works for recipes with none.
	Overlays func(names []string) (OverlaySet, error)
	// AgentPath is the static herd-boot binary put into the initramfs;
	// "" searches HERD_BOOT_BIN, next to the running executable, /usr/lib/herd.
	AgentPath   string
	HerdVersion string
	// NoCache rebuilds every stage even when a cached output exists.
	NoCache bool
	// Rerun rebuilds the named stages and every stage built on them, as a
	// change to their inputs would (a driver bump: "driver").
	Rerun []string
	// UpdateLock ignores the recipe's lock file and rewrites it.
	UpdateLock bool
	// Refresh fetches the archive's package indices even when the cached
	// ones are younger than IndexMaxAge (0: DefaultIndexMaxAge; <0: always
	// fetch); UpdateLock implies it.
	Refresh     bool
	IndexMaxAge time.Duration
	// Progress receives stage lines; Terminal redraws elapsed time in place.
	Progress io.Writer
	Terminal bool
}

// Result is what a build produced.
type Result struct {
	ID string
	// Manifest is this build's record (its Stages say what was reused),
	// even when the published image already existed.
	Manifest *manifest.Manifest
	// LogPath is the build log inside the image directory.
	LogPath string
}

// BuildError is a failed build: the cause plus where its full log is.
type BuildError struct {
	Err     error
	LogPath string
	Tail    []string // the log's last lines
}

func (e *BuildError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v\n--- last %d lines of %s ---\n", e.Err, len(e.Tail), e.LogPath)
	for _, l := range e.Tail {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return strings.TrimRight(b.String(), "\n")
}

func (e *BuildError) Unwrap() error { return e.Err }

type builder struct {
	recipe  *recipe.Recipe
	opts    Options
	state   string
	tmp     string
	log     io.Writer
	logPath string
	prog    *progress
}

// Build builds r and publishes the image into the store; it holds the store
// lock for the whole build.
func Build(ctx context.Context, r *recipe.Recipe, opts Options) (*Result, error) {
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	if opts.Overlays == nil {
		opts.Overlays = func(names []string) (OverlaySet, error) {
			if len(names) > 0 {
				return nil, fmt.Errorf("recipe %s lists overlays %v but this build has no overlay renderer", r.Path, names)
			}
			return emptySet{}, nil
		}
	}
	if opts.HerdVersion == "" {
		opts.HerdVersion = "dev"
	}
	for _, tool := range []string{"mmdebstrap", "mksquashfs", "unshare", "chroot", "gpg", "apt-get", "dpkg-query", "rm", "veritysetup"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s is not installed (make deps installs it): %w", tool, err)
		}
	}
	agent, err := findAgent(opts.AgentPath)
	if err != nil {
		return nil, err
	}
	b := &builder{recipe: r, opts: opts, state: opts.StateDir, tmp: filepath.Join(opts.StateDir, "tmp"),
		prog: newProgress(opts.Progress, opts.Terminal)}
	unlock, err := opts.Store.Lock(ctx)
	if err != nil {
		return nil, fmt.Errorf("lock the store: %w", err)
	}
	defer unlock()
	for _, d := range []string{"stages", "debs", "keyrings", "tmp", "logs"} {
		if err := os.MkdirAll(filepath.Join(b.state, d), 0o755); err != nil {
			return nil, fmt.Errorf("state dir: %w", err)
		}
	}
	if err := cleanStale(b.tmp); err != nil {
		return nil, err
	}
	staging, err := opts.Store.StagingDir()
	if err != nil {
		return nil, fmt.Errorf("staging dir: %w", err)
	}
	b.logPath = filepath.Join(staging, "build.log")
	logf, err := os.OpenFile(b.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		os.RemoveAll(staging)
		return nil, fmt.Errorf("build log: %w", err)
	}
	b.log = logf
	res, err := b.build(ctx, staging, agent)
	logf.Close()
	if err != nil {
		kept := filepath.Join(b.state, "logs", fmt.Sprintf("build-%s-%s.log", r.Name, time.Now().UTC().Format("20060102T150405")))
		if cerr := atomicfile.Copy(b.logPath, kept, 0o644); cerr != nil {
			kept = b.logPath
		}
		fsutil.RemoveTree(staging)
		return nil, &BuildError{Err: err, LogPath: kept, Tail: tailLines(kept, 20)}
	}
	return res, nil
}

func (b *builder) build(ctx context.Context, staging, agent string) (*Result, error) {
	r := b.recipe
	fmt.Fprintf(b.log, "herd %s: building recipe %s (%s) at %s\n", b.opts.HerdVersion, r.Name, r.Path, time.Now().UTC().Format(time.RFC3339))
	start := time.Now()
	b.prog.start("resolve")
	keyring, err := b.ensureKeyring(ctx)
	if err != nil {
		b.prog.done("resolve", time.Since(start), false, err)
		return nil, err
	}
	res, err := b.resolve(ctx, keyring)
	b.prog.done("resolve", time.Since(start), false, err)
	if err != nil {
		return nil, err
	}
	files, err := b.opts.Overlays(r.Overlays)
	if err != nil {
		return nil, fmt.Errorf("overlays: %w", err)
	}
	stages, err := b.plan(keyring, res, files, agent)
	if err != nil {
		return nil, err
	}
	for _, n := range b.opts.Rerun {
		if !slices.ContainsFunc(stages, func(s *stage) bool { return s.name == n }) {
			var names []string
			for _, s := range stages {
				names = append(names, s.name)
			}
			return nil, fmt.Errorf("--rerun %s: recipe %s has no such stage (it has %s)", n, r.Name, strings.Join(names, ", "))
		}
	}
	m := &manifest.Manifest{
		Created: time.Now().UTC(), Recipe: r.Name, RecipeSHA256: r.SHA256, HerdVersion: b.opts.HerdVersion,
		Distribution: r.Distribution, Suite: r.Suite, KernelABI: r.KernelRelease(), NVIDIA: r.NVIDIAVersion(),
		Overlays: files.Files(),
	}
	layers := map[string]string{} // finished stages' layer directories
	replaced := map[string]bool{} // stages whose layer a later one replaces
	rerun := map[string]bool{}
	for _, n := range b.opts.Rerun {
		rerun[n] = true
	}
	for _, s := range stages {
		var lowers []string
		for _, d := range s.deps {
			if rerun[d] {
				rerun[s.name] = true // built on a rerun stage: rerun too
			}
			if dir, ok := layers[d]; ok && !replaced[d] {
				lowers = append(lowers, dir)
			}
		}
		t0 := time.Now()
		cached := !b.opts.NoCache && !rerun[s.name] && s.Verify()
		b.prog.start(s.name)
		if !cached {
			err = s.Run(ctx, lowers)
			s.Cleanup()
		}
		secs := time.Since(t0)
		b.prog.done(s.name, secs, cached, err)
		if err != nil {
			return nil, fmt.Errorf("stage %s: %w", s.name, b.fetchError(err))
		}
		fmt.Fprintf(b.log, "stage %s key %s cached=%v %.1fs\n", s.name, s.key, cached, secs.Seconds())
		m.Stages = append(m.Stages, manifest.Stage{Name: s.name, Key: s.key, Cached: cached, Seconds: secs.Seconds()})
		if s.layer != "" {
			layers[s.name] = filepath.Join(s.dir(), s.layer)
		}
		if data, err := os.ReadFile(filepath.Join(s.dir(), replacesFile)); err == nil {
			for _, n := range strings.Fields(string(data)) {
				replaced[n] = true
			}
		}
	}
	var packed string
	for _, s := range stages {
		switch s.name {
		case "pack":
			packed = s.dir()
		case "efi":
			for _, a := range []string{manifest.Shim, manifest.Grub, manifest.Stub} {
				if _, err := os.Stat(filepath.Join(s.dir(), a)); err != nil && a == manifest.Stub {
					continue // optional: the recipe's components lack systemd-boot-efi
				}
				if err := os.Link(filepath.Join(s.dir(), a), filepath.Join(staging, a)); err != nil {
					return nil, fmt.Errorf("stage artifact %s: %w", a, err)
				}
			}
		}
	}
	if m.Packages, err = readPackages(filepath.Join(packed, "packages.tsv")); err != nil {
		return nil, err
	}
	if m.Verity, err = readVerity(filepath.Join(packed, verityFile)); err != nil {
		return nil, err
	}
	if got := m.Packages["linux-image-"+r.KernelRelease()]; got == "" {
		return nil, fmt.Errorf("the image has no linux-image-%s installed", r.KernelRelease())
	}
	// The pack stage's output never changes, so its modules are checked
	// once (a no-change rebuild skips reading the image again).
	signed := filepath.Join(packed, "signers-checked")
	if _, err := os.Stat(signed); err != nil {
		if err := checkModuleSigners(filepath.Join(packed, manifest.Rootfs), r.KernelRelease(), r.NVIDIA != nil); err != nil {
			return nil, err
		}
		if err := os.WriteFile(signed, []byte(r.KernelRelease()+"\n"), 0o644); err != nil {
			return nil, err
		}
	}
	for _, a := range []string{manifest.Kernel, manifest.Initrd, manifest.Rootfs} {
		// Hard links: images are immutable and so are stage outputs.
		if err := os.Link(filepath.Join(packed, a), filepath.Join(staging, a)); err != nil {
			return nil, fmt.Errorf("stage artifact %s: %w", a, err)
		}
	}
	// The chunk index rides along (not an artifact: it is a function of
	// rootfs.squashfs, and nodes check what they assemble against its sha256).
	if ci, err := manifest.HashFile(filepath.Join(packed, chunks.IndexName)); err == nil {
		if err := os.Link(filepath.Join(packed, chunks.IndexName), filepath.Join(staging, chunks.IndexName)); err != nil {
			return nil, fmt.Errorf("stage %s: %w", chunks.IndexName, err)
		}
		x, err := chunks.ReadIndexFile(filepath.Join(packed, chunks.IndexName))
		if err != nil {
			return nil, err
		}
		m.Chunks = &manifest.ChunkIndex{File: chunks.IndexName, Count: len(x.Chunks), SHA256: ci.SHA256}
	}
	fmt.Fprintf(b.log, "build finished in %.1fs\n", time.Since(start).Seconds())
	id, err := b.opts.Store.Publish(staging, m)
	if err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	m.ID = id
	if res.changed {
		lock := recipe.Lock{}
		for p, v := range res.pinned {
			lock[p] = v
		}
		for p, v := range res.efi {
			lock[p] = v
		}
		if err := lock.Write(r.LockPath(), r.Name); err != nil {
			return nil, fmt.Errorf("write lock file: %w", err)
		}
		fmt.Fprintf(b.opts.Progress, "wrote %s\n", r.LockPath())
	}
	return &Result{ID: id, Manifest: m, LogPath: filepath.Join(b.state, "images", id, "build.log")}, nil
}

// OverlaySet is a rendered set of system overlay files.
type OverlaySet interface {
	// Files describes every file (with its sha256) for the stage key and the manifest.
	Files() []manifest.OverlayFile
	// Apply writes the files into an image tree.
	Apply(root string) error
}

type emptySet struct{}

func (emptySet) Files() []manifest.OverlayFile { return nil }
func (emptySet) Apply(string) error            { return nil }

// findAgent locates the static herd-boot binary for the initramfs.
func findAgent(explicit string) (string, error) {
	cands := []string{explicit}
	if explicit == "" {
		cands = []string{os.Getenv("HERD_BOOT_BIN")}
		if exe, err := os.Executable(); err == nil {
			cands = append(cands, filepath.Join(filepath.Dir(exe), "herd-boot"))
		}
		cands = append(cands, "/usr/lib/herd/herd-boot")
	}
	for _, c := range cands {
		if c == "" {
			continue
		}
		if fi, err := os.Stat(c); err == nil && fi.Mode().IsRegular() {
			return c, nil
		}
	}
	return "", fmt.Errorf("herd-boot agent not found (tried %s): run `make build` or set HERD_BOOT_BIN",
		strings.Join(nonEmpty(cands), ", "))
}

func nonEmpty(ss []string) []string {
	var out []string
	for _, s := range ss {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

// cleanStale removes what a killed build left in <state>/tmp. It runs under
// the store lock, so no other build is using it. rm --one-file-system never
// descends into anything mounted there.
func cleanStale(tmp string) error {
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return fmt.Errorf("clean %s: %w", tmp, err)
	}
	for _, e := range ents {
		if err := fsutil.RemoveTree(filepath.Join(tmp, e.Name())); err != nil {
			return fmt.Errorf("remove stale staging: %w", err)
		}
	}
	return nil
}

// tailLines returns the last n lines of a file.
func tailLines(path string, n int) []string {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

// readVerity reads the pack stage's hash tree record.
func readVerity(path string) (*manifest.Verity, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("verity record: %w", err)
	}
	var v manifest.Verity
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("verity record %s: %w", path, err)
	}
	return &v, nil
}

// readPackages reads "name\tversion" lines written by the pack stage.
func readPackages(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("installed packages: %w", err)
	}
	out := map[string]string{}
	for _, l := range strings.Split(string(data), "\n") {
		if name, ver, ok := strings.Cut(l, "\t"); ok {
			out[name] = ver
		}
	}
	if len(out) == 0 {
		return nil, errors.New("installed packages: dpkg reports none")
	}
	return out, nil
}
