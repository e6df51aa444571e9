package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herdlab/herd/fleet/nodestatus"
	"github.com/herdlab/herd/power"
	"github.com/herdlab/herd/site"
)

// The engine is tested against a simulated fleet: a fake clock, a fake image
// store (current/history) and fake nodes that report every minute (or as
// often as the last reply asked), reboot
// when a reply says so and come back on whatever image is current then.

const (
	oldImg = "aaaaaaaaaaaaaaaa"
	newImg = "bbbbbbbbbbbbbbbb"
)

type fakeStore struct {
	current  string
	history  []string
	rollback int
}

func (s *fakeStore) Current() (string, error) { return s.current, nil }
func (s *fakeStore) Rollback(ctx context.Context) (string, error) {
	if len(s.history) == 0 {
		return "", errors.New("no history")
	}
	s.rollback++
	s.current, s.history = s.history[len(s.history)-1], s.history[:len(s.history)-1]
	return s.current, nil
}

type fakeNode struct {
	name   string
	image  string
	booted time.Time     // zero: down
	upAt   time.Time     // when a boot in progress completes
	last   time.Time     // last report
	every  time.Duration // asked for by the last reply (0: a minute)
	asked  []int         // every reply's Interval, in order
	busy   bool
	hung   bool // stops reporting and ignores Reboot, until power-cycled
	ignore bool // keeps reporting but never reboots on request
	// degraded: reports 3/4 GPUs
	degraded bool
	checks   func(image string) []nodestatus.Check
	reboots  int
	cycles   int
	walls    []string
}

type sim struct {
	t       *testing.T
	now     time.Time
	store   *fakeStore
	nodes   map[string]*fakeNode
	order   []string
	e       *Engine
	dir     string
	events  []string // "reboot gpu01", "up gpu01 <img>"
	mu      sync.Mutex
	cycled  []string
	maxBusy int // most nodes down at once
}

const bootTime = 4 * time.Minute

func newSim(t *testing.T, names ...string) *sim {
	s := &sim{t: t, now: time.Date(2026, 11, 30, 4, 0, 0, 0, time.UTC), dir: t.TempDir(),
		store: &fakeStore{current: newImg, history: []string{oldImg}}, nodes: map[string]*fakeNode{}}
	for _, n := range names {
		s.nodes[n] = &fakeNode{name: n, image: oldImg, booted: s.now.Add(-48 * time.Hour)}
		s.order = append(s.order, n)
	}
	s.open()
	return s
}

func (s *sim) open() {
	e, err := Open(Options{StateDir: s.dir, Images: s.store, Now: func() time.Time { return s.now },
		Log:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Power: s.power})
	if err != nil {
		s.t.Fatal(err)
	}
	s.e = e
}

type fakeBMC struct {
	s    *sim
	name string
}

func (b fakeBMC) Status(ctx context.Context) (string, error) { return power.StateOn, nil }
func (b fakeBMC) Power(ctx context.Context, action string) error {
	if action != power.Cycle {
		return fmt.Errorf("unexpected %s", action)
	}
	// The engine calls this from its own goroutine: the sim applies it
	// on its next step.
	b.s.mu.Lock()
	b.s.cycled = append(b.s.cycled, b.name)
	b.s.mu.Unlock()
	return nil
}

// applyCycles power-cycles the nodes the BMC was asked to.
func (s *sim) applyCycles() {
	s.mu.Lock()
	names := s.cycled
	s.cycled = nil
	s.mu.Unlock()
	for _, name := range names {
		n := s.nodes[name]
		n.cycles++
		n.hung = false
		s.down(n)
	}
}

func (s *sim) power(node string) (power.Controller, error) {
	if _, ok := s.nodes[node]; !ok {
		return nil, errors.New("no such node")
	}
	return fakeBMC{s, node}, nil
}

