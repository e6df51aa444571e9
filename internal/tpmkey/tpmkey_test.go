package tpmkey

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/herdlab/herd/internal/nodeauth"
	"github.com/herdlab/herd/internal/tpmkey/swtpmtest"
)

var startSWTPM = swtpmtest.Start

// TestTPMKeySignsNodeRequests: the key derived in a real swtpm signs node
// requests (ecdsa-sha2-nistp256) that the server's verification accepts,
// and a forged signature or another key does not pass.
func TestTPMKeySignsNodeRequests(t *testing.T) {
	dir := t.TempDir()
	k, err := Open(startSWTPM(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	pub, err := nodeauth.PublicKey(k)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(nodeauth.MarshalPublic(pub), "ecdsa-sha2-nistp256 ") {
		t.Fatalf("TPM key is %s", nodeauth.MarshalPublic(pub))
	}
	n := nodeauth.NewNonces(time.Minute, 4, 100)
	body := []byte(`{"stage":"up"}`)
	for i := 0; i < 3; i++ { // several signatures through one handle
		nonce, _, err := n.Issue("gpu01")
		if err != nil {
			t.Fatal(err)
		}
		a, err := nodeauth.Sign(k, "gpu01", nodeauth.PurposeEvent, nonce, body, nil)
		if err != nil {
			t.Fatal(err)
		}
		// As the server sees it: through the header encoding.
		got, err := nodeauth.Decode(a.Encode())
		if err != nil {
			t.Fatal(err)
		}
		vk, err := got.Verify("gpu01", nodeauth.PurposeEvent, body)
		if err != nil {
			t.Fatalf("server refuses the TPM's signature: %v", err)
		}
		if !nodeauth.SameKey(vk, pub) {
			t.Fatal("verified with another key")
		}
		if _, err := got.Verify("gpu01", nodeauth.PurposeEvent, []byte(`{"stage":"error"}`)); err == nil {
			t.Fatal("a signature over another body verified")
		}
	}
	if _, err := k.Sign(nil, make([]byte, 20), crypto.SHA1); err == nil {
		t.Fatal("signed a SHA-1 digest")
	}
	// The signature is an ordinary ECDSA one over the digest.
	d := sha256.Sum256([]byte("x"))
	sig, err := k.Sign(nil, d[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	ep := k.Public().(*ecdsa.PublicKey)
	if ep.Curve != elliptic.P256() || !ecdsa.VerifyASN1(ep, d[:], sig) {
		t.Fatal("the TPM's signature does not verify with crypto/ecdsa")
	}
}

// TestTPMKeyStableAndBound: the key is derived again, the same, after the
// TPM restarts (nothing stored outside the TPM); another TPM derives
// another key; the TPM marks the key as one that cannot leave it.
func TestTPMKeyStableAndBound(t *testing.T) {
	dir := t.TempDir()
	sock := startSWTPM(t, dir)
	k1, err := Open(sock)
	if err != nil {
		t.Fatal(err)
	}
	p1, _ := nodeauth.PublicKey(k1)
	// What the TPM says about the object, not what our template asked.
	rp, err := tpm2.ReadPublic{ObjectHandle: k1.handle}.Execute(k1.tpm)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := rp.OutPublic.Contents()
	if err != nil {
		t.Fatal(err)
	}
	if a := pub.ObjectAttributes; !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin {
		t.Fatalf("the TPM's key is exportable: %+v", a)
	}
	k1.Close()

	// Power-cycle: a fresh swtpm process on the same state.
	dir2 := t.TempDir()
	for _, f := range []string{"tpm2-00.permall"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir2, f), b, 0o600)
	}
	k2, err := Open(startSWTPM(t, dir2))
	if err != nil {
		t.Fatal(err)
	}
	defer k2.Close()
	p2, _ := nodeauth.PublicKey(k2)
	if !nodeauth.SameKey(p1, p2) {
		t.Fatalf("the key changed across a TPM restart: %s then %s", nodeauth.Fingerprint(p1), nodeauth.Fingerprint(p2))
	}
	// Another machine's TPM (a fresh owner seed).
	k3, err := Open(startSWTPM(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	defer k3.Close()
	p3, _ := nodeauth.PublicKey(k3)
	if nodeauth.SameKey(p1, p3) {
		t.Fatal("two TPMs derived the same key")
	}
	if _, err := Open(filepath.Join(t.TempDir(), "none")); err == nil || !strings.Contains(err.Error(), ErrNoTPM.Error()) {
		t.Fatalf("a missing TPM: %v", err)
	}
}

// TestTPMKeySignsInDALockout: a TPM in dictionary-attack lockout (what a
// node's TPM reaches after a few resets without an orderly shutdown, seen in
// TestLab as gpu01 retrying TPM_RC_LOCKOUT for 20 minutes after its resets)
// refuses every DA-protected key; the node key must still sign. A decoy key
// with a password, asked with the wrong one, drives the real swtpm there.
func TestTPMKeySignsInDALockout(t *testing.T) {
	k, err := Open(startSWTPM(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	decoy := Template()
	decoy.ObjectAttributes.NoDA = false
	label := sha256.Sum256([]byte("decoy"))
	decoy.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: label[:]}})
	cp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InSensitive:   tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{UserAuth: tpm2.TPM2BAuth{Buffer: []byte("right")}}},
		InPublic:      tpm2.New2B(decoy),
	}.Execute(k.tpm)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm2.FlushContext{FlushHandle: cp.ObjectHandle}.Execute(k.tpm)
	digest := sha256.Sum256([]byte("herd"))
	locked := false
	for i := 0; i < 64 && !locked; i++ {
		_, err := tpm2.Sign{
			KeyHandle:  tpm2.AuthHandle{Handle: cp.ObjectHandle, Name: cp.Name, Auth: tpm2.PasswordAuth([]byte("wrong"))},
			Digest:     tpm2.TPM2BDigest{Buffer: digest[:]},
			InScheme:   tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgECDSA, Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256})},
			Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
		}.Execute(k.tpm)
		locked = err != nil && errors.Is(err, tpm2.TPMRCLockout)
	}
	if !locked {
		t.Fatal("the decoy never put the TPM into DA lockout")
	}
	if _, err := k.Sign(nil, digest[:], crypto.SHA256); err != nil {
		t.Fatalf("the node key in a TPM in DA lockout: %v", err)
	}
}
