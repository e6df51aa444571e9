package web_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/internal/nodeauth"
	"github.com/herdlab/herd/internal/testenv"
)

// lab is one real `herd serve` (the built binary) on loopback with dhcp
// off, a state dir holding two published images and real secrets.
type lab struct {
	herd, dir, state, cfg, base string
	images                      []string // oldest first; the last is current
	secrets                     map[string]string
	proc                        *exec.Cmd
	log                         *os.File
	// nodes sign their events with enrolled keys (the server records only
	// those): one per node, enrolled through `herd node enroll` at start.
	nodes map[string]*nodeauth.Client
}

// Nodes of the test site: gpu01 and gpu02 in herd.yaml.
var (
	macs = map[string]string{"gpu01": "52:54:00:77:00:11", "gpu02": "52:54:00:77:00:12"}
)

func freePort(t *testing.T, network string) int {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// publishImage puts a small image with the given packages in the store.
func publishImage(t *testing.T, state, kernel string, pkgs map[string]string) string {
	t.Helper()
	st, err := store.Open(state)
	if err != nil {
		t.Fatal(err)
	}
	tmp, err := st.StagingDir()
	if err != nil {
		t.Fatal(err)
	}
	m := &manifest.Manifest{Created: time.Now().UTC(), Recipe: "dash-test", KernelABI: kernel,
		NVIDIA: "580.178.04-0ubuntu0.24.04.1", Packages: pkgs, Artifacts: map[string]manifest.Artifact{}}
	for _, name := range []string{manifest.Kernel, manifest.Initrd, manifest.Rootfs} {
		p := filepath.Join(tmp, name)
		os.WriteFile(p, []byte(name+randHex(64)), 0o644)
		a, err := manifest.HashFile(p)
		if err != nil {
			t.Fatal(err)
		}
		m.Artifacts[name] = a
	}
	id, err := st.Publish(tmp, m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Promote(context.Background(), id, false); err != nil {
		t.Fatal(err)
	}
	return id
}

// startLab starts herd serve with extra YAML appended to the site file.
func startLab(t *testing.T, extra string) *lab {
	t.Helper()
	herd := testenv.Bin(t, "HERD_BIN")
	dir := t.TempDir()
	l := &lab{herd: herd, dir: dir, state: filepath.Join(dir, "state"), cfg: filepath.Join(dir, "herd.yaml"), secrets: map[string]string{}}
	os.MkdirAll(l.state, 0o755)
	old := publishImage(t, l.state, "6.8.0-149-generic", map[string]string{"bash": "5.2", "vim": "9.1"})
	cur := publishImage(t, l.state, "6.8.0-150-generic", map[string]string{"bash": "5.2.1", "curl": "8.5"})
	l.images = []string{old, cur}
	st, _ := store.Open(l.state)
	if err := st.RecordTest(cur, store.TestResult{Passed: true, Summary: "12 checks passed"}); err != nil {
		t.Fatal(err)
	}
	// Real secrets where an admin keeps them: password files in the state
	// dir, password hashes in herd.yaml; herd serve adds each node's SSH
	// host keys and machine-id under <state>/nodes/<name>/.
	bindPW, adminPW := "bind-"+randHex(12), "admin-"+randHex(12)
	l.secrets["ldap bind password"] = bindPW
	l.secrets["ldap admin password"] = adminPW
	os.WriteFile(filepath.Join(l.state, "ldap-bind.pw"), []byte(bindPW+"\n"), 0o600)
	os.WriteFile(filepath.Join(l.state, "ldap-admin.pw"), []byte(adminPW+"\n"), 0o600)
	rootHash := "$6$" + randHex(8) + "$" + randHex(32)
	l.secrets["root password hash"] = rootHash
	port := freePort(t, "tcp")
	os.WriteFile(l.cfg, []byte(fmt.Sprintf(`server:
  address: 127.0.0.1
  http_port: %d
dhcp:
  mode: off
overlays: [base]
ldap:
  uri: ldap://127.0.0.1/
  base: dc=lab,dc=internal
  bind_dn: cn=nodes,dc=lab,dc=internal
  bind_password_file: %s
  admin_dn: cn=admin,dc=lab,dc=internal
  admin_password_file: %s
root:
  password_hash: '%s'
nodes:
  - name: gpu01
    mac: "%s"
    ip: 127.0.0.1
  - name: gpu02
    mac: "%s"
%s`, port, filepath.Join(l.state, "ldap-bind.pw"), filepath.Join(l.state, "ldap-admin.pw"), rootHash,
		macs["gpu01"], macs["gpu02"], extra)), 0o644)
	l.base = fmt.Sprintf("http://127.0.0.1:%d", port)
	l.log, _ = os.Create(filepath.Join(dir, "herd.log"))
	l.proc = exec.Command(herd, "-v", "--config", l.cfg, "--state", l.state, "serve", "--tftp-port", fmt.Sprint(freePort(t, "udp")))
	l.proc.Stdout, l.proc.Stderr = l.log, l.log
	if err := l.proc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		l.proc.Process.Kill()
		l.proc.Wait()
		l.log.Close()
		if t.Failed() {
			b, _ := os.ReadFile(l.log.Name())
			t.Logf("--- herd serve log ---\n%s", tail(string(b), 40))
		}
	})
	l.waitFor(t, "herd serve to answer", func() bool { return l.status("/healthz") == 200 })
	// The node identities are made in the background at start: wait for
	// them, then read them as secrets that must never be served.
	for name := range macs {
		nd := filepath.Join(l.state, "nodes", name)
		l.waitFor(t, name+"'s host keys", func() bool {
			_, err := os.Stat(filepath.Join(nd, "ssh_host_rsa_key"))
			return err == nil
		})
		ents, _ := os.ReadDir(nd)
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".pub") {
				continue
			}
			b, err := os.ReadFile(filepath.Join(nd, e.Name()))
			if err != nil || len(b) == 0 {
				continue
			}
			l.secrets[name+"/"+e.Name()] = string(b)
		}
	}
	// Enroll both nodes through the admin's window, as their first boot would.
	if out, err := exec.Command(herd, "--config", l.cfg, "--state", l.state, "node", "enroll", "gpu01", "gpu02", "--for", "1h").CombinedOutput(); err != nil {
		t.Fatalf("herd node enroll: %v %s", err, out)
	}
	l.nodes = map[string]*nodeauth.Client{}
	for name := range macs {
		k, err := nodeauth.GenerateFileKey()
		if err != nil {
			t.Fatal(err)
		}
		c := &nodeauth.Client{Base: l.base, Node: name, Key: k}
		if ans, err := c.Enroll(context.Background()); err != nil || ans.Status != nodeauth.StatusEnrolled {
			t.Fatalf("enroll %s: %+v %v", name, ans, err)
		}
		l.nodes[name] = c
	}
	return l
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (l *lab) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 600; i++ {
		if cond() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("gave up waiting for %s", what)
}

