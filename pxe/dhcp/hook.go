package dhcp

import (
	"net"
	"sync"
)

// leaseHook runs Options.OnLease off the packet path: the inventory writes
// nodes.json (with fsync) per call, which must not stall DHCP answers. Calls
// for the same MAC coalesce to the newest; memory is bounded by the number
// of MACs seen between two drains.
type leaseHook struct {
	fn      func(mac net.HardwareAddr, ip net.IP, hostname string)
	mu      sync.Mutex
	pending map[string]hookCall
	order   []string
	wake    chan struct{}
}

type hookCall struct {
	mac  net.HardwareAddr
	ip   net.IP
	host string
}

func newLeaseHook(fn func(net.HardwareAddr, net.IP, string)) *leaseHook {
	return &leaseHook{fn: fn, pending: map[string]hookCall{}, wake: make(chan struct{}, 1)}
}

func (h *leaseHook) add(mac net.HardwareAddr, ip net.IP, host string) {
	if h.fn == nil {
		return
	}
	k := mac.String()
	h.mu.Lock()
	if _, ok := h.pending[k]; !ok {
		h.order = append(h.order, k)
	}
	h.pending[k] = hookCall{mac, ip, host}
	h.mu.Unlock()
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// run delivers queued calls until stop is closed, then delivers the rest.
func (h *leaseHook) run(stop <-chan struct{}) {
	for {
		select {
		case <-h.wake:
			h.drain()
		case <-stop:
			h.drain()
			return
		}
	}
}

func (h *leaseHook) drain() {
	for {
		h.mu.Lock()
		if len(h.order) == 0 {
			h.mu.Unlock()
			return
		}
		k := h.order[0]
		h.order = h.order[1:]
		c := h.pending[k]
		delete(h.pending, k)
		h.mu.Unlock()
		h.fn(c.mac, c.ip, c.host)
	}
}
