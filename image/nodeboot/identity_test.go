package nodeboot

import (
	"bytes"
	"context"
	"crypto"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herdlab/herd/internal/cpio"
	"github.com/herdlab/herd/internal/nodeauth"
	"github.com/herdlab/herd/internal/tpmkey"
	"github.com/herdlab/herd/internal/tpmkey/swtpmtest"
	"github.com/herdlab/herd/pxe/httpboot"
	"github.com/herdlab/herd/pxe/inventory"
	"github.com/herdlab/herd/site"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// identityServer runs the real pxe/httpboot on loopback with a small
// runtime overlay renderer (the templates are tested in pxe/server).
func identityServer(t *testing.T) (url, state string) {
	state = t.TempDir()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := site.Parse("herd.yaml", []byte(fmt.Sprintf(`server: {address: 127.0.0.1, http_port: %d}
dhcp: {mode: off}
overlays: [base]
nodes:
  - {name: gpu1, mac: "52:54:00:aa:bb:01", ip: 127.0.0.1}
  - {name: ram1, mac: "52:54:00:aa:bb:02"}
  - {name: ram2, mac: "52:54:00:aa:bb:03", insecure_ram_identity: true}
`, ln.Addr().(*net.TCPAddr).Port)))
	if err != nil {
		t.Fatal(err)
	}
	inv, _ := inventory.Load(state)
	render := func(cfg *site.Config, n *site.Node, s httpboot.Secrets, pw string) ([]httpboot.RuntimeFile, error) {
		return []httpboot.RuntimeFile{
			{Path: "etc/hostname", Mode: 0o644, Data: []byte(n.Name + "\n")},
			{Path: "etc/ssh", Mode: 0o755, Dir: true},
			{Path: "etc/ssh/ssh_host_ed25519_key", Mode: 0o600, Data: s.SSHHostKeys[0].Private},
			{Path: "etc/ssh/herd-node-keys", Link: "ssh_host_ed25519_key"},
		}, nil
	}
	srv, err := httpboot.New(cfg, httpboot.Options{StateDir: state, Images: httpboot.StateImages{StateDir: state}, Render: render,
		Inventory: inv, Log: slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	return "http://" + ln.Addr().String(), state
}

func testSystem(t *testing.T, console *syncBuf) *System {
	return &System{RunDir: t.TempDir(), Console: console, Client: &http.Client{Timeout: 5 * time.Second}}
}

// TestIdentityApproveRebootWipe: a first boot waits for approval, showing
// the fingerprint and the exact command; a reboot with the same cache gets
// its overlay with no admin action; a wiped cache is pending again.
func TestIdentityApproveRebootWipe(t *testing.T) {
	identityPoll = 50 * time.Millisecond
	url, state := identityServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := &Params{Node: "gpu1", Server: url}
	cache := t.TempDir()
	console := &syncBuf{}
	s := testSystem(t, console)
	rep := &Reporter{Hold: true}
	done := make(chan *Identity, 1)
	go func() { done <- s.identity(ctx, p, rep, cache, true) }()
	reg := nodeauth.OpenRegistry(state)
	var pending *nodeauth.Pending
	for pending == nil {
		if ctx.Err() != nil {
			t.Fatalf("no pending key; console:\n%s", console.String())
		}
		time.Sleep(20 * time.Millisecond)
		pending, _ = reg.PendingKey("gpu1")
	}
	for !strings.Contains(console.String(), "herd node approve gpu1 --fingerprint "+pending.Fingerprint) {
		if ctx.Err() != nil {
			t.Fatalf("the console does not show the approve command for %s:\n%s", pending.Fingerprint, console.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	k, err := nodeauth.LoadFileKey(filepath.Join(cache, nodeauth.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if pub, _ := nodeauth.PublicKey(k); nodeauth.Fingerprint(pub) != pending.Fingerprint {
		t.Fatal("the pending fingerprint is not the key on the cache")
	}
	if _, err := reg.Approve("gpu1", pending.Fingerprint); err != nil {
		t.Fatal(err)
	}
	id := <-done
	if id == nil || id.Overlay == nil {
		t.Fatalf("no overlay after approval:\n%s", console.String())
	}
	root := t.TempDir()
	if err := UnpackOverlay(id.Overlay, root); err != nil {
		t.Fatal(err)
	}
	first, err := os.ReadFile(filepath.Join(root, "etc/ssh/ssh_host_ed25519_key"))
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(filepath.Join(root, "etc/ssh/ssh_host_ed25519_key")); st.Mode().Perm() != 0o600 {
		t.Errorf("host key mode %v", st.Mode())
	}

	// Reboot: same cache, no admin action.
	id = s.identity(ctx, p, &Reporter{Hold: true}, cache, true)
	if id == nil || id.Overlay == nil {
		t.Fatalf("reboot got no overlay:\n%s", console.String())
	}
	root2 := t.TempDir()
	UnpackOverlay(id.Overlay, root2)
	if again, _ := os.ReadFile(filepath.Join(root2, "etc/ssh/ssh_host_ed25519_key")); !bytes.Equal(again, first) {
		t.Error("the host key changed across a reboot")
	}

	// Wiped disk: a new key, pending again; the old binding stays.
	wiped := t.TempDir()
	ctx2, cancel2 := context.WithTimeout(ctx, 2*time.Second)
	defer cancel2()
	if id := s.identity(ctx2, p, &Reporter{Hold: true}, wiped, true); id != nil {
		t.Fatal("a wiped node got its secrets without approval")
	}
	if pk, _ := reg.PendingKey("gpu1"); pk == nil || pk.Fingerprint == pending.Fingerprint {
		t.Fatalf("wiped node not pending with a new key: %+v", pk)
	}
}

// TestIdentityRAMMode: without disk and TPM the node boots without secrets
// (saying why) unless its entry says insecure_ram_identity.
func TestIdentityRAMMode(t *testing.T) {
	identityPoll = 50 * time.Millisecond
	url, _ := identityServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	console := &syncBuf{}
	s := testSystem(t, console)
	if id := s.identity(ctx, &Params{Node: "ram1", Server: url}, &Reporter{Hold: true}, "", false); id != nil {
		t.Fatal("a RAM node got secrets without the insecure setting")
	}
	if !strings.Contains(console.String(), "insecure_ram_identity") {
		t.Errorf("console does not say why:\n%s", console.String())
	}
	id := s.identity(ctx, &Params{Node: "ram2", Server: url}, &Reporter{Hold: true}, "", false)
	if id == nil || id.Overlay == nil {
		t.Fatalf("insecure_ram_identity node: no overlay:\n%s", console.String())
	}
	if _, err := nodeauth.LoadFileKey(filepath.Join(s.RunDir, RunKeyFile)); err != nil {
		t.Errorf("RAM key for the up report: %v", err)
	}
	// Unknown node: no endless retry.
	if id := s.identity(ctx, &Params{Node: "nosuch", Server: url}, &Reporter{Hold: true}, "", false); id != nil {
		t.Fatal("unknown node got an identity")
	}
}

func TestUnpackOverlayRefusesEscapes(t *testing.T) {
	for _, name := range []string{"herd/overlay/../../etc/passwd", "etc/passwd", "herd/overlay//x", "herd/overlay/a/../../x"} {
		var b bytes.Buffer
		w := cpio.NewWriter(&b)
		w.WriteHeader(&cpio.Header{Name: name, Mode: cpio.FileMode(0o644), Size: 1})
		w.Write([]byte("x"))
		w.Close()
		if err := UnpackOverlay(b.Bytes(), t.TempDir()); err == nil {
			t.Errorf("%q unpacked", name)
		}
	}
	_ = fs.ModePerm
}

// TestIdentityTPM: with a TPM (a real swtpm) the node's key is the TPM's
// P-256 key even though it has a cache disk: the disk ends up holding only
// its public half (an old file key is removed), the admin approves the
// TPM key's fingerprint, a reboot gets the secrets with no admin action,
// and a wiped disk changes nothing (the key is not on it); the booted
// system's up report finds the same key.
func TestIdentityTPM(t *testing.T) {
	identityPoll = 50 * time.Millisecond
	url, state := identityServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sock := swtpmtest.Start(t, t.TempDir())
	console := &syncBuf{}
	s := testSystem(t, console)
	var opened []*tpmkey.Key
	s.TPMKey = func() (crypto.Signer, error) {
		// Each boot is a new process whose objects /dev/tpmrm0 flushes
		// at exit; swtpm has no resource manager, so flush here.
		for _, k := range opened {
			k.Close()
		}
		k, err := tpmkey.Open(sock)
		if err != nil {
			return nil, err
		}
		opened = append(opened, k)
		return k, nil
	}
	defer func() {
		for _, k := range opened {
			k.Close()
		}
	}()
	p := &Params{Node: "gpu1", Server: url}
	// A blank disk (no identity/ yet) writes node.pub too.
	blank := t.TempDir()
	ctxBlank, cancelBlank := context.WithTimeout(ctx, 2*time.Second)
	s.identity(ctxBlank, p, &Reporter{Hold: true}, blank, true)
	cancelBlank()
	if _, err := os.Stat(filepath.Join(blank, PubFile)); err != nil {
		t.Fatalf("a blank disk got no %s: %v", PubFile, err)
	}
	cache := t.TempDir()
	// A file key from before the node had its TPM turned on.
	if _, _, err := nodeauth.LoadOrCreateFileKey(filepath.Join(cache, nodeauth.KeyFile), "old"); err != nil {
		t.Fatal(err)
	}
	done := make(chan *Identity, 1)
	go func() { done <- s.identity(ctx, p, &Reporter{Hold: true}, cache, true) }()
	reg := nodeauth.OpenRegistry(state)
	var pending *nodeauth.Pending
	for pending == nil {
		if ctx.Err() != nil {
			t.Fatalf("no pending key; console:\n%s", console.String())
		}
		time.Sleep(20 * time.Millisecond)
		pending, _ = reg.PendingKey("gpu1")
	}
	k, err := tpmkey.Open(sock)
	if err != nil {
		t.Fatal(err)
	}
	tpub, _ := nodeauth.PublicKey(k)
	k.Close()
	if pending.Fingerprint != nodeauth.Fingerprint(tpub) {
		t.Fatalf("pending %s is not the TPM's key %s", pending.Fingerprint, nodeauth.Fingerprint(tpub))
	}
	if _, err := reg.Approve("gpu1", pending.Fingerprint); err != nil {
		t.Fatal(err)
	}
	if id := <-done; id == nil || id.Overlay == nil {
		t.Fatalf("no overlay after approval:\n%s", console.String())
	}
	if !strings.Contains(console.String(), "(the TPM)") {
		t.Errorf("the console does not say the key is in the TPM:\n%s", console.String())
	}
	noPrivateKey := func(dir string) {
		t.Helper()
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if b, _ := os.ReadFile(p); bytes.Contains(b, []byte("PRIVATE KEY")) {
					t.Errorf("%s holds a private key", p)
				}
			}
			return nil
		})
	}
	noPrivateKey(cache)
	noPrivateKey(s.RunDir)
	pubText, err := os.ReadFile(filepath.Join(cache, PubFile))
	if err != nil {
		t.Fatal(err)
	}
	if pk, err := nodeauth.ParsePublic(string(pubText)); err != nil || nodeauth.Fingerprint(pk) != pending.Fingerprint {
		t.Fatalf("%s: %q %v", PubFile, pubText, err)
	}
	// Reboot, and then a wiped disk: the TPM's key is enrolled either way.
	for _, c := range []string{cache, t.TempDir()} {
		if id := s.identity(ctx, p, &Reporter{Hold: true}, c, true); id == nil || id.Overlay == nil {
			t.Fatalf("boot with cache %s got no overlay:\n%s", c, console.String())
		}
	}
	if pk, _ := reg.PendingKey("gpu1"); pk != nil {
		t.Fatalf("a key is pending again: %+v", pk)
	}
	bk, where, err := LoadBootedKey(s)
	if err != nil || where != "TPM" {
		t.Fatalf("booted key: %s %v", where, err)
	}
	if bp, _ := nodeauth.PublicKey(bk); !nodeauth.SameKey(bp, tpub) {
		t.Fatal("the booted system's key is not the TPM's")
	}
}
