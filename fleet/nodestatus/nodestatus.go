// Package nodestatus is the contract between a running node's status agent
// (`herd-boot status`, image/nodeboot) and the server (pxe/httpboot, fleet,
// rollout, web): what a node reports every minute about its users, its GPUs
// and its health, and what the server may ask of it in reply. It holds types
// only, so every side can import it without importing the others.
package nodestatus

import (
	"fmt"
	"strings"
	"time"
)

// Health states a node reports.
const (
	Ready    = "ready"    // everything the node checks is as expected
	Degraded = "degraded" // e.g. fewer GPUs than expected; Reason says what
	Unknown  = "unknown"  // the node could not tell (nvidia-smi failed, ...)
)

// Report is one status report, posted signed (nodeauth purpose "status") to
// POST /nodes/<name>/status by the node's status agent at boot and then
// periodically.
type Report struct {
	Node  string    `json:"node"`
	Image string    `json:"image"` // the image ID the node runs
	Time  time.Time `json:"time"`  // the node's clock when it sent this
	// UptimeSeconds is /proc/uptime's first field.
	UptimeSeconds float64 `json:"uptime_seconds"`
	// Sessions are the users logged in now (utmp / logind).
	Sessions []Session `json:"sessions"`
	// GPUs are what the driver sees (nvidia-smi); empty on a node without.
	GPUs []GPU `json:"gpus"`
	// GPUProcesses are the compute processes holding a GPU.
	GPUProcesses []GPUProcess `json:"gpu_processes"`
	// LastBusy is when the node last had a session or a GPU process (zero:
	// not since boot).
	LastBusy time.Time `json:"last_busy,omitempty"`
	Health   Health    `json:"health"`
	// Checks are the node's self-checks (those of `herd image test` that
	// make sense on a production node); rollout waits for them to pass.
	Checks []Check `json:"checks"`
	// Network is the node's links now and what it finds not working on
	// the networks herd.yaml declares for it (nil: an agent that does not
	// report them; the server then keeps what the "up" event said).
	Network *Network `json:"network,omitempty"`
}

// Network is a node's links and its network-degraded lines, in its "up"
// event and in every status report.
type Network struct {
	Interfaces []Link `json:"interfaces"`
	// Degraded has one "degraded: <network> network down (...)" per
	// declared network that is not working (empty: all work).
	Degraded []string `json:"degraded"`
}

// Link is one network interface as a node reports it.
type Link struct {
	Name      string   `json:"name"`
	MAC       string   `json:"mac,omitempty"`
	State     string   `json:"state"` // sysfs operstate: up, down, lowerlayerdown, ...
	Carrier   bool     `json:"carrier"`
	MTU       int      `json:"mtu"`
	Addresses []string `json:"addresses,omitempty"` // IPv4 CIDRs
	// Boot marks the NIC the node reaches the herd server through.
	Boot bool `json:"boot,omitempty"`
	// Label and Network name the herd.yaml interface this link is.
	Label   string `json:"label,omitempty"`
	Network string `json:"network,omitempty"`
}

// Busy reports whether someone is using the node now.
func (r *Report) Busy() bool { return len(r.Sessions) > 0 || len(r.GPUProcesses) > 0 }

// Session is one logged-in user.
type Session struct {
	User  string    `json:"user"`
	TTY   string    `json:"tty,omitempty"`
	From  string    `json:"from,omitempty"`
	Since time.Time `json:"since"`
}

// GPU is one GPU as nvidia-smi reports it.
type GPU struct {
	Index          int     `json:"index"`
	UUID           string  `json:"uuid"`
	Model          string  `json:"model"`
	PCIBus         string  `json:"pci_bus,omitempty"`
	Driver         string  `json:"driver"`
	Persistence    bool    `json:"persistence"`
	MemoryUsedMiB  int     `json:"memory_used_mib"`
	MemoryTotalMiB int     `json:"memory_total_mib"`
	UtilPercent    int     `json:"utilization_percent"`
	TemperatureC   int     `json:"temperature_c"`
	PowerW         float64 `json:"power_w"`
	// ECCUncorrected is the volatile uncorrectable ECC count (-1: no ECC).
	ECCUncorrected int `json:"ecc_uncorrected"`
	// RetiredPages counts retired or remapped-failed pages (-1: not reported).
	RetiredPages int `json:"retired_pages"`
}