func (s *sim) down(n *fakeNode) {
	n.reboots++
	n.booted, n.upAt = time.Time{}, s.now.Add(bootTime)
	s.events = append(s.events, "reboot "+n.name)
}

func (s *sim) submit(r Request) {
	s.t.Helper()
	if r.Image == "" {
		r.Image, r.Previous = newImg, oldImg
	}
	if r.Nodes == nil {
		r.Nodes = s.order
	}
	if r.Batch == 0 {
		r.Batch = 1
	}
	r.Requested = s.now
	if err := Submit(s.dir, r); err != nil {
		s.t.Fatal(err)
	}
}

// step advances the clock by 10 s: boots complete (on the store's current
// image), nodes due report, replies are obeyed, the engine ticks.
func (s *sim) step() {
	s.now = s.now.Add(10 * time.Second)
	s.e.WaitIdle()
	s.applyCycles()
	down := 0
	for _, name := range s.order {
		n := s.nodes[name]
		if n.booted.IsZero() && !n.upAt.IsZero() && !s.now.Before(n.upAt) {
			n.booted, n.image, n.upAt = s.now, s.store.current, time.Time{}
			s.events = append(s.events, "up "+name+" "+n.image[:1])
		}
		if n.booted.IsZero() {
			down++
			continue
		}
		every := n.every
		if every == 0 {
			every = time.Duration(nodestatus.DefaultInterval) * time.Second
		}
		if n.hung || s.now.Sub(n.last) < every {
			continue
		}
		n.last = s.now
		r := &nodestatus.Report{Node: name, Image: n.image, Time: s.now, UptimeSeconds: s.now.Sub(n.booted).Seconds()}
		if n.busy {
			r.Sessions = []nodestatus.Session{{User: "alice", TTY: "pts/0"}}
		}
		r.Health = nodestatus.Health{State: nodestatus.Ready, ExpectedGPUs: -1, SeenGPUs: 0}
		if n.degraded {
			r.Health = nodestatus.Health{State: nodestatus.Degraded, Reason: "3/4 GPUs", ExpectedGPUs: 4, SeenGPUs: 3}
		}
		if n.checks != nil {
			r.Checks = n.checks(n.image)
		} else {
			r.Checks = []nodestatus.Check{{Name: "nfs-home", OK: true}}
		}
		rep := s.e.Reply(name, r)
		n.every = time.Duration(rep.Interval) * time.Second
		n.asked = append(n.asked, rep.Interval)
		if rep.Wall != "" && (len(n.walls) == 0 || n.walls[len(n.walls)-1] != rep.WallID+": "+rep.Wall) {
			n.walls = append(n.walls, rep.WallID+": "+rep.Wall)
		}
		if rep.Reboot && !n.ignore {
			s.down(n)
			down++
		}
	}
	if down > s.maxBusy {
		s.maxBusy = down
	}
	s.e.Tick(context.Background())
	s.e.WaitIdle()
}

// until steps until cond holds or limit passes (simulated time).
func (s *sim) until(limit time.Duration, what string, cond func(*State) bool) *State {
	s.t.Helper()
	end := s.now.Add(limit)
	for s.now.Before(end) {
		s.step()
		if st := s.e.State(); st != nil && cond(st) {
			return st
		}
	}
	st := s.e.State()
	s.t.Fatalf("after %s: %s did not happen; state %+v\nevents %v", limit, what, st, s.events)
	return nil
}

func ended(st *State) bool { return Terminal(st.Phase) }

func (s *sim) index(ev string) int {
	for i, e := range s.events {
		if e == ev {
			return i
		}
	}
	return -1
}

