package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/herdlab/herd/directory"
	"github.com/herdlab/herd/site/setup"
)

func init() {
	var a setup.Answers
	var force, nonInteractive bool
	flags := map[string]string{
		"interface": "--interface", "address": "--address", "mode": "--dhcp-mode",
		"nas": "--nas", "homes": "--homes", "public": "--public",
		"ldap-uri": "--ldap-uri", "ldap-base": "--ldap-base", "ldap-admin-dn": "--ldap-admin-dn",
		"ldap-admin-password-file": "--ldap-admin-password-file",
	}
	cmd := &cobra.Command{
		Use:   "init",
		Short: "First setup: ask for the interface, DHCP mode, NAS and LDAP, check each, write herd.yaml",
		Long: `herd init asks what a lab admin must decide and checks each answer against the
real thing before writing --config (default /etc/herd/herd.yaml):
  - the interface facing the nodes; a DHCPDISCOVER sent there finds any other
    DHCP server, and herd then proposes proxy mode (boot information only);
  - the NAS and its exports, looked up over NFSv4;
  - the LDAP URI, base and admin DN, with a bind using the password file.
On a terminal it prompts for every answer not given as a flag; with
--non-interactive (or without a terminal) flags and defaults are all there is.
Nothing is written when a check fails, nor over an existing file without --force.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := setup.Run(cmd.Context(), a, setup.Options{
				In: os.Stdin, Out: cmd.OutOrStdout(),
				Interactive: !nonInteractive && directory.IsTerminal(os.Stdin),
				Probe:       setup.Prober(doctorProbe),
				Path:        globals.config, Force: force, Flags: flags,
			})
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&a.Interface, "interface", "", "interface facing the nodes (default: the only one with an IPv4 address)")
	f.StringVar(&a.Address, "address", "", "herd's IPv4 address on it (default: the interface's)")
	f.StringVar(&a.Mode, "dhcp-mode", "auto", "full, proxy, off, or auto (probe: proxy if another DHCP server answers, else full)")
	f.StringVar(&a.Router, "router", "", "full mode: router handed to the nodes")
	f.IntVar(&a.HTTPPort, "http-port", 8080, "HTTP port for boot scripts and images")
	f.StringVar(&a.NASAddress, "nas", "", "NAS address (NFSv4 server)")
	f.StringVar(&a.Homes, "homes", "", "homes export (default /export/homes)")
	f.StringVar(&a.Public, "public", "", "shared export mounted at /media/Public, or none (default /export/Public)")
	f.StringVar(&a.LDAPURI, "ldap-uri", "", "LDAP URI (default ldap://NAS/)")
	f.StringVar(&a.LDAPBase, "ldap-base", "", "LDAP base DN (default: the server's naming context)")
	f.StringVar(&a.LDAPAdminDN, "ldap-admin-dn", "", "DN herd user binds as (default cn=admin,BASE)")
	f.StringVar(&a.LDAPAdminPasswordFile, "ldap-admin-password-file", "", "file with that DN's password, mode 0600 (default /etc/herd/ldap-admin.secret)")
	f.StringVar(&a.LDAPTLS, "ldap-tls", "", "none, ldaps or starttls (default none; ldaps for an ldaps:// URI)")
	f.StringVar(&a.LDAPCAFile, "ldap-ca-file", "", "CA certificate for ldaps/starttls")
	f.BoolVar(&force, "force", false, "replace an existing herd.yaml")
	f.BoolVar(&nonInteractive, "non-interactive", false, "never prompt: flags and defaults only")
	root.AddCommand(cmd)
}
