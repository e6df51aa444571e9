package nodeauth

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
)

// sealMagic starts every sealed blob (format version).
const sealMagic = "herdseal1"

// NewSealKey makes the ephemeral X25519 key a node sends (public half) in
// an overlay request and opens the answer with.
func NewSealKey() (*ecdh.PrivateKey, error) {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("seal key: %w", err)
	}
	return k, nil
}

// SealContext binds a sealed answer to one request: the node and its nonce.
func SealContext(node, nonce string) []byte { return []byte(node + "\x00" + nonce) }

func sealKey(shared, ephPub, recipient, context []byte) (cipher.AEAD, error) {
	salt := append(append([]byte{}, ephPub...), recipient...)
	key, err := hkdf.Key(sha256.New, shared, salt, "herd-nodeauth seal v1\x00"+string(context), 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// Seal encrypts plaintext to the X25519 public key recipient: a fresh
// ephemeral key, ECDH, HKDF-SHA256 and AES-256-GCM with context as
// associated data. Only the holder of the recipient's private key can open
// it; a sniffer of both request and answer learns nothing.
func Seal(recipient, context, plaintext []byte) ([]byte, error) {
	rp, err := ecdh.X25519().NewPublicKey(recipient)
	if err != nil {
		return nil, fmt.Errorf("seal: recipient key: %w", err)
	}
	eph, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	shared, err := eph.ECDH(rp)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	ephPub := eph.PublicKey().Bytes()
	aead, err := sealKey(shared, ephPub, recipient, context)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	out := append([]byte(sealMagic), ephPub...)
	out = append(out, nonce...)
	return aead.Seal(out, nonce, plaintext, context), nil
}

// Open decrypts what Seal made for priv's public key with the same context.
func Open(priv *ecdh.PrivateKey, context, sealed []byte) ([]byte, error) {
	if len(sealed) < len(sealMagic)+32+12+16 || string(sealed[:len(sealMagic)]) != sealMagic {
		return nil, errors.New("open sealed data: not a herd sealed blob")
	}
	rest := sealed[len(sealMagic):]
	ephPub, rest := rest[:32], rest[32:]
	ep, err := ecdh.X25519().NewPublicKey(ephPub)
	if err != nil {
		return nil, fmt.Errorf("open sealed data: %w", err)
	}
	shared, err := priv.ECDH(ep)
	if err != nil {
		return nil, fmt.Errorf("open sealed data: %w", err)
	}
	aead, err := sealKey(shared, ephPub, priv.PublicKey().Bytes(), context)
	if err != nil {
		return nil, fmt.Errorf("open sealed data: %w", err)
	}
	nonce, ct := rest[:aead.NonceSize()], rest[aead.NonceSize():]
	pt, err := aead.Open(nil, nonce, ct, context)
	if err != nil {
		return nil, fmt.Errorf("open sealed data: %w (not sealed to this key, or altered)", err)
	}
	return pt, nil
}
