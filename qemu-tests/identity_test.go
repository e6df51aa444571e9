package qemutests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/internal/nodeauth"
	"github.com/herdlab/herd/testlab"
)

// Node identity on TestLab's lab (issue 14, DESIGN.md "Trust"): the nodes
// enrolled through the lab's enrollment window (`herd node enroll`). gpu02
// reboots from its SSD with a sniffer on the bridge and a flood from another
// attacker host (hostile_test.go): it must get its secrets with no admin
// action, present the same SSH host key and download nothing. Then an
// attacker host on the bridge takes gpu02's IP and MAC and tries every way
// to its secrets and to the inventory; each attack is a subtest that fails
// when the attack works.
func init() {
	labExtras = append(labExtras, labExtra{name: "identity", run: identityChecks})
}

func identityChecks(t *testing.T, ctx context.Context, lab *testlab.Lab, nodes map[string]*testlab.Booted) {
	// The victim is gpu02 (enrolled in the window); gpu01 when gpu02 did
	// not boot (its failure is reported by seabios-and-ovmf-both-boot).
	victim := "gpu02"
	b := nodes[victim]
	if b == nil {
		victim = "gpu01"
		b = nodes[victim]
	}
	if b == nil {
		t.Fatal("no node booted")
	}
	t.Run("enrolled-by-approve-and-by-window", func(t *testing.T) {
		if g := nodes["gpu01"]; g != nil {
			fp, err := lab.EnrolledKey(ctx, "gpu01")
			if err != nil || g.Approved == "" || fp != g.Approved {
				t.Errorf("gpu01: approved %q from its console, enrolled %q (%v)", g.Approved, fp, err)
			}
		}
		if g := nodes["gpu02"]; g != nil {
			fp, err := lab.EnrolledKey(ctx, "gpu02")
			if err != nil || fp == "" || g.Approved != "" {
				t.Errorf("gpu02: enrolled %q in the window (approved %q, %v)", fp, g.Approved, err)
			}
		}
	})
	secrets := nodeSecrets(t, lab, victim)
	base := fmt.Sprintf("http://%s:%d", testlab.LabServer, testlab.LabHTTP)

	t.Run("public-files-hold-no-secret", func(t *testing.T) {
		publicFilesHoldNoSecret(t, lab, base, b, secrets)
	})

	var captured []testlab.CapturedRequest
	t.Run("reboot-from-ssd-under-flood-keeps-identity", func(t *testing.T) {
		enrolled, err := lab.EnrolledKey(ctx, victim)
		if err != nil || enrolled == "" {
			t.Fatalf("%s has no enrolled key before the reboot: %q %v", victim, enrolled, err)
		}
		before, err := b.User.HostKeySeen()
		if err != nil {
			t.Fatal(err)
		}
		if first := testlab.RootfsDownloads(lab.ServerLogText(), lab.ImageID, b.Node.IP); first == 0 {
			t.Errorf("%s's first boot's rootfs download is not in the server log %s", victim, lab.ServerLog)
		}
		// The reboot is also the suite's boot through hostile traffic
		// (hostile_test.go): one TCG boot for both.
		fl := startFlood(t, ctx, lab)
		// The sniffer sees the bridge as a mirror port would.
		sn, err := testlab.Sniff(lab.Netns, testlab.LabBridge, testlab.LabHTTP)
		if err != nil {
			t.Fatal(err)
		}
		logBefore := len(lab.ServerLogText())
		// This reboot's console starts here: its initramfs lines end up
		// hundreds of lines above the end once the boot and the checks
		// below have printed theirs, so the check reads all of it.
		consoleStart := b.VM.Console.Size()
		err = b.Reboot(ctx) // no approval, no window: the key on the SSD must do; BootTimeout is the flood's liveness deadline
		captured = sn.Stop()
		if err != nil {
			t.Fatalf("%s did not come back up under the flood: %v\nattacker: %s", victim, err, fl.last())
		}
		if !fl.running() {
			t.Fatalf("the attacker stopped before %s was up: %s", victim, fl.out.String())
		}
		cachedRebootChecks(t, lab, b, lab.ServerLogText()[logBefore:])
		t.Logf("%s rebooted under the flood; attacker: %s", victim, fl.last())
		after, err := b.User.HostKeySeen()
		if err != nil {
			t.Fatal(err)
		}
		if after != before {
			t.Errorf("the SSH host key a user sees changed across the reboot: %s, then %s", before, after)
		}
		if now, _ := lab.EnrolledKey(ctx, victim); now != enrolled {
			t.Errorf("the enrolled key changed across the reboot: %s, then %s", enrolled, now)
		}
		if since, err := b.VM.Console.Since(consoleStart); err != nil || !strings.Contains(since, "runtime overlay received") {
			t.Errorf("the console of the reboot does not show the sealed overlay arriving (%v); its end:\n%s", err, testlab.TailLines([]byte(since), 60))
		}
		for _, r := range captured {
			if r.Method == http.MethodGet && strings.Contains(r.Path, "overlay.cpio") {
				t.Errorf("the node asked for the old overlay.cpio")
			}
		}
	})

	att, err := lab.NewAttacker()
	if err != nil {
		t.Fatal(err)
	}
	defer att.Close()
	if err := att.Become(b.Node.IP, b.Node.MAC); err != nil {
		t.Fatal(err)
	}
	runAttacks(t, ctx, lab, att.HTTPClient(), base, victim, secrets, captured)
}

