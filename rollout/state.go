// Package rollout reboots the fleet onto a newly promoted image: one canary
// first, which must come back on the new image with its self-checks passing,
// then the rest in batches; busy nodes wait until idle (or a deadline, after
// a wall message). A failed canary undoes the promote. The engine runs inside
// herd serve, answers each node's status report (nodestatus.Reply) and keeps
// its state in <state>/rollout.json so a restart of serve resumes it; the CLI
// asks for a rollout by writing <state>/rollout-request.json.
package rollout

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/herdlab/herd/internal/atomicfile"
)

// Files under the state directory.
const (
	StateFile   = "rollout.json"
	RequestFile = "rollout-request.json"
)

// Phases of a rollout.
const (
	PhaseStarting = "starting" // waiting for the nodes' first reports
	PhaseCanary   = "canary"
	PhaseRolling  = "rolling"
	PhaseDone     = "done"
	PhaseFailed   = "failed"
	PhaseAborted  = "aborted"
)

// Node states.
const (
	NodePending   = "pending"
	NodeWaiting   = "waiting"   // busy: waits until idle or the deadline
	NodeRebooting = "rebooting" // asked to reboot, not yet up with checks passing
	NodeDone      = "done"
	NodeFailed    = "failed"
	NodeSkipped   = "skipped"   // not running, or the rollout stopped first
	NodeReverting = "reverting" // failed canary rebooting back onto the previous image
	NodeReverted  = "reverted"
)

// Request is what `herd rollout` asks of the engine.
type Request struct {
	// Image is the promoted image the nodes go to; Previous is the one
	// current before it (what undoing the promote restores).
	Image    string `json:"image"`
	Previous string `json:"previous,omitempty"`
	// Nodes are the nodes that follow the current image (not pinned), in
	// order; Canary is one of them ("" lets the engine choose).
	Nodes    []string `json:"nodes"`
	Canary   string   `json:"canary,omitempty"`
	Batch    int      `json:"batch"`
	WhenIdle bool     `json:"when_idle"`
	// Deadline: busy nodes are rebooted at the latest then (zero: none).
	Deadline time.Time `json:"deadline,omitzero"`
	// HoldDegraded treats a node reporting degraded health after its reboot
	// as failing its checks.
	HoldDegraded bool `json:"hold_degraded,omitempty"`
	// Abort stops the running rollout instead (no reboot is undone).
	Abort     bool      `json:"abort,omitempty"`
	Requested time.Time `json:"requested"`
}

// State is a rollout's persisted state.
type State struct {
	ID      string    `json:"id"`
	Request Request   `json:"request"`
	Phase   string    `json:"phase"`
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended,omitzero"`
	Canary  string    `json:"canary,omitempty"`
	// Undone is set when a failed canary undid the promote.
	Undone bool        `json:"undone,omitempty"`
	Error  string      `json:"error,omitempty"`
	Nodes  []NodeState `json:"nodes"`
}

// NodeState is one node's progress.
type NodeState struct {
	Name  string `json:"name"`
	State string `json:"state"`
	// Target is the image the node is going to (the rollout's, or the
	// previous one while reverting).
	Target string `json:"target,omitempty"`
	// RebootAsked: the engine decided to reboot it; RebootSent: a reply
	// carried Reboot to the node; PowerCycled: the BMC fallback was used.
	RebootAsked time.Time `json:"reboot_asked,omitzero"`
	RebootSent  time.Time `json:"reboot_sent,omitzero"`
	PowerCycled time.Time `json:"power_cycled,omitzero"`
	// Up is the first report from the new boot.
	Up       time.Time `json:"up,omitzero"`
	WallSent time.Time `json:"wall_sent,omitzero"`
	Detail   string    `json:"detail,omitempty"`
	// FailingBefore are the checks the node already failed in its last
	// report before the reboot (a GPU it lacks, say): the new image is not
	// held to them.
	FailingBefore []string `json:"failing_before,omitempty"`
}

// Terminal reports whether the phase has ended.
func Terminal(phase string) bool {
	return phase == PhaseDone || phase == PhaseFailed || phase == PhaseAborted
}

// Active reports whether s is a rollout still in progress.
func (s *State) Active() bool { return s != nil && !Terminal(s.Phase) }

// Node returns the named node's state, or nil.
func (s *State) Node(name string) *NodeState {
	for i := range s.Nodes {
		if s.Nodes[i].Name == name {
			return &s.Nodes[i]
		}
	}
	return nil
}

// Load reads the rollout state of stateDir (nil, nil: there has been none).
func Load(stateDir string) (*State, error) {
	data, err := os.ReadFile(filepath.Join(stateDir, StateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("rollout: %w", err)
	}
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("rollout: %s: %w", filepath.Join(stateDir, StateFile), err)
	}
	return &s, nil
}

func save(stateDir string, s *State) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("rollout: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(stateDir, StateFile), append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("rollout: save state: %w", err)
	}
	return nil
}

// Submit hands a request to the engine in herd serve. A new rollout is
// refused while one is active (abort it first).
func Submit(stateDir string, r Request) error {
	if !r.Abort {
		if r.Image == "" || len(r.Nodes) == 0 {
			return errors.New("rollout: a request needs an image and nodes")
		}
		if r.Batch < 1 {
			return fmt.Errorf("rollout: batch %d must be at least 1", r.Batch)
		}
		cur, err := Load(stateDir)
		if err != nil {
			return err
		}
		if cur.Active() {
			return fmt.Errorf("rollout: rollout %s to %s is still %s (herd rollout abort stops it)", cur.ID, short(cur.Request.Image), cur.Phase)
		}
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("rollout: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(stateDir, RequestFile), append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("rollout: submit: %w", err)
	}
	return nil
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
