package server

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/herdlab/herd/internal/privdrop"
)

// privilegePlan decides, before anything is bound, whom herd serve runs as
// once its sockets are open (HACKING.md "Process"): with --user U, started
// as root, it drops to U, whose state dir it must be (created for U when
// missing); started as U already, nothing to drop. Without --user, root is
// refused when the state dir belongs to someone else (files it writes
// would be root's in that user's directory); root with a root-owned state
// dir keeps running as root, with a warning. nil: no drop.
func privilegePlan(opt Options) (*privdrop.Target, error) {
	euid := os.Geteuid()
	if opt.User == "" {
		if euid != 0 {
			return nil, nil
		}
		owner, err := privdrop.Owner(opt.StateDir)
		if err != nil {
			return nil, fmt.Errorf("state dir: %w", err)
		}
		if owner != 0 {
			return nil, fmt.Errorf("state dir %s belongs to uid %d, and herd serve runs as root: pass --user with that user (it drops to it after binding its ports)", opt.StateDir, owner)
		}
		opt.Log.Warn("herd serve runs as root for its whole life; pass --user NAME (owner of the state dir) to drop root after binding the ports")
		return nil, nil
	}
	t, err := privdrop.Lookup(opt.User)
	if err != nil {
		return nil, fmt.Errorf("--user: %w", err)
	}
	if euid != 0 {
		if euid == t.UID {
			return nil, nil
		}
		return nil, fmt.Errorf("--user %s: herd serve runs as uid %d, not root: it cannot become another user", opt.User, euid)
	}
	if _, err := os.Stat(opt.StateDir); os.IsNotExist(err) {
		if err := os.MkdirAll(opt.StateDir, 0o750); err != nil {
			return nil, fmt.Errorf("state dir: %w", err)
		}
		if err := os.Chown(opt.StateDir, t.UID, t.GID); err != nil {
			return nil, fmt.Errorf("state dir: %w", err)
		}
	}
	owner, err := privdrop.Owner(opt.StateDir)
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	if owner != t.UID {
		return nil, fmt.Errorf("--user %s: state dir %s belongs to uid %d, not %s (uid %d): run chown -R %s: %s", opt.User, opt.StateDir, owner, t.Name, t.UID, t.Name, opt.StateDir)
	}
	// Still root: what root commands (or a root-run herd before) left among
	// the server's files becomes the user's.
	if err := GiveToStateOwner(opt.StateDir); err != nil {
		return nil, err
	}
	return &t, nil
}

// builderOwned are the state dir entries of the image builder and store
// (built by root, world-readable, only read by herd serve): GiveToStateOwner
// leaves them alone; everything else in the state dir is the server's.
var builderOwned = map[string]bool{"images": true, "stages": true, "debs": true, "keyrings": true,
	"apt-lists": true, "apt-tree": true, "apt-resolved": true, "tmp": true, "logs": true, "lock": true,
	"current": true, "history": true, "tests": true}

// GiveToStateOwner is for herd commands run as root (sudo herd node
// approve, forget, enroll...) on a state dir that belongs to another user,
// the one `herd serve --user` runs as: it hands what such a command wrote
// among the server's files (all but the image builder's, builderOwned) to
// that user, so the server can still read and replace them. Without root, or on a root-owned or missing state dir, it
// does nothing. Symbolic links are not followed, hard-linked files skipped.
func GiveToStateOwner(stateDir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	st, err := os.Stat(stateDir)
	if err != nil {
		return nil
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok || sys.Uid == 0 {
		return nil
	}
	uid, gid := int(sys.Uid), int(sys.Gid)
	ents, err := os.ReadDir(stateDir)
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	var errs []error
	for _, e := range ents {
		if builderOwned[e.Name()] {
			continue
		}
		filepath.WalkDir(filepath.Join(stateDir, e.Name()), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil // absent
			}
			info, err := d.Info()
			if err != nil {
				return nil
			}
			s, ok := info.Sys().(*syscall.Stat_t)
			// Never a second link to a file: the state dir's user could
			// have made it to some other file for root to hand over.
			if ok && (int(s.Uid) != uid || int(s.Gid) != gid) && (d.IsDir() || s.Nlink == 1) {
				if err := os.Lchown(p, uid, gid); err != nil {
					errs = append(errs, err)
				}
			}
			return nil
		})
	}
	if len(errs) > 0 {
		return fmt.Errorf("hand state files to uid %d (herd serve's user): %w", uid, errors.Join(errs...))
	}
	return nil
}
