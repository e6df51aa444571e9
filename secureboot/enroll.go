package secureboot

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/herdlab/herd/internal/atomicfile"
)

// Enrollment is a pending one-shot key enrollment for a node
// (`herd secureboot enroll NAME`).
type Enrollment struct {
	Until time.Time `json:"until"`
	// DropMicrosoft replaces db and KEK with herd's keys alone instead of
	// adding herd's to what the firmware holds (Microsoft's keys, which
	// option ROMs of GPUs and NICs are signed with).
	DropMicrosoft bool `json:"drop_microsoft,omitempty"`
}

// Updates are the signed variable updates a node writes, in order (db, KEK,
// then PK, whose write ends Setup Mode), as served under /secureboot/.
func (e Enrollment) Updates() []string {
	out := make([]string, 0, len(Roles))
	for _, r := range Roles {
		out = append(out, UpdateName(r, !e.DropMicrosoft))
	}
	return out
}

func enrollPath(state string) string { return filepath.Join(state, "secureboot", "enroll.json") }

var enrollMu sync.Mutex

func readEnroll(state string) (map[string]Enrollment, error) {
	m := map[string]Enrollment{}
	data, err := os.ReadFile(enrollPath(state))
	if errors.Is(err, os.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", enrollPath(state), err)
	}
	return m, nil
}

func writeEnroll(state string, m map[string]Enrollment) error {
	if err := os.MkdirAll(filepath.Dir(enrollPath(state)), 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(enrollPath(state), append(data, '\n'), 0o644)
}

// MarkEnroll arranges the one-shot enrollment of herd's keys on node's
// next boot (until the deadline).
func MarkEnroll(state, node string, e Enrollment) error {
	enrollMu.Lock()
	defer enrollMu.Unlock()
	m, err := readEnroll(state)
	if err != nil {
		return err
	}
	m[node] = e
	return writeEnroll(state, m)
}

// TakeEnroll returns and removes node's pending enrollment (one shot);
// expired ones are dropped.
func TakeEnroll(state, node string, now time.Time) (Enrollment, bool, error) {
	enrollMu.Lock()
	defer enrollMu.Unlock()
	m, err := readEnroll(state)
	if err != nil {
		return Enrollment{}, false, err
	}
	e, ok := m[node]
	if !ok {
		return Enrollment{}, false, nil
	}
	delete(m, node)
	if err := writeEnroll(state, m); err != nil {
		return Enrollment{}, false, err
	}
	return e, now.Before(e.Until), nil
}

// PendingEnrollments lists nodes with an enrollment still to be taken.
func PendingEnrollments(state string, now time.Time) ([]string, error) {
	m, err := readEnroll(state)
	if err != nil {
		return nil, err
	}
	var out []string
	for n, e := range m {
		if now.Before(e.Until) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out, nil
}

// ExportDir is where the server keeps the exported certificates and signed
// updates it serves under /secureboot/ (public: no private key).
func ExportDir(state string) string { return filepath.Join(state, "secureboot", "export") }