// GPUProcess is a process holding a GPU.
type GPUProcess struct {
	PID       int    `json:"pid"`
	User      string `json:"user"`
	Name      string `json:"name"`
	GPUUUID   string `json:"gpu_uuid"`
	MemoryMiB int    `json:"memory_mib"`
}

// Health is the node's verdict on itself.
type Health struct {
	State  string `json:"state"`            // Ready, Degraded or Unknown
	Reason string `json:"reason,omitempty"` // e.g. "3/4 GPUs", "driver 580.95 != pinned 580.82"
	// ExpectedGPUs and SeenGPUs: -1 when the site sets no expectation.
	ExpectedGPUs int      `json:"expected_gpus"`
	SeenGPUs     int      `json:"seen_gpus"`
	Xid          []string `json:"xid,omitempty"` // Xid lines from the kernel log since boot
}

// Check is one self-check's result.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// Reply is the server's answer to a report: what it asks the node to do.
// The agent shows Wall once per WallID to logged-in users (wall(1)) and,
// when Reboot is true, reboots the node cleanly (systemctl reboot).
type Reply struct {
	WallID string `json:"wall_id,omitempty"`
	Wall   string `json:"wall,omitempty"`
	Reboot bool   `json:"reboot,omitempty"`
	// Interval is how many seconds until the next report (0: the default).
	Interval int `json:"interval,omitempty"`
}

// Bounds on a report the server accepts (a node's own agent stays far
// inside them; anything over is refused, not truncated).
const (
	MaxBody      = 256 << 10 // bytes of one report's JSON
	MaxSessions  = 256
	MaxGPUs      = 64
	MaxProcesses = 1024
	MaxChecks    = 64
	MaxXid       = 32
	maxString    = 256
	// MaxLinks, MaxAddresses (per link) and MaxDegraded bound a node's
	// network report, in its "up" event as in a status report.
	MaxLinks     = 64
	MaxAddresses = 32
	MaxDegraded  = 32
	maxLinkValue = 64
)

// ValidateNetwork checks a node's links and degraded lines against the
// bounds; field prefixes the field names in errors ("event field ",
// "report field network.").
func ValidateNetwork(field string, links []Link, degraded []string) error {
	if len(links) > MaxLinks {
		return fmt.Errorf("%sinterfaces: %d entries, at most %d", field, len(links), MaxLinks)
	}
	for i, l := range links {
		if len(l.Addresses) > MaxAddresses {
			return fmt.Errorf("%sinterfaces[%d].addresses: %d entries, at most %d", field, i, len(l.Addresses), MaxAddresses)
		}
		fields := append([]string{l.Name, l.MAC, l.State, l.Label, l.Network}, l.Addresses...)
		for _, v := range fields {
			if len(v) > maxLinkValue || strings.ContainsAny(v, "\x00\n\r") {
				return fmt.Errorf("%sinterfaces[%d]: a value longer than %d bytes or with control characters", field, i, maxLinkValue)
			}
		}
	}
	if len(degraded) > MaxDegraded {
		return fmt.Errorf("%sdegraded: %d entries, at most %d", field, len(degraded), MaxDegraded)
	}
	for i, d := range degraded {
		if len(d) > maxString || strings.ContainsAny(d, "\x00\n\r") {
			return fmt.Errorf("%sdegraded[%d]: longer than %d bytes or has control characters", field, i, maxString)
		}
	}
	return nil
}

// DefaultInterval is the seconds between two reports when Reply.Interval is 0.
const DefaultInterval = 60

// String is the one-line verdict `herd node list` shows: "ready",
// "degraded: 3/4 GPUs", "unknown: ...".
func (h Health) String() string {
	if h.State == "" {
		return "-"
	}
	if h.Reason == "" {
		return h.State
	}
	return h.State + ": " + h.Reason
}

