package backup_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/herdlab/herd/backup"
	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/internal/cpio"
	"github.com/herdlab/herd/internal/nodeauth"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/pxe/httpboot"
	"github.com/herdlab/herd/pxe/inventory"
	"github.com/herdlab/herd/site"
)

const mac = "52:54:00:bb:00:01"

// served starts herd's HTTP boot service on state and returns the SHA256
// fingerprints of the SSH host keys in gpu1's runtime overlay as served to
// the node holding key (sealed to it, through the identity protocol), the
// image its boot script names, and that image's rootfs bytes as served.
// With enroll the node enrolls first, through a window the admin opened.
func served(t *testing.T, state string, key crypto.Signer, enroll bool) (fprs []string, image string, rootfs []byte) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	cfg, err := site.Parse("herd.yaml", []byte(fmt.Sprintf(
		"server: {address: 127.0.0.1, http_port: %d}\ndhcp: {mode: \"off\"}\noverlays: []\nnodes:\n  - {name: gpu1, mac: %q, ip: 127.0.0.1}\n", port, mac)))
	if err != nil {
		t.Fatal(err)
	}
	inv, err := inventory.Load(state)
	if err != nil {
		t.Fatal(err)
	}
	// Only the host keys matter here; the real renderer puts them at the same paths.
	render := func(_ *site.Config, _ *site.Node, s httpboot.Secrets, _ string) ([]httpboot.RuntimeFile, error) {
		var files []httpboot.RuntimeFile
		for _, k := range s.SSHHostKeys {
			files = append(files, httpboot.RuntimeFile{Path: "etc/ssh/ssh_host_" + k.Type + "_key.pub", Mode: 0o644, Data: k.Public})
		}
		return files, nil
	}
	srv, err := httpboot.New(cfg, httpboot.Options{StateDir: state, Images: httpboot.StateImages{StateDir: state}, Inventory: inv,
		Render: render, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv}
	go hs.Serve(ln)
	defer hs.Shutdown(context.Background())
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	get := func(p string) []byte {
		resp, err := http.Get(base + p)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %s", p, resp.StatusCode, b)
		}
		return b
	}
	node := &nodeauth.Client{Base: base, Node: "gpu1", Key: key}
	if enroll {
		if err := nodeauth.OpenRegistry(state).OpenWindow([]string{"gpu1"}, time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if ans, err := node.Enroll(context.Background()); err != nil || ans.Status != nodeauth.StatusEnrolled {
			t.Fatalf("enroll gpu1: %+v %v", ans, err)
		}
	}
	overlay, err := node.Overlay(context.Background())
	if err != nil {
		t.Fatalf("gpu1's overlay: %v", err)
	}
	ents, err := cpio.ReadAll(bytes.NewReader(overlay))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasSuffix(e.Name, ".pub") {
			k, _, _, _, err := ssh.ParseAuthorizedKey(e.Data)
			if err != nil {
				t.Fatalf("%s: %v", e.Name, err)
			}
			fprs = append(fprs, ssh.FingerprintSHA256(k))
		}
	}
	if len(fprs) == 0 {
		t.Fatal("overlay holds no SSH host key")
	}
	script := string(get("/boot/" + mac + ".ipxe"))
	_, rest, ok := strings.Cut(script, "herd.id=")
	if !ok {
		t.Fatalf("boot script names no image:\n%s", script)
	}
	image = strings.Fields(rest)[0]
	return fprs, image, get("/images/" + image + "/" + manifest.Rootfs)
}

