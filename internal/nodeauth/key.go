// Package nodeauth is herd's node identity: the node's key (an Ed25519 key
// in a file on its cache partition, or a P-256 key held by a TPM), its
// fingerprint as ssh-keygen prints it, the signed-challenge request a node
// sends to prove possession of its key, and sealing of secrets to the
// ephemeral X25519 key a node names in such a request (HACKING.md "Boot
// path v2", Identity). The server's enrollment state is Registry.
package nodeauth

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/herdlab/herd/internal/atomicfile"
)

// KeyFile is where a node keeps its file key, relative to its herd-cache
// partition (in the booted system: /var/cache/herd/identity/node.key).
const KeyFile = "identity/node.key"

// nodeNameRe is site's node name rule (a DNS label); names end up in paths.
var nodeNameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidName reports whether name can be a node name (and a path element).
func ValidName(name string) bool { return nodeNameRe.MatchString(name) }

// GenerateFileKey makes a fresh Ed25519 node key.
func GenerateFileKey() (crypto.Signer, error) {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("node key: %w", err)
	}
	return k, nil
}

// LoadFileKey reads a node key written by SaveFileKey (OpenSSH PEM). A key
// file readable by group or others is refused: it may have been copied.
func LoadFileKey(path string) (crypto.Signer, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("node key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("node key %s: mode %04o, want 0600", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("node key: %w", err)
	}
	raw, err := ssh.ParseRawPrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("node key %s: %w", path, err)
	}
	switch k := raw.(type) {
	case *ed25519.PrivateKey:
		return *k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("node key %s: %T is not an Ed25519 key", path, raw)
}

// SaveFileKey writes k to path (0600, its directory 0700) atomically.
func SaveFileKey(path string, k crypto.Signer, comment string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("node key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(k, comment)
	if err != nil {
		return fmt.Errorf("node key: %w", err)
	}
	if err := atomicfile.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return fmt.Errorf("node key: %w", err)
	}
	return nil
}

// LoadOrCreateFileKey returns the key at path, creating it when the file is
// absent (created is then true). A present but unusable file is an error,
// never silently replaced: replacing it would need a new approval.
func LoadOrCreateFileKey(path, comment string) (k crypto.Signer, created bool, err error) {
	k, err = LoadFileKey(path)
	if err == nil {
		return k, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	if k, err = GenerateFileKey(); err != nil {
		return nil, false, err
	}
	if err := SaveFileKey(path, k, comment); err != nil {
		return nil, false, err
	}
	return k, true, nil
}

// PublicKey converts a node key's public half to its SSH form.
func PublicKey(k crypto.Signer) (ssh.PublicKey, error) {
	p, err := ssh.NewPublicKey(k.Public())
	if err != nil {
		return nil, fmt.Errorf("node key: %w", err)
	}
	return p, checkType(p)
}

func checkType(p ssh.PublicKey) error {
	switch p.Type() {
	case ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256:
		return nil
	}
	return fmt.Errorf("node key type %s: want %s or %s", p.Type(), ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256)
}

// MarshalPublic is the one-line authorized_keys form of a public key
// ("ssh-ed25519 AAAA..."), how keys travel and are stored (node.pub).
func MarshalPublic(p ssh.PublicKey) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(p)))
}

// ParsePublic parses the authorized_keys form of an Ed25519 or P-256 key.
func ParsePublic(s string) (ssh.PublicKey, error) {
	if len(s) > 1024 {
		return nil, errors.New("node key: public key longer than 1024 bytes")
	}
	p, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(s))
	if err != nil {
		return nil, fmt.Errorf("node key: %w", err)
	}
	if len(strings.TrimSpace(string(rest))) != 0 {
		return nil, errors.New("node key: more than one key")
	}
	return p, checkType(p)
}

// Fingerprint is the key's SHA256:<base64> fingerprint, exactly as
// `ssh-keygen -lf node.pub` prints it.
func Fingerprint(p ssh.PublicKey) string { return ssh.FingerprintSHA256(p) }

// SameKey reports whether a and b are the same public key.
func SameKey(a, b ssh.PublicKey) bool {
	return a != nil && b != nil && string(a.Marshal()) == string(b.Marshal())
}
