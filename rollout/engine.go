package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/herdlab/herd/fleet/nodestatus"
	"github.com/herdlab/herd/power"
)

// Images is the part of the image store the engine uses (image/store.Store).
type Images interface {
	Current() (string, error)
	// Rollback makes the previous image current again (undoes a promote).
	Rollback(ctx context.Context) (string, error)
}

// Options configure an Engine.
type Options struct {
	StateDir string
	Images   Images
	// Power returns a node's BMC (power.ForNode on the current herd.yaml);
	// an error means the fallback is not available for that node.
	Power func(node string) (power.Controller, error)
	// Now is the clock (default time.Now).
	Now func() time.Time
	Log *slog.Logger
	// StaleAfter: a node that has not reported for this long cannot be asked
	// to reboot itself and is power-cycled (default 3m). UpTimeout: how long a
	// node that was told to reboot may take to report from its new boot
	// before the BMC power-cycles it, and again after that before it counts
	// as failed (default 20m). CheckTimeout: how long after coming up its
	// checks may take to pass (default 10m); a node whose boot finished
	// degraded (failed units) fails at once.
	StaleAfter, UpTimeout, CheckTimeout time.Duration
	// ReportEvery is how often nodes are asked to report while a rollout
	// runs (default 10s; they report every nodestatus.DefaultInterval
	// otherwise): a reboot request reaches a node, and a node's new boot
	// is seen, within that, not within a minute per step.
	ReportEvery time.Duration
}

// FreshReport is how old a node's last report may be when a rollout starts
// for the engine to take it as the node's state then: a node reports every
// nodestatus.DefaultInterval, so a live node always has one that recent.
const FreshReport = time.Duration(nodestatus.DefaultInterval+15) * time.Second

// seen is the latest report of a node and when the server received it.
type seen struct {
	at     time.Time
	report nodestatus.Report
}

// Engine carries out rollouts; safe for concurrent use.
type Engine struct {
	opt    Options
	log    *slog.Logger
	mu     sync.Mutex
	st     *State
	seen   map[string]seen
	loaded time.Time
	// cycling counts BMC power cycles in flight (WaitIdle).
	cycling sync.WaitGroup
}

// WaitIdle waits for the BMC power cycles in flight (tests, shutdown).
func (e *Engine) WaitIdle() { e.cycling.Wait() }

// Open loads the rollout state (resuming an active rollout).
func Open(opt Options) (*Engine, error) {
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	if opt.StaleAfter == 0 {
		opt.StaleAfter = 3 * time.Minute
	}
	if opt.UpTimeout == 0 {
		opt.UpTimeout = 20 * time.Minute
	}
	if opt.CheckTimeout == 0 {
		opt.CheckTimeout = 10 * time.Minute
	}
	if opt.ReportEvery == 0 {
		opt.ReportEvery = 10 * time.Second
	}
	st, err := Load(opt.StateDir)
	if err != nil {
		return nil, err
	}
	e := &Engine{opt: opt, log: opt.Log.With("service", "rollout"), st: st, seen: map[string]seen{}, loaded: opt.Now()}
	if st.Active() {
		e.log.Info("resuming rollout", "id", st.ID, "phase", st.Phase, "image", st.Request.Image)
	}
	return e, nil
}

// State returns a copy of the current rollout state (nil: none).
func (e *Engine) State() *State {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.st == nil {
		return nil
	}
	data, _ := json.Marshal(e.st)
	var c State
	_ = json.Unmarshal(data, &c)
	return &c
}

