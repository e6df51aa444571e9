package inventory

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/herdlab/herd/internal/atomicfile"
)

// ForgetDirName is the directory under the state dir where `herd node
// forget|rm` leaves one file per forgotten MAC for a running `herd serve`,
// whose inventory lives in memory and would otherwise write the record
// back into nodes.json.
const ForgetDirName = "nodes.forget"

// ForgetPoll is how often a serving inventory looks for forget requests
// when no traffic makes it look sooner.
var ForgetPoll = time.Second

// ForgetIn removes mac's record from the inventory in stateDir: from
// nodes.json now, and from a `herd serve` running on stateDir before its
// next change or write (at most ForgetPoll later).
func ForgetIn(stateDir, mac string) error {
	hw, err := net.ParseMAC(mac)
	if err != nil || len(hw) != 6 {
		return fmt.Errorf("inventory: %q is not an Ethernet MAC address", mac)
	}
	dir := filepath.Join(stateDir, ForgetDirName)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("inventory: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, forgetFile(hw)), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644); err != nil {
		return fmt.Errorf("inventory: %w", err)
	}
	inv, err := Load(stateDir)
	if err != nil {
		return err
	}
	return inv.Forget(hw.String())
}

func forgetFile(hw net.HardwareAddr) string { return strings.ReplaceAll(hw.String(), ":", "-") }

// ServeForgets makes this inventory (the one `herd serve` holds) honour
// ForgetIn requests: before every change and write, and every ForgetPoll
// until ctx ends. A request is removed once applied.
func (inv *Inventory) ServeForgets(ctx context.Context) {
	inv.mu.Lock()
	inv.forgetDir = filepath.Join(filepath.Dir(inv.path), ForgetDirName)
	inv.applyForgetsLocked()
	inv.mu.Unlock()
	go func() {
		t := time.NewTicker(ForgetPoll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				inv.mu.Lock()
				inv.applyForgetsLocked()
				if inv.dirty {
					if err := inv.markDirtyLocked(); err != nil && inv.log != nil {
						inv.log(err)
					}
				}
				inv.mu.Unlock()
			}
		}
	}()
}

// applyForgetsLocked drops the records named in forgetDir (marking the
// inventory dirty; the caller writes). It reads the
// directory only when its modification time changed (one stat per call).
func (inv *Inventory) applyForgetsLocked() {
	if inv.forgetDir == "" {
		return
	}
	st, err := os.Stat(inv.forgetDir)
	if err != nil || st.ModTime().Equal(inv.forgetSeen) {
		return
	}
	ents, err := os.ReadDir(inv.forgetDir)
	if err != nil {
		return
	}
	all := true
	for _, e := range ents {
		hw, err := net.ParseMAC(strings.ReplaceAll(e.Name(), "-", ":"))
		if err != nil || len(hw) != 6 {
			continue // atomicfile's temporary files, strays
		}
		if _, ok := inv.recs[hw.String()]; ok {
			delete(inv.recs, hw.String())
			inv.dirty = true
		}
		if err := os.Remove(filepath.Join(inv.forgetDir, e.Name())); err != nil && !os.IsNotExist(err) {
			all = false
		}
	}
	if all {
		// Removing the files changed the mtime again: look at it next
		// time only if something else changes it.
		if st, err := os.Stat(inv.forgetDir); err == nil {
			inv.forgetSeen = st.ModTime()
		}
	}
}
