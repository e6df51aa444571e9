package overlays

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/site"
)

// renderScript renders one executable file of an overlay into a temp dir.
func renderScript(t *testing.T, overlay, path string) string {
	t.Helper()
	files, err := Render(richSite(t), []string{overlay})
	if err != nil {
		t.Fatal(err)
	}
	f, ok := find(files, path)
	if !ok {
		t.Fatalf("/%s not rendered", path)
	}
	p := filepath.Join(t.TempDir(), filepath.Base(path))
	if err := os.WriteFile(p, f.Data, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// Recorded in the format of nvidia-smi's CSV queries (--format=csv,noheader,
// nounits) as documented by `nvidia-smi --help-query-gpu` and
// `--help-query-compute-apps`. There are no real-GPU fixtures yet: nvidia-smi
// cannot run on this machine, so a stand-in prints these lines, and the
// parsing it feeds is kept small.
const (
	smiGPUs = "0, GPU-1f3a6b2c-0000-0000-0000-000000000001, NVIDIA GeForce GTX 1080 Ti, 97, 10240, 11264\n" +
		"1, GPU-1f3a6b2c-0000-0000-0000-000000000002, NVIDIA GeForce GTX 1080 Ti, 0, 2, 11264\n"
	smiApps = "GPU-1f3a6b2c-0000-0000-0000-000000000001, %PID%, 9000\n" +
		"GPU-1f3a6b2c-0000-0000-0000-000000000001, %PID2%, 1200\n"
)

// The motd names this node's GPUs, which are busy and by whom (the owners of
// the processes nvidia-smi lists), the image generation, home, Public and
// scratch; without an NVIDIA GPU it says so, and without an SSD it says
// there is no scratch.
func TestMotdScript(t *testing.T) {
	testenv.RequireCommands(t, "sh", "awk", "stat", "mountpoint")
	script := renderScript(t, "base", "etc/update-motd.d/50-herd")
	me, err := exec.Command("id", "-un").Output()
	if err != nil {
		t.Fatal(err)
	}
	user := strings.TrimSpace(string(me))

	root := t.TempDir()
	mustWrite(t, filepath.Join(root, "proc/cmdline"), "boot=herd ip=dhcp herd.id=8c1d2e3f4a5b herd.server=http://10.77.0.1:8080\n")
	// Two processes of ours on GPU 0 (a /proc/<pid> owned by this user), one
	// pid that has gone: it is named by its pid.
	for _, pid := range []string{"4242", "4343"} {
		if err := os.MkdirAll(filepath.Join(root, "proc", pid), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	apps := strings.NewReplacer("%PID%", "4242", "%PID2%", "4343").Replace(smiApps) + "GPU-1f3a6b2c-0000-0000-0000-000000000001, 999999, 10\n"
	bin := t.TempDir()
	smi := "#!/bin/sh\n[ -z \"$SMI_FAIL\" ] || { echo \"$SMI_FAIL\"; exit 9; }\ncase \"$*\" in\n*query-gpu*) printf '%s' \"$GPUS\" ;;\n*query-compute-apps*) printf '%s' \"$APPS\" ;;\n*) exit 9 ;;\nesac\n"
	if err := os.WriteFile(filepath.Join(bin, "nvidia-smi"), []byte(smi), 0o755); err != nil {
		t.Fatal(err)
	}
	sysfs := func(gpu bool) string {
		d := t.TempDir()
		class := "0x020000"
		if gpu {
			class = "0x030200"
		}
		mustWrite(t, filepath.Join(d, "bus/pci/devices/0000:01:00.0/vendor"), "0x10de\n")
		mustWrite(t, filepath.Join(d, "bus/pci/devices/0000:01:00.0/class"), class+"\n")
		return d
	}
	run := func(gpu bool, ssd string, env ...string) string {
		t.Helper()
		cmd := exec.Command(script)
		cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "HERD_ROOT="+root, "HERD_SSD="+ssd,
			"HERD_SYSFS="+sysfs(gpu), "GPUS="+smiGPUs, "APPS="+apps)
		cmd.Env = append(cmd.Env, env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return string(out)
	}
	contains := func(out string, want ...string) {
		t.Helper()
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("motd lacks %q:\n%s", w, out)
			}
		}
	}

	out := run(true, "/")
	contains(out, "image generation 8c1d2e3f4a5b",
		"GPUs: 1 of 2 free",
		"GPU 0  NVIDIA GeForce GTX 1080 Ti  97% busy, 10240 of 11264 MiB  in use by "+user+", pid 999999\n",
		"GPU 1  NVIDIA GeForce GTX 1080 Ti  0% busy, 2 of 11264 MiB  free\n",
		"Home:    /home/<you>", "Public:  /media/Public",
		"Scratch: /scratch/<you>, on this node's SSD", "files unused for 30d are removed")
	if strings.Count(out, user) != 1 {
		t.Errorf("a user with two processes on a GPU is named more than once:\n%s", out)
	}

	out = run(false, t.TempDir())
	contains(out, "GPUs: no NVIDIA GPU on this node", "Scratch: none: this node has no SSD")
	if strings.Contains(out, "/scratch/") {
		t.Errorf("a node without SSD points users at scratch:\n%s", out)
	}

	out = run(true, "/", "SMI_FAIL=NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
	contains(out, "GPUs: nvidia-smi failed: NVIDIA-SMI has failed")
	if strings.Contains(out, "free") {
		t.Errorf("GPUs counted free although nvidia-smi failed:\n%s", out)
	}
}

// user-scratch makes <scratch>/<user> (0700, the user's) only when the SSD
// and scratch are mounted, and for no system account. Attack: a link planted
// at a user's scratch path (pointing at /etc, say) must not make root chown
// or chmod its target; the link is replaced by the user's own directory.
func TestUserScratchScript(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "sh", "unshare", "mount", "mountpoint", "getent")
	script := renderScript(t, "ssd-cache", "usr/lib/herd/user-scratch")
	// nobody (65534) is the one account above 1000 every Debian has.
	ent, err := exec.Command("getent", "passwd", "65534").Output()
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Split(strings.TrimSpace(string(ent)), ":")
	name, gid := f[0], f[3]
	run := func(scratch, ssd, uid string) {
		t.Helper()
		// In a mount namespace of its own, scratch is a bind mount as on a node.
		cmd := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c",
			`mount --bind "$1" "$1" && HERD_SCRATCH="$1" HERD_SSD="$2" "$3" "$4"`, "sh", scratch, ssd, script, uid)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("user-scratch %s: %v\n%s", uid, err, out)
		}
	}
	scratch := t.TempDir()
	victim := t.TempDir()
	if err := os.Chmod(victim, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(scratch, name)); err != nil {
		t.Fatal(err)
	}
	run(scratch, "/", "65534")
	fi, err := os.Lstat(filepath.Join(scratch, name))
	if err != nil {
		t.Fatal(err)
	}
	if !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("%s/%s is %v, want a 0700 directory", scratch, name, fi.Mode())
	}
	if uid, g := owner(t, filepath.Join(scratch, name)); uid != "65534" || g != gid {
		t.Errorf("%s/%s owned by %s:%s, want 65534:%s", scratch, name, uid, g, gid)
	}
	if uid, _ := owner(t, victim); uid != "0" {
		t.Errorf("the planted link's target was chowned to %s", uid)
	}
	if vi, _ := os.Stat(victim); vi.Mode().Perm() != 0o755 {
		t.Errorf("the planted link's target was chmodded to %v", vi.Mode().Perm())
	}

	// No SSD (its path is not a mount point): nothing is made.
	empty := t.TempDir()
	run(empty, t.TempDir(), "65534")
	// A system account gets none either.
	run(empty, "/", "100")
	if ents, _ := os.ReadDir(empty); len(ents) != 0 {
		t.Errorf("scratch made without an SSD or for a system account: %v", ents)
	}
}

