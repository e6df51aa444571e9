// Package fleet shapes what herd knows about its nodes and images into the
// rows every reader shows: `herd node list --json`, `herd image list --json`,
// the dashboard's JSON API (/api/v1/...) and its pages all return these same
// structures, so the CLI and the web can never disagree. It reads only
// through other packages' APIs (site config, pxe/inventory, image/store).
package fleet

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/herdlab/herd/fleet/nodestatus"
	"github.com/herdlab/herd/image/diff"
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/internal/nodeauth"
	"github.com/herdlab/herd/pxe/inventory"
	"github.com/herdlab/herd/rollout"
	"github.com/herdlab/herd/site"
)

// Node states (Node.State), derived from what the server last saw.
const (
	StateUnseen  = "unseen"  // never seen by DHCP, the boot script or an event
	StateSeen    = "seen"    // DHCP or the boot script, no boot event yet
	StateBooting = "booting" // last event is a stage before "up"
	StateUp      = "up"      // last event is "up" (as last reported: no heartbeat yet)
	StateError   = "error"   // last event is "error"
)

// Node is one node: herd.yaml's entry joined with what the server saw.
type Node struct {
	Name       string `json:"name"`
	MAC        string `json:"mac"`
	IP         string `json:"ip,omitempty"`
	Image      string `json:"image_pin,omitempty"`
	KernelArgs string `json:"kernel_args,omitempty"`
	Configured bool   `json:"configured"`
	// Interfaces are herd.yaml's nodes[].interfaces (what the node should have).
	Interfaces []site.Interface `json:"interfaces,omitempty"`
	// State is one of the State* constants.
	State string            `json:"state"`
	Seen  *inventory.Record `json:"seen,omitempty"`
	// GPUs are from the node's latest status report (null: no report yet;
	// [] a node that reports no GPU).
	GPUs []GPU `json:"gpus"`
	// Status is the node's latest signed status report (moved here from
	// Seen, whose Status is always nil in a Node); nil until one arrives.
	Status *nodestatus.Report `json:"status,omitempty"`
	// Health is the report's verdict ("ready", "degraded: 0/1 GPUs"), ""
	// without a report or while the node boots (the report is then of the
	// previous boot).
	Health string `json:"health,omitempty"`
	// Busy: the latest report has a logged-in user or a GPU process.
	Busy bool `json:"busy"`
	// Identity is the node key (enrolled and/or pending fingerprint), set
	// by AddIdentity; absent in live updates.
	Identity *Identity `json:"identity,omitempty"`
	// Rollout is the node's part in the latest rollout ("rebooting",
	// "done: up on the new image, checks passed", ...), set by AddRollout.
	Rollout string `json:"rollout,omitempty"`
	// NextDownload is what the node's next boot downloads (its pin or the
	// current image, against the cache its last up event reported), set
	// by AddNextDownload; nil when unknown.
	NextDownload *Download `json:"next_download,omitempty"`
}

// AddRollout fills in each node's rollout progress from st (nil: none).
func AddRollout(nodes []Node, st *rollout.State) {
	if st == nil {
		return
	}
	for i := range nodes {
		if n := st.Node(nodes[i].Name); n != nil {
			nodes[i].Rollout = n.State
			if n.Name == st.Canary {
				nodes[i].Rollout += " (canary)"
			}
		}
	}
}

// Identity is a node's key state (internal/nodeauth's registry).
type Identity struct {
	Enrolled string `json:"enrolled,omitempty"` // fingerprint of the enrolled key
	Pending  string `json:"pending,omitempty"`  // fingerprint of a key waiting for approval
	From     string `json:"pending_from,omitempty"`
	Window   string `json:"window_until,omitempty"` // an open enrollment window
}

