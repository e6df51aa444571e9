package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/herdlab/herd/fleet"
	"github.com/herdlab/herd/image/chunks"
	"github.com/herdlab/herd/image/diff"
	"github.com/herdlab/herd/image/inspect"
	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/pxe/inventory"
	"github.com/herdlab/herd/site"
)

// imageCmd is the parent of every `herd image` subcommand; image_build.go
// adds `build` to it.
var imageCmd = &cobra.Command{
	Use:   "image",
	Short: "Build, list, inspect, promote and garbage-collect node images",
}

// imageFlags are the flags of the image subcommands in this file.
var imageFlags struct {
	json        bool
	requireTest bool
	keep        int
}

// defaultKeep is how many of the newest images `herd image gc` keeps.
const defaultKeep = 3

func init() {
	root.AddCommand(imageCmd)
	list := &cobra.Command{
		Use:   "list",
		Short: "List the images in the store (* marks the current one)",
		Args:  cobra.NoArgs,
		RunE:  runImageList,
	}
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show an image's manifest: recipe, kernel, driver, artifacts, stages, test result",
		Args:  cobra.ExactArgs(1),
		RunE:  runImageShow,
	}
	insp := &cobra.Command{
		Use:   "inspect ID|FILE",
		Short: "Read an image's root squashfs (no mount, no root): OS release, kernel module trees, nvidia module version",
		Args:  cobra.ExactArgs(1),
		RunE:  runImageInspect,
	}
	promote := &cobra.Command{
		Use:   "promote ID",
		Short: "Make an image current (nodes get it on their next boot); the old one is kept for rollback",
		Args:  cobra.ExactArgs(1),
		RunE:  runImagePromote,
	}
	promote.Flags().BoolVar(&imageFlags.requireTest, "require-test", false, "refuse unless `herd image test ID` passed")
	rollback := &cobra.Command{
		Use:   "rollback",
		Short: "Make the previously current image current again",
		Args:  cobra.NoArgs,
		RunE:  runImageRollback,
	}
	df := &cobra.Command{
		Use:   "diff A B",
		Short: "What image B changes against image A: packages, kernel, NVIDIA driver, overlay files",
		Args:  cobra.ExactArgs(2),
		RunE:  runImageDiff,
	}
	rm := &cobra.Command{
		Use:   "rm ID",
		Short: "Remove an image (never the current one or one a node is pinned to)",
		Args:  cobra.ExactArgs(1),
		RunE:  runImageRm,
	}
	gc := &cobra.Command{
		Use:   "gc",
		Short: "Remove old unreferenced images, unused stage caches and stale staging dirs; report the space freed",
		Long: `Keeps the newest --keep images plus the current image, the previously
current one (for rollback) and every image a node in herd.yaml is pinned to;
removes the rest, the build stage caches no kept image was built from, and
staging directories killed builds left behind.`,
		Args: cobra.NoArgs,
		RunE: runImageGC,
	}
	gc.Flags().IntVar(&imageFlags.keep, "keep", defaultKeep, "how many of the newest images to keep")
	for _, c := range []*cobra.Command{list, show, insp, df, gc} {
		c.Flags().BoolVar(&imageFlags.json, "json", false, "print JSON")
	}
	imageCmd.AddCommand(list, show, insp, promote, rollback, df, rm, gc)
}

// bootCounts reads how many nodes last booted each image; a missing or
// unreadable inventory only loses the counts, not the listing.
func bootCounts() map[string]int {
	inv, err := inventory.Load(globals.state)
	if err != nil {
		slog.Warn("node boot counts unavailable", "err", err)
		return map[string]int{}
	}
	return inv.CountByImage()
}