// owner is a file's numeric uid and gid, as stat prints them.
func owner(t *testing.T, p string) (string, string) {
	t.Helper()
	out, err := exec.Command("stat", "-c", "%u %g", p).Output()
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(out))
	return f[0], f[1]
}

// scratch_dir: none leaves every scratch file out and the motd silent on it.
func TestScratchNone(t *testing.T) {
	cfg, err := site.Load("testdata/site.yaml", []string{"cache.scratch_dir=none"})
	if err != nil {
		t.Fatal(err)
	}
	files, err := Render(cfg, site.AllOverlays)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.Contains(f.Path, "scratch") {
			t.Errorf("/%s rendered with scratch_dir: none", f.Path)
		}
		if f.Path == "etc/update-motd.d/50-herd" && strings.Contains(string(f.Data), "Scratch") {
			t.Errorf("the motd mentions scratch with scratch_dir: none")
		}
	}
	f, ok := find(files, "etc/tmpfiles.d/herd-scratch.conf")
	if ok {
		t.Errorf("tmpfiles rule rendered: %s", f.Data)
	}
	cfg = richSite(t)
	files, _ = Render(cfg, site.AllOverlays)
	if f, ok := find(files, "etc/tmpfiles.d/herd-scratch.conf"); !ok || !strings.Contains(string(f.Data), "e /var/cache/herd/scratch/* - - - 30d") {
		t.Errorf("the scratch age rule is missing or wrong: %q", f.Data)
	}
}
