package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/herdlab/herd/pxe/httpboot"
	"github.com/herdlab/herd/secureboot"
)

func init() {
	sb := &cobra.Command{Use: "secureboot", Short: "herd's own Secure Boot keys and signed UKIs (secure_boot: herd)"}

	sb.AddCommand(&cobra.Command{
		Use:   "init",
		Short: "Make herd's PK, KEK and db keys once (0600 in the state directory)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ks, created, err := httpboot.Keys(cmd.Context(), globals.state)
			if err != nil {
				return err
			}
			word := "exist"
			if created {
				word = "made"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "keys %s in %s (owner %s)\n", word, ks.Dir, secureboot.FormatGUID(ks.Owner))
			for _, r := range []string{secureboot.PK, secureboot.KEK, secureboot.DB} {
				fmt.Fprintf(cmd.OutOrStdout(), "%-3s %s\n", r, ks.ByRole[r].Cert.Subject.CommonName)
			}
			return nil
		},
	})

	sb.AddCommand(&cobra.Command{
		Use:   "export DIR",
		Short: "Write herd's certificates (.crt PEM, .cer DER), signature lists (.esl) and signed updates (.auth) to DIR",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ks, _, err := httpboot.Keys(cmd.Context(), globals.state)
			if err != nil {
				return err
			}
			files, err := ks.Export(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			for _, f := range files {
				fmt.Fprintln(cmd.OutOrStdout(), f)
			}
			return nil
		},
	})

	var drop bool
	var window time.Duration
	enroll := &cobra.Command{
		Use:   "enroll NAME...",
		Short: "On the node's next boot, write herd's db, KEK and PK into its firmware (which must be in Setup Mode), then reboot into Secure Boot",
		Long: "Arranges a one-shot boot: the node boots the signed UKI (firmware in Setup Mode runs it unchecked),\n" +
			"its initramfs writes herd's signed db, KEK and PK updates through efivarfs and reboots; from then on\n" +
			"the firmware runs only what herd's db key signed (and, unless --drop-microsoft, what Microsoft's keys\n" +
			"already in db sign, e.g. GPU and NIC option ROMs). Put the node's firmware into Setup Mode first\n" +
			"(firmware setup: \"Reset to Setup Mode\" / \"Clear Secure Boot keys\").",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadSiteParts(false, "nodes")
			if err != nil {
				return err
			}
			if _, _, err := httpboot.Keys(cmd.Context(), globals.state); err != nil {
				return err
			}
			until := time.Now().Add(window)
			for _, name := range args {
				if _, ok := cfg.NodeByName(name); !ok {
					return fmt.Errorf("node %q is not in %s", name, globals.config)
				}
				if err := secureboot.MarkEnroll(globals.state, name, secureboot.Enrollment{Until: until, DropMicrosoft: drop}); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: enrolls herd's keys on its next boot (until %s)%s\n", name, until.Format(time.RFC3339),
					map[bool]string{true: "; Microsoft's keys are dropped", false: ""}[drop])
			}
			if cfg.SecureBoot != "herd" {
				fmt.Fprintf(cmd.ErrOrStderr(), "note: %s has secure_boot: %s; nodes get the signed UKI only with secure_boot: herd\n", globals.config, cfg.SecureBoot)
			}
			return nil
		},
	}
	enroll.Flags().BoolVar(&drop, "drop-microsoft", false, "replace db and KEK with herd's keys alone (option ROMs signed by Microsoft will no longer run)")
	enroll.Flags().DurationVar(&window, "for", time.Hour, "how long the enrollment waits for the node's boot")
	sb.AddCommand(enroll)

	sb.AddCommand(&cobra.Command{
		Use:   "uki [ID]",
		Short: "Build and sign an image's UKI (default: the current image) and print its path",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadSite(false)
			if err != nil {
				return err
			}
			images := httpboot.StateImages{StateDir: globals.state}
			id := ""
			if len(args) == 1 {
				id = args[0]
			} else if id, err = images.Current(); err != nil {
				return err
			} else if id == "" {
				return fmt.Errorf("no image is current in %s", globals.state)
			}
			p, err := httpboot.BuildUKI(cmd.Context(), cfg, globals.state, images, id)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), p)
			return nil
		},
	})
	root.AddCommand(sb)
}