// Run ticks the engine every interval until ctx ends.
func (e *Engine) Run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		e.Tick(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Reply records a node's report and answers it: a wall message while the
// node waits to be rebooted, Reboot while it is to reboot and still runs
// the boot it had before.
func (e *Engine) Reply(node string, r *nodestatus.Report) nodestatus.Reply {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.opt.Now()
	e.seen[node] = seen{at: now, report: *r}
	e.step(context.Background(), now)
	if e.st == nil {
		return nodestatus.Reply{}
	}
	n := e.st.Node(node)
	var rep nodestatus.Reply
	// Nodes still followed after the rollout ended (a revert, a reboot
	// already sent) too.
	if e.st.Active() || (n != nil && (n.State == NodeReverting || (n.State == NodeRebooting && !n.RebootSent.IsZero()))) {
		rep.Interval = max(int(e.opt.ReportEvery/time.Second), 1)
	}
	if n == nil {
		return rep
	}
	switch n.State {
	case NodeWaiting:
		rep.WallID, rep.Wall = e.waitWall(n)
	case NodeRebooting, NodeReverting:
		if n.State == NodeRebooting && Terminal(e.st.Phase) && n.RebootSent.IsZero() {
			break // the rollout stopped before this node got the request
		}
		if !e.newBoot(n, e.seen[node]) {
			rep.Reboot = true
			if r.Busy() {
				rep.WallID = e.st.ID + "/" + n.Name + "/now"
				rep.Wall = "this node reboots NOW onto a new system image."
				if d := e.st.Request.Deadline; !d.IsZero() && !e.opt.Now().Before(d) {
					rep.Wall = "this node reboots NOW onto a new system image (the deadline, " + d.UTC().Format("15:04 UTC") + ", has passed)."
				}
			}
			if n.RebootSent.IsZero() {
				n.RebootSent = now
				e.save()
			}
		}
	}
	return rep
}

func (e *Engine) waitWall(n *NodeState) (string, string) {
	msg := fmt.Sprintf("this node will reboot onto a new system image (%s) once nobody is using it", short(e.st.Request.Image))
	if d := e.st.Request.Deadline; !d.IsZero() {
		msg += ", at the latest at " + d.UTC().Format("2006-01-02 15:04 UTC")
	}
	return e.st.ID + "/" + n.Name + "/wait", msg + ". Please save your work and log out."
}

// Tick advances the rollout by the clock (timeouts, the BMC fallback, new
// requests); Run calls it periodically.
func (e *Engine) Tick(ctx context.Context) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.step(ctx, e.opt.Now())
}

// step is one pass of the state machine; e.mu is held.
func (e *Engine) step(ctx context.Context, now time.Time) {
	e.takeRequest(now)
	if e.st == nil {
		return
	}
	before, _ := json.Marshal(e.st)
	e.advance(ctx, now)
	if after, _ := json.Marshal(e.st); string(after) != string(before) {
		e.save()
	}
}

func (e *Engine) save() {
	if err := save(e.opt.StateDir, e.st); err != nil {
		e.log.Error("rollout state not saved", "err", err)
	}
}