func TestCanaryFirstThenBatches(t *testing.T) {
	s := newSim(t, "gpu01", "gpu02", "gpu03", "gpu04", "gpu05")
	s.submit(Request{Canary: "gpu03", Batch: 2})
	st := s.until(2*time.Hour, "the rollout ending", ended)
	if st.Phase != PhaseDone || st.Canary != "gpu03" {
		t.Fatalf("phase %s canary %s: %s", st.Phase, st.Canary, st.Error)
	}
	if s.events[0] != "reboot gpu03" || s.events[1] != "up gpu03 b" {
		t.Fatalf("the canary did not go first, alone: %v", s.events)
	}
	for _, n := range s.nodes {
		if n.reboots != 1 || n.image != newImg {
			t.Fatalf("%s: %d reboots, image %s", n.name, n.reboots, n.image)
		}
		if st.Node(n.name).State != NodeDone {
			t.Fatalf("%s: %+v", n.name, st.Node(n.name))
		}
	}
	if s.maxBusy != 2 {
		t.Fatalf("at most %d nodes were down at once; want the batch, 2", s.maxBusy)
	}
	if s.store.rollback != 0 {
		t.Fatal("a good rollout undid the promote")
	}
}

// While a rollout runs the engine asks every node to report every
// ReportEvery (10 s) instead of every minute, and takes a report from the
// minute before the request as the node's state: the request reaches the
// canary at its next report and each step is seen within seconds. After
// the end, nodes go back to the default. The old engine waited a fresh
// report after the request and then a minute per step: this rollout of
// three nodes one at a time took 14m40s of simulated time; now 12m50s.
func TestRolloutAsksForFrequentReports(t *testing.T) {
	s := newSim(t, "gpu01", "gpu02", "gpu03")
	s.run(90 * time.Second) // every node has reported, 30-90 s ago
	start := s.now
	s.submit(Request{Canary: "gpu02"})
	st := s.until(time.Hour, "the rollout ending", ended)
	took := s.now.Sub(start)
	if st.Phase != PhaseDone {
		t.Fatalf("%+v", st)
	}
	if s.events[0] != "reboot gpu02" {
		t.Fatalf("events %v", s.events)
	}
	// Three boots of bootTime one after the other, plus at most a report
	// interval to reach the canary and 10 s per later step.
	if limit := 3*bootTime + time.Minute + 6*10*time.Second; took > limit {
		t.Errorf("the rollout took %s of simulated time, want at most %s (reports every 10 s during it)", took, limit)
	}
	s.run(3 * time.Minute)
	for _, name := range s.order {
		n := s.nodes[name]
		var during, after []int
		for i, v := range n.asked {
			if i < len(n.asked)-2 {
				during = append(during, v)
			} else {
				after = append(after, v)
			}
		}
		if !slices.Contains(during, 10) {
			t.Errorf("%s was never asked to report every 10 s during the rollout: %v", name, n.asked)
		}
		if after[len(after)-1] != 0 || n.every != 0 {
			t.Errorf("%s is still asked to report every %d s after the rollout: %v", name, after[len(after)-1], n.asked)
		}
	}
	t.Logf("rollout of 3 nodes, batch 1: %s of simulated time", took)
}

// run steps for d of simulated time.
func (s *sim) run(d time.Duration) {
	for end := s.now.Add(d); s.now.Before(end); {
		s.step()
	}
}

func TestBusyNodeWaitsUntilIdle(t *testing.T) {
	s := newSim(t, "gpu01", "gpu02", "gpu03")
	s.nodes["gpu02"].busy = true
	s.submit(Request{Canary: "gpu01", Batch: 3, WhenIdle: true})
	s.until(time.Hour, "gpu03 done", func(st *State) bool { return st.Node("gpu03").State == NodeDone })
	// Hours pass: the busy node is not rebooted, and its users were told once.
	s.run(6 * time.Hour)
	n := s.nodes["gpu02"]
	if st := s.e.State(); n.reboots != 0 || st.Node("gpu02").State != NodeWaiting || st.Phase != PhaseRolling {
		t.Fatalf("busy node: %d reboots, %+v, phase %s", n.reboots, st.Node("gpu02"), st.Phase)
	}
	if len(n.walls) != 1 || !strings.Contains(n.walls[0], "once nobody is using it. Please save your work") {
		t.Fatalf("walls = %q", n.walls)
	}
	n.busy = false
	st := s.until(time.Hour, "the rollout ending", ended)
	if st.Phase != PhaseDone || n.reboots != 1 || n.image != newImg {
		t.Fatalf("phase %s; gpu02 %d reboots on %s", st.Phase, n.reboots, n.image)
	}
}

