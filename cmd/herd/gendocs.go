package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

func init() {
	cmd := &cobra.Command{
		Use:    "gendocs DIR",
		Short:  "Write man pages (DIR/man1) and shell completions (DIR/completions) for packaging",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			man := filepath.Join(args[0], "man1")
			comp := filepath.Join(args[0], "completions")
			for _, d := range []string{man, comp} {
				if err := os.MkdirAll(d, 0o755); err != nil {
					return err
				}
			}
			hdr := &doc.GenManHeader{Title: "HERD", Section: "1", Source: "herd " + version, Manual: "herd manual"}
			root.DisableAutoGenTag = true // reproducible pages: no generation date
			if err := doc.GenManTree(root, hdr, man); err != nil {
				return fmt.Errorf("man pages: %w", err)
			}
			for _, c := range []struct {
				file string
				gen  func(string) error
			}{
				{"herd.bash", func(p string) error { return root.GenBashCompletionFileV2(p, true) }},
				{"_herd", root.GenZshCompletionFile},
				{"herd.fish", func(p string) error { return root.GenFishCompletionFile(p, true) }},
			} {
				if err := c.gen(filepath.Join(comp, c.file)); err != nil {
					return fmt.Errorf("completion %s: %w", c.file, err)
				}
			}
			return nil
		},
	}
	root.AddCommand(cmd)
}
