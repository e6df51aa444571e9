package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/herdlab/herd/pxe/server"
	"github.com/herdlab/herd/site"
)

// doctorProbe is set by the DHCP wiring when pxe/dhcp is built in.
var doctorProbe server.DHCPProbe

// doctorPool is set by the DHCP wiring: the pool check of herd doctor.
var doctorPool func(cfg *site.Config, stateDir string) (size, free, declined int, err error)

type exitError struct {
	msg  string
	code int
}

func (e *exitError) Error() string { return e.msg }
func (e *exitError) ExitCode() int { return e.code }

func init() {
	var opt server.DoctorOptions
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check that herd serve can run here: interface, ports, iPXE binaries, current image, rival DHCP servers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadSite(false)
			if err != nil {
				fmt.Fprintf(cmd.OutOrStdout(), "FAIL  config: %v\n", err)
				return &exitError{msg: "the site config is invalid", code: 1}
			}
			opt.StateDir = globals.state
			opt.Probe = doctorProbe
			opt.Pool = doctorPool
			checks := server.Doctor(cmd.Context(), cfg, opt)
			failed := 0
			for _, c := range checks {
				if !c.OK {
					failed++
				}
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(checks); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "PASS  config: %s\n", globals.config)
				for _, c := range checks {
					tag := "PASS"
					switch {
					case c.Skip:
						tag = "SKIP"
					case !c.OK:
						tag = "FAIL"
					}
					fmt.Fprintf(cmd.OutOrStdout(), "%s  %s: %s\n", tag, c.Name, c.Detail)
				}
			}
			if failed > 0 {
				return &exitError{msg: fmt.Sprintf("%d check(s) failed", failed), code: 1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&opt.Hash, "hash", false, "verify the current image's sha256 (reads every byte)")
	cmd.Flags().IntVar(&opt.TFTPPort, "tftp-port", 69, "TFTP port to check")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	root.AddCommand(cmd)
}
