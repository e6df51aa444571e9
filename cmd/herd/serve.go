package main

import (
	"github.com/spf13/cobra"

	"github.com/herdlab/herd/pxe/server"
)

// serveDHCP is set by the DHCP wiring (serve_dhcp.go) when pxe/dhcp is built in.
var serveDHCP server.DHCPStarter

func init() {
	var opt server.Options
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Netboot the nodes: DHCP (per dhcp.mode), TFTP and HTTP; SIGHUP reloads herd.yaml, SIGTERM drains",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			opt.StateDir = globals.state
			opt.ConfigPath = globals.config
			opt.DHCP = serveDHCP
			return server.Run(cmd.Context(), opt)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&opt.Force, "force", false, "start DHCP even if another DHCP server answers on the interface")
	f.StringVar(&opt.Listen, "listen", "", "address TFTP and HTTP bind to (default server.address)")
	f.IntVar(&opt.HTTPPort, "http-port", 0, "bind HTTP to this port instead of server.http_port (scripts still name server.http_port)")
	f.IntVar(&opt.TFTPPort, "tftp-port", 69, "TFTP port")
	f.DurationVar(&opt.DrainTimeout, "drain-timeout", 0, "how long SIGTERM waits for transfers in flight (default 30s)")
	root.AddCommand(cmd)
}
