package dhcp

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests *prometheus.CounterVec
	replies  *prometheus.CounterVec
	ignored  *prometheus.CounterVec
	// pool{state=size|free|declined}: exhaustion shows as free 0;
	// leaseStore is 1 while leases.json is written, 0 while the disk fails
	// (replies then come from memory).
	pool       *prometheus.GaugeVec
	leaseStore *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herd_dhcp_requests_total", Help: "DHCP requests received, by message type and mode.",
		}, []string{"type", "mode"}),
		replies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herd_dhcp_replies_total", Help: "DHCP replies sent, by message type and mode.",
		}, []string{"type", "mode"}),
		ignored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herd_dhcp_ignored_total", Help: "DHCP requests left unanswered, by reason.",
		}, []string{"reason"}),
		pool: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "herd_dhcp_pool_addresses", Help: "Addresses of the dynamic range by state (size, free, declined); free 0 is an exhausted pool.",
		}, []string{"state"}),
		leaseStore: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "herd_dhcp_lease_store_ok", Help: "1 while leases.json is saved; 0 while saving fails and leases live only in memory.",
		}, []string{}),
	}
	m.leaseStore.WithLabelValues().Set(1)
	if reg == nil {
		return m, nil
	}
	for _, g := range []**prometheus.GaugeVec{&m.pool, &m.leaseStore} {
		if err := reg.Register(*g); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, err
			}
			existing, ok := are.ExistingCollector.(*prometheus.GaugeVec)
			if !ok {
				return nil, err
			}
			*g = existing
		}
	}
	for _, c := range []**prometheus.CounterVec{&m.requests, &m.replies, &m.ignored} {
		if err := reg.Register(*c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, err
			}
			// A restarted server in the same process reuses the counters.
			existing, ok := are.ExistingCollector.(*prometheus.CounterVec)
			if !ok {
				return nil, err
			}
			*c = existing
		}
	}
	return m, nil
}