// Validate checks a report's bounds and that its strings are single lines
// of bounded length (they end up in tables, pages and logs).
func (r *Report) Validate() error {
	bad := func(field, s string) error {
		if len(s) > maxString || strings.ContainsAny(s, "\x00\r\n") {
			return fmt.Errorf("report field %s: longer than %d bytes or has control characters", field, maxString)
		}
		return nil
	}
	switch {
	case len(r.Sessions) > MaxSessions:
		return fmt.Errorf("report: %d sessions, at most %d", len(r.Sessions), MaxSessions)
	case len(r.GPUs) > MaxGPUs:
		return fmt.Errorf("report: %d GPUs, at most %d", len(r.GPUs), MaxGPUs)
	case len(r.GPUProcesses) > MaxProcesses:
		return fmt.Errorf("report: %d GPU processes, at most %d", len(r.GPUProcesses), MaxProcesses)
	case len(r.Checks) > MaxChecks:
		return fmt.Errorf("report: %d checks, at most %d", len(r.Checks), MaxChecks)
	case len(r.Health.Xid) > MaxXid:
		return fmt.Errorf("report: %d Xid lines, at most %d", len(r.Health.Xid), MaxXid)
	}
	if n := r.Network; n != nil {
		if err := ValidateNetwork("report field network.", n.Interfaces, n.Degraded); err != nil {
			return err
		}
	}
	switch r.Health.State {
	case Ready, Degraded, Unknown:
	default:
		return fmt.Errorf("report field health.state: %q is not ready, degraded or unknown", r.Health.State)
	}
	check := [][2]string{{"node", r.Node}, {"image", r.Image}, {"health.reason", r.Health.Reason}}
	for i, s := range r.Sessions {
		p := fmt.Sprintf("sessions[%d].", i)
		check = append(check, [2]string{p + "user", s.User}, [2]string{p + "tty", s.TTY}, [2]string{p + "from", s.From})
	}
	for i, g := range r.GPUs {
		p := fmt.Sprintf("gpus[%d].", i)
		check = append(check, [2]string{p + "uuid", g.UUID}, [2]string{p + "model", g.Model}, [2]string{p + "pci_bus", g.PCIBus}, [2]string{p + "driver", g.Driver})
	}
	for i, g := range r.GPUProcesses {
		p := fmt.Sprintf("gpu_processes[%d].", i)
		check = append(check, [2]string{p + "user", g.User}, [2]string{p + "name", g.Name}, [2]string{p + "gpu_uuid", g.GPUUUID})
	}
	for i, c := range r.Checks {
		p := fmt.Sprintf("checks[%d].", i)
		check = append(check, [2]string{p + "name", c.Name}, [2]string{p + "detail", c.Detail})
	}
	for i, x := range r.Health.Xid {
		check = append(check, [2]string{fmt.Sprintf("health.xid[%d]", i), x})
	}
	for _, c := range check {
		if err := bad(c[0], c[1]); err != nil {
			return err
		}
	}
	return nil
}

// NodeConfigPath is where the runtime overlay puts a node's NodeConfig
// (relative to the node's root).
const NodeConfigPath = "etc/herd/node.json"

// NodeConfig is what the server tells a node about itself for its status
// agent, in the runtime overlay (NodeConfigPath). Nothing in it is secret.
type NodeConfig struct {
	Node string `json:"node"`
	// ExpectGPUs is the site's expectation for this node (nil: none set).
	ExpectGPUs *ExpectGPUs `json:"expect_gpus,omitempty"`
	// HomeRoot is where users' homes are automounted ("" : no NAS homes).
	HomeRoot string `json:"home_root,omitempty"`
	// LDAPGroup is a directory group every node must resolve ("" : no LDAP).
	LDAPGroup string `json:"ldap_group,omitempty"`
}

// ExpectGPUs is how many GPUs a node should have, and optionally which
// model (matched case-insensitively as a substring of nvidia-smi's name).
type ExpectGPUs struct {
	Count int    `json:"count"`
	Model string `json:"model,omitempty"`
}
