package web

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/herdlab/herd/fleet"
)

// nodeCollector exports per-node gauges computed at scrape time from the
// same rows the API serves (no second copy of the state to drift).
// Per-GPU gauges wait for authenticated GPU reports from nodes.
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
)

var allStates = []string{fleet.StateUnseen, fleet.StateSeen, fleet.StateBooting, fleet.StateUp, fleet.StateError}

// Describe sends the gauges' descriptions.
func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- nodeStateDesc
	ch <- nodeUpDesc
	ch <- nodeLastBootDesc
	ch <- nodeBootsDesc
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
	}
}
