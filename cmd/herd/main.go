// Command herd builds one Ubuntu image for a lab's GPU servers and netboots
// every server from it. This file wires the global flags; each command group
// lives in its own file and registers itself with root in init.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/herdlab/herd/pxe/server"
	"github.com/herdlab/herd/site"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// globals are the flags every command shares.
var globals struct {
	state   string
	config  string
	verbose int
}

var root = &cobra.Command{
	Use:           "herd",
	Short:         "Build one Ubuntu image for a lab's GPU servers and netboot them all from it",
	Version:       version,
	SilenceUsage:  true,
	SilenceErrors: true,
	PersistentPreRun: func(cmd *cobra.Command, args []string) {
		level := slog.LevelWarn
		switch {
		case globals.verbose >= 2:
			level = slog.LevelDebug
		case globals.verbose == 1:
			level = slog.LevelInfo
		}
		slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
	},
}

func init() {
	pf := root.PersistentFlags()
	pf.StringVar(&globals.state, "state", "/var/lib/herd", "state directory (image store, node records, leases)")
	pf.StringVar(&globals.config, "config", site.DefaultPath, "site config file (herd.yaml)")
	pf.CountVarP(&globals.verbose, "verbose", "v", "more log output (-v info, -vv debug)")
}

// loadSite reads the site config; with missingOK a missing file yields the
// built-in defaults (image builds work before a site is configured).
func loadSite(missingOK bool) (*site.Config, error) {
	return site.LoadOrDefault(globals.config, missingOK)
}

// loadSiteParts reads the site config and validates only the named top-level
// parts, for commands that use only those (a file holding just them works);
// with missingOK a missing file yields the built-in defaults.
func loadSiteParts(missingOK bool, parts ...string) (*site.Config, error) {
	return site.LoadPartsOrDefault(globals.config, missingOK, parts...)
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := root.ExecuteContext(ctx)
	// What a root command wrote among herd serve's files goes to the user
	// herd serve runs as (the state dir's owner).
	if globals.state != "" {
		if gerr := server.GiveToStateOwner(globals.state); gerr != nil {
			fmt.Fprintln(os.Stderr, "herd:", gerr)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "herd:", err)
		var ec interface{ ExitCode() int }
		if errors.As(err, &ec) {
			os.Exit(ec.ExitCode())
		}
		os.Exit(1)
	}
}
