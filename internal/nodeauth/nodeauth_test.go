package nodeauth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/internal/testenv"
)

// request signs one request the way a node does and returns its decoded Auth
// (what the server sees after parsing the header).
func request(t *testing.T, n *Nonces, node, purpose string, body []byte, withX bool) (*Auth, []byte) {
	t.Helper()
	k, err := GenerateFileKey()
	if err != nil {
		t.Fatal(err)
	}
	return requestWith(t, k, n, node, purpose, body, withX)
}

func requestWith(t *testing.T, k signer, n *Nonces, node, purpose string, body []byte, withX bool) (*Auth, []byte) {
	t.Helper()
	nonce, _, err := n.Issue(node)
	if err != nil {
		t.Fatal(err)
	}
	var x []byte
	if withX {
		sk, err := NewSealKey()
		if err != nil {
			t.Fatal(err)
		}
		x = sk.PublicKey().Bytes()
	}
	a, err := Sign(k, node, purpose, nonce, body, x)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Decode(a.Encode())
	if err != nil {
		t.Fatal(err)
	}
	return back, x
}

// serverCheck is what the server does with a request: verify the
// signature for this route, then spend the nonce.
func serverCheck(n *Nonces, a *Auth, node, purpose string, body []byte) error {
	if _, err := a.Verify(node, purpose, body); err != nil {
		return err
	}
	return n.Consume(node, a.Nonce)
}

func TestSignedRequestAcceptedOnce(t *testing.T) {
	n := NewNonces(time.Minute, 4, 100)
	body := []byte(`{"stage":"up"}`)
	a, _ := request(t, n, "gpu01", PurposeEvent, body, false)
	if err := serverCheck(n, a, "gpu01", PurposeEvent, body); err != nil {
		t.Fatalf("valid request refused: %v", err)
	}
	// Replay: the same bytes again.
	if err := serverCheck(n, a, "gpu01", PurposeEvent, body); !errors.Is(err, ErrBadAuth) {
		t.Fatalf("replayed request accepted (err %v)", err)
	}
}

