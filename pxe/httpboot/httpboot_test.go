package httpboot

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/ssh"

	"github.com/herdlab/herd/image/chunks"
	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/internal/cpio"
	"github.com/herdlab/herd/internal/nodeauth"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/pxe/inventory"
	"github.com/herdlab/herd/site"
)

// PublishTestImage writes a published image with random artifacts of the
// given sizes into <state>/images/<id> and makes it current; it returns the ID.
func publishTestImage(t testing.TB, state string, sizes map[string]int, current bool) string {
	t.Helper()
	tmp := filepath.Join(state, "tmp", fmt.Sprint(time.Now().UnixNano()))
	os.MkdirAll(tmp, 0o755)
	m := &manifest.Manifest{Created: time.Now().UTC(), Recipe: "test", KernelABI: "6.8.0-149-generic", Artifacts: map[string]manifest.Artifact{}}
	for name, n := range sizes {
		b := make([]byte, n)
		rand.Read(b)
		p := filepath.Join(tmp, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		a, err := manifest.HashFile(p)
		if err != nil {
			t.Fatal(err)
		}
		m.Artifacts[name] = a
	}
	m.ID = m.ComputeID()
	if err := m.Write(tmp); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(state, "images"), 0o755)
	if err := os.Rename(tmp, filepath.Join(state, "images", m.ID)); err != nil {
		t.Fatal(err)
	}
	if current {
		os.WriteFile(filepath.Join(state, "current"), []byte(m.ID+"\n"), 0o644)
	}
	return m.ID
}

// testRender stands in for overlays.RenderRuntime (tested with the real
// renderer in pxe/server): it exercises packing, modes and owners.
func testRender(cfg *site.Config, node *site.Node, s Secrets, pw string) ([]RuntimeFile, error) {
	files := []RuntimeFile{
		{Path: "etc/hostname", Mode: 0o644, Data: []byte(node.Name + "\n")},
		{Path: "etc/machine-id", Mode: 0o444, Data: []byte(s.MachineID + "\n")},
		{Path: "etc/sssd", Mode: 0o711, Dir: true},
		{Path: "etc/sssd/conf.d/herd-bind.conf", Mode: 0o600, Data: []byte("ldap_default_authtok = " + pw + "\n")},
		{Path: "var/lib/herdadmin", Mode: 0o700, UID: 990, GID: 990, Dir: true},
		{Path: "etc/systemd/system/multi-user.target.wants/x.service", Link: "/lib/systemd/system/x.service"},
	}
	for _, k := range s.SSHHostKeys {
		files = append(files,
			RuntimeFile{Path: "etc/ssh/ssh_host_" + k.Type + "_key", Mode: 0o600, Data: k.Private},
			RuntimeFile{Path: "etc/ssh/ssh_host_" + k.Type + "_key.pub", Mode: 0o644, Data: k.Public})
	}
	return files, nil
}

