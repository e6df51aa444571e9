package nodeauth

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/herdlab/herd/internal/atomicfile"
)

// Registry is the server's enrollment state, all in files under the state
// directory so `herd node approve|enroll|forget` (another process) and a
// running `herd serve` share it without a restart: serve reads them on
// every request.
//
//	nodes/<name>/node.pub      the enrolled key (authorized_keys line)
//	nodes/<name>/pending.json  the last key presented and not (yet) accepted
//	enroll-windows.json        {"<name>": "<until RFC 3339>"}: first key accepted
type Registry struct {
	dir string
	mu  sync.Mutex // serialises this process's read-modify-write
}

// Status is the answer to a presented key.
type Status string

// Statuses of a node's key.
const (
	StatusEnrolled Status = "enrolled"
	StatusPending  Status = "pending"
)

// Pending is a key a node presented that is not enrolled.
type Pending struct {
	Key         string    `json:"key"`
	Fingerprint string    `json:"fingerprint"`
	Since       time.Time `json:"since"`
	From        string    `json:"from,omitempty"`
}

// WindowsFile is the enrollment windows' file in the state directory.
const WindowsFile = "enroll-windows.json"

// OpenRegistry returns the registry of a state directory.
func OpenRegistry(stateDir string) *Registry { return &Registry{dir: stateDir} }

func (r *Registry) nodeDir(name string) (string, error) {
	if !ValidName(name) {
		return "", fmt.Errorf("enrollment: %q is not a node name", name)
	}
	return filepath.Join(r.dir, "nodes", name), nil
}

// Enrolled returns the node's enrolled key, nil if it has none.
func (r *Registry) Enrolled(name string) (ssh.PublicKey, error) {
	d, err := r.nodeDir(name)
	if err != nil {
		return nil, err
	}
	p := filepath.Join(d, "node.pub")
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("enrollment: %w", err)
	}
	k, err := ParsePublic(string(b))
	if err != nil {
		return nil, fmt.Errorf("enrollment: %s: %w", p, err)
	}
	return k, nil
}

// PendingKey returns the node's pending key, nil if none.
func (r *Registry) PendingKey(name string) (*Pending, error) {
	d, err := r.nodeDir(name)
	if err != nil {
		return nil, err
	}
	p := filepath.Join(d, "pending.json")
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("enrollment: %w", err)
	}
	var pk Pending
	if err := json.Unmarshal(b, &pk); err != nil {
		return nil, fmt.Errorf("enrollment: %s: %w", p, err)
	}
	return &pk, nil
}