// TestBackupWipeRestoreServesSameHostKeys: backup, wipe the state directory,
// restore: the node, with the key it enrolled before, gets its overlay
// without enrolling again and with the same SSH host keys (fingerprints as
// served), the same image, and its inventory and test records are back;
// caches that can be rebuilt are not in the archive.
func TestBackupWipeRestoreServesSameHostKeys(t *testing.T) {
	bin := testenv.Bin(t, "HERD_BIN")
	ctx := context.Background()
	state := filepath.Join(t.TempDir(), "state")
	st, err := store.Open(state)
	if err != nil {
		t.Fatal(err)
	}
	id := publish(t, st)
	if _, err := st.Promote(ctx, id, false); err != nil {
		t.Fatal(err)
	}
	if err := st.RecordTest(id, store.TestResult{Passed: true, Summary: "all checks passed"}); err != nil {
		t.Fatal(err)
	}
	for _, junk := range []string{"stages/k1/root/x", "debs/a.deb", "logs/build.log", "apt-lists/l"} {
		os.MkdirAll(filepath.Dir(filepath.Join(state, junk)), 0o755)
		os.WriteFile(filepath.Join(state, junk), []byte("rebuildable"), 0o644)
	}
	// The node's own key, kept on its SSD across the server's restore.
	nodeKey, err := nodeauth.GenerateFileKey()
	if err != nil {
		t.Fatal(err)
	}
	before, img, rootfs := served(t, state, nodeKey, true)

	herd := func(args ...string) string {
		out, err := exec.Command(bin, append([]string{"--state", state}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("herd %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	archive := filepath.Join(t.TempDir(), "herd.backup")
	herd("backup", "--image", "current", archive)
	if fi, err := os.Stat(archive); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("archive: %v %v (must be 0600: it holds private host keys)", fi, err)
	}
	if err := os.RemoveAll(state); err != nil {
		t.Fatal(err)
	}
	out := herd("restore", archive)
	if !strings.Contains(out, "images ["+id+"]") {
		t.Errorf("restore output: %s", out)
	}

	// No new enrollment: the restored server must still know the node's key.
	after, img2, rootfs2 := served(t, state, nodeKey, false)
	if strings.Join(after, " ") != strings.Join(before, " ") {
		t.Fatalf("host keys changed across backup/restore:\nbefore %v\nafter  %v", before, after)
	}
	if img2 != img || !bytes.Equal(rootfs2, rootfs) {
		t.Fatalf("image after restore: %s (%d bytes), want %s", img2, len(rootfs2), img)
	}
	inv, _ := inventory.Load(state)
	if r, ok := inv.Get(mac); !ok || r.Name != "gpu1" || r.ScriptImage != id {
		t.Errorf("inventory record after restore: %+v %v", r, ok)
	}
	if tr, err := store.ReadOnly(state).TestResult(id); err != nil || tr == nil || !tr.Passed {
		t.Errorf("test record after restore: %+v %v", tr, err)
	}
	for _, junk := range []string{"stages", "debs", "logs", "apt-lists"} {
		if _, err := os.Stat(filepath.Join(state, junk)); err == nil {
			t.Errorf("%s was backed up; it can be rebuilt", junk)
		}
	}
	// A fresh state directory would have given the node new keys: the
	// comparison above means something.
	fresh, _, _ := func() ([]string, string, []byte) {
		s2 := filepath.Join(t.TempDir(), "state")
		st2, err := store.Open(s2)
		if err != nil {
			t.Fatal(err)
		}
		st2.Promote(ctx, publish(t, st2), false)
		return served(t, s2, nodeKey, true)
	}()
	if strings.Join(fresh, " ") == strings.Join(before, " ") {
		t.Fatal("a fresh state directory served the same host keys")
	}

	// Restore refuses a state directory that is not empty.
	if out, err := exec.Command(bin, "--state", state, "restore", archive).CombinedOutput(); err == nil || !strings.Contains(string(out), "is not empty") {
		t.Errorf("restore onto a populated state: %v %s", err, out)
	}
}

// An archive with an entry outside the tree, or a file whose bytes do not
// match its recorded sha256, is refused and leaves nothing behind.
func TestRestoreRefusesBadArchives(t *testing.T) {
	mk := func(name string, data []byte, sha string) []byte {
		var b bytes.Buffer
		gz := gzip.NewWriter(&b)
		tw := tar.NewWriter(gz)
		hdr := []byte(`{"format":1}`)
		tw.WriteHeader(&tar.Header{Name: backup.HeaderName, Mode: 0o600, Size: int64(len(hdr))})
		tw.Write(hdr)
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(data)), Typeflag: tar.TypeReg, Format: tar.FormatPAX,
			PAXRecords: map[string]string{"HERD.sha256": sha}})
		tw.Write(data)
		tw.Close()
		gz.Close()
		return b.Bytes()
	}
	const okSHA = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" // sha256("hello")
	dir := t.TempDir()
	for _, c := range []struct{ name, entry, data, sha, want string }{
		{"escape", "../evil", "hello", okSHA, "not a plain relative path"},
		{"absolute", "/etc/evil", "hello", okSHA, "not a plain relative path"},
		{"damaged", "nodes/gpu1/ssh_host_ed25519_key", "hellO", okSHA, "damaged backup"},
	} {
		state := filepath.Join(dir, c.name)
		_, err := backup.Restore(bytes.NewReader(mk(c.entry, []byte(c.data), c.sha)), state)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", c.name, err, c.want)
		}
		if _, err := os.Stat(state); err == nil {
			t.Errorf("%s: a refused restore left %s behind", c.name, state)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("refused restores left %v", ents)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "evil")); err == nil {
		t.Error("an entry escaped the state directory")
	}
	// The good case of the same hand-made archive works.
	state := filepath.Join(dir, "good")
	if _, err := backup.Restore(bytes.NewReader(mk("nodes/gpu1/x", []byte("hello"), okSHA)), state); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(state, "nodes/gpu1/x")); string(b) != "hello" {
		t.Fatalf("restored %q", b)
	}
}

// publish puts an image with random artifacts into st through its API.
func publish(t *testing.T, st *store.Store) string {
	t.Helper()
	staging, err := st.StagingDir()
	if err != nil {
		t.Fatal(err)
	}
	m := &manifest.Manifest{Created: time.Now().UTC(), Recipe: "test", KernelABI: "6.8.0-149-generic", Artifacts: map[string]manifest.Artifact{}}
	for _, name := range []string{manifest.Kernel, manifest.Initrd, manifest.Rootfs} {
		b := make([]byte, 1<<16)
		rand.Read(b)
		p := filepath.Join(staging, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		a, err := manifest.HashFile(p)
		if err != nil {
			t.Fatal(err)
		}
		m.Artifacts[name] = a
	}
	id, err := st.Publish(staging, m)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