type fixture struct {
	state string
	id    string
	url   string
	srv   *Server
	inv   *inventory.Inventory
	logs  *syncBuf
	cfg   *site.Config
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

const siteYAML = `server:
  address: 127.0.0.1
  http_port: %d
dhcp:
  mode: off
  unknown: %s
ldap:
  uri: ldap://127.0.0.1/
  base: dc=lab,dc=test
  bind_dn: cn=node,dc=lab,dc=test
  bind_password_file: %s
nas:
  address: 127.0.0.1
  homes: /export/homes
nodes:
  - name: gpu1
    mac: 52:54:00:aa:bb:01
    ip: 127.0.0.1
    kernel_args: nvidia.NVreg_X=1
  - name: gpu2
    mac: 52:54:00:aa:bb:02
    ip: 127.0.0.2
    image: %s
  - name: gpu3
    mac: 52:54:00:aa:bb:03
`

func newFixture(t *testing.T, unknown string) *fixture {
	t.Helper()
	f := &fixture{state: t.TempDir(), logs: &syncBuf{}}
	f.id = publishTestImage(t, f.state, map[string]int{manifest.Kernel: 3 << 20, manifest.Initrd: 1 << 20, manifest.Rootfs: 5 << 20}, true)
	pinned := publishTestImage(t, f.state, map[string]int{manifest.Kernel: 1000, manifest.Initrd: 1000, manifest.Rootfs: 1000}, false)
	pwFile := filepath.Join(f.state, "bindpw")
	os.WriteFile(pwFile, []byte("s3cret\n"), 0o600)

	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	cfg, err := site.Parse("herd.yaml", []byte(fmt.Sprintf(siteYAML, port, unknown, pwFile, pinned[:10])))
	if err != nil {
		t.Fatal(err)
	}
	f.cfg = cfg
	f.inv, err = inventory.Load(f.state)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	f.srv, err = New(cfg, Options{
		StateDir: f.state, Images: StateImages{f.state}, Render: testRender, Inventory: f.inv,
		Log: slog.New(slog.NewJSONHandler(f.logs, nil)), Registry: reg, Gatherer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: f.srv}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Shutdown(context.Background()) })
	f.url = fmt.Sprintf("http://127.0.0.1:%d", port)
	return f
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestBootScript(t *testing.T) {
	f := newFixture(t, "ignore")
	code, body := get(t, f.url+"/boot/52-54-00-AA-BB-01.ipxe")
	if code != 200 {
		t.Fatalf("known MAC: %d %s", code, body)
	}
	m, _ := manifest.Read(filepath.Join(f.state, "images", f.id))
	base := f.url
	want := "#!ipxe\n" +
		"kernel " + base + "/images/" + f.id + "/vmlinuz initrd=initrd.img boot=herd ip=dhcp herd.image=" + base + "/images/" + f.id + "/rootfs.squashfs herd.sha256=" + m.Artifacts[manifest.Rootfs].SHA256 + " herd.id=" + f.id + " herd.node=gpu1 herd.server=" + base + " herd.cache=auto herd.keep=2 console=tty0 console=ttyS0,115200n8 nvidia.NVreg_X=1\n" +
		"initrd --name initrd.img " + base + "/images/" + f.id + "/initrd.img\n" +
		"boot\n"
	if body != want {
		t.Errorf("script:\n%s\nwant:\n%s", body, want)
	}
	// The pinned node gets its pinned image (given as a prefix), by full ID.
	_, body = get(t, f.url+"/boot/52:54:00:aa:bb:02.ipxe")
	if strings.Contains(body, f.id) || !strings.Contains(body, "herd.node=gpu2") {
		t.Errorf("pinned node got:\n%s", body)
	}
	// Unknown MAC: 404 under the default policy.
	if code, _ := get(t, f.url+"/boot/52:54:00:00:00:99.ipxe"); code != 404 {
		t.Errorf("unknown MAC: %d, want 404", code)
	}
	for _, bad := range []string{"/boot/52:54:00:aa:bb.ipxe", "/boot/52:54-00:aa:bb:01.ipxe", "/boot/../etc/passwd", "/boot/zz:54:00:aa:bb:01.ipxe"} {
		if code, _ := get(t, f.url+bad); code != 404 {
			t.Errorf("%s: %d, want 404", bad, code)
		}
	}
	rec, ok := f.inv.Get("52:54:00:aa:bb:01")
	if !ok || rec.ScriptImage != f.id || rec.Name != "gpu1" {
		t.Errorf("inventory after script fetch: %+v", rec)
	}
}

// TestBootScriptVerity: an image with a hash tree puts herd.verity (root
// hash and data block count, from the manifest) next to herd.sha256; one
// without keeps the script as before (its nodes hash the image whole).
func TestBootScriptVerity(t *testing.T) {
	cfg := &site.Config{}
	node := &site.Node{Name: "gpu1"}
	m := &manifest.Manifest{Artifacts: map[string]manifest.Artifact{manifest.Rootfs: {Size: 1, SHA256: strings.Repeat("a", 64)}}}
	plain, err := Script(cfg, node, "0123456789abcdef", m)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(plain, "herd.verity") {
		t.Errorf("image without verity data got herd.verity:\n%s", plain)
	}
	m.Verity = &manifest.Verity{RootHash: strings.Repeat("b", 64), DataBlocks: 733}
	s, err := Script(cfg, node, "0123456789abcdef", m)
	if err != nil {
		t.Fatal(err)
	}
	want := " herd.sha256=" + strings.Repeat("a", 64) + " herd.verity=" + strings.Repeat("b", 64) + ":733 herd.id="
	if !strings.Contains(s, want) {
		t.Errorf("script lacks %q:\n%s", want, s)
	}
}

func TestUnknownDiscover(t *testing.T) {
	f := newFixture(t, "discover")
	code, body := get(t, f.url+"/boot/52:54:00:00:00:99.ipxe")
	if code != 200 || !strings.Contains(body, "unknown node 52:54:00:00:00:99") || !strings.Contains(body, "herd node add <name> 52:54:00:00:00:99") {
		t.Fatalf("discover: %d\n%s", code, body)
	}
	if strings.Contains(body, "kernel ") {
		t.Error("an unknown node was given a kernel")
	}
	if _, ok := f.inv.Get("52:54:00:00:00:99"); !ok {
		t.Error("discovered MAC not in the inventory")
	}
}

func TestNoCurrentImage(t *testing.T) {
	f := newFixture(t, "ignore")
	os.Remove(filepath.Join(f.state, "current"))
	code, body := get(t, f.url+"/boot/52:54:00:aa:bb:01.ipxe")
	if code != 200 || !strings.Contains(body, "no image is current") || strings.Contains(body, "kernel") {
		t.Errorf("%d\n%s", code, body)
	}
}

// TestImagesWithCurl: full download, ranges, HEAD, and refusals.
func TestImagesWithCurl(t *testing.T) {
	testenv.RequireCommands(t, "curl")
	f := newFixture(t, "ignore")
	src := filepath.Join(f.state, "images", f.id, manifest.Kernel)
	want, _ := os.ReadFile(src)
	out := filepath.Join(t.TempDir(), "k")
	if b, err := exec.Command("curl", "-fsS", "-o", out, f.url+"/images/"+f.id+"/vmlinuz").CombinedOutput(); err != nil {
		t.Fatalf("curl: %v %s", err, b)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
		t.Fatal("downloaded kernel differs")
	}
	// A range in the middle.
	b, err := exec.Command("curl", "-fsS", "-r", "1000-1999", f.url+"/images/"+f.id+"/vmlinuz").Output()
	if err != nil || !bytes.Equal(b, want[1000:2000]) {
		t.Fatalf("range: %v, %d bytes", err, len(b))
	}
	// Resume (-C -) from a partial file, as the node agent does.
	part := filepath.Join(t.TempDir(), "part")
	os.WriteFile(part, want[:12345], 0o644)
	if b, err := exec.Command("curl", "-fsS", "-C", "-", "-o", part, f.url+"/images/"+f.id+"/vmlinuz").CombinedOutput(); err != nil {
		t.Fatalf("resume: %v %s", err, b)
	}
	if got, _ := os.ReadFile(part); !bytes.Equal(got, want) {
		t.Fatal("resumed download differs")
	}
	// HEAD: Content-Length and ETag = sha256.
	hdr, _ := exec.Command("curl", "-fsSI", f.url+"/images/"+f.id+"/vmlinuz").Output()
	m, _ := manifest.Read(filepath.Join(f.state, "images", f.id))
	if !strings.Contains(string(hdr), fmt.Sprintf("Content-Length: %d", len(want))) || !strings.Contains(string(hdr), m.Artifacts[manifest.Kernel].SHA256) {
		t.Errorf("HEAD headers:\n%s", hdr)
	}
	for _, bad := range []string{
		"/images/" + f.id + "/build.log", "/images/" + f.id[:10] + "/vmlinuz", "/images/" + f.id + "/../current",
		"/images/deadbeefdeadbeef/vmlinuz", "/images/" + f.id + "/vmlinuz/x",
	} {
		code, _ := exec.Command("curl", "-s", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", f.url+bad).Output()
		if string(code) != "404" {
			t.Errorf("%s: %s, want 404", bad, code)
		}
	}
	// A directory in images/ without a manifest (an unfinished publish, or
	// debris) is not an image.
	fake := "00112233445566ff"
	os.MkdirAll(filepath.Join(f.state, "images", fake), 0o755)
	os.WriteFile(filepath.Join(f.state, "images", fake, "vmlinuz"), []byte("x"), 0o644)
	if code, _ := exec.Command("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f.url+"/images/"+fake+"/vmlinuz").Output(); string(code) != "404" {
		t.Errorf("unpublished image: %s, want 404", code)
	}
	// The access log names the client and the path: a test can assert that
	// the rootfs was (not) downloaded.
	if !strings.Contains(f.logs.String(), `"path":"/images/`+f.id+`/vmlinuz"`) || strings.Contains(f.logs.String(), "rootfs.squashfs\",\"range") {
		t.Errorf("access log:\n%s", f.logs.String())
	}
	if !strings.Contains(f.logs.String(), `"remote":"127.0.0.1"`) {
		t.Error("access log lacks the remote address")
	}
}

// nodeClient makes a node key for name and a client that signs with it.
func (f *fixture) nodeClient(t *testing.T, name string) *nodeauth.Client {
	t.Helper()
	k, err := nodeauth.GenerateFileKey()
	if err != nil {
		t.Fatal(err)
	}
	return &nodeauth.Client{Base: f.url, Node: name, Key: k}
}

// enrolled returns a client whose key went through an enrollment window.
func (f *fixture) enrolled(t *testing.T, name string) *nodeauth.Client {
	t.Helper()
	c := f.nodeClient(t, name)
	if err := nodeauth.OpenRegistry(f.state).OpenWindow([]string{name}, time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	ans, err := c.Enroll(context.Background())
	if err != nil || ans.Status != nodeauth.StatusEnrolled {
		t.Fatalf("enroll %s in a window: %+v %v", name, ans, err)
	}
	return c
}

// TestOverlay parses the sealed overlay back, with GNU cpio too, and checks
// that keys are stable and nobody but the enrolled key gets it.
func TestOverlay(t *testing.T) {
	testenv.RequireCommands(t, "cpio")
	f := newFixture(t, "ignore")
	ctx := context.Background()
	c := f.enrolled(t, "gpu1")
	data, err := c.Overlay(ctx)
	if err != nil {
		t.Fatalf("overlay: %v", err)
	}
	es, err := cpio.ReadAll(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]cpio.Entry{}
	for i, e := range es {
		if !strings.HasPrefix(e.Name, "herd/overlay/") && e.Name != "herd" && e.Name != "herd/overlay" {
			t.Errorf("entry %q outside herd/overlay/", e.Name)
		}
		// every parent precedes its children
		if d := filepath.Dir(e.Name); d != "." {
			if _, ok := byName[d]; !ok {
				t.Errorf("entry %d %q comes before its directory", i, e.Name)
			}
		}
		byName[e.Name] = e
	}
	check := func(name string, mode uint32, uid int) cpio.Entry {
		e, ok := byName["herd/overlay/"+name]
		if !ok {
			t.Fatalf("%s missing", name)
		}
		if e.Mode != mode || e.UID != uid {
			t.Errorf("%s: mode %o uid %d, want %o %d", name, e.Mode, e.UID, mode, uid)
		}
		return e
	}
	check("etc/hostname", cpio.TypeReg|0o644, 0)
	check("etc/sssd", cpio.TypeDir|0o711, 0)
	check("var/lib/herdadmin", cpio.TypeDir|0o700, 990)
	if e := check("etc/sssd/conf.d/herd-bind.conf", cpio.TypeReg|0o600, 0); !strings.Contains(string(e.Data), "s3cret") || strings.Contains(string(e.Data), "s3cret\n\n") {
		t.Errorf("bind password: %q", e.Data)
	}
	check("etc/systemd/system/multi-user.target.wants/x.service", cpio.TypeLink|0o777, 0)
	for _, typ := range []string{"ed25519", "ecdsa", "rsa"} {
		e := check("etc/ssh/ssh_host_"+typ+"_key", cpio.TypeReg|0o600, 0)
		key, err := ssh.ParsePrivateKey(e.Data)
		if err != nil {
			t.Fatalf("%s key: %v", typ, err)
		}
		pub := check("etc/ssh/ssh_host_"+typ+"_key.pub", cpio.TypeReg|0o644, 0)
		pk, _, _, _, err := ssh.ParseAuthorizedKey(pub.Data)
		if err != nil || !bytes.Equal(pk.Marshal(), key.PublicKey().Marshal()) {
			t.Errorf("%s: public key does not match the private key", typ)
		}
		st, err := os.Stat(filepath.Join(f.state, "nodes", "gpu1", "ssh_host_"+typ+"_key"))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("stored %s key: %v %v", typ, st.Mode(), err)
		}
	}
	mid := strings.TrimSpace(string(byName["herd/overlay/etc/machine-id"].Data))
	if len(mid) != 32 {
		t.Errorf("machine-id %q", mid)
	}
	// GNU cpio unpacks it (same format as the kernel's initramfs unpacker).
	dir := t.TempDir()
	cmd := exec.Command("cpio", "-idm", "--quiet", "--no-absolute-filenames")
	cmd.Dir, cmd.Stdin = dir, bytes.NewReader(data)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v %s", err, out)
	}
	if st, err := os.Stat(filepath.Join(dir, "herd/overlay/etc/ssh/ssh_host_ed25519_key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("unpacked key: %v", err)
	}
	// Stable: a second fetch is byte-identical (keys and machine-id kept).
	if again, err := c.Overlay(ctx); err != nil || !bytes.Equal(again, data) {
		t.Errorf("second overlay differs (%v): secrets were regenerated", err)
	}
	if code, _ := get(t, f.url+"/nodes/nosuch/challenge"); code != 404 {
		t.Errorf("challenge for an unknown node: %d", code)
	}
}

// TestOverlayAttacks: each way a LAN attacker could ask for a node's
// overlay (no key, another key, a pending key, a replay, the old URL) gets
// no secret.
func TestOverlayAttacks(t *testing.T) {
	f := newFixture(t, "ignore")
	ctx := context.Background()
	node := f.enrolled(t, "gpu1")
	noSecret := func(t *testing.T, code int, body []byte) {
		t.Helper()
		if code/100 == 2 || bytes.Contains(body, []byte("PRIVATE KEY")) || bytes.Contains(body, []byte("s3cret")) {
			t.Fatalf("attack answered %d with %d bytes", code, len(body))
		}
	}
	post := func(path string, hdr string, body []byte) (int, []byte) {
		req, _ := http.NewRequest(http.MethodPost, f.url+path, bytes.NewReader(body))
		if hdr != "" {
			req.Header.Set(nodeauth.Header, hdr)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	t.Run("old-overlay-url", func(t *testing.T) {
		code, body := get(t, f.url+"/nodes/gpu1/overlay.cpio")
		noSecret(t, code, []byte(body))
	})
	t.Run("unsigned", func(t *testing.T) {
		code, body := post("/nodes/gpu1/overlay", "", []byte("{}"))
		noSecret(t, code, body)
	})
	t.Run("other-key", func(t *testing.T) {
		_, err := f.nodeClient(t, "gpu1").Overlay(ctx)
		if !errors.Is(err, nodeauth.ErrRefused) {
			t.Fatalf("a foreign key got an answer: %v", err)
		}
	})
	t.Run("forged-enrollment-stays-pending", func(t *testing.T) {
		evil := f.nodeClient(t, "gpu1")
		ans, err := evil.Enroll(ctx)
		if err != nil || ans.Status != nodeauth.StatusPending {
			t.Fatalf("forged enrollment: %+v %v, want pending", ans, err)
		}
		if _, err := evil.Overlay(ctx); !errors.Is(err, nodeauth.ErrRefused) {
			t.Fatalf("a pending key got the overlay: %v", err)
		}
		if _, err := node.Overlay(ctx); err != nil {
			t.Fatalf("the enrolled node lost its overlay: %v", err)
		}
	})
	t.Run("replay", func(t *testing.T) {
		// Capture one real request (header and body) and send it again.
		sk, _ := nodeauth.NewSealKey()
		nonce, err := node.Nonce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := nodeauth.Sign(node.Key, "gpu1", nodeauth.PurposeOverlay, nonce, []byte("{}"), sk.PublicKey().Bytes())
		if code, _ := post("/nodes/gpu1/overlay", a.Encode(), []byte("{}")); code != 200 {
			t.Fatalf("the original request: %d", code)
		}
		code, body := post("/nodes/gpu1/overlay", a.Encode(), []byte("{}"))
		noSecret(t, code, body)
		// A replay to another node's route is refused too.
		code, body = post("/nodes/gpu2/overlay", a.Encode(), []byte("{}"))
		noSecret(t, code, body)
	})
	t.Run("sniffed-answer-is-sealed", func(t *testing.T) {
		sk, _ := nodeauth.NewSealKey()
		nonce, _ := node.Nonce(ctx)
		a, _ := nodeauth.Sign(node.Key, "gpu1", nodeauth.PurposeOverlay, nonce, []byte("{}"), sk.PublicKey().Bytes())
		code, body := post("/nodes/gpu1/overlay", a.Encode(), []byte("{}"))
		if code != 200 || bytes.Contains(body, []byte("PRIVATE KEY")) || bytes.Contains(body, []byte("s3cret")) {
			t.Fatalf("answer %d holds plaintext secrets", code)
		}
		other, _ := nodeauth.NewSealKey()
		if _, err := nodeauth.Open(other, nodeauth.SealContext("gpu1", nonce), body); err == nil {
			t.Fatal("the sealed answer opened with a key other than the request's")
		}
	})
	t.Run("challenge-flood-bounded", func(t *testing.T) {
		for i := 0; i < 200; i++ {
			get(t, f.url+"/nodes/gpu1/challenge")
			get(t, f.url+"/nodes/n"+fmt.Sprint(i)+"/challenge")
		}
		if n := f.srv.nonces.Len(); n > f.srv.nonces.PerNode*len(f.cfg.Nodes) {
			t.Fatalf("%d nonces held after a flood", n)
		}
		if _, err := node.Overlay(ctx); err != nil {
			t.Fatalf("the node after the flood: %v", err)
		}
	})
}

// TestEnrollApproveFlow: no window, the key is pending with the fingerprint
// the node computes; approval (another process's write) applies at once.
func TestEnrollApproveFlow(t *testing.T) {
	f := newFixture(t, "ignore")
	ctx := context.Background()
	c := f.nodeClient(t, "gpu2")
	ans, err := c.Enroll(ctx)
	if err != nil || ans.Status != nodeauth.StatusPending {
		t.Fatalf("enroll: %+v %v", ans, err)
	}
	pub, _ := nodeauth.PublicKey(c.Key)
	if ans.Fingerprint != nodeauth.Fingerprint(pub) {
		t.Fatalf("server fingerprint %s, node's %s", ans.Fingerprint, nodeauth.Fingerprint(pub))
	}
	if !strings.Contains(f.logs.String(), "herd node approve gpu2 --fingerprint "+ans.Fingerprint) {
		t.Error("the server log lacks the approve command")
	}
	if _, err := c.Overlay(ctx); !errors.Is(err, nodeauth.ErrRefused) {
		t.Fatalf("pending key got the overlay: %v", err)
	}
	if _, err := nodeauth.OpenRegistry(f.state).Approve("gpu2", ans.Fingerprint); err != nil {
		t.Fatal(err)
	}
	if ans, err := c.Enroll(ctx); err != nil || ans.Status != nodeauth.StatusEnrolled {
		t.Fatalf("after approve: %+v %v", ans, err)
	}
	if _, err := c.Overlay(ctx); err != nil {
		t.Fatalf("approved key: %v", err)
	}
}

func TestEvents(t *testing.T) {
	f := newFixture(t, "ignore")
	ctx := context.Background()
	post := func(v any) int {
		b, _ := json.Marshal(v)
		resp, err := http.Post(f.url+"/events", "application/json", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	ev := inventory.Event{Node: "gpu1", MAC: "52:54:00:aa:bb:01", Stage: "download", Percent: 40, Message: "rootfs 40%"}
	// Not enrolled: unsigned events are logged, never recorded.
	if c := post(ev); c != 202 {
		t.Fatalf("unsigned event of a node without a key: %d", c)
	}
	if _, ok := f.inv.Get(ev.MAC); ok {
		t.Fatal("an unsigned event was recorded")
	}
	c := f.enrolled(t, "gpu1")
	if code := post(ev); code != 403 {
		t.Fatalf("unsigned event of an enrolled node: %d, want 403", code)
	}
	sign := func(c *nodeauth.Client, v any) error {
		b, _ := json.Marshal(v)
		return c.Event(ctx, b)
	}
	if err := sign(c, ev); err != nil {
		t.Fatalf("signed event: %v", err)
	}
	ev.Stage, ev.Percent, ev.Image, ev.Kernel, ev.NVIDIA = "up", 100, f.id, "6.8.0-149-generic", "580.178.04"
	if err := sign(c, ev); err != nil {
		t.Fatalf("signed event: %v", err)
	}
	// Forged: another key, or the node's key speaking for gpu2.
	if err := sign(f.nodeClient(t, "gpu1"), ev); !errors.Is(err, nodeauth.ErrRefused) {
		t.Errorf("event signed by a foreign key: %v", err)
	}
	other := ev
	other.Node, other.MAC = "gpu2", "52:54:00:aa:bb:02"
	if err := sign(c, other); err == nil {
		t.Error("gpu1's key spoke for gpu2")
	}
	if err := sign(c, map[string]any{"node": "gpu1", "mac": "52:54:00:aa:bb:01", "stage": "bogus"}); err == nil {
		t.Errorf("bad stage accepted")
	}
	resp, _ := http.Post(f.url+"/events", "application/json", strings.NewReader("{"))
	if resp.StatusCode != 400 {
		t.Errorf("bad json: %d", resp.StatusCode)
	}
	f.inv.Flush() // writes are coalesced; what is on disk is what counts
	inv, _ := inventory.Load(f.state)
	r, ok := inv.Get("52:54:00:aa:bb:01")
	if !ok || r.Stage != "up" || r.Image != f.id || r.Boots != 1 || r.Address != "127.0.0.1" {
		t.Errorf("record: %+v", r)
	}
	if _, ok := inv.Get("52:54:00:aa:bb:02"); ok {
		t.Error("gpu2 has a record from gpu1's key")
	}
	_, metrics := get(t, f.url+"/metrics")
	if !strings.Contains(metrics, `herd_boot_events_total{stage="up"} 1`) {
		t.Errorf("metrics:\n%s", metrics)
	}
	if code, body := get(t, f.url+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("healthz: %d %q", code, body)
	}
}

func TestPackOverlayRefusesBadPaths(t *testing.T) {
	for _, p := range []string{"/etc/x", "../x", "a/../../x", ""} {
		if _, err := PackOverlay([]RuntimeFile{{Path: p, Mode: 0o644}}); err == nil {
			t.Errorf("%q accepted", p)
		}
	}
	if _, err := PackOverlay([]RuntimeFile{{Path: "etc/x", Mode: fs.FileMode(0o644)}}); err != nil {
		t.Error(err)
	}
}

func FuzzParsePaths(f *testing.F) {
	for _, s := range []string{"/boot/52:54:00:aa:bb:01.ipxe", "/boot/52-54-00-AA-BB-01.ipxe", "/images/0123456789abcdef/vmlinuz", "/images/../x", "/nodes/gpu1/overlay.cpio", "/nodes/../overlay.cpio"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if mac, err := ParseScriptPath(p); err == nil {
			if hw, err := net.ParseMAC(mac); err != nil || hw.String() != mac {
				t.Fatalf("%q gave MAC %q", p, mac)
			}
		}
		if id, art, err := ParseImagePath(p); err == nil {
			if strings.ContainsAny(id+art, "/\\") || strings.Contains(art, "..") {
				t.Fatalf("%q gave %q %q", p, id, art)
			}
		}
		if name, _, err := ParseNodePath(p); err == nil {
			if strings.ContainsAny(name, "/.\\") {
				t.Fatalf("%q gave node %q", p, name)
			}
		}
	})
}

// TestDownloadsQueue: with max_http 1, parallel downloads all complete
// intact (a boot storm slows down instead of failing), and never more than
// one ran at a time (counted around the copy, apart from the slots).
func TestDownloadsQueue(t *testing.T) {
	testenv.RequireCommands(t, "curl")
	f := newFixture(t, "ignore")
	cfg := *f.cfg
	cfg.Server.MaxHTTP = 1
	f.srv.SetConfig(&cfg)
	want, _ := os.ReadFile(filepath.Join(f.state, "images", f.id, manifest.Rootfs))
	var cmds []*exec.Cmd
	var outs []string
	for i := 0; i < 4; i++ {
		out := filepath.Join(t.TempDir(), "r")
		c := exec.Command("curl", "-fsS", "--limit-rate", "20M", "-o", out, f.url+"/images/"+f.id+"/rootfs.squashfs")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, outs = append(cmds, c), append(outs, out)
	}
	for i, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		if got, _ := os.ReadFile(outs[i]); !bytes.Equal(got, want) {
			t.Errorf("client %d: bytes differ", i)
		}
	}
	if p := f.srv.PeakDownloads(); p != 1 {
		t.Errorf("peak concurrent downloads = %d, want exactly the limit 1", p)
	}
}

// TestIPXEOverHTTP: the iPXE binaries for UEFI HTTP boot, and nothing else.
func TestIPXEOverHTTP(t *testing.T) {
	f := newFixture(t, "ignore")
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "snponly.efi"), []byte("MZ fake efi"), 0o644)
	os.WriteFile(filepath.Join(root, "other.bin"), []byte("x"), 0o644)
	cfg := *f.cfg
	cfg.Server.TFTPRoot = root
	f.srv.SetConfig(&cfg)
	if code, body := get(t, f.url+"/ipxe/snponly.efi"); code != 200 || body != "MZ fake efi" {
		t.Errorf("snponly.efi: %d %q", code, body)
	}
	for _, p := range []string{"/ipxe/other.bin", "/ipxe/ipxe.efi", "/ipxe/../bindpw", "/ipxe/"} {
		if code, _ := get(t, f.url+p); code != 404 {
			t.Errorf("%s: %d, want 404", p, code)
		}
	}
}

func TestScriptRefusesInjection(t *testing.T) {
	cfg, err := site.Parse("herd.yaml", []byte("server: {address: 10.0.0.1}\ndhcp: {mode: off}\noverlays: [base]\n"))
	if err != nil {
		t.Fatal(err)
	}
	m := &manifest.Manifest{Artifacts: map[string]manifest.Artifact{manifest.Rootfs: {SHA256: "ab"}}}
	for _, ka := range []string{"quiet\nshell", "a=${net0/mac}", "x\x00"} {
		if _, err := Script(cfg, &site.Node{Name: "n1", KernelArgs: ka}, "0123456789abcdef", m); err == nil {
			t.Errorf("kernel_args %q accepted", ka)
		}
	}
	if _, err := Script(cfg, &site.Node{Name: "n1", KernelArgs: "nvidia.NVreg_X=1 quiet"}, "0123456789abcdef", m); err != nil {
		t.Error(err)
	}
}

// TestChunkStore: an image with a chunk index gets herd.index in its
// script and its chunks under /chunks/<sha256>; a chunk no image holds is
// 404, and a chunk whose bytes changed on disk is refused, never served
// under a name it no longer matches.
func TestChunkStore(t *testing.T) {
	f := newFixture(t, "ignore")
	dir := filepath.Join(f.state, "images", f.id)
	x, err := chunks.SplitFile(filepath.Join(dir, manifest.Rootfs))
	if err != nil {
		t.Fatal(err)
	}
	ib, _ := x.MarshalBinary()
	os.WriteFile(filepath.Join(dir, chunks.IndexName), ib, 0o644)
	m, _ := manifest.Read(dir)
	// A manifest from before the index's sha256 was recorded: herd.index
	// alone (the node then hashes an assembled image whole).
	m.Chunks = &manifest.ChunkIndex{File: chunks.IndexName, Count: len(x.Chunks)}
	if args, want := chunkArgs("http://s/i", m.Chunks), []string{"herd.index=http://s/i"}; !slices.Equal(args, want) {
		t.Errorf("chunkArgs without sha256 = %q, want %q", args, want)
	}
	isum := sha256.Sum256(ib)
	m.Chunks.SHA256 = hex.EncodeToString(isum[:])
	m.Write(dir)

	_, script := get(t, f.url+"/boot/52-54-00-aa-bb-01.ipxe")
	if !strings.Contains(script, " herd.index="+f.url+"/images/"+f.id+"/rootfs.index herd.index_sha256="+m.Chunks.SHA256+" ") {
		t.Fatalf("script lacks herd.index and herd.index_sha256:\n%s", script)
	}
	if code, body := get(t, f.url+"/images/"+f.id+"/rootfs.index"); code != 200 || body != string(ib) {
		t.Fatalf("index: %d (%d bytes)", code, len(body))
	}
	rootfs, _ := os.ReadFile(filepath.Join(dir, manifest.Rootfs))
	c := x.Chunks[len(x.Chunks)/2]
	code, body := get(t, f.url+"/chunks/"+c.Hex())
	if code != 200 || body != string(rootfs[c.Offset:c.Offset+int64(c.Size)]) {
		t.Fatalf("chunk: %d, %d bytes", code, len(body))
	}
	for _, bad := range []string{strings.Repeat("0", 64), strings.ToUpper(c.Hex()), "../manifest.json", c.Hex()[:10]} {
		if code, _ := get(t, f.url+"/chunks/"+bad); code != 404 {
			t.Errorf("/chunks/%s: %d, want 404", bad, code)
		}
	}
	// The image file changed under the server: the chunk is refused.
	fh, _ := os.OpenFile(filepath.Join(dir, manifest.Rootfs), os.O_RDWR, 0)
	fh.WriteAt([]byte{rootfs[c.Offset] ^ 0xff}, c.Offset)
	fh.Close()
	if code, body := get(t, f.url+"/chunks/"+c.Hex()); code == 200 {
		t.Errorf("served %d bytes that no longer match the chunk's name", len(body))
	}
}