func (l *lab) status(path string) int {
	r, err := http.Get(l.base + path)
	if err != nil {
		return 0
	}
	r.Body.Close()
	return r.StatusCode
}

func (l *lab) get(t *testing.T, path string) []byte {
	t.Helper()
	r, err := http.Get(l.base + path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	if r.StatusCode != 200 {
		t.Fatalf("GET %s: %s\n%s", path, r.Status, b)
	}
	return b
}

// postEvent posts a boot event through the real /events path, signed by
// the node's enrolled key as herd-boot does.
func (l *lab) postEvent(t *testing.T, node, stage string, pct int, msg string) {
	t.Helper()
	ev := map[string]any{"node": node, "mac": macs[node], "stage": stage, "percent": pct, "message": msg,
		"image": l.images[1], "kernel": "6.8.0-150-generic", "nvidia": "580.178.04"}
	b, _ := json.Marshal(ev)
	if err := l.nodes[node].Event(context.Background(), b); err != nil {
		t.Fatalf("POST /events %s %s: %v", node, stage, err)
	}
}

// herdJSON runs a herd CLI command against the lab's state and config.
func (l *lab) herdJSON(t *testing.T, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(l.herd, append([]string{"--config", l.cfg, "--state", l.state}, args...)...).Output()
	if err != nil {
		t.Fatalf("herd %v: %v", args, err)
	}
	return out
}

// sseEvent is one server-sent event.
type sseEvent struct{ name, id, data string }

// readSSE reads events from an open stream until fn returns false.
func readSSE(r io.Reader, fn func(sseEvent) bool) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var ev sseEvent
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if ev.data != "" && !fn(ev) {
				return nil
			}
			ev = sseEvent{}
		case strings.HasPrefix(line, "event: "):
			ev.name = line[len("event: "):]
		case strings.HasPrefix(line, "id: "):
			ev.id = line[len("id: "):]
		case strings.HasPrefix(line, "data: "):
			ev.data += line[len("data: "):]
		}
	}
	return sc.Err()
}

// bodies collects every response the tests saw, for the secret scan.
type bodies struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (b *bodies) add(name string, data []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.m[name] = append(b.m[name], data...)
}
