package build

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var herdOnce struct {
	sync.Once
	path string
	err  error
}

// herdBin is the herd CLI: HERD_BIN when `make test` built it, else built here.
func herdBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("HERD_BIN"); p != "" {
		return p
	}
	herdOnce.Do(func() {
		dir, err := os.MkdirTemp("", "herd-bin-")
		if err != nil {
			herdOnce.err = err
			return
		}
		herdOnce.path = filepath.Join(dir, "herd")
		if out, err := exec.Command("go", "build", "-o", herdOnce.path, "../../cmd/herd").CombinedOutput(); err != nil {
			herdOnce.err = fmt.Errorf("build herd: %v: %s", err, out)
		}
	})
	if herdOnce.err != nil {
		t.Fatal(herdOnce.err)
	}
	return herdOnce.path
}

// killState is a state directory of the kill tests' own: the shared test
// store may gain images from other suites while these tests watch theirs.
// Kept across runs so its stage cache makes later runs quick.
var killState = TestStateDir + "-kill"

// storeSnapshot records every image: manifest bytes and artifact hashes.
func storeSnapshot(t *testing.T) map[string]string {
	t.Helper()
	snap := map[string]string{}
	ents, _ := os.ReadDir(filepath.Join(killState, "images"))
	for _, ent := range ents {
		id := ent.Name()
		dir := filepath.Join(killState, "images", id)
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			f, err := os.Open(filepath.Join(dir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.New()
			io.Copy(h, f)
			f.Close()
			snap[id+"/"+e.Name()] = hex.EncodeToString(h.Sum(nil))
		}
	}
	return snap
}

// startBuild runs `herd image build` as a child process and returns it with
// a channel of its progress lines (stderr is not a terminal: plain lines).
func startBuild(t *testing.T, recipePath string, extra ...string) (*exec.Cmd, <-chan string) {
	t.Helper()
	args := append([]string{"--state", killState, "image", "build", recipePath, "--agent", testAgent(t)}, extra...)
	cmd := exec.Command(herdBin(t), args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	return cmd, lines
}

// waitFor reads lines until one contains want; false if the process ended.
func waitFor(lines <-chan string, want string, seen *[]string) bool {
	for l := range lines {
		*seen = append(*seen, l)
		if strings.Contains(l, want) {
			return true
		}
	}
	return false
}

// leftovers lists mounts and processes still tied to the state directory.
func leftovers() []string {
	var out []string
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(mi), "\n") {
		if strings.Contains(l, killState) {
			out = append(out, "mount: "+l)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		for _, link := range []string{"root", "cwd"} {
			if target, err := os.Readlink(filepath.Join(p, link)); err == nil && strings.HasPrefix(target, killState) {
				cmdline, _ := os.ReadFile(filepath.Join(p, "cmdline"))
				out = append(out, fmt.Sprintf("process %s (%s) %s=%s", filepath.Base(p), strings.ReplaceAll(string(cmdline), "\x00", " "), link, target))
			}
		}
	}
	return out
}

// A `herd image build` killed with SIGKILL at each stage leaves the store
// exactly as it was (same images, same manifests and artifact hashes), no
// mount and no process behind; the next build removes its stale staging
// and still returns the earlier image's ID.
func TestKillAtEachStageLeavesStoreIntact(t *testing.T) {
	needBuild(t)
	base := cliBuild(t)
	before := storeSnapshot(t)
	if _, ok := before[base+"/manifest.json"]; !ok {
		t.Fatalf("baseline image %s not in the store", base)
	}
	for _, stage := range []string{"bootstrap", "packages", "join", "overlays", "initramfs", "pack"} {
		t.Run(stage, func(t *testing.T) {
			r := testRecipe(t, "test-noble-minimal")
			// --rerun makes the stage (and every stage built on it) run
			// although its output is cached; the bootstrap only runs with
			// --no-cache.
			extra := []string{"--rerun", stage}
			if stage == "bootstrap" {
				extra = []string{"--no-cache"}
			}
			cmd, lines := startBuild(t, r.Path, extra...)
			var seen []string
			if !waitFor(lines, "stage "+stage+": started", &seen) {
				cmd.Wait()
				t.Fatalf("build ended before stage %s started:\n%s", stage, strings.Join(seen, "\n"))
			}
			cmd.Process.Signal(syscall.SIGKILL)
			cmd.Wait()
			for range lines {
			}
			// The kernel tears the build's PID and mount namespaces down
			// asynchronously: give it a bounded moment.
			var left []string
			for i := 0; i < 100; i++ {
				if left = leftovers(); len(left) == 0 {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if len(left) > 0 {
				t.Errorf("killed build left behind:\n%s", strings.Join(left, "\n"))
			}
			after := storeSnapshot(t)
			if fmt.Sprint(after) != fmt.Sprint(before) {
				t.Errorf("store changed:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
	// The next build cleans the stale staging and reuses the cache.
	r := testRecipe(t, "test-noble-minimal")
	cmd, lines := startBuild(t, r.Path)
	var seen []string
	waitFor(lines, "\x00never", &seen)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("build after the kills failed: %v\n%s", err, strings.Join(seen, "\n"))
	}
	if ents, _ := os.ReadDir(filepath.Join(killState, "tmp")); len(ents) != 0 {
		t.Errorf("stale staging not removed: %v", ents)
	}
	if after := storeSnapshot(t); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("store changed by the clean rebuild")
	}
}

// cliBuild builds the minimal recipe with the herd CLI into killState and
// returns the image ID it printed.
func cliBuild(t *testing.T) string {
	t.Helper()
	r := testRecipe(t, "test-noble-minimal")
	out, err := exec.Command(herdBin(t), "--state", killState, "image", "build", r.Path, "--agent", testAgent(t)).CombinedOutput()
	if err != nil {
		t.Fatalf("herd image build: %v\n%s", err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if id, ok := strings.CutPrefix(l, "image "); ok {
			return strings.TrimSpace(id)
		}
	}
	t.Fatalf("no image ID in the output:\n%s", out)
	return ""
}

// SIGTERM (and SIGINT) cancel the build: it exits with an error naming its
// log, removes its own staging at once and publishes nothing.
func TestSIGTERMCancelsCleanly(t *testing.T) {
	needBuild(t)
	cliBuild(t)
	before := storeSnapshot(t)
	r := testRecipe(t, "test-noble-minimal")
	cmd, lines := startBuild(t, r.Path, "--set", fmt.Sprintf("post=[\"true sigterm-%d\"]", time.Now().UnixNano()))
	var seen []string
	if !waitFor(lines, "stage pack: started", &seen) { // a new post command reruns join and pack
		t.Fatalf("build ended early:\n%s", strings.Join(seen, "\n"))
	}
	cmd.Process.Signal(syscall.SIGTERM)
	waitFor(lines, "\x00never", &seen)
	err := cmd.Wait()
	if err == nil {
		t.Fatalf("cancelled build exited 0:\n%s", strings.Join(seen, "\n"))
	}
	all := strings.Join(seen, "\n")
	// The tail is at most 20 lines; a build that reused its indices logs fewer.
	if !regexp.MustCompile(`last \d+ lines of ` + regexp.QuoteMeta(filepath.Join(killState, "logs"))).MatchString(all) {
		t.Errorf("failure does not show the kept log:\n%s", all)
	}
	if ents, _ := os.ReadDir(filepath.Join(killState, "tmp")); len(ents) != 0 {
		t.Errorf("cancelled build left staging: %v", ents)
	}
	if left := leftovers(); len(left) > 0 {
		t.Errorf("cancelled build left behind:\n%s", strings.Join(left, "\n"))
	}
	if after := storeSnapshot(t); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("store changed by a cancelled build")
	}
}
