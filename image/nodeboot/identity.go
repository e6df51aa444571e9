package nodeboot

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/herdlab/herd/internal/atomicfile"
	"github.com/herdlab/herd/internal/cpio"
	"github.com/herdlab/herd/internal/nodeauth"
)

// Identity is what the agent got from the identity step: the node's
// runtime overlay (newc cpio, opened from its sealed form; nil when the
// node boots without secrets) and the client that signs events.
type Identity struct {
	Overlay []byte
	Client  *nodeauth.Client
}

// identityTimeouts: how long the agent tries an unreachable server before
// it boots without secrets (a pending key waits for approval for ever).
var (
	identityUnreachable = 3 * time.Minute
	identityPoll        = 5 * time.Second
)

// RunKeyFile is where a RAM-mode node keeps its (ephemeral) key for the
// booted system's "up" report: /run moves into the new root.
const RunKeyFile = "identity/node.key"

// PubFile is where a node with a cache SSD writes its key's public half
// (authorized_keys form), next to KeyFile: `ssh-keygen -lf` on it prints
// the fingerprint the server shows. A TPM node has only this file.
const PubFile = "identity/node.pub"

// nodeKey loads or creates the node key: in the TPM when the node has one
// (even with an SSD: a TPM key cannot be copied off the machine), else
// identity/node.key on the cache partition (mounted at cacheMnt) when there
// is one, else a key that lives only in RAM (RunDir) and is lost at
// power-off. persistent says whether it survives a power cycle.
func (s *System) nodeKey(p *Params, cacheMnt string, onSSD bool) (k crypto.Signer, persistent bool, err error) {
	if k := s.tpmKey(); k != nil {
		if onSSD {
			// The disk keeps no private key: one left from before the
			// TPM was used is no longer this node's identity.
			old := filepath.Join(cacheMnt, nodeauth.KeyFile)
			if _, err := os.Stat(old); err == nil {
				if err := os.Remove(old); err != nil {
					return nil, false, fmt.Errorf("node key: %w", err)
				}
				s.say("removed the old file key %s: this node's key is in its TPM now (it needs approval once)", nodeauth.KeyFile)
			}
			s.writePub(filepath.Join(cacheMnt, PubFile), k)
		}
		return k, true, nil
	}
	if onSSD {
		path := filepath.Join(cacheMnt, nodeauth.KeyFile)
		k, created, err := nodeauth.LoadOrCreateFileKey(path, "herd-node@"+p.Node)
		if err != nil {
			// A damaged key file: keep it for inspection, make a new key
			// (which needs the admin's approval like a new disk).
			bad := path + ".bad-" + time.Now().UTC().Format("20060102T150405Z")
			s.say("node key %s unusable (%v): moved to %s, making a new one (it needs approval)", path, err, bad)
			if rerr := os.Rename(path, bad); rerr != nil {
				return nil, false, fmt.Errorf("node key: %w", rerr)
			}
			if k, _, err = nodeauth.LoadOrCreateFileKey(path, "herd-node@"+p.Node); err != nil {
				return nil, false, err
			}
			s.writePub(filepath.Join(cacheMnt, PubFile), k)
			return k, true, nil
		}
		if created {
			s.say("made a new node key in %s on the cache SSD", nodeauth.KeyFile)
		}
		s.writePub(filepath.Join(cacheMnt, PubFile), k)
		return k, true, nil
	}
	k, err = nodeauth.GenerateFileKey()
	if err != nil {
		return nil, false, err
	}
	if err := nodeauth.SaveFileKey(filepath.Join(s.RunDir, RunKeyFile), k, "herd-node@"+p.Node); err != nil {
		return nil, false, err
	}
	return k, false, nil
}

// tpmKey is the TPM's node key, nil when the node has no (usable) TPM; a
// TPM that exists but fails is said on the console.
func (s *System) tpmKey() crypto.Signer {
	if s.TPMKey == nil {
		return nil
	}
	k, err := s.TPMKey()
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			s.say("TPM present but no key from it (%v): using the disk or RAM instead", err)
		}
		return nil
	}
	return k
}