// takeRequest picks up a request written by Submit.
func (e *Engine) takeRequest(now time.Time) {
	path := filepath.Join(e.opt.StateDir, RequestFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err == nil {
		err = os.Remove(path)
	}
	if err != nil {
		e.log.Error("rollout request", "err", err)
		return
	}
	var r Request
	if err := json.Unmarshal(data, &r); err != nil {
		e.log.Error("rollout request is not valid JSON; ignored", "err", err)
		return
	}
	if r.Abort {
		if e.st.Active() {
			e.st.Phase, e.st.Ended, e.st.Error = PhaseAborted, now, "aborted by the admin"
			for i := range e.st.Nodes {
				if n := &e.st.Nodes[i]; n.State == NodePending || n.State == NodeWaiting {
					n.State, n.Detail = NodeSkipped, "rollout aborted"
				}
			}
			e.log.Info("rollout aborted", "id", e.st.ID)
			e.save()
		}
		return
	}
	if e.st.Active() {
		e.log.Warn("rollout request ignored: a rollout is active", "id", e.st.ID)
		return
	}
	if r.Batch < 1 {
		r.Batch = 1
	}
	st := &State{ID: now.UTC().Format("20060102T150405Z"), Request: r, Phase: PhaseStarting, Started: now}
	for _, n := range r.Nodes {
		st.Nodes = append(st.Nodes, NodeState{Name: n, State: NodePending, Target: r.Image})
	}
	e.st = st
	e.log.Info("rollout started", "id", st.ID, "image", r.Image, "nodes", len(r.Nodes), "canary", r.Canary, "batch", r.Batch)
	e.save()
}

// lastSeen is when the node last reported (the engine's start when it has
// not since: a restarted server gives nodes time to report again).
func (e *Engine) lastSeen(name string) time.Time {
	s, ok := e.seen[name]
	if !ok || s.at.Before(e.loaded) {
		return e.loaded
	}
	return s.at
}

// stale reports whether the node has not reported for StaleAfter.
func (e *Engine) stale(name string, now time.Time) bool {
	return now.Sub(e.lastSeen(name)) > e.opt.StaleAfter
}

func (e *Engine) advance(ctx context.Context, now time.Time) {
	st := e.st
	// A failed canary goes back to the previous image even after the
	// rollout has ended.
	// Nodes already told to reboot when a rollout stopped are followed to
	// the end too.
	for i := range st.Nodes {
		if n := &st.Nodes[i]; n.State == NodeReverting || (Terminal(st.Phase) && n.State == NodeRebooting) {
			e.advanceNode(ctx, n, now)
		}
	}
	switch st.Phase {
	case PhaseStarting:
		e.start(now)
	case PhaseCanary:
		c := st.Node(st.Canary)
		e.advanceNode(ctx, c, now)
		switch c.State {
		case NodeDone:
			st.Phase = PhaseRolling
			e.log.Info("canary passed", "node", c.Name)
			e.roll(ctx, now)
		case NodeFailed:
			e.failCanary(ctx, c, now)
		}
	case PhaseRolling:
		e.roll(ctx, now)
	}
}

// start waits until every node has reported (FreshReport before the start
// counts, or StaleAfter passed), then sorts out who takes part and picks
// the canary.
func (e *Engine) start(now time.Time) {
	st := e.st
	since := st.Started
	if since.Before(e.loaded) {
		since = e.loaded
	}
	fresh := st.Started.Add(-FreshReport)
	if fresh.Before(e.loaded) {
		fresh = e.loaded
	}
	all := true
	for _, n := range st.Nodes {
		if s, ok := e.seen[n.Name]; !ok || s.at.Before(fresh) {
			all = false
		}
	}
	if !all && now.Sub(since) < e.opt.StaleAfter {
		return
	}
	for i := range st.Nodes {
		n := &st.Nodes[i]
		s, ok := e.seen[n.Name]
		switch {
		case !ok || s.at.Before(fresh):
			n.State, n.Detail = NodeSkipped, "not running (no status report): it boots the new image when it next boots"
		case s.report.Image == st.Request.Image:
			n.State, n.Detail = NodeDone, "already runs the image"
		}
	}
	canary := st.Request.Canary
	if canary != "" {
		c := st.Node(canary)
		switch {
		case c == nil:
			e.fail(now, fmt.Sprintf("canary %s is not one of the rollout's nodes", canary))
			return
		case c.State == NodeSkipped:
			e.fail(now, fmt.Sprintf("canary %s is not running (no status report)", canary))
			return
		case c.State == NodeDone:
			e.fail(now, fmt.Sprintf("canary %s already runs the image: pick another canary", canary))
			return
		}
	} else {
		// The first idle node, else the first one.
		for _, n := range st.Nodes {
			if s := e.seen[n.Name]; n.State == NodePending && !s.report.Busy() {
				canary = n.Name
				break
			}
		}
		for _, n := range st.Nodes {
			if canary == "" && n.State == NodePending {
				canary = n.Name
			}
		}
	}
	if canary == "" {
		st.Phase, st.Ended = PhaseDone, now
		e.log.Info("rollout done: no node to reboot", "id", st.ID)
		return
	}
	st.Canary, st.Phase = canary, PhaseCanary
	e.log.Info("rollout canary", "node", canary)
	e.begin(st.Node(canary), now)
}

// roll moves the nodes after the canary, Batch at a time.
func (e *Engine) roll(ctx context.Context, now time.Time) {
	st := e.st
	rebooting := 0
	for i := range st.Nodes {
		n := &st.Nodes[i]
		if n.State == NodeRebooting || n.State == NodeWaiting {
			e.advanceNode(ctx, n, now)
		}
		switch n.State {
		case NodeRebooting:
			rebooting++
		case NodeFailed:
			if st.Phase == PhaseRolling {
				e.fail(now, fmt.Sprintf("node %s failed: %s", n.Name, n.Detail))
			}
		}
	}
	if st.Phase != PhaseRolling {
		return
	}
	for i := range st.Nodes {
		n := &st.Nodes[i]
		if n.State != NodePending || rebooting >= st.Request.Batch {
			continue
		}
		e.begin(n, now)
		if n.State == NodeRebooting {
			rebooting++
		}
	}
	for _, n := range st.Nodes {
		switch n.State {
		case NodePending, NodeWaiting, NodeRebooting:
			return
		}
	}
	st.Phase, st.Ended = PhaseDone, now
	e.log.Info("rollout done", "id", st.ID, "image", st.Request.Image)
}

// begin is a node's turn: reboot it, or let it wait while it is busy.
func (e *Engine) begin(n *NodeState, now time.Time) {
	if e.mustWait(n.Name, now) {
		n.State, n.Detail = NodeWaiting, "busy: waits until idle"
		if d := e.st.Request.Deadline; !d.IsZero() {
			n.Detail += " or " + d.UTC().Format(time.RFC3339)
		}
		n.WallSent = now
		return
	}
	n.State, n.RebootAsked, n.Detail = NodeRebooting, now, "rebooting"
	n.RebootSent, n.PowerCycled, n.Up = time.Time{}, time.Time{}, time.Time{}
	n.FailingBefore = nil
	for _, c := range e.seen[n.Name].report.Checks {
		if !c.OK {
			n.FailingBefore = append(n.FailingBefore, c.Name)
		}
	}
}

// mustWait: the node is busy and the request lets busy nodes wait now.
func (e *Engine) mustWait(name string, now time.Time) bool {
	s, ok := e.seen[name]
	if !ok || !s.report.Busy() {
		return false
	}
	r := e.st.Request
	if !r.Deadline.IsZero() {
		return now.Before(r.Deadline)
	}
	return r.WhenIdle
}

// newBoot reports whether s is a report from a boot that started after the
// node was asked to reboot (by the server's clock: received minus uptime).
func (e *Engine) newBoot(n *NodeState, s seen) bool {
	if n.RebootAsked.IsZero() || s.at.IsZero() || !s.at.After(n.RebootAsked) {
		return false
	}
	booted := s.at.Add(-time.Duration(s.report.UptimeSeconds * float64(time.Second)))
	return booted.After(n.RebootAsked)
}

// advanceNode moves one waiting, rebooting or reverting node on.
func (e *Engine) advanceNode(ctx context.Context, n *NodeState, now time.Time) {
	switch n.State {
	case NodeWaiting:
		if !e.mustWait(n.Name, now) {
			e.begin(n, now)
		}
		return
	case NodeRebooting, NodeReverting:
	default:
		return
	}
	s := e.seen[n.Name]
	if e.newBoot(n, s) {
		if n.Up.IsZero() {
			n.Up = now
		}
		if s.report.Image != n.Target {
			e.nodeFailed(n, fmt.Sprintf("came up on image %s, not %s", short(s.report.Image), short(n.Target)))
			return
		}
		if n.State == NodeReverting {
			n.State, n.Detail = NodeReverted, "back on the previous image "+short(n.Target)
			return
		}
		bad := failedChecks(s.report, n.FailingBefore, e.st.Request.HoldDegraded)
		if bad == "" {
			n.State, n.Detail = NodeDone, "up on the new image, checks passed"
			e.log.Info("node done", "node", n.Name)
			return
		}
		n.Detail = "up; checks failing: " + bad
		// A boot that finished with failed units (systemd "degraded") stays
		// so until someone resets them: waiting CheckTimeout changes nothing.
		if now.Sub(n.Up) > e.opt.CheckTimeout || bootFinishedDegraded(s.report, n.FailingBefore) {
			e.nodeFailed(n, "checks failing: "+bad)
		}
		return
	}
	// Not up from a new boot yet. A node that never got the request because
	// it stopped reporting, or that got it and did not come back, is
	// power-cycled through its BMC, once.
	var cycle bool
	if n.RebootSent.IsZero() {
		since := n.RebootAsked
		if ls := e.lastSeen(n.Name); ls.After(since) {
			since = ls
		}
		cycle = now.Sub(since) > e.opt.StaleAfter
	} else {
		cycle = now.Sub(n.RebootSent) > e.opt.UpTimeout
	}
	if n.PowerCycled.IsZero() && cycle {
		// The BMC may take a while (or time out): never while holding the
		// lock that every status report waits for.
		n.PowerCycled, n.Detail = now, "stopped reporting: power-cycling it through its BMC"
		name := n.Name
		e.cycling.Add(1)
		go func() {
			defer e.cycling.Done()
			err := e.cycle(ctx, name)
			e.mu.Lock()
			defer e.mu.Unlock()
			m := e.st.Node(name)
			if m == nil || !m.PowerCycled.Equal(now) || (m.State != NodeRebooting && m.State != NodeReverting) {
				return
			}
			if err != nil {
				e.nodeFailed(m, "stopped reporting and the BMC fallback failed: "+err.Error())
			} else {
				m.Detail = "stopped reporting: power-cycled through its BMC"
				e.log.Warn("node power-cycled through its BMC", "node", name)
			}
			e.step(context.Background(), e.opt.Now())
			e.save()
		}()
		return
	}
	if !n.PowerCycled.IsZero() && now.Sub(n.PowerCycled) > e.opt.UpTimeout {
		e.nodeFailed(n, fmt.Sprintf("not back up %s after a BMC power cycle", e.opt.UpTimeout))
	}
}

func (e *Engine) cycle(_ context.Context, node string) error {
	if e.opt.Power == nil {
		return errors.New("no power control")
	}
	c, err := e.opt.Power(node)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return c.Power(ctx, power.Cycle)
}

func (e *Engine) nodeFailed(n *NodeState, why string) {
	if n.State == NodeReverting {
		n.State, n.Detail = NodeFailed, "reverting failed: "+why
	} else {
		n.State, n.Detail = NodeFailed, why
	}
	e.log.Warn("node failed", "node", n.Name, "why", why)
}

// bootFinishedDegraded reports whether the node's start-up is over with
// failed units: its system-running check says "degraded" (the status
// agent's detail is `systemctl is-system-running`'s word first), and did
// not fail before the reboot (then failedChecks leaves it out too).
func bootFinishedDegraded(r nodestatus.Report, before []string) bool {
	if slices.Contains(before, "system-running") {
		return false
	}
	for _, c := range r.Checks {
		if c.Name == "system-running" && !c.OK && strings.HasPrefix(c.Detail, "degraded") {
			return true
		}
	}
	return false
}

// failedChecks names the failing checks of a report ("" when all pass),
// leaving out those the node already failed before its reboot.
func failedChecks(r nodestatus.Report, before []string, holdDegraded bool) string {
	var bad []string
	for _, c := range r.Checks {
		if !c.OK && !slices.Contains(before, c.Name) {
			s := c.Name
			if c.Detail != "" {
				s += " (" + c.Detail + ")"
			}
			bad = append(bad, s)
		}
	}
	if holdDegraded && r.Health.State == nodestatus.Degraded {
		bad = append(bad, "health degraded: "+r.Health.Reason)
	}
	return strings.Join(bad, ", ")
}

// failCanary undoes the promote (when the image is still current) and sends
// the canary back to the previous image.
func (e *Engine) failCanary(ctx context.Context, c *NodeState, now time.Time) {
	st := e.st
	why := "canary " + c.Name + " failed: " + c.Detail
	cur, err := e.opt.Images.Current()
	switch {
	case err != nil:
		why += "; promote NOT undone: " + err.Error()
	case cur != st.Request.Image:
		why += "; promote not undone: the current image is now " + short(cur)
	default:
		prev, err := e.opt.Images.Rollback(ctx)
		if err != nil {
			why += "; undoing the promote FAILED: " + err.Error()
			break
		}
		st.Undone = true
		why += "; promote undone, current image " + short(prev)
		// The canary reboots onto the image the others still run.
		c.State, c.Target, c.Detail = NodeReverting, prev, "rebooting back onto "+short(prev)
		c.RebootAsked, c.RebootSent, c.PowerCycled, c.Up = now, time.Time{}, time.Time{}, time.Time{}
	}
	e.fail(now, why)
}

// fail ends the rollout; nodes not yet touched are skipped.
func (e *Engine) fail(now time.Time, why string) {
	st := e.st
	st.Phase, st.Ended, st.Error = PhaseFailed, now, why
	for i := range st.Nodes {
		n := &st.Nodes[i]
		if n.State == NodePending || n.State == NodeWaiting || (n.State == NodeRebooting && n.RebootSent.IsZero()) {
			n.State, n.Detail = NodeSkipped, "rollout stopped"
		}
	}
	e.log.Error("rollout failed", "id", st.ID, "why", why)
}