func TestAttacksRefused(t *testing.T) {
	body := []byte(`{"stage":"up","message":"hello"}`)
	cases := []struct {
		name   string
		mutate func(t *testing.T, n *Nonces, a *Auth) (node, purpose string, body []byte)
	}{
		{"tampered-body", func(t *testing.T, n *Nonces, a *Auth) (string, string, []byte) {
			return "gpu01", PurposeEvent, []byte(`{"stage":"up","message":"pwned"}`)
		}},
		{"wrong-purpose", func(t *testing.T, n *Nonces, a *Auth) (string, string, []byte) {
			return "gpu01", PurposeOverlay, body
		}},
		{"wrong-node", func(t *testing.T, n *Nonces, a *Auth) (string, string, []byte) {
			return "gpu02", PurposeEvent, body
		}},
		{"field-rewritten-after-signing", func(t *testing.T, n *Nonces, a *Auth) (string, string, []byte) {
			a.Purpose = PurposeOverlay
			return "gpu01", PurposeOverlay, body
		}},
		{"key-swapped-after-signing", func(t *testing.T, n *Nonces, a *Auth) (string, string, []byte) {
			k, _ := GenerateFileKey()
			p, _ := PublicKey(k)
			a.Key = MarshalPublic(p)
			return "gpu01", PurposeEvent, body
		}},
		{"made-up-nonce", func(t *testing.T, n *Nonces, a *Auth) (string, string, []byte) {
			k, _ := GenerateFileKey()
			forged, err := Sign(k, "gpu01", PurposeEvent, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", body, nil)
			if err != nil {
				t.Fatal(err)
			}
			*a = *forged
			return "gpu01", PurposeEvent, body
		}},
		{"nonce-of-another-node", func(t *testing.T, n *Nonces, a *Auth) (string, string, []byte) {
			k, _ := GenerateFileKey()
			other, _, _ := n.Issue("gpu02")
			forged, err := Sign(k, "gpu01", PurposeEvent, other, body, nil)
			if err != nil {
				t.Fatal(err)
			}
			*a = *forged
			return "gpu01", PurposeEvent, body
		}},
		{"overlay-without-x25519", func(t *testing.T, n *Nonces, a *Auth) (string, string, []byte) {
			k, _ := GenerateFileKey()
			nonce, _, _ := n.Issue("gpu01")
			forged, err := Sign(k, "gpu01", PurposeOverlay, nonce, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			*a = *forged
			return "gpu01", PurposeOverlay, nil
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := NewNonces(time.Minute, 4, 100)
			a, _ := request(t, n, "gpu01", PurposeEvent, body, false)
			node, purpose, b := c.mutate(t, n, a)
			if err := serverCheck(n, a, node, purpose, b); !errors.Is(err, ErrBadAuth) {
				t.Fatalf("attack accepted (err %v)", err)
			}
		})
	}
}

func TestWrongKeyIsNotTheEnrolledOne(t *testing.T) {
	dir := t.TempDir()
	reg := OpenRegistry(dir)
	good, _ := GenerateFileKey()
	gp, _ := PublicKey(good)
	if err := reg.OpenWindow([]string{"gpu01"}, time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if st, err := reg.Present("gpu01", gp, "10.0.0.1", false, time.Now()); err != nil || st != StatusEnrolled {
		t.Fatalf("first key in the window: %v %v", st, err)
	}
	// The window took only the first key: an attacker's key now is pending, not enrolled.
	n := NewNonces(time.Minute, 4, 100)
	a, _ := request(t, n, "gpu01", PurposeOverlay, nil, true)
	key, err := a.Verify("gpu01", PurposeOverlay, nil)
	if err != nil {
		t.Fatal(err)
	}
	enrolled, err := reg.Enrolled("gpu01")
	if err != nil {
		t.Fatal(err)
	}
	if SameKey(enrolled, key) {
		t.Fatal("an unrelated key counts as the enrolled one")
	}
	if st, err := reg.Present("gpu01", key, "10.0.0.66", false, time.Now()); err != nil || st != StatusPending {
		t.Fatalf("second key after the window was used: %v %v, want pending", st, err)
	}
	if e, _ := reg.Enrolled("gpu01"); !SameKey(e, gp) {
		t.Fatal("a second presented key replaced the enrolled one")
	}
}

func TestRegistryApproveAndForget(t *testing.T) {
	dir := t.TempDir()
	reg := OpenRegistry(dir)
	k, _ := GenerateFileKey()
	p, _ := PublicKey(k)
	st, err := reg.Present("gpu01", p, "10.0.0.1", false, time.Now())
	if err != nil || st != StatusPending {
		t.Fatalf("no window: %v %v, want pending", st, err)
	}
	pk, err := reg.PendingKey("gpu01")
	if err != nil || pk == nil || pk.Fingerprint != Fingerprint(p) {
		t.Fatalf("pending: %+v %v", pk, err)
	}
	if _, err := reg.Approve("gpu01", "SHA256:wrong"); err == nil {
		t.Fatal("approve with a wrong fingerprint succeeded")
	}
	if fp, err := reg.Approve("gpu01", Fingerprint(p)); err != nil || fp != Fingerprint(p) {
		t.Fatalf("approve: %q %v", fp, err)
	}
	if e, _ := reg.Enrolled("gpu01"); !SameKey(e, p) {
		t.Fatal("approved key is not enrolled")
	}
	if st, _ := reg.Present("gpu01", p, "", false, time.Now()); st != StatusEnrolled {
		t.Fatalf("enrolled key presented: %v", st)
	}
	// An expired window accepts nothing.
	if err := reg.OpenWindow([]string{"gpu02"}, time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	if st, _ := reg.Present("gpu02", p, "", false, time.Now()); st != StatusPending {
		t.Fatalf("expired window accepted a key: %v", st)
	}
	if err := reg.Forget("gpu01"); err != nil {
		t.Fatal(err)
	}
	if e, _ := reg.Enrolled("gpu01"); e != nil {
		t.Fatal("forget kept the enrolled key")
	}
	if _, err := reg.Approve("../x", ""); err == nil {
		t.Fatal("a path as node name was accepted")
	}
}

func TestNoncesBounded(t *testing.T) {
	n := NewNonces(time.Minute, 4, 10)
	first, _, _ := n.Issue("gpu01")
	for i := 0; i < 1000; i++ {
		if _, _, err := n.Issue("gpu01"); err != nil {
			t.Fatal(err)
		}
	}
	if n.Len() != 4 {
		t.Fatalf("%d nonces outstanding for one node after a flood, want 4", n.Len())
	}
	if err := n.Consume("gpu01", first); err == nil {
		t.Fatal("an evicted nonce is still valid")
	}
	full := 0
	for i := 0; i < 100; i++ {
		if _, _, err := n.Issue("node" + string(rune('a'+i%26)) + string(rune('a'+i/26))); errors.Is(err, ErrNoncesFull) {
			full++
		}
	}
	if n.Len() > 10 || full == 0 {
		t.Fatalf("total bound not kept: %d outstanding, %d refusals", n.Len(), full)
	}
	// Expired nonces make room again and are refused.
	now := time.Now()
	n.Now = func() time.Time { return now.Add(2 * time.Minute) }
	if _, _, err := n.Issue("gpu09"); err != nil {
		t.Fatalf("expired nonces were not swept: %v", err)
	}
	m := NewNonces(time.Minute, 4, 10)
	old, _, _ := m.Issue("gpu01")
	m.Now = func() time.Time { return now.Add(2 * time.Minute) }
	if err := m.Consume("gpu01", old); err == nil {
		t.Fatal("an expired nonce was accepted")
	}
}

func TestSealOpen(t *testing.T) {
	k, err := NewSealKey()
	if err != nil {
		t.Fatal(err)
	}
	ctx := SealContext("gpu01", "nonce1")
	secret := []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n")
	sealed, err := Seal(k.PublicKey().Bytes(), ctx, secret)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(sealed), "PRIVATE KEY") {
		t.Fatal("sealed data holds the plaintext")
	}
	got, err := Open(k, ctx, sealed)
	if err != nil || string(got) != string(secret) {
		t.Fatalf("open: %q %v", got, err)
	}
	other, _ := NewSealKey()
	if _, err := Open(other, ctx, sealed); err == nil {
		t.Fatal("opened with another key")
	}
	if _, err := Open(k, SealContext("gpu01", "nonce2"), sealed); err == nil {
		t.Fatal("opened under another request's context")
	}
	sealed[len(sealed)-1] ^= 1
	if _, err := Open(k, ctx, sealed); err == nil {
		t.Fatal("opened altered data")
	}
}

func TestFileKeyAndFingerprintMatchSSHKeygen(t *testing.T) {
	testenv.RequireCommands(t, "ssh-keygen")
	dir := t.TempDir()
	path := filepath.Join(dir, KeyFile)
	k, created, err := LoadOrCreateFileKey(path, "gpu01")
	if err != nil || !created {
		t.Fatalf("create: %v %v", created, err)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %04o", st.Mode().Perm())
	}
	k2, created, err := LoadOrCreateFileKey(path, "gpu01")
	if err != nil || created {
		t.Fatalf("reload: %v %v", created, err)
	}
	p1, _ := PublicKey(k)
	p2, _ := PublicKey(k2)
	if !SameKey(p1, p2) {
		t.Fatal("reloaded key differs")
	}
	pubFile := filepath.Join(dir, "node.pub")
	os.WriteFile(pubFile, []byte(MarshalPublic(p1)+"\n"), 0o644)
	out, err := exec.Command("ssh-keygen", "-lf", pubFile).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen: %v: %s", err, out)
	}
	if f := strings.Fields(string(out)); len(f) < 2 || f[1] != Fingerprint(p1) {
		t.Fatalf("ssh-keygen prints %q, herd %q", out, Fingerprint(p1))
	}
	// The private key file is one OpenSSH reads too.
	if out, err := exec.Command("ssh-keygen", "-y", "-f", path).CombinedOutput(); err != nil || !strings.HasPrefix(string(out), MarshalPublic(p1)) {
		t.Fatalf("ssh-keygen -y: %v %s", err, out)
	}
	os.Chmod(path, 0o644)
	if _, _, err := LoadOrCreateFileKey(path, "gpu01"); err == nil {
		t.Fatal("a world-readable key file was accepted")
	}
}

type signer = interface {
	Public() crypto.PublicKey
	Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error)
}

// TestP256Key: a TPM key is a crypto.Signer for P-256; requests signed with
// one verify like Ed25519 ones (here a software P-256 key stands in for it).
func TestP256Key(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	n := NewNonces(time.Minute, 4, 100)
	a, _ := requestWith(t, k, n, "gpu01", PurposeEnroll, []byte("{}"), false)
	if err := serverCheck(n, a, "gpu01", PurposeEnroll, []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(a.Key, "ecdsa-sha2-nistp256 ") {
		t.Fatalf("key %q", a.Key)
	}
}
