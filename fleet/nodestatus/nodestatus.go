// Package nodestatus is the contract between a running node's status agent
// (`herd-boot status`, image/nodeboot) and the server (pxe/httpboot, fleet,
// rollout, web): what a node reports every minute about its users, its GPUs
// and its health, and what the server may ask of it in reply. It holds types
// only, so every side can import it without importing the others.
package nodestatus

import "time"

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
