package main

import (
	"errors"
	"fmt"
	"sync"

	"github.com/spf13/cobra"

	"github.com/herdlab/herd/power"
)

// subcommand returns root's command group of that name (registered by an
// earlier file's init).
func subcommand(name string) *cobra.Command {
	for _, c := range root.Commands() {
		if c.Name() == name {
			return c
		}
	}
	panic("herd: no command group " + name)
}

func init() {
	powerCmd := &cobra.Command{
		Use:   "power NAME... on|off|cycle|status",
		Short: "Switch nodes on, off, power-cycle them or show their power state (through their BMC)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			action := args[len(args)-1]
			switch action {
			case power.On, power.Off, power.Cycle, "status":
			default:
				return fmt.Errorf("%q is not on, off, cycle or status", action)
			}
			cfg, err := loadSiteParts(false, "nodes")
			if err != nil {
				return err
			}
			names := args[:len(args)-1]
			ctls := make([]*power.IPMI, len(names))
			for i, n := range names {
				if ctls[i], err = power.ForNode(cfg, n); err != nil {
					return err
				}
			}
			out := make([]string, len(names))
			errs := make([]error, len(names))
			var wg sync.WaitGroup
			for i, c := range ctls {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if action == "status" {
						out[i], errs[i] = c.Status(cmd.Context())
					} else if errs[i] = c.Power(cmd.Context(), action); errs[i] == nil {
						out[i] = action + ": done"
					}
				}()
			}
			wg.Wait()
			for i, n := range names {
				if errs[i] == nil {
					fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", n, out[i])
				}
			}
			return errors.Join(errs...)
		},
	}
	var force bool
	consoleCmd := &cobra.Command{
		Use:   "console NAME",
		Short: "Attach to a node's serial console (IPMI serial-over-LAN; ~. ends it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadSiteParts(false, "nodes")
			if err != nil {
				return err
			}
			c, err := power.ForNode(cfg, args[0])
			if err != nil {
				return err
			}
			return c.Console(cmd.Context(), force, cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	consoleCmd.Flags().BoolVar(&force, "force", false, "close a console session already open on the BMC first")
	subcommand("node").AddCommand(powerCmd, consoleCmd)
}