// nodeSecrets are byte strings whose presence in an answer means a secret
// leaked: the victim's SSH host private keys (their base64 body) and the
// directory bind password when the lab has one.
func nodeSecrets(t *testing.T, lab *testlab.Lab, victim string) map[string][]byte {
	out := map[string][]byte{}
	paths, _ := filepath.Glob(filepath.Join(lab.StateDir, "nodes", victim, "ssh_host_*_key"))
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		if len(lines) < 3 {
			t.Fatalf("%s: not a PEM key", p)
		}
		// The key's body without its first line: that line is the same
		// for every unencrypted OpenSSH key of a type (magic, "none"
		// cipher and kdf, key type), so it would match any host key.
		out[filepath.Base(p)] = []byte(strings.Join(lines[2:len(lines)-1], "\n"))
	}
	if len(out) == 0 {
		t.Fatalf("no host keys for %s under %s", victim, lab.StateDir)
	}
	if pw, err := os.ReadFile(filepath.Join(lab.Config.Dir, "ldap-bind.secret")); err == nil {
		out["bind password"] = bytes.TrimSpace(pw)
	}
	return out
}

// holds names the node secret found in data.
func holds(data []byte, secrets map[string][]byte) string {
	for name, s := range secrets {
		if len(s) > 0 && bytes.Contains(data, s) {
			return name
		}
	}
	return ""
}

// leaked names the secret, or any PEM private key, in an HTTP answer.
func leaked(body []byte, secrets map[string][]byte) string {
	if s := holds(body, secrets); s != "" {
		return s
	}
	if bytes.Contains(body, []byte("PRIVATE KEY")) {
		return "a PEM private key"
	}
	return ""
}

// publicFilesHoldNoSecret: what any host may fetch (boot script, kernel,
// initrd, image) holds none of a node's secrets.
func publicFilesHoldNoSecret(t *testing.T, lab *testlab.Lab, base string, b *testlab.Booted, secrets map[string][]byte) {
	code, script, err := lab.HTTPGet(base + "/boot/" + b.Node.MAC + ".ipxe")
	if err != nil || code != 200 {
		t.Fatalf("boot script: %d %v", code, err)
	}
	if bytes.Contains(script, []byte("/nodes/")) || bytes.Contains(script, []byte("overlay")) {
		t.Errorf("the boot script still names a per-node file:\n%s", script)
	}
	if s := leaked(script, secrets); s != "" {
		t.Errorf("the boot script holds %s", s)
	}
	dir := filepath.Join(lab.StateDir, "images", lab.ImageID)
	for _, art := range []string{"vmlinuz", "initrd.img"} {
		code, data, err := lab.HTTPGet(base + "/images/" + lab.ImageID + "/" + art)
		if err != nil || code != 200 {
			t.Fatalf("%s: %d %v", art, code, err)
		}
		if s := leaked(data, secrets); s != "" {
			t.Errorf("%s holds %s", art, s)
		}
		if art == "initrd.img" {
			// The initramfs-tools image: an uncompressed early cpio, then
			// zstd. Scan what it unpacks to as well.
			if i := bytes.Index(data, []byte{0x28, 0xb5, 0x2f, 0xfd}); i >= 0 {
				cmd := exec.Command("zstd", "-dc")
				cmd.Stdin = bytes.NewReader(data[i:])
				plain, _ := cmd.Output()
				if len(plain) == 0 {
					t.Errorf("initrd: cannot decompress the zstd part")
				}
				if s := leaked(plain, secrets); s != "" {
					t.Errorf("the initrd's contents hold %s", s)
				}
			}
		}
	}
	// The image: where overlays and the builder put files.
	tree := t.TempDir()
	out, err := exec.Command("unsquashfs", "-no-xattrs", "-q", "-d", filepath.Join(tree, "r"), filepath.Join(dir, "rootfs.squashfs"), "etc", "usr/lib/herd", "var/lib").CombinedOutput()
	if err != nil {
		t.Fatalf("unsquashfs: %v: %s", err, out)
	}
	filepath.WalkDir(tree, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		data, _ := os.ReadFile(p)
		if s := holds(data, secrets); s != "" {
			t.Errorf("image file %s holds %s", strings.TrimPrefix(p, tree), s)
		}
		return nil
	})
}