func TestBusyNodeRebootedAtDeadline(t *testing.T) {
	s := newSim(t, "gpu01", "gpu02")
	s.nodes["gpu02"].busy = true
	deadline := s.now.Add(2 * time.Hour)
	s.submit(Request{Canary: "gpu01", WhenIdle: true, Deadline: deadline})
	st := s.until(4*time.Hour, "the rollout ending", ended)
	n := s.nodes["gpu02"]
	if st.Phase != PhaseDone || n.reboots != 1 {
		t.Fatalf("phase %s (%s); gpu02 rebooted %d times", st.Phase, st.Error, n.reboots)
	}
	if asked := st.Node("gpu02").RebootAsked; asked.Before(deadline) {
		t.Fatalf("busy gpu02 was asked to reboot at %s, before the deadline %s", asked, deadline)
	}
	if len(n.walls) != 2 || !strings.Contains(n.walls[0], "at the latest at 2026-11-30 06:00 UTC") || !strings.Contains(n.walls[1], "reboots NOW") {
		t.Fatalf("walls = %q", n.walls)
	}
	if s.nodes["gpu01"].walls != nil {
		t.Fatalf("idle canary got walls %q", s.nodes["gpu01"].walls)
	}
}

// Without --when-idle or a deadline a busy node is rebooted in its turn,
// with a wall saying so.
func TestBusyNodeRebootedWithoutWhenIdle(t *testing.T) {
	s := newSim(t, "gpu01", "gpu02")
	s.nodes["gpu02"].busy = true
	st := func() *State { s.submit(Request{Canary: "gpu01"}); return s.until(time.Hour, "the end", ended) }()
	if st.Phase != PhaseDone || s.nodes["gpu02"].reboots != 1 || len(s.nodes["gpu02"].walls) != 1 {
		t.Fatalf("phase %s; gpu02 %d reboots, walls %q", st.Phase, s.nodes["gpu02"].reboots, s.nodes["gpu02"].walls)
	}
}

func TestFailedCanaryUndoesPromote(t *testing.T) {
	s := newSim(t, "gpu01", "gpu02", "gpu03")
	for _, n := range s.nodes {
		n.checks = func(img string) []nodestatus.Check {
			return []nodestatus.Check{{Name: "autofs", OK: img != newImg, Detail: "map auto.home: syntax error"}}
		}
	}
	s.submit(Request{Canary: "gpu02", Batch: 2})
	st := s.until(time.Hour, "the rollout ending", ended)
	if st.Phase != PhaseFailed || !st.Undone || s.store.current != oldImg || s.store.rollback != 1 {
		t.Fatalf("phase %s undone %v current %s: %s", st.Phase, st.Undone, s.store.current, st.Error)
	}
	if !strings.Contains(st.Error, "canary gpu02 failed: checks failing: autofs (map auto.home: syntax error)") {
		t.Fatalf("error = %s", st.Error)
	}
	// The canary goes back to the old image; no other node reboots.
	st = s.until(time.Hour, "the canary reverted", func(st *State) bool { return st.Node("gpu02").State == NodeReverted })
	s.run(2 * time.Hour)
	for name, n := range s.nodes {
		want := 0
		if name == "gpu02" {
			want = 2
		}
		if n.reboots != want || n.image != oldImg {
			t.Fatalf("%s: %d reboots (want %d), image %s; events %v", name, n.reboots, want, n.image, s.events)
		}
	}
	if st := s.e.State(); st.Node("gpu01").State != NodeSkipped || st.Node("gpu02").State != NodeReverted {
		t.Fatalf("nodes %+v", st.Nodes)
	}
}

