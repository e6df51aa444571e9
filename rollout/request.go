package rollout

import (
	"fmt"
	"time"

	"github.com/herdlab/herd/site"
)

// Flags are `herd rollout`'s options.
type Flags struct {
	Canary       string
	Batch        int
	WhenIdle     bool
	Deadline     time.Time
	HoldDegraded bool
}

// NewRequest plans a rollout of the current image over every node of cfg
// that follows it (nodes pinned to an image are left alone); history is the
// store's history (its last entry is what undoing the promote restores).
func NewRequest(cfg *site.Config, current string, history []string, f Flags, now time.Time) (Request, error) {
	if current == "" {
		return Request{}, fmt.Errorf("rollout: no current image (herd image promote ID first)")
	}
	if f.Batch < 1 {
		return Request{}, fmt.Errorf("rollout: --batch %d must be at least 1", f.Batch)
	}
	r := Request{Image: current, Canary: f.Canary, Batch: f.Batch, WhenIdle: f.WhenIdle,
		Deadline: f.Deadline, HoldDegraded: f.HoldDegraded, Requested: now}
	for i := len(history) - 1; i >= 0; i-- {
		if history[i] != current {
			r.Previous = history[i]
			break
		}
	}
	canaryOK := f.Canary == ""
	for _, n := range cfg.Nodes {
		if n.Image != "" {
			if n.Name == f.Canary {
				return Request{}, fmt.Errorf("rollout: canary %s is pinned to image %s (nodes[].image)", n.Name, short(n.Image))
			}
			continue
		}
		r.Nodes = append(r.Nodes, n.Name)
		canaryOK = canaryOK || n.Name == f.Canary
	}
	if !canaryOK {
		return Request{}, fmt.Errorf("rollout: canary %q is not a node in %s", f.Canary, cfg.Path)
	}
	if len(r.Nodes) == 0 {
		return Request{}, fmt.Errorf("rollout: no node follows the current image in %s", cfg.Path)
	}
	if !f.Deadline.IsZero() && !f.Deadline.After(now) {
		return Request{}, fmt.Errorf("rollout: deadline %s has passed", f.Deadline.Format(time.RFC3339))
	}
	return r, nil
}

// ParseDeadline reads --deadline: a duration from now (90m, 2h) or a time
// (RFC 3339, e.g. 2026-12-01T08:00:00Z).
func ParseDeadline(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return time.Time{}, fmt.Errorf("deadline %q must be in the future", s)
		}
		return now.Add(d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("deadline %q is neither a duration (2h) nor a time (2026-12-01T08:00:00Z)", s)
	}
	return t, nil
}
