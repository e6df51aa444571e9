package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/rollout"
)

func init() {
	var f rollout.Flags
	var deadline string
	var wait bool
	cmd := &cobra.Command{
		Use:   "rollout",
		Short: "Reboot the nodes onto the current image: a canary first, then batches (carried out by herd serve)",
		Long: "After `herd image promote`, reboot one canary node and wait until it reports up on the new image\n" +
			"with its checks passing, then the rest in batches. Busy nodes (logged-in users, GPU processes)\n" +
			"wait until idle with --when-idle, or until --deadline after a wall message. A failed canary\n" +
			"undoes the promote and stops. herd serve carries the rollout out and resumes it after a restart.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			now := time.Now()
			d, err := rollout.ParseDeadline(deadline, now)
			if err != nil {
				return err
			}
			f.Deadline = d
			cfg, err := loadSiteParts(false, "nodes")
			if err != nil {
				return err
			}
			st := store.ReadOnly(globals.state)
			cur, err := st.Current()
			if err != nil {
				return err
			}
			hist, err := st.History()
			if err != nil {
				return err
			}
			req, err := rollout.NewRequest(cfg, cur, hist, f, now)
			if err != nil {
				return err
			}
			if err := rollout.Submit(globals.state, req); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "rollout of %s over %d nodes requested; herd serve carries it out (herd rollout status)\n", short(req.Image), len(req.Nodes))
			if !wait {
				return nil
			}
			return waitRollout(cmd, req.Requested)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.Canary, "canary", "", "node to reboot first (default: the first idle node)")
	fl.IntVar(&f.Batch, "batch", 1, "nodes rebooting at once after the canary")
	fl.BoolVar(&f.WhenIdle, "when-idle", false, "busy nodes wait until idle (up to --deadline)")
	fl.StringVar(&deadline, "deadline", "", "reboot busy nodes at the latest then, after a wall message: a duration (2h) or a time (RFC 3339)")
	fl.BoolVar(&f.HoldDegraded, "hold-degraded", false, "a node reporting degraded health after its reboot fails the rollout")
	fl.BoolVar(&wait, "wait", false, "wait until the rollout ends; exit status 1 unless it is done")

	var asJSON bool
	status := &cobra.Command{
		Use:   "status",
		Short: "Show the rollout's progress",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := rollout.Load(globals.state)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			writeRollout(cmd.OutOrStdout(), st)
			return nil
		},
	}
	status.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	abort := &cobra.Command{
		Use:   "abort",
		Short: "Stop the running rollout (nodes already rebooted stay on the new image)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return rollout.Submit(globals.state, rollout.Request{Abort: true, Requested: time.Now()})
		},
	}
	cmd.AddCommand(status, abort)
	root.AddCommand(cmd)
}

// waitRollout polls the state file until the rollout asked at or after since ends.
func waitRollout(cmd *cobra.Command, since time.Time) error {
	last := ""
	for {
		st, err := rollout.Load(globals.state)
		if err != nil {
			return err
		}
		if st != nil && !st.Request.Requested.Before(since.Truncate(time.Second)) {
			line := st.Phase
			for _, n := range st.Nodes {
				line += " " + n.Name + "=" + n.State
			}
			if line != last {
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", time.Now().UTC().Format("15:04:05"), line)
				last = line
			}
			if rollout.Terminal(st.Phase) {
				if st.Phase != rollout.PhaseDone {
					return fmt.Errorf("rollout %s: %s", st.Phase, st.Error)
				}
				return nil
			}
		}
		select {
		case <-cmd.Context().Done():
			return cmd.Context().Err()
		case <-time.After(2 * time.Second):
		}
	}
}

func writeRollout(w io.Writer, st *rollout.State) {
	if st == nil {
		fmt.Fprintln(w, "no rollout")
		return
	}
	fmt.Fprintf(w, "rollout %s: image %s, %s", st.ID, short(st.Request.Image), st.Phase)
	if st.Canary != "" {
		fmt.Fprintf(w, ", canary %s", st.Canary)
	}
	fmt.Fprintf(w, ", batch %d", st.Request.Batch)
	if st.Request.WhenIdle {
		fmt.Fprint(w, ", when idle")
	}
	if !st.Request.Deadline.IsZero() {
		fmt.Fprintf(w, ", deadline %s", st.Request.Deadline.Format(time.RFC3339))
	}
	fmt.Fprintln(w)
	if st.Error != "" {
		fmt.Fprintf(w, "error: %s\n", st.Error)
	}
	if st.Undone {
		fmt.Fprintf(w, "the promote was undone: current image is %s again\n", short(st.Request.Previous))
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATE\tDETAIL")
	for _, n := range st.Nodes {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", n.Name, n.State, dash(n.Detail))
	}
	tw.Flush()
}
