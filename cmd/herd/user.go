package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/herdlab/herd/directory"
)

// printJSON writes v indented.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// orDash prints "-" for an empty field in tables.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func init() {
	userCmd := &cobra.Command{Use: "user", Short: "Manage lab users in LDAP (one account for the NAS and every node)"}

	var nu directory.NewUser
	var addPwStdin, noPassword bool
	var homesMount string
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Add a user (next free uid above ldap.uid_min, primary group ldap.default_group)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			nu.Name = args[0]
			if err := directory.CheckName("user", nu.Name); err != nil {
				return err
			}
			// Read the password before touching the directory, so a
			// mistyped confirmation leaves nothing half-made.
			if addPwStdin && noPassword {
				return fmt.Errorf("--password-stdin and --no-password exclude each other")
			}
			var pw string
			if addPwStdin || (!noPassword && directory.IsTerminal(os.Stdin)) {
				var err error
				if pw, err = directory.ReadPassword(os.Stdin, cmd.ErrOrStderr(), nu.Name, addPwStdin); err != nil {
					return err
				}
			}
			d, err := connectDirectory()
			if err != nil {
				return err
			}
			defer d.Close()
			u, err := d.AddUser(nu)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "added user %s: uid %d, gid %d (%s), home %s, shell %s\n", u.Name, u.UID, u.GID, u.Group, u.Home, u.Shell)
			if pw != "" {
				method, err := d.SetPassword(u.Name, pw)
				if err != nil {
					return fmt.Errorf("user %s was added but its password was not set (run `herd user passwd %s`): %w", u.Name, u.Name, err)
				}
				fmt.Fprintf(out, "password set (%s)\n", method)
			} else {
				fmt.Fprintf(out, "no password set: %s cannot log in until `herd user passwd %s`\n", u.Name, u.Name)
			}
			if homesMount != "" {
				dir, err := directory.CreateHome(homesMount, u)
				if err == nil {
					fmt.Fprintf(out, "created home %s (owner %d:%d, mode 0700)\n", dir, u.UID, u.GID)
					return nil
				}
				fmt.Fprintf(out, "could not create the home: %v\n", err)
			}
			fmt.Fprint(out, d.HomeInstructions(u))
			return nil
		},
	}
	f := add.Flags()
	f.IntVar(&nu.UID, "uid", 0, "uid number (default: next free above ldap.uid_min)")
	f.StringVar(&nu.Group, "group", "", "primary group (default: ldap.default_group; must exist)")
	f.StringVar(&nu.Shell, "shell", "", "login shell (default: ldap.override_shell)")
	f.StringVar(&nu.Gecos, "gecos", "", "full name")
	f.StringVar(&nu.Home, "home", "", "home directory (default: nas.home_root/NAME)")
	f.BoolVar(&addPwStdin, "password-stdin", false, "read the password from the first line of stdin")
	f.StringVar(&homesMount, "create-home-in", "", "the NAS homes export as mounted here: create NAME in it (0700, owned by the user)")
	f.BoolVar(&noPassword, "no-password", false, "do not prompt for a password on a terminal (set it later with herd user passwd)")

	var listJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List users",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := connectDirectory()
			if err != nil {
				return err
			}
			defer d.Close()
			users, err := d.Users()
			if err != nil {
				return err
			}
			if listJSON {
				return printJSON(cmd.OutOrStdout(), users)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tUID\tGROUP\tHOME\tSHELL\tGROUPS\tGECOS")
			for _, u := range users {
				group := u.Group
				if group == "" {
					group = fmt.Sprintf("%d(missing)", u.GID)
				}
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", u.Name, u.UID, group, orDash(u.Home), orDash(u.Shell),
					orDash(strings.Join(u.Groups, ",")), orDash(u.Gecos))
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&listJSON, "json", false, "print JSON")

	var showJSON bool
	show := &cobra.Command{
		Use:   "show NAME",
		Short: "Show one user",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := connectDirectory()
			if err != nil {
				return err
			}
			defer d.Close()
			u, err := d.User(args[0])
			if err != nil {
				return err
			}
			if showJSON {
				return printJSON(cmd.OutOrStdout(), u)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "name:     %s\ndn:       %s\nuid:      %d\ngid:      %d (%s)\ngroups:   %s\nhome:     %s\nshell:    %s\ngecos:    %s\npassword: %v\n",
				u.Name, u.DN, u.UID, u.GID, orDash(u.Group), orDash(strings.Join(u.Groups, ",")), orDash(u.Home), orDash(u.Shell), orDash(u.Gecos), u.HasPassword)
			return nil
		},
	}
	show.Flags().BoolVar(&showJSON, "json", false, "print JSON")

	del := &cobra.Command{
		Use:   "del NAME",
		Short: "Delete a user and its group memberships (the home on the NAS stays)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := connectDirectory()
			if err != nil {
				return err
			}
			defer d.Close()
			if err := d.DeleteUser(args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted user %s (the home directory on the NAS is left as it is)\n", args[0])
			return nil
		},
	}

	var pwStdin bool
	passwd := &cobra.Command{
		Use:   "passwd NAME",
		Short: "Set a user's password (prompted twice, or --password-stdin)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pw, err := directory.ReadPassword(os.Stdin, cmd.ErrOrStderr(), args[0], pwStdin)
			if err != nil {
				return err
			}
			d, err := connectDirectory()
			if err != nil {
				return err
			}
			defer d.Close()
			method, err := d.SetPassword(args[0], pw)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "password of %s set (%s)\n", args[0], method)
			return nil
		},
	}
	passwd.Flags().BoolVar(&pwStdin, "password-stdin", false, "read the password from the first line of stdin")

	userCmd.AddCommand(add, list, show, del, passwd)
	root.AddCommand(userCmd)
}
