package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/herdlab/herd/image/build"
	"github.com/herdlab/herd/image/recipe"
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/overlays"
)

// defaultRecipe is what `herd image build` builds without an argument.
const defaultRecipe = "recipes/ubuntu-noble-gpu.yaml"

var imageBuildFlags struct {
	set        []string
	noCache    bool
	rerun      []string
	updateLock bool
	agent      string
	refresh    bool
	indexAge   time.Duration
}

var imageBuildCmd = &cobra.Command{
	Use:   "build [RECIPE]",
	Short: "Build an image from a recipe (default " + defaultRecipe + ") and publish it into the store",
	Long: `Build an image from a recipe: bootstrap (mmdebstrap) → packages (pinned NVIDIA
driver) → overlays → initramfs → pack (mksquashfs). Each stage is cached under
<state>/stages, so a driver bump rebuilds only what changed and an unchanged
recipe returns the same image ID. The archive's package indices are fetched
again only when older than --index-max-age (or with --refresh or --update-lock),
so a no-change rebuild does not ask the archive at all. The first build writes RECIPE's lock file
(<name>.lock next to it); later builds fail if the archive would install other
versions. Progress goes to stderr, the image ID and a summary to stdout.`,
	Args: cobra.MaximumNArgs(1),
	RunE: func(cmd *cobra.Command, args []string) error {
		path := defaultRecipe
		if len(args) == 1 {
			path = args[0]
		}
		r, err := recipe.Load(path, imageBuildFlags.set)
		if err != nil {
			return err
		}
		cfg, err := loadSite(true)
		if err != nil {
			return err
		}
		st, err := store.Open(globals.state)
		if err != nil {
			return err
		}
		res, err := build.Build(cmd.Context(), r, build.Options{
			StateDir: globals.state,
			Store:    st,
			Overlays: func(names []string) (build.OverlaySet, error) {
				files, err := overlays.Render(cfg, names)
				return overlays.Set(files), err
			},
			AgentPath:   imageBuildFlags.agent,
			HerdVersion: version,
			NoCache:     imageBuildFlags.noCache,
			Rerun:       imageBuildFlags.rerun,
			UpdateLock:  imageBuildFlags.updateLock,
			Refresh:     imageBuildFlags.refresh,
			IndexMaxAge: max(imageBuildFlags.indexAge, -1), // the flag's 0 means "always fetch", the API's "default"
			Progress:    os.Stderr,
			Terminal:    term.IsTerminal(int(os.Stderr.Fd())),
		})
		if err != nil {
			return err
		}
		m := res.Manifest
		out := cmd.OutOrStdout()
		fmt.Fprintf(out, "image %s\n", res.ID)
		nv := m.NVIDIA
		if nv == "" {
			nv = "none"
		}
		fmt.Fprintf(out, "  recipe %s, kernel %s, nvidia %s, %d packages\n", m.Recipe, m.KernelABI, nv, len(m.Packages))
		var stages []string
		for _, s := range m.Stages {
			how := "built"
			if s.Cached {
				how = "cached"
			}
			stages = append(stages, fmt.Sprintf("%s %s %.1fs", s.Name, how, s.Seconds))
		}
		fmt.Fprintf(out, "  stages: %s\n", strings.Join(stages, ", "))
		fmt.Fprintf(out, "  log: %s\n", res.LogPath)
		return nil
	},
}

func init() {
	f := imageBuildCmd.Flags()
	f.StringArrayVar(&imageBuildFlags.set, "set", nil, "override a recipe field, e.g. --set nvidia.version=580.178.04-0ubuntu0.24.04.1 (repeatable)")
	f.BoolVar(&imageBuildFlags.noCache, "no-cache", false, "rebuild every stage, ignoring cached stage outputs")
	f.StringArrayVar(&imageBuildFlags.rerun, "rerun", nil, "rebuild this stage and every stage built on it, ignoring their cached outputs (repeatable; stages: bootstrap, driver, packages, join, overlays, initramfs, pack, efi)")
	f.BoolVar(&imageBuildFlags.updateLock, "update-lock", false, "ignore the recipe's lock file and write a new one from what the archive has now")
	f.BoolVar(&imageBuildFlags.refresh, "refresh", false, "fetch the archive's package indices now, even when the cached ones are fresh")
	f.DurationVar(&imageBuildFlags.indexAge, "index-max-age", build.DefaultIndexMaxAge, "reuse package indices fetched less than this long ago (0 or less: always fetch)")
	f.StringVar(&imageBuildFlags.agent, "agent", "", "herd-boot agent for the initramfs (default: $HERD_BOOT_BIN, next to herd, /usr/lib/herd/herd-boot)")
	imageCmd.AddCommand(imageBuildCmd)
}