// A canary whose boot finished with a failed unit fails at its first such
// report, not after CheckTimeout; one still starting up is given the time.
func TestCanaryBootedDegradedFailsAtOnce(t *testing.T) {
	for _, word := range []string{"degraded: failed herd-scratch.service", "starting"} {
		s := newSim(t, "gpu01", "gpu02")
		s.nodes["gpu01"].checks = func(img string) []nodestatus.Check {
			return []nodestatus.Check{{Name: "system-running", OK: img != newImg, Detail: word}}
		}
		s.submit(Request{Canary: "gpu01"})
		st := s.until(time.Hour, "the rollout ending", ended)
		if st.Phase != PhaseFailed || !strings.Contains(st.Error, "system-running ("+word+")") {
			t.Fatalf("%s: phase %s: %s", word, st.Phase, st.Error)
		}
		// The canary is up bootTime after the request; it reports a minute
		// apart (the fake clock, not wall time).
		took := st.Ended.Sub(st.Request.Requested)
		if degraded := strings.HasPrefix(word, "degraded"); degraded && took > bootTime+2*time.Minute {
			t.Errorf("%s: failed %s after the request, want at its first report from the new boot", word, took)
		} else if !degraded && took < bootTime+10*time.Minute {
			t.Errorf("%s: failed %s after the request, before CheckTimeout", word, took)
		}
	}
}

// A check a node already failed before its reboot (an expected GPU it
// lacks) does not fail it on the new image; a check it passed before does.
func TestChecksFailingBeforeRebootNotHeldAgainstImage(t *testing.T) {
	s := newSim(t, "gpu01", "gpu02")
	for _, n := range s.nodes {
		n.checks = func(img string) []nodestatus.Check {
			return []nodestatus.Check{{Name: "nvidia-smi", OK: false, Detail: "no NVIDIA GPU on the PCI bus"}, {Name: "home-automount", OK: true}}
		}
	}
	s.run(2 * time.Minute) // reports from the old image first
	s.submit(Request{Canary: "gpu01"})
	if st := s.until(time.Hour, "the rollout ending", ended); st.Phase != PhaseDone {
		t.Fatalf("a check failing before the reboot failed the rollout: %s %s (%+v)", st.Phase, st.Error, st.Nodes)
	}
	// A node degraded before (a unit that failed on the old image too) is
	// given CheckTimeout for a check the new image broke, not failed at
	// once for the degraded state it already had.
	s = newSim(t, "gpu01", "gpu02")
	s.nodes["gpu01"].checks = func(img string) []nodestatus.Check {
		return []nodestatus.Check{{Name: "system-running", OK: false, Detail: "degraded: failed x.service"},
			{Name: "nvidia-smi", OK: img != newImg, Detail: "driver mismatch"}}
	}
	s.run(2 * time.Minute)
	s.submit(Request{Canary: "gpu01"})
	st := s.until(time.Hour, "the rollout ending", ended)
	if st.Phase != PhaseFailed || !strings.Contains(st.Error, "nvidia-smi (driver mismatch)") || strings.Contains(st.Error, "system-running") {
		t.Fatalf("a check the new image broke: %s %s", st.Phase, st.Error)
	}
	if took := st.Ended.Sub(st.Request.Requested); took < bootTime+10*time.Minute {
		t.Errorf("failed %s after the request, before CheckTimeout (degraded before the reboot too)", took)
	}
}

// A canary that reports a degraded GPU count fails only with HoldDegraded.
func TestHoldDegraded(t *testing.T) {
	for _, hold := range []bool{false, true} {
		s := newSim(t, "gpu01", "gpu02")
		s.nodes["gpu01"].degraded = true
		s.submit(Request{Canary: "gpu01", HoldDegraded: hold})
		st := s.until(2*time.Hour, "the end", ended)
		if (st.Phase == PhaseFailed) != hold {
			t.Fatalf("hold=%v: phase %s %s", hold, st.Phase, st.Error)
		}
	}
}

