package dhcp

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests *prometheus.CounterVec
	replies  *prometheus.CounterVec
	ignored  *prometheus.CounterVec
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
	}
	if reg == nil {
		return m, nil
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
