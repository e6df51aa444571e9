package httpboot

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"

	"github.com/herdlab/herd/internal/atomicfile"
	"github.com/herdlab/herd/site"
)

// HostKey is one SSH host key pair in OpenSSH format.
type HostKey struct {
	Type    string // ed25519, ecdsa, rsa
	Private []byte
	Public  []byte
}

// Secrets is a node's persistent identity kept under <state>/nodes/<name>/.
type Secrets struct {
	MachineID   string
	SSHHostKeys []HostKey
}

// keyTypes are generated for every node, in this order.
var keyTypes = []string{"ed25519", "ecdsa", "rsa"}

var (
	machineRe = regexp.MustCompile(`^[0-9a-f]{32}$`)
	secretsMu sync.Mutex // one generator at a time: two first boots must not race
)

// NodeSecrets loads a node's machine-id and SSH host keys from
// <stateDir>/nodes/<name>/, generating (once, mode 0600) whatever is missing,
// so a node keeps its identity across reboots and image changes.
func NodeSecrets(stateDir, name string) (Secrets, error) {
	return nodeSecrets(stateDir, name, true)
}

// LoadSecrets reads a node's existing machine-id and SSH host keys without
// generating any (an error names what is missing), so a test or a tool can
// pin the keys a node was given.
func LoadSecrets(stateDir, name string) (Secrets, error) {
	return nodeSecrets(stateDir, name, false)
}

func nodeSecrets(stateDir, name string, create bool) (Secrets, error) {
	if !site.ValidNodeName(name) {
		return Secrets{}, fmt.Errorf("node secrets: %q is not a node name", name)
	}
	secretsMu.Lock()
	defer secretsMu.Unlock()
	dir := filepath.Join(stateDir, "nodes", name)
	if !create {
		if _, err := os.Stat(dir); err != nil {
			return Secrets{}, fmt.Errorf("node secrets: %w", err)
		}
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return Secrets{}, fmt.Errorf("node secrets: %w", err)
	}
	var s Secrets
	idPath := filepath.Join(dir, "machine-id")
	data, err := os.ReadFile(idPath)
	switch {
	case err == nil:
		s.MachineID = strings.TrimSpace(string(data))
		if !machineRe.MatchString(s.MachineID) {
			return Secrets{}, fmt.Errorf("node secrets: %s does not hold 32 hex digits; remove it to get a new machine-id", idPath)
		}
	case errors.Is(err, os.ErrNotExist) && create:
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return Secrets{}, fmt.Errorf("node secrets: %w", err)
		}
		// systemd wants a v4 UUID shape in machine-id (version and variant bits).
		b[6] = b[6]&0x0f | 0x40
		b[8] = b[8]&0x3f | 0x80
		s.MachineID = hex.EncodeToString(b[:])
		if err := atomicfile.WriteFile(idPath, []byte(s.MachineID+"\n"), 0o600); err != nil {
			return Secrets{}, fmt.Errorf("node secrets: %w", err)
		}
	default:
		return Secrets{}, fmt.Errorf("node secrets: %w", err)
	}
	for _, typ := range keyTypes {
		k, err := loadOrCreateKey(dir, name, typ, create)
		if err != nil {
			return Secrets{}, err
		}
		s.SSHHostKeys = append(s.SSHHostKeys, k)
	}
	return s, nil
}

func loadOrCreateKey(dir, node, typ string, create bool) (HostKey, error) {
	priv := filepath.Join(dir, "ssh_host_"+typ+"_key")
	pub := priv + ".pub"
	pd, err1 := os.ReadFile(priv)
	pb, err2 := os.ReadFile(pub)
	if err1 == nil && err2 == nil {
		if _, err := ssh.ParseRawPrivateKey(pd); err != nil {
			return HostKey{}, fmt.Errorf("node secrets: %s: %w (remove it to generate a new key)", priv, err)
		}
		return HostKey{Type: typ, Private: pd, Public: pb}, nil
	}
	if err1 != nil && (!create || !errors.Is(err1, os.ErrNotExist)) {
		return HostKey{}, fmt.Errorf("node secrets: %w", err1)
	}
	if !create {
		return HostKey{}, fmt.Errorf("node secrets: %w", err2)
	}
	var key crypto.Signer
	var err error
	switch typ {
	case "ed25519":
		_, key, err = ed25519.GenerateKey(rand.Reader)
	case "ecdsa":
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "rsa":
		key, err = rsa.GenerateKey(rand.Reader, 3072)
	}
	if err != nil {
		return HostKey{}, fmt.Errorf("node secrets: generate %s key: %w", typ, err)
	}
	comment := "root@" + node
	block, err := ssh.MarshalPrivateKey(key, comment)
	if err != nil {
		return HostKey{}, fmt.Errorf("node secrets: %w", err)
	}
	sp, err := ssh.NewPublicKey(key.Public())
	if err != nil {
		return HostKey{}, fmt.Errorf("node secrets: %w", err)
	}
	pd = pem.EncodeToMemory(block)
	pb = append(bytesTrimNL(ssh.MarshalAuthorizedKey(sp)), []byte(" "+comment+"\n")...)
	// The public half is written last: a crash in between leaves no .pub,
	// so the pair is regenerated instead of mismatched.
	if err := atomicfile.WriteFile(priv, pd, 0o600); err != nil {
		return HostKey{}, fmt.Errorf("node secrets: %w", err)
	}
	if err := atomicfile.WriteFile(pub, pb, 0o600); err != nil {
		return HostKey{}, fmt.Errorf("node secrets: %w", err)
	}
	return HostKey{Type: typ, Private: pd, Public: pb}, nil
}

func bytesTrimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}