// runAttacks are the LAN attacker's tries, from a host holding the
// victim's IP and MAC. captured holds requests sniffed on the bridge while
// the victim booted (nil against a server that the victim did not reboot on).
func runAttacks(t *testing.T, ctx context.Context, lab *testlab.Lab, c *http.Client, base, victim string, secrets map[string][]byte, captured []testlab.CapturedRequest) {
	do := func(method, path string, hdr http.Header, body []byte) (int, []byte) {
		req, _ := http.NewRequestWithContext(ctx, method, base+path, bytes.NewReader(body))
		for k, v := range hdr {
			req.Header[k] = v
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, []byte(err.Error())
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	noSecret := func(t *testing.T, what string, code int, body []byte) {
		t.Helper()
		if s := leaked(body, secrets); s != "" {
			t.Errorf("%s: got %s (HTTP %d)", what, s, code)
		} else if code == http.StatusOK && len(body) > 0 {
			t.Errorf("%s: answered 200 with %d bytes", what, len(body))
		}
	}
	attackerKey, _ := nodeauth.GenerateFileKey()
	evil := &nodeauth.Client{Base: base, Node: victim, Key: attackerKey, HTTP: c}
	// What an admin reads as the node's boot state.
	record := func() string {
		out, _ := lab.Herd(ctx, "", "node", "show", victim, "--json")
		var v struct {
			Seen *struct {
				Stage, Message, Image string
				StageTime             time.Time `json:"stage_time"`
				Boots, Errors         int
			} `json:"seen"`
		}
		json.Unmarshal(out, &v)
		b, _ := json.Marshal(v)
		return string(b)
	}
	mac := ""
	if n, ok := lab.Node(victim); ok {
		mac = n.MAC
	}
	enrolled, _ := lab.EnrolledKey(ctx, victim)

	t.Run("attack-old-overlay-url", func(t *testing.T) {
		code, body := do(http.MethodGet, "/nodes/"+victim+"/overlay.cpio", nil, nil)
		noSecret(t, "GET overlay.cpio with the node's IP and MAC", code, body)
	})
	t.Run("attack-spoofed-overlay-requests", func(t *testing.T) {
		code, body := do(http.MethodPost, "/nodes/"+victim+"/overlay", nil, []byte("{}"))
		noSecret(t, "unsigned overlay request", code, body)
		if data, err := evil.Overlay(ctx); err == nil || leaked(data, secrets) != "" {
			t.Errorf("overlay request signed by the attacker's key: answered (%v)", err)
		}
	})
	t.Run("attack-replay-captured-overlay-request", func(t *testing.T) {
		n := 0
		for _, r := range captured {
			if r.Method == http.MethodPost && r.Path == "/nodes/"+victim+"/overlay" {
				n++
				code, body := do(r.Method, r.Path, r.Header, r.Body)
				noSecret(t, "replayed overlay request", code, body)
				if code/100 == 2 {
					t.Errorf("replayed overlay request accepted (HTTP %d)", code)
				}
			}
		}
		if captured != nil && n == 0 {
			t.Fatalf("the sniffer captured no overlay request of %s (%d requests)", victim, len(captured))
		}
		if captured == nil {
			// Against a server without identity: the node's request was a plain GET.
			code, body := do(http.MethodGet, "/nodes/"+victim+"/overlay.cpio", nil, nil)
			noSecret(t, "replayed GET overlay.cpio", code, body)
		}
	})
	t.Run("attack-forged-events", func(t *testing.T) {
		before := record()
		ev, _ := json.Marshal(map[string]any{"node": victim, "mac": mac, "stage": "error", "message": "pwned by the attacker", "time": time.Now()})
		if code, _ := do(http.MethodPost, "/events", http.Header{"Content-Type": {"application/json"}}, ev); code/100 == 2 && code != http.StatusAccepted {
			t.Errorf("unsigned event accepted (HTTP %d)", code)
		}
		if err := evil.Event(ctx, ev); err == nil {
			t.Errorf("event signed by the attacker's key accepted")
		}
		for _, r := range captured {
			if r.Method == http.MethodPost && r.Path == "/events" {
				if code, _ := do(r.Method, r.Path, r.Header, r.Body); code/100 == 2 {
					t.Errorf("replayed signed event accepted (HTTP %d)", code)
				}
			}
		}
		if after := record(); strings.Contains(after, "pwned") || after != before || before == "{\"Seen\":null}" {
			t.Errorf("the inventory changed under forged events:\nbefore %s\nafter %s", before, after)
		}
	})
	t.Run("attack-forged-enrollment", func(t *testing.T) {
		ans, err := evil.Enroll(ctx)
		if err == nil && ans.Status == nodeauth.StatusEnrolled {
			t.Fatalf("the attacker's key was enrolled for %s", victim)
		}
		if now, _ := lab.EnrolledKey(ctx, victim); now != enrolled {
			t.Errorf("the enrolled key changed: %s, then %s", enrolled, now)
		}
		if data, err := evil.Overlay(ctx); err == nil || leaked(data, secrets) != "" {
			t.Errorf("after its forged enrollment the attacker got an overlay (%v)", err)
		}
	})
}