func testState(st *store.Store, id string) (string, *store.TestResult) {
	r, err := st.TestResult(id)
	if err != nil {
		slog.Warn("test result unreadable", "id", id, "err", err)
		return "", nil
	}
	switch {
	case r == nil:
		return "", nil
	case r.Passed:
		return "passed", r
	}
	return "failed", r
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func runImageList(cmd *cobra.Command, args []string) error {
	st := store.ReadOnly(globals.state)
	rows, err := fleet.Images(st, bootCounts())
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	if imageFlags.json {
		return writeJSON(out, rows)
	}
	if len(rows) == 0 {
		fmt.Fprintf(out, "no images in %s (build one with `herd image build`)\n", globals.state)
		return nil
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\tID\tCREATED\tRECIPE\tKERNEL\tNVIDIA\tSIZE\tNODES\tTESTED")
	for _, r := range rows {
		mark := ""
		if r.Current {
			mark = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", mark, r.ID, r.Created.Local().Format("2006-01-02 15:04"),
			dash(r.Recipe), dash(r.Kernel), dash(r.NVIDIA), fleet.HumanBytes(r.Size), r.Nodes, dash(r.Tested))
	}
	return tw.Flush()
}

// imageDetail is `herd image show --json`.
type imageDetail struct {
	ID       string             `json:"id"`
	Dir      string             `json:"dir"`
	Current  bool               `json:"current"`
	Nodes    int                `json:"nodes"`
	Test     *store.TestResult  `json:"test"`
	PinnedBy []string           `json:"pinned_by"`
	BuildLog string             `json:"build_log,omitempty"`
	Manifest *manifest.Manifest `json:"manifest"`
}

func runImageShow(cmd *cobra.Command, args []string) error {
	st := store.ReadOnly(globals.state)
	im, err := st.Get(args[0])
	if err != nil {
		return err
	}
	_, tr := testState(st, im.ID)
	d := imageDetail{ID: im.ID, Dir: im.Dir, Current: im.Current, Nodes: bootCounts()[im.ID], Test: tr,
		Manifest: im.Manifest, PinnedBy: []string{}}
	if cfg, err := loadSiteParts(true, "nodes"); err != nil {
		slog.Warn("node pins unknown", "err", err)
	} else {
		for _, n := range cfg.Nodes {
			if store.PinnedBy(im.ID, []string{n.Image}) {
				d.PinnedBy = append(d.PinnedBy, n.Name)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(im.Dir, "build.log")); err == nil {
		d.BuildLog = filepath.Join(im.Dir, "build.log")
	}
	out := cmd.OutOrStdout()
	if imageFlags.json {
		return writeJSON(out, d)
	}
	m := im.Manifest
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "id:\t%s\n", im.ID)
	fmt.Fprintf(tw, "current:\t%v\n", im.Current)
	fmt.Fprintf(tw, "created:\t%s\n", m.Created.Local().Format(time.RFC3339))
	fmt.Fprintf(tw, "recipe:\t%s (sha256 %s)\n", dash(m.Recipe), dash(m.RecipeSHA256))
	fmt.Fprintf(tw, "system:\t%s %s\n", dash(m.Distribution), dash(m.Suite))
	fmt.Fprintf(tw, "kernel:\t%s\n", dash(m.KernelABI))
	fmt.Fprintf(tw, "nvidia:\t%s\n", dash(m.NVIDIA))
	fmt.Fprintf(tw, "herd:\t%s\n", dash(m.HerdVersion))
	fmt.Fprintf(tw, "packages:\t%d\n", len(m.Packages))
	fmt.Fprintf(tw, "overlay files:\t%d\n", len(m.Overlays))
	fmt.Fprintf(tw, "nodes booted:\t%d\n", d.Nodes)
	if len(d.PinnedBy) > 0 {
		fmt.Fprintf(tw, "pinned by:\t%s\n", strings.Join(d.PinnedBy, ", "))
	}
	switch {
	case tr == nil:
		fmt.Fprintf(tw, "test:\tnever tested\n")
	case tr.Passed:
		fmt.Fprintf(tw, "test:\tpassed %s: %s\n", tr.Time.Local().Format(time.RFC3339), tr.Summary)
	default:
		fmt.Fprintf(tw, "test:\tFAILED %s: %s\n", tr.Time.Local().Format(time.RFC3339), tr.Summary)
	}
	fmt.Fprintf(tw, "dir:\t%s\n", im.Dir)
	if d.BuildLog != "" {
		fmt.Fprintf(tw, "build log:\t%s\n", d.BuildLog)
	}
	fmt.Fprintln(tw, "artifacts:")
	for _, a := range store.ArtifactsOf(m) {
		art := m.Artifacts[a]
		fmt.Fprintf(tw, "  %s\t%s\tsha256 %s\n", a, fleet.HumanBytes(art.Size), art.SHA256)
	}
	if len(m.Stages) > 0 {
		fmt.Fprintln(tw, "stages:")
	}
	for _, s := range m.Stages {
		how := "built"
		if s.Cached {
			how = "cached"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s %.1fs\n", s.Name, s.Key, how, s.Seconds)
	}
	return tw.Flush()
}

// inspectTarget finds the squashfs for an ID or a path: a squashfs file,
// or an image directory holding rootfs.squashfs.
func inspectTarget(arg string) (string, error) {
	if st, err := os.Stat(arg); err == nil {
		if st.IsDir() {
			return filepath.Join(arg, manifest.Rootfs), nil
		}
		return arg, nil
	}
	im, err := store.ReadOnly(globals.state).Get(arg)
	if err != nil {
		return "", fmt.Errorf("%w (and no file %s exists)", err, arg)
	}
	return filepath.Join(im.Dir, manifest.Rootfs), nil
}

func runImageInspect(cmd *cobra.Command, args []string) error {
	p, err := inspectTarget(args[0])
	if err != nil {
		return err
	}
	r, err := inspect.File(p)
	if err != nil {
		return err
	}
	if imageFlags.json {
		return writeJSON(cmd.OutOrStdout(), r)
	}
	return r.WriteText(cmd.OutOrStdout())
}

func openStore() (*store.Store, error) {
	return store.Open(globals.state)
}

func runImagePromote(cmd *cobra.Command, args []string) error {
	st, err := openStore()
	if err != nil {
		return err
	}
	prev, err := st.Current()
	if err != nil {
		return err
	}
	id, err := st.Promote(cmd.Context(), args[0], imageFlags.requireTest)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	switch prev {
	case id:
		fmt.Fprintf(out, "image %s is already current\n", id)
	case "":
		fmt.Fprintf(out, "image %s is now current\n", id)
	default:
		fmt.Fprintf(out, "image %s is now current (was %s; `herd image rollback` goes back)\n", id, prev)
	}
	return nil
}

func runImageRollback(cmd *cobra.Command, args []string) error {
	st, err := openStore()
	if err != nil {
		return err
	}
	prev, err := st.Current()
	if err != nil {
		return err
	}
	id, err := st.Rollback(cmd.Context())
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "image %s is current again (was %s)\n", id, prev)
	return nil
}

func runImageDiff(cmd *cobra.Command, args []string) error {
	st := store.ReadOnly(globals.state)
	a, err := st.Get(args[0])
	if err != nil {
		return fmt.Errorf("diff: %w", err)
	}
	b, err := st.Get(args[1])
	if err != nil {
		return fmt.Errorf("diff: %w", err)
	}
	r := diff.Diff(a.Manifest, b.Manifest)
	if t, err := chunks.TransferBetween(a.Dir, b.Dir); err == nil {
		r.Download = t
	}
	// Per node: what its next boot of B downloads (names from herd.yaml
	// when it can be read; the diff itself needs no site config).
	if inv, err := inventory.Load(globals.state); err == nil {
		cfg, err := loadSiteParts(true, "nodes")
		if err != nil {
			cfg = &site.Config{}
		}
		if p, err := fleet.NewPlanner(st); err == nil {
			r.Nodes = fleet.NodeDownloads(fleet.Nodes(cfg, inv), p, b.ID)
		}
	}
	if imageFlags.json {
		return writeJSON(cmd.OutOrStdout(), r)
	}
	return r.WriteText(cmd.OutOrStdout())
}

// pinnedImages are the image IDs nodes in herd.yaml are pinned to. A site
// config that cannot be read is an error: removing an image without knowing
// the pins could take a pinned node's image away.
func pinnedImages() ([]string, error) {
	cfg, err := loadSiteParts(true, "nodes")
	if err != nil {
		return nil, fmt.Errorf("read the site config for node image pins: %w", err)
	}
	var pins []string
	for _, n := range cfg.Nodes {
		if n.Image != "" {
			pins = append(pins, n.Image)
		}
	}
	return pins, nil
}

func runImageRm(cmd *cobra.Command, args []string) error {
	pins, err := pinnedImages()
	if err != nil {
		return err
	}
	st, err := openStore()
	if err != nil {
		return err
	}
	id, err := st.Remove(cmd.Context(), args[0], pins)
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "removed image %s\n", id)
	return nil
}

func runImageGC(cmd *cobra.Command, args []string) error {
	pins, err := pinnedImages()
	if err != nil {
		return err
	}
	st, err := openStore()
	if err != nil {
		return err
	}
	rep, err := st.GC(cmd.Context(), imageFlags.keep, pins)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	if imageFlags.json {
		return writeJSON(out, rep)
	}
	for _, id := range rep.Images {
		fmt.Fprintf(out, "removed image %s\n", id)
	}
	fmt.Fprintf(out, "removed %d images, %d stage caches, %d stale staging dirs; freed %s; kept %d images\n",
		len(rep.Images), len(rep.Stages), len(rep.Staging), fleet.HumanBytes(rep.BytesFreed), len(rep.Kept))
	return nil
}
