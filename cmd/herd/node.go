package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/herdlab/herd/fleet"
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/internal/nodeauth"
	"github.com/herdlab/herd/pxe/httpboot"
	"github.com/herdlab/herd/pxe/inventory"
	"github.com/herdlab/herd/rollout"
	"github.com/herdlab/herd/site"
)

// nodeViews is fleet.Nodes with each node's key state (internal/nodeauth).
func nodeViews(cfg *site.Config, inv *inventory.Inventory) []fleet.Node {
	ns := fleet.Nodes(cfg, inv)
	fleet.AddIdentity(ns, nodeauth.OpenRegistry(globals.state), time.Now())
	if st, err := rollout.Load(globals.state); err == nil {
		fleet.AddRollout(ns, st)
	}
	imgs := store.ReadOnly(globals.state)
	if cur, err := imgs.Current(); err == nil {
		if p, err := fleet.NewPlanner(imgs); err == nil {
			fleet.AddNextDownload(ns, p, cur)
		}
	}
	return ns
}

// nextBoot is a node's NEXT BOOT cell: what its next boot downloads of the
// root image ("-" unknown).
func nextBoot(d *fleet.Download) string {
	switch {
	case d == nil:
		return "-"
	case d.How == fleet.FetchCached:
		return "cached"
	}
	return fmt.Sprintf("%s %s (%.1f%%)", fleet.HumanBytes(d.Bytes), d.How, 100*d.Fraction)
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return time.Since(t).Round(time.Second).String() + " ago"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return dash(id)
}

