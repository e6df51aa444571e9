package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/herdlab/herd/backup"
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/internal/atomicfile"
)

func init() {
	var images []string
	backupCmd := &cobra.Command{
		Use:   "backup FILE|-",
		Short: "Write one archive of what only herd holds (node secrets and keys, inventory, leases, current/history, test records)",
		Long: "backup writes a gzip'd tar of the state directory without what can be rebuilt\n" +
			"(images, build caches, staging, logs). --image current (or an ID) adds that image\n" +
			"generation so the restored server boots nodes without a rebuild. The archive holds\n" +
			"the nodes' private SSH host keys: keep it like a key (it is written 0600).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opt := backup.Options{Version: version}
			st := store.ReadOnly(globals.state)
			for _, ref := range images {
				if ref == "current" {
					cur, err := st.Current()
					if err != nil {
						return err
					}
					if cur == "" {
						return fmt.Errorf("--image current: no image is current")
					}
					ref = cur
				}
				img, err := st.Get(ref)
				if err != nil {
					return fmt.Errorf("--image %s: %w", ref, err)
				}
				opt.Images = append(opt.Images, img.ID)
			}
			var sum *backup.Summary
			write := func(w io.Writer) (err error) {
				sum, err = backup.Create(cmd.Context(), globals.state, w, opt)
				return err
			}
			if args[0] == "-" {
				if err := write(cmd.OutOrStdout()); err != nil {
					return err
				}
			} else if err := atomicfile.Write(args[0], 0o600, write); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "backed up %s: %d files, %d bytes, images %v\n", globals.state, sum.Files, sum.Bytes, sum.Images)
			return nil
		},
	}
	backupCmd.Flags().StringArrayVar(&images, "image", nil, "also include this image generation (ID or \"current\"; repeatable)")
	root.AddCommand(backupCmd)

	restoreCmd := &cobra.Command{
		Use:   "restore FILE|-",
		Short: "Restore a backup onto an empty (or missing) state directory",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var r io.Reader = cmd.InOrStdin()
			if args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return err
				}
				defer f.Close()
				r = f
			}
			sum, err := backup.Restore(r, globals.state)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "restored %s: %d files, %d bytes, images %v\n", globals.state, sum.Files, sum.Bytes, sum.Images)
			st := store.ReadOnly(globals.state)
			if cur, err := st.Current(); err == nil && cur != "" {
				if _, err := st.Get(cur); err != nil {
					fmt.Fprintf(out, "current image %s is not in the backup: rebuild it (herd image build <recipe>) or restore a backup made with --image current\n", cur)
				}
			}
			return nil
		},
	}
	root.AddCommand(restoreCmd)
}