// Present handles a key a node proved possession of: the enrolled key is
// StatusEnrolled; inside an open enrollment window for the node (or with
// autoAccept, the site's insecure RAM-identity setting) the first key is
// enrolled; anything else is recorded as the node's pending key.
func (r *Registry) Present(name string, key ssh.PublicKey, from string, autoAccept bool, now time.Time) (Status, error) {
	d, err := r.nodeDir(name)
	if err != nil {
		return "", err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	cur, err := r.Enrolled(name)
	if err != nil {
		return "", err
	}
	if SameKey(cur, key) {
		return StatusEnrolled, nil
	}
	wins, err := r.readWindows()
	if err != nil {
		return "", err
	}
	if until, ok := wins[name]; (ok && now.Before(until)) || autoAccept {
		if err := r.enrollLocked(d, key); err != nil {
			return "", err
		}
		if ok {
			delete(wins, name) // the first key only
			if err := r.writeWindows(wins); err != nil {
				return "", err
			}
		}
		return StatusEnrolled, nil
	}
	if pk, err := r.PendingKey(name); err == nil && pk != nil && pk.Key == MarshalPublic(key) {
		return StatusPending, nil // a node polling for approval: nothing new to write
	}
	if err := os.MkdirAll(d, 0o700); err != nil {
		return "", fmt.Errorf("enrollment: %w", err)
	}
	b, _ := json.MarshalIndent(Pending{Key: MarshalPublic(key), Fingerprint: Fingerprint(key), Since: now.UTC(), From: from}, "", "  ")
	if err := atomicfile.WriteFile(filepath.Join(d, "pending.json"), append(b, '\n'), 0o600); err != nil {
		return "", fmt.Errorf("enrollment: %w", err)
	}
	return StatusPending, nil
}

func (r *Registry) enrollLocked(d string, key ssh.PublicKey) error {
	if err := os.MkdirAll(d, 0o700); err != nil {
		return fmt.Errorf("enrollment: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(d, "node.pub"), []byte(MarshalPublic(key)+"\n"), 0o644); err != nil {
		return fmt.Errorf("enrollment: %w", err)
	}
	if err := os.Remove(filepath.Join(d, "pending.json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("enrollment: %w", err)
	}
	return nil
}

// Approve enrolls the node's pending key. With fingerprint set, the pending
// key must have it (what the node's console printed); the key that was
// enrolled before, if any, stops working. It returns the approved
// fingerprint.
func (r *Registry) Approve(name, fingerprint string) (string, error) {
	d, err := r.nodeDir(name)
	if err != nil {
		return "", err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	pk, err := r.PendingKey(name)
	if err != nil {
		return "", err
	}
	if pk == nil {
		return "", fmt.Errorf("node %s has no pending key: boot it (its console prints the fingerprint), or open a window with herd node enroll", name)
	}
	if fingerprint != "" && fingerprint != pk.Fingerprint {
		return "", fmt.Errorf("node %s: the pending key is %s, not %s; do not approve a key whose fingerprint the node's console did not print", name, pk.Fingerprint, fingerprint)
	}
	key, err := ParsePublic(pk.Key)
	if err != nil {
		return "", fmt.Errorf("enrollment: %s/pending.json: %w", d, err)
	}
	if err := r.enrollLocked(d, key); err != nil {
		return "", err
	}
	return pk.Fingerprint, nil
}

// OpenWindow lets the first key each named node presents before until be
// enrolled without an approval.
func (r *Registry) OpenWindow(names []string, until time.Time) error {
	for _, n := range names {
		if !ValidName(n) {
			return fmt.Errorf("enrollment: %q is not a node name", n)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	wins, err := r.readWindows()
	if err != nil {
		return err
	}
	for _, n := range names {
		wins[n] = until.UTC()
	}
	return r.writeWindows(wins)
}

// Windows returns the open enrollment windows (name → until), expired ones left out.
func (r *Registry) Windows(now time.Time) (map[string]time.Time, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	wins, err := r.readWindows()
	for n, t := range wins {
		if !now.Before(t) {
			delete(wins, n)
		}
	}
	return wins, err
}

// Forget drops the node's enrolled and pending keys and any window for it.
func (r *Registry) Forget(name string) error {
	d, err := r.nodeDir(name)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range []string{"node.pub", "pending.json"} {
		if err := os.Remove(filepath.Join(d, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("enrollment: %w", err)
		}
	}
	wins, err := r.readWindows()
	if err != nil {
		return err
	}
	if _, ok := wins[name]; ok {
		delete(wins, name)
		return r.writeWindows(wins)
	}
	return nil
}

func (r *Registry) readWindows() (map[string]time.Time, error) {
	p := filepath.Join(r.dir, WindowsFile)
	wins := map[string]time.Time{}
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return wins, nil
	}
	if err != nil {
		return nil, fmt.Errorf("enrollment: %w", err)
	}
	if err := json.Unmarshal(b, &wins); err != nil {
		return nil, fmt.Errorf("enrollment: %s: %w", p, err)
	}
	return wins, nil
}

func (r *Registry) writeWindows(wins map[string]time.Time) error {
	names := make([]string, 0, len(wins))
	for n := range wins {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("{")
	for i, n := range names {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "\n  %q: %q", n, wins[n].UTC().Format(time.RFC3339))
	}
	b.WriteString("\n}\n")
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		return fmt.Errorf("enrollment: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(r.dir, WindowsFile), []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("enrollment: %w", err)
	}
	return nil
}
