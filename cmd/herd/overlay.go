package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/herdlab/herd/overlays"
	"github.com/herdlab/herd/site"
)

var overlayFlags struct {
	out  string
	json bool
}

var overlayCmd = &cobra.Command{
	Use:   "overlay",
	Short: "Show the files the site overlays put on nodes",
}

var overlayListCmd = &cobra.Command{
	Use:   "list",
	Short: "List the overlays and whether the site enables them",
	Args:  cobra.NoArgs,
	RunE: func(cmd *cobra.Command, args []string) error {
		cfg, err := loadSite(true)
		if err != nil {
			return err
		}
		type row struct {
			Name    string `json:"name"`
			Kind    string `json:"kind"`
			Enabled bool   `json:"enabled"`
			Files   int    `json:"files"`
		}
		var rows []row
		for _, n := range overlays.Names() {
			r := row{Name: n, Kind: "system", Enabled: cfg.Enabled(n)}
			if r.Enabled {
				files, err := overlays.Render(cfg, []string{n})
				if err != nil {
					return err
				}
				r.Files = len(files)
			}
			rows = append(rows, r)
		}
		rows = append(rows, row{Name: overlays.RuntimeName, Kind: "runtime (per node, served at boot)", Enabled: true})
		if overlayFlags.json {
			return json.NewEncoder(cmd.OutOrStdout()).Encode(rows)
		}
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tENABLED\tFILES\tKIND")
		for _, r := range rows {
			files := fmt.Sprint(r.Files)
			if r.Kind != "system" {
				files = "-"
			}
			fmt.Fprintf(tw, "%s\t%v\t%s\t%s\n", r.Name, r.Enabled, files, r.Kind)
		}
		return tw.Flush()
	},
}

var overlayRenderCmd = &cobra.Command{
	Use:   "render NODE",
	Short: "Render what NODE gets: the site's system overlays plus its runtime overlay",
	Long: "Render the site's system overlays (as baked into the image) and NODE's runtime\n" +
		"overlay. Secrets are shown as placeholders: the real host keys and\n" +
		"machine-id live only on the server. With --out the files are written\n" +
		"into DIR (owners and modes kept, needs root); otherwise they are listed.",
	Args: cobra.ExactArgs(1),
	RunE: func(cmd *cobra.Command, args []string) error {
		cfg, err := loadSite(false)
		if err != nil {
			return err
		}
		node, ok := cfg.NodeByName(args[0])
		if !ok {
			return fmt.Errorf("node %q is not in %s", args[0], cfg.Path)
		}
		files, err := renderForNode(cfg, node)
		if err != nil {
			return err
		}
		if overlayFlags.out != "" {
			if err := os.MkdirAll(overlayFlags.out, 0o755); err != nil {
				return err
			}
			if err := overlays.Apply(files, overlayFlags.out); err != nil {
				return err
			}
		}
		if overlayFlags.json {
			type entry struct {
				Overlay string `json:"overlay"`
				Path    string `json:"path"`
				Kind    string `json:"kind"`
				Mode    string `json:"mode"`
				UID     int    `json:"uid"`
				GID     int    `json:"gid"`
				Link    string `json:"link,omitempty"`
				Content string `json:"content,omitempty"`
			}
			out := make([]entry, 0, len(files))
			for _, f := range files {
				out = append(out, entry{Overlay: f.Overlay, Path: "/" + f.Path, Kind: f.Kind(), Mode: overlays.OctalMode(f), UID: f.UID, GID: f.GID, Link: f.Link, Content: string(f.Data)})
			}
			return json.NewEncoder(cmd.OutOrStdout()).Encode(out)
		}
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "OVERLAY\tMODE\tOWNER\tPATH")
		for _, f := range files {
			p := "/" + f.Path
			if f.Link != "" {
				p += " -> " + f.Link
			}
			mode := f.Mode.String()
			if f.Dir {
				mode = "d" + mode[1:]
			} else if f.Link != "" {
				mode = "l" + mode[1:]
			}
			fmt.Fprintf(tw, "%s\t%s\t%d:%d\t%s\n", f.Overlay, mode, f.UID, f.GID, p)
		}
		return tw.Flush()
	},
}

// renderForNode renders system + runtime overlays with placeholder secrets
// (the CLI never reads the server's per-node secrets).
func renderForNode(cfg *site.Config, node *site.Node) ([]overlays.File, error) {
	files, err := overlays.Render(cfg, cfg.Overlays)
	if err != nil {
		return nil, err
	}
	sec := overlays.RuntimeSecrets{MachineID: "0123456789abcdef0123456789abcdef"}
	if cfg.LDAP.BindDN != "" {
		sec.LDAPBindPassword = "(bind password from " + cfg.LDAP.BindPasswordFile + ")"
	}
	rt, err := overlays.RenderRuntime(cfg, node, sec)
	if err != nil {
		return nil, err
	}
	return append(files, rt...), nil
}

func init() {
	overlayRenderCmd.Flags().StringVar(&overlayFlags.out, "out", "", "write the files into this directory")
	overlayCmd.PersistentFlags().BoolVar(&overlayFlags.json, "json", false, "print JSON")
	overlayCmd.AddCommand(overlayListCmd, overlayRenderCmd)
	root.AddCommand(overlayCmd)
}