// writePub writes the key's public half for admins (a failure only costs
// that convenience, so it is said, not returned).
func (s *System) writePub(path string, k crypto.Signer) {
	pub, err := nodeauth.PublicKey(k)
	if err == nil {
		err = os.MkdirAll(filepath.Dir(path), 0o700)
	}
	if err == nil {
		err = atomicfile.WriteFile(path, []byte(nodeauth.MarshalPublic(pub)+"\n"), 0o644)
	}
	if err != nil {
		s.say("node key: cannot write %s: %v", path, err)
	}
}

// identity proves the node's key to the server and fetches its sealed
// runtime overlay (HACKING.md "Boot path v2", Identity). It never fails the
// boot: without an approved key the node boots without its secrets and the
// console says why.
func (s *System) identity(ctx context.Context, p *Params, rep *Reporter, cacheMnt string, onSSD bool) *Identity {
	if p.Node == "" || p.Server == "" {
		s.say("identity: no herd.node or herd.server on the command line: booting without per-node secrets")
		return nil
	}
	key, persistent, err := s.nodeKey(p, cacheMnt, onSSD)
	if err != nil {
		s.say("identity: %v: booting without per-node secrets", err)
		return nil
	}
	pub, err := nodeauth.PublicKey(key)
	if err != nil {
		s.say("identity: %v: booting without per-node secrets", err)
		return nil
	}
	fp := nodeauth.Fingerprint(pub)
	where := "identity/node.key on the cache SSD"
	// File keys are Ed25519 (they have a Seed); the TPM's is P-256.
	if _, isFile := key.(interface{ Seed() []byte }); !isFile && persistent {
		where = "the TPM"
	} else if !persistent {
		where = "RAM only (no cache disk, no TPM): lost at power-off"
	}
	s.say("node key %s (%s)", fp, where)
	c := &nodeauth.Client{Base: p.Server, Node: p.Node, Key: key, HTTP: s.Client}

	unreachableSince := time.Time{}
	lastHint := time.Time{}
	for {
		ans, err := c.Enroll(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, nodeauth.ErrUnknownNode) {
				s.say("identity: %v: booting without per-node secrets", err)
				return nil
			}
			if unreachableSince.IsZero() {
				unreachableSince = time.Now()
			}
			if time.Since(unreachableSince) > identityUnreachable {
				s.say("identity: the server did not answer the enrollment for %s (%v): booting without per-node secrets (no SSH host keys, no directory bind)", identityUnreachable, err)
				return nil
			}
			s.say("identity: enrollment: %v; retrying", err)
		} else {
			unreachableSince = time.Time{}
			if ans.Fingerprint != "" && ans.Fingerprint != fp {
				s.say("identity: the server names the key %s, this node has %s: booting without per-node secrets", ans.Fingerprint, fp)
				return nil
			}
			if ans.Status == nodeauth.StatusEnrolled {
				break
			}
			if !persistent {
				s.say("identity: this node has no cache disk and no TPM, so it cannot keep a key across boots, and the server did not accept its fresh key. " +
					"Booting WITHOUT its secrets (no SSH host keys, no directory bind). Give it a disk or a TPM, or (INSECURE: anyone on the LAN could take its secrets) set insecure_ram_identity: true for it in herd.yaml.")
				return nil
			}
			if time.Since(lastHint) > 30*time.Second {
				s.say("identity: node key %s is waiting for approval. On the herd server run:\n\n    herd node approve %s --fingerprint %s\n\n(or open a window: herd node enroll %s --for 15m)",
					fp, p.Node, fp, p.Node)
				lastHint = time.Now()
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(identityPoll):
		}
	}
	s.say("identity: key %s is enrolled for %s", fp, p.Node)
	rep.SetSigner(ctx, c)
	id := &Identity{Client: c}
	deadline := time.Now().Add(identityUnreachable)
	for {
		data, err := c.Overlay(ctx)
		if err == nil {
			id.Overlay = data
			s.say("runtime overlay received (%d bytes, sealed to this boot's X25519 key)", len(data))
			return id
		}
		if ctx.Err() != nil || time.Now().After(deadline) || errors.Is(err, nodeauth.ErrRefused) {
			s.say("identity: cannot get the runtime overlay (%v): booting without per-node secrets", err)
			return id
		}
		s.say("identity: runtime overlay: %v; retrying", err)
		select {
		case <-ctx.Done():
			return id
		case <-time.After(identityPoll):
		}
	}
}