// String is the one-word-and-fingerprint form `herd node list` prints.
func (v *Identity) String() string {
	switch {
	case v == nil:
	case v.Pending != "":
		return "pending " + v.Pending
	case v.Enrolled != "":
		return "enrolled " + v.Enrolled
	case v.Window != "":
		return "window until " + v.Window
	}
	return "-"
}

// AddIdentity fills in each configured node's key state from reg, in place.
func AddIdentity(nodes []Node, reg *nodeauth.Registry, now time.Time) {
	wins, _ := reg.Windows(now)
	for i := range nodes {
		n := &nodes[i]
		if !n.Configured || n.Name == "" {
			continue
		}
		id := &Identity{}
		if k, err := reg.Enrolled(n.Name); err == nil && k != nil {
			id.Enrolled = nodeauth.Fingerprint(k)
		}
		if p, err := reg.PendingKey(n.Name); err == nil && p != nil {
			id.Pending, id.From = p.Fingerprint, p.From
		}
		if t, ok := wins[n.Name]; ok {
			id.Window = t.UTC().Format(time.RFC3339)
		}
		n.Identity = id
	}
}

// GPU is one GPU as the node's latest status report shows it.
type GPU struct {
	Index          int     `json:"index"`
	UUID           string  `json:"uuid"`
	Model          string  `json:"model"`
	PCIBus         string  `json:"pci_bus,omitempty"`
	MemoryUsedMiB  int     `json:"memory_used_mib"`
	MemoryTotalMiB int     `json:"memory_total_mib"`
	UtilPercent    int     `json:"utilization_percent"`
	TemperatureC   int     `json:"temperature_c"`
	PowerW         float64 `json:"power_w"`
	// Health is "ok", else what is wrong with this GPU ("2 uncorrected ECC
	// errors", "persistence mode off", ...).
	Health    string       `json:"health"`
	Processes []GPUProcess `json:"processes"`
}

// GPUProcess is a process holding a GPU; User is empty unless the site
// allows user names (dashboard.show_gpu_users).
type GPUProcess struct {
	PID       int    `json:"pid"`
	User      string `json:"user,omitempty"`
	Name      string `json:"name,omitempty"`
	MemoryMiB int    `json:"memory_mib"`
}

// GPUHealth is one GPU's verdict: "ok", or what is wrong with it.
func GPUHealth(g nodestatus.GPU) string {
	var bad []string
	if g.ECCUncorrected > 0 {
		bad = append(bad, fmt.Sprintf("%d uncorrected ECC errors", g.ECCUncorrected))
	}
	if g.RetiredPages > 0 {
		bad = append(bad, fmt.Sprintf("%d retired pages", g.RetiredPages))
	}
	if !g.Persistence {
		bad = append(bad, "persistence mode off")
	}
	if len(bad) == 0 {
		return "ok"
	}
	return strings.Join(bad, ", ")
}

// addStatus moves r's status report onto v: Status, Health, Busy, GPUs.
func (v *Node) addStatus() {
	r := v.Seen
	if r == nil || r.Status == nil {
		return
	}
	cp := *r
	v.Seen = &cp
	v.Status, cp.Status = r.Status, nil
	st := v.Status
	v.Busy = st.Busy()
	if v.State == StateUp {
		v.Health = st.Health.String()
	}
	v.GPUs = make([]GPU, 0, len(st.GPUs))
	for _, g := range st.GPUs {
		out := GPU{Index: g.Index, UUID: g.UUID, Model: g.Model, PCIBus: g.PCIBus, MemoryUsedMiB: g.MemoryUsedMiB,
			MemoryTotalMiB: g.MemoryTotalMiB, UtilPercent: g.UtilPercent, TemperatureC: g.TemperatureC, PowerW: g.PowerW,
			Health: GPUHealth(g), Processes: []GPUProcess{}}
		for _, p := range st.GPUProcesses {
			if p.GPUUUID == g.UUID {
				out.Processes = append(out.Processes, GPUProcess{PID: p.PID, User: p.User, Name: p.Name, MemoryMiB: p.MemoryMiB})
			}
		}
		v.GPUs = append(v.GPUs, out)
	}
}

