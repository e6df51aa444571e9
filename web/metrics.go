package web

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herdlab/herd/fleet"
	"github.com/herdlab/herd/fleet/nodestatus"
)

// nodeCollector exports per-node gauges computed at scrape time from the
// same rows the API serves (no second copy of the state to drift).
// Health, busy and per-GPU gauges come from each node's latest signed
// status report.
type nodeCollector struct{ d *Dashboard }

var (
	nodeStateDesc = prometheus.NewDesc("herd_node_state",
		"1 for the node's current state (unseen, seen, booting, up, error), 0 for the others.",
		[]string{"node", "mac", "state"}, nil)
	nodeUpDesc = prometheus.NewDesc("herd_node_up",
		"1 if the node's last boot event was \"up\" (as last reported; no heartbeat yet).",
		[]string{"node", "mac"}, nil)
	nodeLastBootDesc = prometheus.NewDesc("herd_node_last_boot_timestamp_seconds",
		"When the node last reported \"up\" (Unix time); absent if never.",
		[]string{"node", "mac"}, nil)
	nodeBootsDesc = prometheus.NewDesc("herd_node_boots",
		"Boots (\"up\" events) the server recorded for the node.",
		[]string{"node", "mac"}, nil)
	nodeHealthDesc = prometheus.NewDesc("herd_node_health",
		"1 for the health the node last reported (ready, degraded, unknown), 0 for the others; absent without a report.",
		[]string{"node", "mac", "health"}, nil)
	nodeBusyDesc = prometheus.NewDesc("herd_node_busy",
		"1 if the node's last report had a logged-in user or a GPU compute process.",
		[]string{"node", "mac"}, nil)
	nodeSessionsDesc = prometheus.NewDesc("herd_node_sessions",
		"Logged-in sessions in the node's last report.", []string{"node", "mac"}, nil)
	nodeGPUsDesc = prometheus.NewDesc("herd_node_gpus",
		"GPUs the node saw (seen) and the site expects (expected; absent when none is set).",
		[]string{"node", "mac", "kind"}, nil)
	nodeReportDesc = prometheus.NewDesc("herd_node_status_timestamp_seconds",
		"When the server received the node's last status report (Unix time).", []string{"node", "mac"}, nil)
	gpuLabels       = []string{"node", "gpu", "uuid", "model"}
	gpuMemUsedDesc  = prometheus.NewDesc("herd_gpu_memory_used_bytes", "GPU memory in use.", gpuLabels, nil)
	gpuMemTotalDesc = prometheus.NewDesc("herd_gpu_memory_total_bytes", "GPU memory in total.", gpuLabels, nil)
	gpuUtilDesc     = prometheus.NewDesc("herd_gpu_utilization_ratio", "GPU utilisation (0 to 1).", gpuLabels, nil)
	gpuTempDesc     = prometheus.NewDesc("herd_gpu_temperature_celsius", "GPU temperature.", gpuLabels, nil)
	gpuPowerDesc    = prometheus.NewDesc("herd_gpu_power_watts", "GPU power draw.", gpuLabels, nil)
	gpuProcsDesc    = prometheus.NewDesc("herd_gpu_processes", "Compute processes on the GPU.", gpuLabels, nil)
	gpuHealthyDesc  = prometheus.NewDesc("herd_gpu_healthy",
		"1 if the GPU has no uncorrected ECC errors or retired memory and persistence mode is on.", gpuLabels, nil)
)

var allHealth = []string{nodestatus.Ready, nodestatus.Degraded, nodestatus.Unknown}

var allStates = []string{fleet.StateUnseen, fleet.StateSeen, fleet.StateBooting, fleet.StateUp, fleet.StateError}

// Describe sends the gauges' descriptions.
func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- nodeStateDesc
	ch <- nodeUpDesc
	ch <- nodeLastBootDesc
	ch <- nodeBootsDesc
	for _, d := range []*prometheus.Desc{nodeHealthDesc, nodeBusyDesc, nodeSessionsDesc, nodeGPUsDesc, nodeReportDesc,
		gpuMemUsedDesc, gpuMemTotalDesc, gpuUtilDesc, gpuTempDesc, gpuPowerDesc, gpuProcsDesc, gpuHealthyDesc} {
		ch <- d
	}
}

// Collect sends one set of gauges per node.
func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	ns, _ := c.d.nodes()
	for _, n := range ns {
		for _, s := range allStates {
			v := 0.0
			if n.State == s {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(nodeStateDesc, prometheus.GaugeValue, v, n.Name, n.MAC, s)
		}
		up := 0.0
		if n.State == fleet.StateUp {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(nodeUpDesc, prometheus.GaugeValue, up, n.Name, n.MAC)
		if r := n.Seen; r != nil {
			if !r.UpTime.IsZero() {
				ch <- prometheus.MustNewConstMetric(nodeLastBootDesc, prometheus.GaugeValue, float64(r.UpTime.Unix()), n.Name, n.MAC)
			}
			ch <- prometheus.MustNewConstMetric(nodeBootsDesc, prometheus.GaugeValue, float64(r.Boots), n.Name, n.MAC)
		}
		collectStatus(ch, n)
	}
}

// collectStatus sends the gauges of n's latest status report.
func collectStatus(ch chan<- prometheus.Metric, n fleet.Node) {
	st := n.Status
	if st == nil {
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, h := range allHealth {
		gauge(nodeHealthDesc, b2f(st.Health.State == h), n.Name, n.MAC, h)
	}
	gauge(nodeBusyDesc, b2f(n.Busy), n.Name, n.MAC)
	gauge(nodeSessionsDesc, float64(len(st.Sessions)), n.Name, n.MAC)
	gauge(nodeGPUsDesc, float64(st.Health.SeenGPUs), n.Name, n.MAC, "seen")
	if st.Health.ExpectedGPUs >= 0 {
		gauge(nodeGPUsDesc, float64(st.Health.ExpectedGPUs), n.Name, n.MAC, "expected")
	}
	if n.Seen != nil && !n.Seen.StatusTime.IsZero() {
		gauge(nodeReportDesc, float64(n.Seen.StatusTime.Unix()), n.Name, n.MAC)
	}
	for _, g := range n.GPUs {
		l := []string{n.Name, strconv.Itoa(g.Index), g.UUID, g.Model}
		gauge(gpuMemUsedDesc, float64(g.MemoryUsedMiB)*(1<<20), l...)
		gauge(gpuMemTotalDesc, float64(g.MemoryTotalMiB)*(1<<20), l...)
		gauge(gpuUtilDesc, float64(g.UtilPercent)/100, l...)
		gauge(gpuTempDesc, float64(g.TemperatureC), l...)
		gauge(gpuPowerDesc, g.PowerW, l...)
		gauge(gpuProcsDesc, float64(len(g.Processes)), l...)
		gauge(gpuHealthyDesc, b2f(g.Health == "ok"), l...)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