func TestSilentNodeIsPowerCycled(t *testing.T) {
	s := newSim(t, "gpu01", "gpu02")
	s.submit(Request{Canary: "gpu01"})
	s.until(time.Hour, "canary done", func(st *State) bool { return st.Phase == PhaseRolling })
	// gpu02 hangs before its turn could reach it: it never hears the
	// request, so the BMC power-cycles it.
	s.nodes["gpu02"].hung = true
	st := s.until(time.Hour, "the end", ended)
	n := s.nodes["gpu02"]
	if st.Phase != PhaseDone || n.cycles != 1 || n.image != newImg || st.Node("gpu02").PowerCycled.IsZero() {
		t.Fatalf("phase %s %s; gpu02 cycles %d image %s", st.Phase, st.Error, n.cycles, n.image)
	}
}

func TestNodeThatDoesNotRebootIsPowerCycledAfterUpTimeout(t *testing.T) {
	s := newSim(t, "gpu01", "gpu02")
	s.nodes["gpu02"].ignore = true
	s.submit(Request{Canary: "gpu01"})
	st := s.until(2*time.Hour, "the end", ended)
	n := s.nodes["gpu02"]
	sent, cycled := st.Node("gpu02").RebootSent, st.Node("gpu02").PowerCycled
	if st.Phase != PhaseDone || n.cycles != 1 || cycled.Sub(sent) < 20*time.Minute {
		t.Fatalf("phase %s; cycles %d; sent %s cycled %s", st.Phase, n.cycles, sent, cycled)
	}
}

func TestNoBMCFallbackFailsTheNode(t *testing.T) {
	s := newSim(t, "gpu01", "gpu02")
	s.e.opt.Power = func(string) (power.Controller, error) { return nil, errors.New("node gpu01 has no bmc") }
	s.submit(Request{Canary: "gpu01"})
	s.until(time.Hour, "canary phase", func(st *State) bool { return st.Phase == PhaseCanary })
	s.nodes["gpu01"].hung = true // before it hears the request
	st := s.until(time.Hour, "the end", ended)
	if st.Phase != PhaseFailed || !strings.Contains(st.Error, "BMC fallback failed: node gpu01 has no bmc") || s.nodes["gpu02"].reboots != 0 {
		t.Fatalf("phase %s: %s", st.Phase, st.Error)
	}
}

// herd serve restarts in the middle: the new engine resumes from the state
// file, no node is rebooted twice, the rollout completes.
func TestRolloutSurvivesRestart(t *testing.T) {
	s := newSim(t, "gpu01", "gpu02", "gpu03")
	s.submit(Request{Canary: "gpu01"})
	s.until(time.Hour, "gpu02 rebooting", func(st *State) bool {
		n := st.Node("gpu02")
		return n.State == NodeRebooting && !n.RebootSent.IsZero()
	})
	s.run(time.Minute)
	s.open() // a new serve process
	st := s.until(2*time.Hour, "the end", ended)
	if st.Phase != PhaseDone {
		t.Fatalf("phase %s: %s", st.Phase, st.Error)
	}
	for _, n := range s.nodes {
		if n.reboots != 1 || n.cycles != 0 || n.image != newImg {
			t.Fatalf("%s: %d reboots, %d power cycles, image %s; events %v", n.name, n.reboots, n.cycles, n.image, s.events)
		}
	}
}