// stateOf derives a node's state from its inventory record.
func stateOf(r *inventory.Record) string {
	switch {
	case r == nil:
		return StateUnseen
	case r.Stage == "up":
		return StateUp
	case r.Stage == "error":
		return StateError
	case r.Stage != "":
		return StateBooting
	}
	return StateSeen
}

// Nodes joins herd.yaml's nodes with the inventory, config order first,
// then MACs the server met that herd.yaml does not name (discovered).
func Nodes(cfg *site.Config, inv *inventory.Inventory) []Node {
	out := []Node{}
	seen := map[string]bool{}
	for _, n := range cfg.Nodes {
		v := Node{Name: n.Name, MAC: n.MAC, IP: n.IP, Image: n.Image, KernelArgs: n.KernelArgs, Configured: true, Interfaces: n.Interfaces}
		if r, ok := inv.Get(n.MAC); ok {
			v.Seen = &r
			seen[r.MAC] = true
		}
		v.State = stateOf(v.Seen)
		v.addStatus()
		seen[n.MAC] = true
		out = append(out, v)
	}
	for _, r := range inv.Records() {
		if !seen[r.MAC] {
			r := r
			v := Node{Name: r.Name, MAC: r.MAC, Seen: &r, State: stateOf(&r)}
			v.addStatus()
			out = append(out, v)
		}
	}
	return out
}

// FindNode returns the node named name (or with MAC name) among nodes.
func FindNode(nodes []Node, name string) (Node, bool) {
	for _, n := range nodes {
		if n.Name == name || sameMAC(n.MAC, name) {
			return n, true
		}
	}
	return Node{}, false
}

func sameMAC(a, b string) bool {
	return a != "" && b != "" && strings.EqualFold(strings.ReplaceAll(a, "-", ":"), strings.ReplaceAll(b, "-", ":"))
}

// RedactGPUUsers removes user names from GPU processes and logged-in
// sessions unless allow is set (the site setting dashboard.show_gpu_users),
// in place (the shared status report is copied, never changed).
func RedactGPUUsers(nodes []Node, allow bool) {
	if allow {
		return
	}
	for i := range nodes {
		if st := nodes[i].Status; st != nil {
			cp := *st
			cp.Sessions = make([]nodestatus.Session, len(st.Sessions))
			for j, s := range st.Sessions {
				cp.Sessions[j] = nodestatus.Session{Since: s.Since}
			}
			cp.GPUProcesses = make([]nodestatus.GPUProcess, len(st.GPUProcesses))
			for j, p := range st.GPUProcesses {
				p.User = ""
				cp.GPUProcesses[j] = p
			}
			nodes[i].Status = &cp
		}
		for g := range nodes[i].GPUs {
			for p := range nodes[i].GPUs[g].Processes {
				nodes[i].GPUs[g].Processes[p].User = ""
			}
		}
	}
}

// Image is one image generation as `herd image list --json` and
// /api/v1/images show it.
type Image struct {
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	Recipe  string    `json:"recipe"`
	Kernel  string    `json:"kernel"`
	NVIDIA  string    `json:"nvidia"`
	Size    int64     `json:"size"`
	Current bool      `json:"current"`
	// Nodes counts nodes whose last boot reported this image.
	Nodes int `json:"nodes"`
	// Tested is "passed", "failed" or "" (never tested).
	Tested string `json:"tested"`
	// TestSummary is the test's one-line summary, if it was tested.
	TestSummary string `json:"test_summary,omitempty"`
	// VsCurrent summarises what this image changes against the current
	// one (nil for the current image, or when none is current).
	VsCurrent *DiffSummary `json:"vs_current,omitempty"`
}

