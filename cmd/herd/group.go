package main

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/herdlab/herd/directory"
)

func init() {
	groupCmd := &cobra.Command{Use: "group", Short: "Manage lab groups in LDAP (posixGroup with memberUid)"}

	var gid int
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Add a group (next free gid above ldap.gid_min)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := directory.CheckName("group", args[0]); err != nil {
				return err
			}
			d, err := connectDirectory()
			if err != nil {
				return err
			}
			defer d.Close()
			g, err := d.AddGroup(args[0], gid)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added group %s: gid %d\n", g.Name, g.GID)
			return nil
		},
	}
	add.Flags().IntVar(&gid, "gid", 0, "gid number (default: next free above ldap.gid_min)")

	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List groups and their members",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := connectDirectory()
			if err != nil {
				return err
			}
			defer d.Close()
			groups, err := d.Groups()
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), groups)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tGID\tMEMBERS")
			for _, g := range groups {
				fmt.Fprintf(tw, "%s\t%d\t%s\n", g.Name, g.GID, orDash(strings.Join(g.Members, ",")))
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a group (refused while it is a user's primary group)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := connectDirectory()
			if err != nil {
				return err
			}
			defer d.Close()
			if err := d.DeleteGroup(args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed group %s\n", args[0])
			return nil
		},
	}

	member := func(use, short, done string, op func(d *directory.Dir, group, user string) error) *cobra.Command {
		return &cobra.Command{
			Use:   use + " GROUP USER",
			Short: short,
			Args:  cobra.ExactArgs(2),
			RunE: func(cmd *cobra.Command, args []string) error {
				d, err := connectDirectory()
				if err != nil {
					return err
				}
				defer d.Close()
				if err := op(d, args[0], args[1]); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), done+"\n", args[1], args[0])
				return nil
			},
		}
	}
	addMember := member("add-member", "Add a user to a group", "added %s to %s", (*directory.Dir).AddMember)
	rmMember := member("rm-member", "Remove a user from a group", "removed %s from %s", (*directory.Dir).RemoveMember)

	groupCmd.AddCommand(add, list, rm, addMember, rmMember)
	root.AddCommand(groupCmd)
}
