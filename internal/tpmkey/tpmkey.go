// Package tpmkey is a node key held by a TPM 2.0: a P-256 ECDSA signing
// key derived as a primary key of the owner hierarchy from a fixed herd
// template. The TPM derives the same key from its owner seed on every boot,
// so nothing is stored anywhere (no persistent handle, no key blob on disk),
// and the private half never leaves the TPM (fixedTPM, fixedParent,
// sensitiveDataOrigin). Clearing the TPM (a new owner seed) makes a new key,
// which the herd server treats like a new disk: it waits for approval.
//
// It talks to the TPM with github.com/google/go-tpm (pure Go: herd-boot stays
// CGO_ENABLED=0), through the kernel's resource manager /dev/tpmrm0 (or
// /dev/tpm0) or, in tests, swtpm's Unix socket. The owner hierarchy's
// authorization must be empty (the default of a TPM nobody took ownership of).
package tpmkey

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"
)

// Devices are where the booted kernel exposes a TPM 2.0, best first: the
// in-kernel resource manager (it flushes this process's objects when the
// file closes), then the raw device.
var Devices = []string{"/dev/tpmrm0", "/dev/tpm0"}

// ErrNoTPM is wrapped (with os.ErrNotExist) when the machine has no TPM
// device.
var ErrNoTPM = errors.New("no TPM 2.0 device")

// uniqueLabel makes herd's primary key differ from every other primary key
// made from a similar template (the TPM derives a primary key from the seed
// and the whole template, Unique field included).
var uniqueLabel = sha256.Sum256([]byte("herd node identity v1"))

// Template is the public template of the node key: an unrestricted P-256
// ECDSA/SHA-256 signing key that cannot leave the TPM.
func Template() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			SignEncrypt:         true,
			// NoDA: the key's authValue is empty (nothing to guess), so
			// dictionary-attack protection guards nothing, while a TPM in
			// DA lockout — reached after a few resets without an orderly
			// TPM shutdown, i.e. a node power-cycled by its BMC or a
			// rollout — would refuse every signature for up to
			// lockoutRecovery and leave the node without its secrets.
			NoDA: true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: uniqueLabel[:]},
		}),
	}
}

// Key is the node key inside a TPM; it is a crypto.Signer whose Sign sends
// TPM2_Sign (the digest must be SHA-256). Close flushes it from the TPM.
type Key struct {
	mu     sync.Mutex
	tpm    transport.TPMCloser
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	pub    *ecdsa.PublicKey
}

// Open derives the node key in the TPM at path: a character device
// (/dev/tpmrm0) or swtpm's Unix socket (`swtpm socket --server
// type=unixio,path=...`).
func Open(path string) (*Key, error) {
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("tpm %s: %w: %w", path, ErrNoTPM, err)
		}
		return nil, fmt.Errorf("tpm %s: %w", path, err)
	}
	var t transport.TPMCloser
	if st.Mode()&os.ModeSocket != 0 {
		t, err = linuxudstpm.Open(path)
	} else {
		t, err = linuxtpm.Open(path)
	}
	if err != nil {
		return nil, fmt.Errorf("tpm %s: %w", path, err)
	}
	k, err := New(t)
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("tpm %s: %w", path, err)
	}
	return k, nil
}

// OpenDefault opens the first of Devices that exists.
func OpenDefault() (*Key, error) {
	for _, d := range Devices {
		if _, err := os.Stat(d); err == nil {
			return Open(d)
		}
	}
	return nil, fmt.Errorf("%w (none of %v): %w", ErrNoTPM, Devices, os.ErrNotExist)
}

// New derives the node key through an open TPM connection (which Key.Close
// closes).
func New(t transport.TPMCloser) (*Key, error) {
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic:      tpm2.New2B(Template()),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("create the node key (owner hierarchy primary): %w", err)
	}
	k := &Key{tpm: t, handle: rsp.ObjectHandle, name: rsp.Name}
	pub, err := rsp.OutPublic.Contents()
	if err == nil {
		var parms *tpm2.TPMSECCParms
		var point *tpm2.TPMSECCPoint
		if parms, err = pub.Parameters.ECCDetail(); err == nil {
			if point, err = pub.Unique.ECC(); err == nil {
				k.pub, err = tpm2.ECDSAPub(parms, point)
			}
		}
	}
	if err == nil && !k.pub.Curve.IsOnCurve(k.pub.X, k.pub.Y) {
		err = errors.New("the TPM's public key is not on P-256")
	}
	if err != nil {
		k.flush()
		return nil, fmt.Errorf("node key public part: %w", err)
	}
	return k, nil
}

// Public is the key's public half (*ecdsa.PublicKey on P-256).
func (k *Key) Public() crypto.PublicKey { return k.pub }

// Sign signs a SHA-256 digest in the TPM and returns the ASN.1 DER ECDSA
// signature, as crypto.Signer and x/crypto/ssh expect.
func (k *Key) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts == nil || opts.HashFunc() != crypto.SHA256 || len(digest) != sha256.Size {
		return nil, errors.New("tpm key: only SHA-256 digests can be signed")
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.tpm == nil {
		return nil, errors.New("tpm key: closed")
	}
	rsp, err := tpm2.Sign{
		KeyHandle: tpm2.NamedHandle{Handle: k.handle, Name: k.name},
		Digest:    tpm2.TPM2BDigest{Buffer: digest},
		InScheme: tpm2.TPMTSigScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256}),
		},
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
	}.Execute(k.tpm)
	if err != nil {
		return nil, fmt.Errorf("tpm key: sign: %w", err)
	}
	sig, err := rsp.Signature.Signature.ECDSA()
	if err != nil {
		return nil, fmt.Errorf("tpm key: sign: %w", err)
	}
	return asn1.Marshal(struct{ R, S *big.Int }{
		new(big.Int).SetBytes(sig.SignatureR.Buffer),
		new(big.Int).SetBytes(sig.SignatureS.Buffer),
	})
}

func (k *Key) flush() {
	tpm2.FlushContext{FlushHandle: k.handle}.Execute(k.tpm)
}

// Close flushes the key from the TPM and closes the connection; the key
// itself is derived again by the next Open.
func (k *Key) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.tpm == nil {
		return nil
	}
	k.flush()
	err := k.tpm.Close()
	k.tpm = nil
	return err
}