// DiffSummary is image/diff's result counted, for a listing.
type DiffSummary struct {
	Kernel          *diff.Change `json:"kernel,omitempty"`
	NVIDIA          *diff.Change `json:"nvidia,omitempty"`
	PackagesAdded   int          `json:"packages_added"`
	PackagesRemoved int          `json:"packages_removed"`
	PackagesChanged int          `json:"packages_changed"`
	OverlaysChanged int          `json:"overlays_changed"` // added + removed + changed files
}

// String is the summary in one line, e.g. "kernel a → b, +3 -1 ~2 packages".
func (d *DiffSummary) String() string {
	if d == nil {
		return ""
	}
	var parts []string
	if d.Kernel != nil {
		parts = append(parts, "kernel "+d.Kernel.Old+" → "+d.Kernel.New)
	}
	if d.NVIDIA != nil {
		parts = append(parts, "nvidia "+d.NVIDIA.Old+" → "+d.NVIDIA.New)
	}
	if n := d.PackagesAdded + d.PackagesRemoved + d.PackagesChanged; n > 0 {
		parts = append(parts, fmt.Sprintf("+%d -%d ~%d packages", d.PackagesAdded, d.PackagesRemoved, d.PackagesChanged))
	}
	if d.OverlaysChanged > 0 {
		parts = append(parts, fmt.Sprintf("%d overlay files", d.OverlaysChanged))
	}
	if len(parts) == 0 {
		return "same packages, kernel, driver and overlays"
	}
	return strings.Join(parts, ", ")
}

// Summarize counts a diff.
func Summarize(r *diff.Result) *DiffSummary {
	return &DiffSummary{Kernel: r.Kernel, NVIDIA: r.NVIDIA, PackagesAdded: len(r.Added),
		PackagesRemoved: len(r.Removed), PackagesChanged: len(r.Changed),
		OverlaysChanged: len(r.OverlaysAdded) + len(r.OverlaysRemoved) + len(r.OverlaysChanged)}
}

// Images lists the store's generations, newest first as the store lists
// them, with boot counts from counts (pxe/inventory's CountByImage; nil is
// fine), test results, and a diff summary against the current image.
func Images(st *store.Store, counts map[string]int) ([]Image, error) {
	imgs, err := st.List()
	if err != nil {
		return nil, err
	}
	var cur *store.Image
	for i := range imgs {
		if imgs[i].Current {
			cur = &imgs[i]
		}
	}
	rows := []Image{}
	for _, im := range imgs {
		m := im.Manifest
		row := Image{ID: im.ID, Created: m.Created, Recipe: m.Recipe, Kernel: m.KernelABI,
			NVIDIA: m.NVIDIA, Size: m.Size(), Current: im.Current, Nodes: counts[im.ID]}
		row.Tested, row.TestSummary = testState(st, im.ID)
		if cur != nil && !im.Current {
			row.VsCurrent = Summarize(diff.Diff(cur.Manifest, m))
		}
		rows = append(rows, row)
	}
	return rows, nil
}

func testState(st *store.Store, id string) (string, string) {
	r, err := st.TestResult(id)
	if err != nil {
		slog.Warn("test result unreadable", "id", id, "err", err)
		return "", ""
	}
	switch {
	case r == nil:
		return "", ""
	case r.Passed:
		return "passed", r.Summary
	}
	return "failed", r.Summary
}

// FromRecord shapes one inventory record as Nodes would (joined with its
// herd.yaml entry when the MAC is configured), for live updates.
func FromRecord(cfg *site.Config, r inventory.Record) Node {
	v := Node{Name: r.Name, MAC: r.MAC, Seen: &r, State: stateOf(&r)}
	if n, ok := cfg.NodeByMAC(r.MAC); ok {
		v.Name, v.IP, v.Image, v.KernelArgs, v.Configured, v.Interfaces = n.Name, n.IP, n.Image, n.KernelArgs, true, n.Interfaces
	}
	v.addStatus()
	return v
}
