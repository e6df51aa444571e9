package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/herdlab/herd/directory"
)

// connectDirectory loads herd.yaml (only its ldap and nas parts need to be
// there and valid) and binds to LDAP as ldap.admin_dn.
func connectDirectory() (*directory.Dir, error) {
	cfg, err := loadSiteParts(false, "ldap", "nas")
	if err != nil {
		return nil, err
	}
	return directory.Connect(directory.FromSite(cfg))
}

func init() {
	var asJSON bool
	ldapCmd := &cobra.Command{Use: "ldap", Short: "Check the lab's LDAP directory"}
	check := &cobra.Command{
		Use:   "check",
		Short: "Connect, negotiate TLS, bind, and report duplicate uids, missing primary groups, missing home/shell",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := connectDirectory()
			if err != nil {
				return err
			}
			defer d.Close()
			rep, err := d.Check()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return err
				}
			} else {
				tls := "no TLS"
				if rep.TLS {
					tls = "TLS"
				}
				fmt.Fprintf(out, "connected to %s (%s), bound as %s\n", rep.URI, tls, rep.BoundAs)
				fmt.Fprintf(out, "%d users, %d groups; nodes (%s) see %d users\n", rep.Users, rep.Groups, rep.NodeView, rep.NodeUsers)
				for _, p := range rep.Problems {
					fmt.Fprintln(out, "PROBLEM:", p)
				}
			}
			if n := len(rep.Problems); n > 0 {
				return &exitError{code: 1, msg: fmt.Sprintf("ldap check found %d problem(s)", n)}
			}
			if !asJSON {
				fmt.Fprintln(out, "no problems found")
			}
			return nil
		},
	}
	check.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	rotate := &cobra.Command{
		Use:   "rotate-bind",
		Short: "Give the nodes' bind DN (ldap.bind_dn) a new random password, in the directory and in ldap.bind_password_file",
		Long: "Give the nodes' bind DN a new random password, in the directory and in ldap.bind_password_file.\n" +
			"Every enrolled node gets it with its secrets at its next boot; a forgotten node, or anyone holding\n" +
			"an old copy, keeps only the old password, which the directory refuses from now on. Nodes running\n" +
			"now cannot bind (SSSD serves from its cache) until they reboot.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := connectDirectory()
			if err != nil {
				return err
			}
			defer d.Close()
			if err := d.RotateBindPassword(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "new password for %s set in the directory and in %s; nodes get it at their next boot\n", d.S.BindDN, d.S.BindPasswordFile)
			return nil
		},
	}
	ldapCmd.AddCommand(check, rotate)
	root.AddCommand(ldapCmd)
}
