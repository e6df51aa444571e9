package build

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/herdlab/herd/internal/atomicfile"
	"github.com/herdlab/herd/internal/fsutil"
)

// DefaultIndexMaxAge is how long fetched package indices are used without
// asking the archive again (Options.IndexMaxAge; --refresh fetches anyway).
const DefaultIndexMaxAge = time.Hour

// indexState is what <state>/apt-tree/herd-indices.json records about the
// last fetch of the archive's indices.
type indexState struct {
	// Sources identifies what was fetched: suite, components, mirror and
	// keyring. Indices of other sources are never reused.
	Sources string    `json:"sources"`
	Fetched time.Time `json:"fetched"`
	// stamp identifies this fetch (sources and time) for the resolution cache.
	stamp string
}

// treeDir is the apt tree (sources, dpkg status) matching the cached indices.
func (b *builder) treeDir() string { return filepath.Join(b.state, "apt-tree") }

func (b *builder) indexStatePath() string { return filepath.Join(b.treeDir(), "herd-indices.json") }

// resolvedDir keeps apt's resolutions for the current fetch of the indices.
func (b *builder) resolvedDir() string { return filepath.Join(b.state, "apt-resolved") }

// sources identifies the archive sources the recipe resolves against.
func (b *builder) sources(keyring string) (string, error) {
	key, err := os.ReadFile(keyring)
	if err != nil {
		return "", fmt.Errorf("keyring: %w", err)
	}
	r := b.recipe
	return hashKey(r.Distribution, r.Suite, strings.Join(r.Components, ","), r.Mirror, string(key)), nil
}

// indices makes sure the apt tree (<state>/apt-tree: sources, dpkg status,
// package indices) is that of the recipe's sources and younger
// than the freshness window, fetching them (mmdebstrap, which asks the
// archive with If-Modified-Since) otherwise or when Options.Refresh is set.
func (b *builder) indices(ctx context.Context, keyring string) (*indexState, error) {
	src, err := b.sources(keyring)
	if err != nil {
		return nil, err
	}
	maxAge := b.opts.IndexMaxAge
	if maxAge == 0 {
		maxAge = DefaultIndexMaxAge
	}
	var st indexState
	if data, err := os.ReadFile(b.indexStatePath()); err == nil && json.Unmarshal(data, &st) == nil &&
		st.Sources == src && !b.refresh() && maxAge > 0 {
		if age := time.Since(st.Fetched); age >= 0 && age < maxAge {
			if _, err := os.Stat(filepath.Join(b.treeDir(), "var/lib/apt/lists")); err == nil {
				st.stamp = hashKey(st.Sources, st.Fetched.UTC().Format(time.RFC3339Nano))
				fmt.Fprintf(b.opts.Progress, "package indices: fetched %s ago, reused (fresh for %s; --refresh fetches them now)\n",
					age.Round(time.Second), maxAge)
				fmt.Fprintf(b.log, "package indices of %s reused (fetched %s)\n", b.recipe.Suite, st.Fetched.Format(time.RFC3339))
				return &st, nil
			}
		}
	}
	if err := b.fetchIndices(ctx, keyring); err != nil {
		return nil, err
	}
	st = indexState{Sources: src, Fetched: time.Now().UTC()}
	st.stamp = hashKey(st.Sources, st.Fetched.Format(time.RFC3339Nano))
	data, err := json.Marshal(st)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(b.indexStatePath(), data, 0o644); err != nil {
		return nil, fmt.Errorf("package indices: %w", err)
	}
	fmt.Fprintf(b.opts.Progress, "package indices: fetched\n")
	return &st, nil
}

// fetchIndices downloads the archive's package indices (verified with
// keyring) into a throwaway tree, then keeps the tree in <state>/apt-tree and
// links its indices into <state>/apt-lists (which seeds the next fetch and
// the build stages). Resolutions of older indices are dropped.
func (b *builder) fetchIndices(ctx context.Context, keyring string) error {
	r := b.recipe
	dir, err := os.MkdirTemp(b.tmp, "resolve-")
	if err != nil {
		return fmt.Errorf("resolve: %w", err)
	}
	defer fsutil.RemoveTree(dir)
	tree := filepath.Join(dir, "tree")
	args := []string{"--variant=extract", "--keyring=" + keyring, "--skip=cleanup/apt/lists",
		"--components=" + strings.Join(r.Components, ","), b.listsHook(), r.Suite, tree}
	args = append(args, b.mirrorArgs()...)
	if err := inMountNS(func() error { return run(command(ctx, b.log, "mmdebstrap", args...)) }); err != nil {
		return fmt.Errorf("download package indices: %w", err)
	}
	// The old tree's record goes first: a crash below leaves no record, so
	// the next build fetches again instead of trusting a half-replaced cache.
	if err := os.Remove(b.indexStatePath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("package indices: %w", err)
	}
	if err := b.keepLists(filepath.Join(tree, "var/lib/apt/lists")); err != nil {
		return err
	}
	if err := fsutil.RemoveTree(b.treeDir()); err != nil {
		return err
	}
	if err := os.Rename(tree, b.treeDir()); err != nil {
		return fmt.Errorf("keep apt tree: %w", err)
	}
	return fsutil.RemoveTree(b.resolvedDir())
}

// resolved is the cached answer of apt for one set of specs.
type resolved struct {
	Closure map[string]string `json:"closure"`
}

// refresh says the indices and resolutions must come from the archive now.
func (b *builder) refresh() bool { return b.opts.Refresh || b.opts.UpdateLock }

// loadResolved returns the cached closure for key; nil when absent.
func (b *builder) loadResolved(key string) map[string]string {
	if b.refresh() {
		return nil
	}
	data, err := os.ReadFile(filepath.Join(b.resolvedDir(), key+".json"))
	if err != nil {
		return nil
	}
	var c resolved
	if json.Unmarshal(data, &c) != nil || len(c.Closure) == 0 {
		return nil
	}
	fmt.Fprintf(b.log, "package set resolved before against the same indices (%s)\n", key)
	return c.Closure
}

// saveResolved records a closure for key; a failure only costs the next build time.
func (b *builder) saveResolved(key string, closure map[string]string) {
	data, err := json.Marshal(resolved{Closure: closure})
	if err == nil {
		err = os.MkdirAll(b.resolvedDir(), 0o755)
	}
	if err == nil {
		err = atomicfile.WriteFile(filepath.Join(b.resolvedDir(), key+".json"), data, 0o644)
	}
	if err != nil {
		fmt.Fprintf(b.log, "warning: resolution not cached: %v\n", err)
	}
}
