package nodeauth

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Header is the HTTP request header carrying the encoded Auth.
const Header = "Herd-Auth"

// Purposes a signed request may have; the server checks the one its route
// expects, so a signature made for one use is worthless for another.
const (
	PurposeEnroll  = "enroll"
	PurposeOverlay = "overlay"
	PurposeEvent   = "event"
	PurposeStatus  = "status"
)

// maxHeader bounds the encoded Auth (a P-256 key and signature fit easily).
const maxHeader = 4096

// ErrBadAuth is wrapped by every verification failure.
var ErrBadAuth = errors.New("node authentication failed")

// Auth is a signed request: the node proves possession of Key by signing the
// server's single-use Nonce together with what the request is for (Purpose),
// who it is for (Node), the SHA-256 of the request body and, for an overlay
// request, the X25519 public key the answer is to be sealed to.
type Auth struct {
	Node       string `json:"node"`
	Purpose    string `json:"purpose"`
	Nonce      string `json:"nonce"`
	BodySHA256 string `json:"body_sha256"`
	X25519     string `json:"x25519,omitempty"` // base64 (std) of 32 bytes
	Key        string `json:"key"`              // authorized_keys form
	Sig        string `json:"sig"`              // base64 (std) of the SSH wire signature
}

// signedBytes is the exact message the signature covers: a version tag and
// every field but the signature, each length-prefixed by SSH's encoding so
// no two different requests share a message.
func (a *Auth) signedBytes() []byte {
	return ssh.Marshal(struct {
		Tag, Node, Purpose, Nonce, Body, X25519, Key string
	}{"herd-nodeauth-v1", a.Node, a.Purpose, a.Nonce, a.BodySHA256, a.X25519, a.Key})
}

// Sign makes the Auth for one request with key k.
func Sign(k crypto.Signer, node, purpose, nonce string, body, x25519Pub []byte) (*Auth, error) {
	pub, err := PublicKey(k)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(body)
	a := &Auth{Node: node, Purpose: purpose, Nonce: nonce, BodySHA256: hex.EncodeToString(sum[:]), Key: MarshalPublic(pub)}
	if x25519Pub != nil {
		a.X25519 = base64.StdEncoding.EncodeToString(x25519Pub)
	}
	s, err := ssh.NewSignerFromSigner(k)
	if err != nil {
		return nil, fmt.Errorf("node key: %w", err)
	}
	sig, err := s.Sign(rand.Reader, a.signedBytes())
	if err != nil {
		return nil, fmt.Errorf("sign request: %w", err)
	}
	a.Sig = base64.StdEncoding.EncodeToString(ssh.Marshal(sig))
	return a, nil
}

// Encode is the Header value: base64url of the JSON.
func (a *Auth) Encode() string {
	b, _ := json.Marshal(a)
	return base64.RawURLEncoding.EncodeToString(b)
}

// Decode parses a Header value (size-bounded, strict JSON).
func Decode(h string) (*Auth, error) {
	if h == "" {
		return nil, fmt.Errorf("%w: no %s header", ErrBadAuth, Header)
	}
	if len(h) > maxHeader {
		return nil, fmt.Errorf("%w: %s header longer than %d bytes", ErrBadAuth, Header, maxHeader)
	}
	b, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil {
		return nil, fmt.Errorf("%w: %s header: %v", ErrBadAuth, Header, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var a Auth
	if err := dec.Decode(&a); err != nil {
		return nil, fmt.Errorf("%w: %s header: %v", ErrBadAuth, Header, err)
	}
	return &a, nil
}

// Verify checks that a is a valid signature by a.Key over this node,
// purpose and body, and returns the key. It does not check the nonce (the
// server's Nonces does) nor whether the key is the enrolled one (Registry).
func (a *Auth) Verify(node, purpose string, body []byte) (ssh.PublicKey, error) {
	if a.Node != node {
		return nil, fmt.Errorf("%w: signed for node %q, not %q", ErrBadAuth, a.Node, node)
	}
	if a.Purpose != purpose {
		return nil, fmt.Errorf("%w: signed for %q, not %q", ErrBadAuth, a.Purpose, purpose)
	}
	sum := sha256.Sum256(body)
	if !strings.EqualFold(a.BodySHA256, hex.EncodeToString(sum[:])) {
		return nil, fmt.Errorf("%w: body does not match the signed hash", ErrBadAuth)
	}
	if purpose == PurposeOverlay {
		if _, err := a.X25519Key(); err != nil {
			return nil, err
		}
	}
	pub, err := ParsePublic(a.Key)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadAuth, err)
	}
	raw, err := base64.StdEncoding.DecodeString(a.Sig)
	if err != nil {
		return nil, fmt.Errorf("%w: signature: %v", ErrBadAuth, err)
	}
	var sig ssh.Signature
	if err := ssh.Unmarshal(raw, &sig); err != nil {
		return nil, fmt.Errorf("%w: signature: %v", ErrBadAuth, err)
	}
	if err := pub.Verify(a.signedBytes(), &sig); err != nil {
		return nil, fmt.Errorf("%w: signature does not verify with %s", ErrBadAuth, Fingerprint(pub))
	}
	return pub, nil
}

// X25519Key returns the decoded X25519 public key of an overlay request.
func (a *Auth) X25519Key() ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(a.X25519)
	if err != nil || len(b) != 32 {
		return nil, fmt.Errorf("%w: x25519 is not a base64 32-byte key", ErrBadAuth)
	}
	return b, nil
}