func TestNotRunningAndCurrentNodes(t *testing.T) {
	s := newSim(t, "gpu01", "gpu02", "gpu03")
	s.nodes["gpu02"].booted = time.Time{} // off
	s.nodes["gpu03"].image = newImg       // booted the new image on its own
	s.submit(Request{})
	st := s.until(time.Hour, "the end", ended)
	if st.Phase != PhaseDone || st.Canary != "gpu01" || st.Node("gpu02").State != NodeSkipped || st.Node("gpu03").State != NodeDone || s.nodes["gpu03"].reboots != 0 {
		t.Fatalf("%+v", st)
	}
	// A canary that is not running stops the rollout without undoing anything.
	s = newSim(t, "gpu01", "gpu02")
	s.nodes["gpu02"].booted = time.Time{}
	s.submit(Request{Canary: "gpu02"})
	st = s.until(time.Hour, "the end", ended)
	if st.Phase != PhaseFailed || st.Undone || s.nodes["gpu01"].reboots != 0 || !strings.Contains(st.Error, "canary gpu02 is not running") {
		t.Fatalf("%+v", st)
	}
}

func TestAbortAndOneAtATime(t *testing.T) {
	s := newSim(t, "gpu01", "gpu02", "gpu03")
	s.nodes["gpu02"].busy = true
	s.submit(Request{Canary: "gpu01", WhenIdle: true})
	s.until(time.Hour, "rolling", func(st *State) bool { return st.Phase == PhaseRolling && st.Node("gpu02").State == NodeWaiting })
	if err := Submit(s.dir, Request{Image: newImg, Nodes: []string{"gpu01"}, Batch: 1}); err == nil || !strings.Contains(err.Error(), "is still rolling") {
		t.Fatalf("second rollout: %v", err)
	}
	if err := Submit(s.dir, Request{Abort: true}); err != nil {
		t.Fatal(err)
	}
	st := s.until(time.Hour, "aborted", ended)
	s.run(time.Hour)
	if st.Phase != PhaseAborted || st.Node("gpu02").State != NodeSkipped || s.nodes["gpu02"].reboots != 0 || s.store.rollback != 0 {
		t.Fatalf("%+v", st)
	}
}

func TestNewRequest(t *testing.T) {
	src := "overlays: []\ndhcp: {mode: off}\nnodes:\n  - {name: gpu01, mac: '52:54:00:00:00:01'}\n  - {name: gpu02, mac: '52:54:00:00:00:02', image: cccccccccccc}\n  - {name: gpu03, mac: '52:54:00:00:00:03'}\n"
	cfg, err := site.Parse("herd.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 30, 4, 0, 0, 0, time.UTC)
	r, err := NewRequest(cfg, newImg, []string{"x", oldImg}, Flags{Canary: "gpu03", Batch: 2}, now)
	if err != nil || strings.Join(r.Nodes, ",") != "gpu01,gpu03" || r.Previous != oldImg || r.Image != newImg {
		t.Fatalf("%+v %v", r, err)
	}
	for f, want := range map[Flags]string{
		{Canary: "gpu02", Batch: 1}: "canary gpu02 is pinned",
		{Canary: "gpu09", Batch: 1}: `canary "gpu09" is not a node`,
		{Batch: 0}:                  "--batch 0 must be at least 1",
		{Batch: 1, Deadline: now}:   "has passed",
	} {
		if _, err := NewRequest(cfg, newImg, nil, f, now); err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%+v: %v, want %q", f, err, want)
		}
	}
	if d, err := ParseDeadline("90m", now); err != nil || !d.Equal(now.Add(90*time.Minute)) {
		t.Fatalf("90m: %s %v", d, err)
	}
	if d, err := ParseDeadline("2026-12-01T08:00:00Z", now); err != nil || d.Day() != 1 {
		t.Fatalf("rfc3339: %s %v", d, err)
	}
	if _, err := ParseDeadline("tomorrow", now); err == nil {
		t.Fatal("tomorrow parsed")
	}
}

func TestStateOmitsUnsetTimes(t *testing.T) {
	b, err := json.Marshal(NodeState{Name: "gpu01", State: NodePending})
	if err != nil || strings.Contains(string(b), "0001-01-01") {
		t.Fatalf("%s %v", b, err)
	}
}