// UnpackOverlay writes the runtime overlay cpio (entries under
// herd/overlay/) into dst with their owners, modes and symlinks. Names that
// would leave dst are refused.
func UnpackOverlay(data []byte, dst string) error {
	es, err := cpio.ReadAll(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("runtime overlay: %w", err)
	}
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return fmt.Errorf("runtime overlay: %w", err)
	}
	for _, e := range es {
		if e.Name == "herd" || e.Name == "herd/overlay" {
			continue
		}
		rel, ok := strings.CutPrefix(e.Name, "herd/overlay/")
		if !ok || rel == "" || path.Clean(rel) != rel || strings.HasPrefix(rel, "../") || rel == ".." || strings.HasPrefix(rel, "/") {
			return fmt.Errorf("runtime overlay: entry %q is not under herd/overlay/", e.Name)
		}
		target := filepath.Join(dst, filepath.FromSlash(rel))
		perm := os.FileMode(e.Mode & 0o777)
		switch e.Mode & 0o170000 {
		case cpio.TypeDir:
			if err := os.MkdirAll(target, 0o700); err != nil {
				return fmt.Errorf("runtime overlay: %w", err)
			}
		case cpio.TypeReg:
			if err := os.WriteFile(target, e.Data, 0o600); err != nil {
				return fmt.Errorf("runtime overlay: %w", err)
			}
		case cpio.TypeLink:
			os.Remove(target)
			if err := os.Symlink(string(e.Data), target); err != nil {
				return fmt.Errorf("runtime overlay: %w", err)
			}
			if err := os.Lchown(target, e.UID, e.GID); err != nil {
				return fmt.Errorf("runtime overlay: %w", err)
			}
			continue
		default:
			return fmt.Errorf("runtime overlay: entry %q has an unsupported type %o", e.Name, e.Mode&0o170000)
		}
		if err := os.Lchown(target, e.UID, e.GID); err != nil {
			return fmt.Errorf("runtime overlay: %w", err)
		}
		// Chmod after chown: chown clears setuid/setgid bits.
		mode := perm
		if e.Mode&0o4000 != 0 {
			mode |= os.ModeSetuid
		}
		if e.Mode&0o2000 != 0 {
			mode |= os.ModeSetgid
		}
		if e.Mode&0o1000 != 0 {
			mode |= os.ModeSticky
		}
		if err := os.Chmod(target, mode); err != nil {
			return fmt.Errorf("runtime overlay: %w", err)
		}
	}
	return nil
}

// LoadBootedKey finds the node key in the booted system: in the TPM, on
// the cache SSD (/var/cache/herd/identity/node.key) or, in RAM mode, under
// /run/herd — the order nodeKey chose it in.
func LoadBootedKey(s *System) (crypto.Signer, string, error) {
	var errs []string
	if s.TPMKey != nil {
		k, err := s.TPMKey()
		if err == nil {
			return k, "TPM", nil
		}
		errs = append(errs, err.Error())
	}
	for _, p := range []string{filepath.Join(s.CacheDir, nodeauth.KeyFile), filepath.Join(s.RunDir, RunKeyFile)} {
		k, err := nodeauth.LoadFileKey(p)
		if err == nil {
			return k, p, nil
		}
		errs = append(errs, err.Error())
	}
	return nil, "", fmt.Errorf("no node key: %s", strings.Join(errs, "; "))
}
