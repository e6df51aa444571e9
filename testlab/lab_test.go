package testlab

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/internal/testenv"
)

// fakeImage publishes an image of small placeholder artifacts: enough for
// the server to hand out scripts and files, no node boots it.
func fakeImage(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "staging")
	os.MkdirAll(dir, 0o755)
	m := &manifest.Manifest{Created: time.Now().UTC(), Recipe: "lab-test", Artifacts: map[string]manifest.Artifact{}}
	for _, n := range []string{manifest.Kernel, manifest.Initrd, manifest.Rootfs} {
		p := filepath.Join(dir, n)
		os.WriteFile(p, bytes.Repeat([]byte(n), 1000), 0o644)
		a, err := manifest.HashFile(p)
		if err != nil {
			t.Fatal(err)
		}
		m.Artifacts[n] = a
	}
	m.ID = m.ComputeID()
	if err := m.Write(dir); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(filepath.Dir(dir), "images", m.ID)
	os.MkdirAll(filepath.Dir(img), 0o755)
	if err := os.Rename(dir, img); err != nil {
		t.Fatal(err)
	}
	return img
}

func TestLabServesAndStops(t *testing.T) {
	testenv.RequireNetns(t)
	testenv.RequireCommands(t, "ganesha.nfsd", "slapd")
	herd := testenv.Bin(t, "HERD_BIN")
	img := fakeImage(t)
	dir := t.TempDir()
	lab, err := StartLab(context.Background(), LabConfig{Dir: dir, HerdBin: herd, ImageDir: img})
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	if lab.ImageID != filepath.Base(img) {
		t.Fatalf("lab serves %s, want %s", lab.ImageID, filepath.Base(img))
	}
	// The source store is untouched: the lab has its own state.
	if _, err := os.Stat(filepath.Join(filepath.Dir(filepath.Dir(img)), "current")); err == nil {
		t.Fatal("lab wrote into the source store")
	}
	code, body, err := lab.HTTPGet("http://10.77.0.1:8080/boot/52:54:00:77:00:11.ipxe")
	if err != nil || code != 200 {
		t.Fatalf("boot script: %d %v (%s)", code, err, lab.Logs())
	}
	for _, want := range []string{"herd.id=" + lab.ImageID, "herd.node=gpu01", "#!ipxe"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("boot script lacks %q:\n%s", want, body)
		}
	}
	if code, _, _ := lab.HTTPGet("http://10.77.0.1:8080/boot/52:54:00:99:99:99.ipxe"); code == 200 {
		t.Errorf("unknown MAC got a boot script")
	}
	// The user a test creates through herd lands in the lab's slapd, with a
	// home directory on the NAS export owned by her uid.
	uid, gid, err := lab.AddUser(context.Background(), "alice", "wonder-land-42")
	if err != nil {
		t.Fatalf("%v (%s)", err, lab.Logs())
	}
	fi, err := os.Stat(filepath.Join(lab.HomesDir, "alice"))
	if err != nil {
		t.Fatal(err)
	}
	if st := statOwner(fi); st[0] != uid || st[1] != gid || uid < 1000 {
		t.Errorf("home owned by %v, want %d:%d", st, uid, gid)
	}
	ns := lab.Netns.Name
	if err := lab.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/run/netns/" + ns); err == nil {
		t.Fatalf("namespace %s left behind", ns)
	}
}