func init() {
	var asJSON bool
	nodeCmd := &cobra.Command{Use: "node", Short: "List, show, add and remove nodes (herd.yaml plus what the server saw)"}

	list := &cobra.Command{
		Use:   "list",
		Short: "List nodes with their last DHCP, boot stage and image",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadSiteParts(true, "nodes") // only the nodes part is read
			if err != nil {
				return err
			}
			inv, err := inventory.Load(globals.state)
			if err != nil {
				return err
			}
			views := nodeViews(cfg, inv)
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(views)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			// The ROLLOUT column appears once a rollout has run.
			roll := ""
			for _, v := range views {
				if v.Rollout != "" {
					roll = "\tROLLOUT"
				}
			}
			fmt.Fprintln(tw, "NAME\tSTATE\tMAC\tIP\tLAST DHCP\tSTAGE\tWHEN\tIMAGE\tBOOTS\tNEXT BOOT\tHEALTH\tBUSY\tKEY"+roll)
			for _, v := range views {
				name := v.Name
				if !v.Configured {
					name = dash(name) + " (not in herd.yaml)"
				}
				ip, dhcp, stage, when, img, boots := v.IP, "-", "-", "-", "-", 0
				if r := v.Seen; r != nil {
					if ip == "" {
						ip = r.LastDHCPIP
					}
					dhcp, stage, when, img, boots = ago(r.LastDHCP), dash(r.Stage), ago(r.StageTime), short(r.Image), r.Boots
					if len(r.Degraded) > 0 && r.Stage == "up" {
						stage = "up (degraded)"
					}
				}
				extra := ""
				if roll != "" {
					extra = "\t" + dash(v.Rollout)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s%s\n", name, v.State, v.MAC, dash(ip), dhcp, stage, when, img, boots, nextBoot(v.NextDownload), dash(v.Health), busyWord(v), v.Identity, extra)
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	show := &cobra.Command{
		Use:   "show NAME|MAC",
		Short: "Show one node in full",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadSiteParts(true, "nodes") // only the nodes part is read
			if err != nil {
				return err
			}
			inv, err := inventory.Load(globals.state)
			if err != nil {
				return err
			}
			if v, ok := fleet.FindNode(nodeViews(cfg, inv), args[0]); ok {
				if asJSON {
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					return enc.Encode(v)
				}
				w := cmd.OutOrStdout()
				fmt.Fprintf(w, "name:        %s\nmac:         %s\nip:          %s\nin config:   %v\nstate:       %s\n", dash(v.Name), v.MAC, dash(v.IP), v.Configured, v.State)
				if v.Image != "" {
					fmt.Fprintf(w, "image pin:   %s\n", v.Image)
				}
				if v.KernelArgs != "" {
					fmt.Fprintf(w, "kernel args: %s\n", v.KernelArgs)
				}
				if id := v.Identity; id != nil {
					fmt.Fprintf(w, "key:         %s\n", dash(id.Enrolled))
				}
				if id := v.Identity; id != nil && id.Pending != "" {
					fmt.Fprintf(w, "pending key: %s (from %s): herd node approve %s --fingerprint %s\n", v.Identity.Pending, dash(v.Identity.From), v.Name, v.Identity.Pending)
				}
				if r := v.Seen; r != nil {
					fmt.Fprintf(w, "last DHCP:   %s (%s)\n", ago(r.LastDHCP), dash(r.LastDHCPIP))
					fmt.Fprintf(w, "script:      %s (image %s)\n", ago(r.ScriptServed), short(r.ScriptImage))
					fmt.Fprintf(w, "last stage:  %s %d%% %s (%s, from %s)\n", dash(r.Stage), r.Percent, r.Message, ago(r.StageTime), dash(r.Address))
					fmt.Fprintf(w, "booted:      image %s, kernel %s, nvidia %s (%s)\n", dash(r.Image), dash(r.Kernel), dash(r.NVIDIA), ago(r.UpTime))
					fmt.Fprintf(w, "boots:       %d (errors %d)\n", r.Boots, r.Errors)
				} else {
					fmt.Fprintln(w, "seen:        never")
				}
				writeNodeNetworks(w, cfg, v)
				writeNodeStatus(w, v)
				return nil
			}
			return fmt.Errorf("no node %q in %s or the inventory", args[0], globals.config)
		},
	}
	show.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	var add site.Node
	addCmd := &cobra.Command{
		Use:   "add NAME MAC",
		Short: "Add a node to herd.yaml (comments kept; the file is validated before it is replaced)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			n := add
			n.Name, n.MAC = args[0], args[1]
			if err := site.AddNode(globals.config, n); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added %s (%s) to %s; a running herd serve picks it up on SIGHUP\n", n.Name, n.MAC, globals.config)
			return nil
		},
	}
	addCmd.Flags().StringVar(&add.IP, "ip", "", "reserved address (required in full DHCP mode)")
	addCmd.Flags().StringVar(&add.Image, "image", "", "pin the node to this image ID")
	addCmd.Flags().StringVar(&add.KernelArgs, "kernel-args", "", "extra kernel arguments")
	addCmd.Flags().StringVar(&add.CacheDisk, "cache-disk", "", "cache disk for this node (auto, none, /dev/disk/by-id/...)")

	rm := &cobra.Command{
		Use:   "rm NAME|MAC",
		Short: "Remove a node from herd.yaml and forget it (enrolled key, SSH host keys, machine-id, inventory record)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := site.RemoveNode(globals.config, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s (%s) from %s\n", n.Name, n.MAC, globals.config)
			return forgetNode(cmd, n.Name, n.MAC)
		},
	}
	forget := &cobra.Command{
		Use:   "forget NAME",
		Short: "Drop a node's identity: its enrolled key (it must enroll again), SSH host keys, machine-id and inventory record",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadSite(true)
			if err != nil {
				return err
			}
			mac := ""
			if n, ok := cfg.NodeByName(args[0]); ok {
				mac = n.MAC
			}
			return forgetNode(cmd, args[0], mac)
		},
	}
	var fingerprint string
	approve := &cobra.Command{
		Use:   "approve NAME",
		Short: "Enroll the key NAME presented (pending): from then on only that key gets NAME's secrets",
		Long: "Enroll the key NAME presented (pending). Compare its fingerprint with the one the node's console\n" +
			"printed and pass it with --fingerprint: a key someone else presented for NAME is then refused.\n" +
			"Takes effect at once, also in a running herd serve.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := knownNode(args[0]); err != nil {
				return err
			}
			fp, err := nodeauth.OpenRegistry(globals.state).Approve(args[0], fingerprint)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "approved %s: key %s\n", args[0], fp)
			return nil
		},
	}
	approve.Flags().StringVar(&fingerprint, "fingerprint", "", "the SHA256:... fingerprint the node's console printed (refuse any other key)")
	var window time.Duration
	enroll := &cobra.Command{
		Use:   "enroll NAME...",
		Short: "Open an enrollment window: the first key each named node presents within --for is enrolled without approval",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if window <= 0 || window > 24*time.Hour {
				return fmt.Errorf("--for %s: want a duration between 1s and 24h", window)
			}
			for _, n := range args {
				if err := knownNode(n); err != nil {
					return err
				}
			}
			until := time.Now().Add(window)
			if err := nodeauth.OpenRegistry(globals.state).OpenWindow(args, until); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "enrollment window open until %s for %s: the first key each presents is accepted\n",
				until.UTC().Format(time.RFC3339), strings.Join(args, ", "))
			return nil
		},
	}
	enroll.Flags().DurationVar(&window, "for", 15*time.Minute, "how long the window stays open")
	nodeCmd.AddCommand(list, show, addCmd, rm, forget, approve, enroll)
	root.AddCommand(nodeCmd)
}

// writeNodeNetworks prints the node's declared interfaces and the links it
// reported in its last "up" event, with what it found degraded.
func writeNodeNetworks(w io.Writer, cfg *site.Config, v fleet.Node) {
	if len(v.Interfaces) > 0 {
		fmt.Fprintln(w, "declared interfaces:")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  LABEL\tKIND\tMATCH\tNETWORK\tADDRESS\tMTU")
		for i := range v.Interfaces {
			it := &v.Interfaces[i]
			match := it.MAC
			switch {
			case it.Match != "":
				match = it.Match
			case it.Bond != nil:
				match = it.Bond.Mode + " " + strings.Join(it.Bond.Members, ",")
			case it.VLAN != nil:
				match = fmt.Sprintf("vlan %d on %s", it.VLAN.ID, it.VLAN.Parent)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%d\n", it.Label(), it.Kind(), match, dash(it.Network), dash(cfg.AddressCIDR(it)), cfg.MTUFor(it))
		}
		tw.Flush()
	}
	r := v.Seen
	if r == nil || len(r.Interfaces) == 0 {
		if len(v.Interfaces) > 0 {
			fmt.Fprintln(w, "reported interfaces: none yet (reported with the next \"up\")")
		}
		return
	}
	fmt.Fprintf(w, "reported interfaces (%s):\n", ago(r.UpTime))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  NAME\tMAC\tSTATE\tCARRIER\tMTU\tADDRESSES\tROLE")
	for _, l := range r.Interfaces {
		role := l.Network
		if l.Boot {
			role = "boot"
		}
		if l.Label != "" && l.Label != l.Network {
			role += " (" + l.Label + ")"
		}
		carrier := "no"
		if l.Carrier {
			carrier = "yes"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%d\t%s\t%s\n", l.Name, dash(l.MAC), dash(l.State), carrier, l.MTU, dash(strings.Join(l.Addresses, ",")), dash(role))
	}
	tw.Flush()
	for _, d := range r.Degraded {
		fmt.Fprintf(w, "%s\n", d)
	}
}

// busyWord is `herd node list`'s BUSY column: "-" without a report, else
// "yes (2 users, 1 GPU process)" or "idle since 5m ago".
func busyWord(v fleet.Node) string {
	st := v.Status
	switch {
	case st == nil:
		return "-"
	case v.Busy:
		users := map[string]bool{}
		for _, s := range st.Sessions {
			users[s.User] = true
		}
		return fmt.Sprintf("yes (%d users, %d GPU processes)", len(users), len(st.GPUProcesses))
	case st.LastBusy.IsZero():
		return "idle"
	}
	return "idle since " + ago(st.LastBusy)
}

// writeNodeStatus prints the node's latest status report: health, sessions,
// GPUs with their processes, self-checks.
func writeNodeStatus(w io.Writer, v fleet.Node) {
	st := v.Status
	if st == nil {
		fmt.Fprintln(w, "status:      no report yet")
		return
	}
	when := "-"
	if v.Seen != nil {
		when = ago(v.Seen.StatusTime)
	}
	fmt.Fprintf(w, "status:      reported %s (image %s, up %s)\n", when, short(st.Image), (time.Duration(st.UptimeSeconds) * time.Second).String())
	fmt.Fprintf(w, "health:      %s\n", st.Health.String())
	exp := "none set"
	if st.Health.ExpectedGPUs >= 0 {
		exp = fmt.Sprint(st.Health.ExpectedGPUs)
	}
	fmt.Fprintf(w, "gpus:        %d seen, expected %s\n", st.Health.SeenGPUs, exp)
	for _, x := range st.Health.Xid {
		fmt.Fprintf(w, "xid:         %s\n", x)
	}
	fmt.Fprintf(w, "busy:        %s\n", busyWord(v))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if len(st.Sessions) > 0 {
		fmt.Fprintln(tw, "  USER\tTTY\tFROM\tSINCE")
		for _, s := range st.Sessions {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", s.User, dash(s.TTY), dash(s.From), ago(s.Since))
		}
	}
	if len(v.GPUs) > 0 {
		fmt.Fprintln(tw, "  GPU\tMODEL\tMEMORY\tUTIL\tTEMP\tHEALTH\tPROCESSES")
		for _, g := range v.GPUs {
			var ps []string
			for _, p := range g.Processes {
				ps = append(ps, fmt.Sprintf("%d %s %s %dMiB", p.PID, dash(p.User), p.Name, p.MemoryMiB))
			}
			fmt.Fprintf(tw, "  %d\t%s\t%d/%d MiB\t%d%%\t%dC\t%s\t%s\n", g.Index, g.Model, g.MemoryUsedMiB, g.MemoryTotalMiB, g.UtilPercent, g.TemperatureC, g.Health, dash(strings.Join(ps, "; ")))
		}
	}
	if len(st.Checks) > 0 {
		fmt.Fprintln(tw, "  CHECK\tOK\tDETAIL")
		for _, c := range st.Checks {
			fmt.Fprintf(tw, "  %s\t%v\t%s\n", c.Name, c.OK, dash(c.Detail))
		}
	}
	tw.Flush()
}

// knownNode checks that name is a node of herd.yaml.
func knownNode(name string) error {
	cfg, err := loadSite(false)
	if err != nil {
		return err
	}
	if _, ok := cfg.NodeByName(name); !ok {
		return fmt.Errorf("no node %q in %s", name, globals.config)
	}
	return nil
}

// forgetNode drops a node's identity and its inventory record (mac may be
// "": then the record named name, if any).
func forgetNode(cmd *cobra.Command, name, mac string) error {
	if err := httpboot.ForgetNode(globals.state, name); err != nil {
		return err
	}
	// The MAC is forgotten even when nodes.json lacks its record: a running
	// herd serve may hold it in memory, not yet written.
	macs := []string{}
	if mac != "" {
		macs = append(macs, mac)
	}
	inv, err := inventory.Load(globals.state)
	if err != nil {
		return err
	}
	for _, r := range inv.Records() {
		if (mac != "" && sameMAC(r.MAC, mac)) || (mac == "" && r.Name == name) {
			macs = append(macs, r.MAC)
		}
	}
	for _, m := range macs {
		// Also tells a running herd serve (its inventory is in memory).
		if err := inventory.ForgetIn(globals.state, m); err != nil {
			return err
		}
	}
	fmt.Fprintf(cmd.OutOrStdout(), "forgot %s: enrolled key, SSH host keys and machine-id removed; it must enroll again\n", name)
	return nil
}

func sameMAC(a, b string) bool {
	x, err1 := net.ParseMAC(a)
	y, err2 := net.ParseMAC(b)
	return err1 == nil && err2 == nil && x.String() == y.String()
}
