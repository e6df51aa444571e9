package store

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/herdlab/herd/image/manifest"
)

// TestMain doubles as the child process of the kill and multi-process
// tests: with HERD_STORE_CHILD set it publishes one image and exits.
func TestMain(m *testing.M) {
	if mode := os.Getenv("HERD_STORE_CHILD"); mode != "" {
		os.Exit(child(mode))
	}
	os.Exit(m.Run())
}

// child publishes one image into HERD_STORE_DIR. mode is "publish" or
// "stop:<point>", which prints each publish point reached on stdout and
// blocks at <point> until the parent kills it.
func child(mode string) int {
	s, err := Open(os.Getenv("HERD_STORE_DIR"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	stop := strings.TrimPrefix(mode, "stop:")
	hook = func(p string) {
		fmt.Printf("at %s\n", p)
		os.Stdout.Sync()
		if p == stop {
			select {} // wait for SIGKILL
		}
	}
	if id := os.Getenv("HERD_STORE_RM"); id != "" {
		if _, err := s.Remove(context.Background(), id, nil); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		fmt.Println("at done")
		return 0
	}
	unlock, err := s.Lock(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer unlock()
	if _, err := stageAndPublish(s, os.Getenv("HERD_STORE_RECIPE"), 1<<20, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Println("at done")
	return 0
}

// stageAndPublish writes random artifacts of size bytes into a fresh
// staging dir and publishes them; the caller holds the lock.
func stageAndPublish(s *Store, recipe string, size int, stages []string) (string, error) {
	dir, err := s.StagingDir()
	if err != nil {
		return "", err
	}
	for _, a := range Artifacts {
		b := make([]byte, size)
		rand.Read(b)
		if err := os.WriteFile(filepath.Join(dir, a), b, 0o644); err != nil {
			return "", err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "build.log"), []byte("built\n"), 0o644); err != nil {
		return "", err
	}
	m := &manifest.Manifest{Created: time.Now().UTC(), Recipe: recipe, KernelABI: "6.8.0-1-generic",
		NVIDIA: "580.1", Packages: map[string]string{"a": "1"}}
	for i, k := range stages {
		m.Stages = append(m.Stages, manifest.Stage{Name: fmt.Sprintf("s%d", i), Key: k})
	}
	return s.Publish(dir, m)
}

func publish(t *testing.T, s *Store, recipe string, stages ...string) string {
	t.Helper()
	unlock, err := s.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	id, err := stageAndPublish(s, recipe, 4096, stages)
	if err != nil {
		t.Fatal(err)
	}
	// Created has nanosecond precision but keep the order unambiguous.
	time.Sleep(2 * time.Millisecond)
	return id
}

func ids(t *testing.T, s *Store) []string {
	t.Helper()
	imgs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, im := range imgs {
		out = append(out, im.ID)
	}
	sort.Strings(out)
	return out
}

func tmpEntries(t *testing.T, s *Store) []string {
	t.Helper()
	ents, err := os.ReadDir(s.tmpDir())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one containing %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not contain %q", err, p)
		}
	}
}

func TestPublishListGet(t *testing.T) {
	s, err := Open(tempState(t))
	if err != nil {
		t.Fatal(err)
	}
	a := publish(t, s, "one")
	b := publish(t, s, "two")
	imgs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 2 || imgs[0].ID != b || imgs[1].ID != a {
		t.Fatalf("List = %+v, want newest first [%s %s]", imgs, b, a)
	}
	for _, im := range imgs {
		if err := s.Verify(im.ID); err != nil {
			t.Error(err)
		}
		if im.Manifest.ID != im.ID || len(im.Manifest.Artifacts) != 3 {
			t.Errorf("manifest of %s: %+v", im.ID, im.Manifest)
		}
		st, err := os.Stat(im.Dir)
		if err != nil || st.Mode().Perm() != 0o555 {
			t.Errorf("image dir %s mode %v %v, want 0555", im.Dir, st.Mode(), err)
		}
		for _, f := range append(Artifacts, manifest.FileName, "build.log") {
			st, err := os.Stat(filepath.Join(im.Dir, f))
			if err != nil || st.Mode().Perm() != 0o444 {
				t.Errorf("%s/%s: %v %v, want 0444", im.ID, f, st.Mode(), err)
			}
		}
	}
	got, err := s.Get(a[:6])
	if err != nil || got.ID != a {
		t.Errorf("Get(%s) = %v, %v", a[:6], got, err)
	}
	_, err = s.Get("ffffffffffffffff0")
	wantErr(t, err, "ffffffffffffffff0", "not in the store")
	_, err = s.Get("")
	wantErr(t, err, "no image ID")
	_, err = s.Get("../x")
	wantErr(t, err, "not an image ID")
	if ents := tmpEntries(t, s); len(ents) != 0 {
		t.Errorf("tmp not empty after publish: %v", ents)
	}
	if cur, err := s.Current(); cur != "" || err != nil {
		t.Errorf("Current = %q, %v before any promote", cur, err)
	}
}

func TestGetAmbiguousPrefix(t *testing.T) {
	s, _ := Open(tempState(t))
	// Publish until two IDs share their first hex digit (16 values: a few
	// images are enough by the pigeonhole principle).
	byFirst := map[byte][]string{}
	for i := 0; i < 17; i++ {
		id := publish(t, s, "r")
		byFirst[id[0]] = append(byFirst[id[0]], id)
		if len(byFirst[id[0]]) == 2 {
			_, err := s.Get(id[:1])
			wantErr(t, err, "ambiguous", byFirst[id[0]][0], byFirst[id[0]][1])
			return
		}
	}
	t.Fatal("no two IDs share a first digit")
}

func TestPublishSameContentTwice(t *testing.T) {
	s, _ := Open(tempState(t))
	unlock, _ := s.Lock(context.Background())
	defer unlock()
	var dirs []string
	for i := 0; i < 2; i++ {
		d, err := s.StagingDir()
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range Artifacts {
			os.WriteFile(filepath.Join(d, a), []byte("same "+a), 0o644)
		}
		dirs = append(dirs, d)
	}
	id1, err := s.Publish(dirs[0], &manifest.Manifest{Recipe: "x"})
	if err != nil {
		t.Fatal(err)
	}
	id2, err := s.Publish(dirs[1], &manifest.Manifest{Recipe: "x"})
	if err != nil || id2 != id1 {
		t.Fatalf("second publish: %s, %v; want %s", id2, err, id1)
	}
	if _, err := os.Stat(dirs[1]); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("staging of the duplicate not discarded: %v", err)
	}
}

func TestPublishMissingArtifact(t *testing.T) {
	s, _ := Open(tempState(t))
	d, _ := s.StagingDir()
	os.WriteFile(filepath.Join(d, manifest.Kernel), []byte("k"), 0o644)
	_, err := s.Publish(d, &manifest.Manifest{})
	wantErr(t, err, "initrd.img", "missing")
	if got := ids(t, s); len(got) != 0 {
		t.Errorf("images after failed publish: %v", got)
	}
}

func TestPromoteRollback(t *testing.T) {
	ctx := context.Background()
	s, _ := Open(tempState(t))
	_, err := s.Rollback(ctx)
	wantErr(t, err, "no image is current")
	a := publish(t, s, "a")
	b := publish(t, s, "b")
	c := publish(t, s, "c")
	_, err = s.Promote(ctx, "0000000000000000", false)
	wantErr(t, err, "0000000000000000", "not in the store")
	for _, id := range []string{a, b, c} {
		got, err := s.Promote(ctx, id[:8], false)
		if err != nil || got != id {
			t.Fatalf("promote %s = %s, %v", id, got, err)
		}
	}
	if h, _ := s.History(); !reflect.DeepEqual(h, []string{a, b}) {
		t.Errorf("history = %v, want [%s %s]", h, a, b)
	}
	imgs, _ := s.List()
	for _, im := range imgs {
		if im.Current != (im.ID == c) {
			t.Errorf("%s Current=%v", im.ID, im.Current)
		}
	}
	if got, err := s.Rollback(ctx); err != nil || got != b {
		t.Fatalf("rollback = %s, %v; want %s", got, err, b)
	}
	if cur, _ := s.Current(); cur != b {
		t.Errorf("current after rollback = %s", cur)
	}
	if got, err := s.Rollback(ctx); err != nil || got != a {
		t.Fatalf("second rollback = %s, %v; want %s", got, err, a)
	}
	_, err = s.Rollback(ctx)
	wantErr(t, err, "no previously current image", a)
	// Promoting the current image again changes nothing.
	if _, err := s.Promote(ctx, a, false); err != nil {
		t.Fatal(err)
	}
	if h, _ := s.History(); len(h) != 0 {
		t.Errorf("history after re-promoting current = %v", h)
	}
}

func TestRollbackSkipsRemoved(t *testing.T) {
	ctx := context.Background()
	s, _ := Open(tempState(t))
	a, b, c := publish(t, s, "a"), publish(t, s, "b"), publish(t, s, "c")
	for _, id := range []string{a, b, c} {
		if _, err := s.Promote(ctx, id, false); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Remove(ctx, b, nil); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Rollback(ctx); err != nil || got != a {
		t.Fatalf("rollback = %s, %v; want %s (b was removed)", got, err, a)
	}
}

func TestRemoveRefusals(t *testing.T) {
	ctx := context.Background()
	s, _ := Open(tempState(t))
	a, b, c := publish(t, s, "a"), publish(t, s, "b"), publish(t, s, "c")
	if _, err := s.Promote(ctx, a, false); err != nil {
		t.Fatal(err)
	}
	_, err := s.Remove(ctx, a, nil)
	wantErr(t, err, a, "current image")
	_, err = s.Remove(ctx, b, []string{"", b[:5]})
	wantErr(t, err, b, "pinned")
	_, err = s.Remove(ctx, "deadbeefdeadbeef", nil)
	wantErr(t, err, "deadbeefdeadbeef", "not in the store")
	if err := s.RecordTest(c, TestResult{Passed: true}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Remove(ctx, c[:7], []string{b}); err != nil || got != c {
		t.Fatalf("rm %s = %s, %v", c, got, err)
	}
	if got := ids(t, s); !reflect.DeepEqual(got, sortedOf(a, b)) {
		t.Errorf("after rm: %v", got)
	}
	if r, err := s.TestResult(c); r != nil || err != nil {
		t.Errorf("test result of removed image kept: %v %v", r, err)
	}
	if ents := tmpEntries(t, s); len(ents) != 0 {
		t.Errorf("tmp after rm: %v", ents)
	}
}

// sortedOf returns a sorted copy (callers pass slices they still use).
func sortedOf(x ...string) []string {
	x = append([]string(nil), x...)
	sort.Strings(x)
	return x
}

func TestRequireTest(t *testing.T) {
	ctx := context.Background()
	s, _ := Open(tempState(t))
	a := publish(t, s, "a")
	_, err := s.Promote(ctx, a, true)
	wantErr(t, err, a, "no test result")
	if err := s.RecordTest(a[:4], TestResult{Passed: false, Summary: "node1 did not reach multi-user"}); err != nil {
		t.Fatal(err)
	}
	_, err = s.Promote(ctx, a, true)
	wantErr(t, err, a, "failed", "node1 did not reach multi-user")
	if cur, _ := s.Current(); cur != "" {
		t.Fatalf("refused promote changed current to %s", cur)
	}
	if err := s.RecordTest(a, TestResult{Passed: true, Summary: "ok"}); err != nil {
		t.Fatal(err)
	}
	r, err := s.TestResult(a)
	if err != nil || r == nil || !r.Passed || r.Image != a || r.Time.IsZero() {
		t.Fatalf("TestResult = %+v, %v", r, err)
	}
	if _, err := s.Promote(ctx, a, true); err != nil {
		t.Fatal(err)
	}
	err = s.RecordTest("0123456789abcdef", TestResult{Passed: true})
	wantErr(t, err, "0123456789abcdef", "not in the store")
}

func writeBlocks(t *testing.T, p string, blocks int) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, blocks*4096)
	rand.Read(b)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestGC(t *testing.T) {
	ctx := context.Background()
	state := tempState(t)
	s, _ := Open(state)
	stages := filepath.Join(state, "stages")
	writeBlocks(t, filepath.Join(stages, "keep1", "out", "f"), 4)
	writeBlocks(t, filepath.Join(stages, "keep2", "f"), 4)
	writeBlocks(t, filepath.Join(stages, "orphan", "root", "big"), 64)
	writeBlocks(t, filepath.Join(stages, "linked", "vmlinuz"), 16)

	old := publish(t, s, "old", "orphan-not-kept")
	prev := publish(t, s, "prev", "keep1")
	pinned := publish(t, s, "pinned", "keep2")
	mid := publish(t, s, "mid", "linked")
	cur := publish(t, s, "cur", "keep1")
	newest := publish(t, s, "newest")
	// The "linked" stage's file is hard-linked from mid's image too, like
	// the builder's artifacts: dropping only the stage frees nothing.
	os.Link(filepath.Join(stages, "linked", "vmlinuz"), filepath.Join(state, "tmp", "..", "images", mid, "extra-link"))
	for _, id := range []string{prev, cur} {
		if _, err := s.Promote(ctx, id, false); err != nil {
			t.Fatal(err)
		}
	}
	writeBlocks(t, filepath.Join(state, "tmp", "staging-killed", "rootfs.squashfs"), 8)

	_, err := s.GC(ctx, -1, nil)
	wantErr(t, err, "keep")
	rep, err := s.GC(ctx, 1, []string{pinned[:6]})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := sortedOf(rep.Images...), sortedOf(old, mid); !reflect.DeepEqual(got, want) {
		t.Errorf("gc removed images %v, want %v (old and mid)", got, want)
	}
	if got := ids(t, s); !reflect.DeepEqual(got, sortedOf(prev, pinned, cur, newest)) {
		t.Errorf("left %v", got)
	}
	if got, want := sortedOf(rep.Stages...), []string{"linked", "orphan"}; !reflect.DeepEqual(got, want) {
		t.Errorf("gc removed stages %v, want %v", got, want)
	}
	if !reflect.DeepEqual(rep.Staging, []string{"staging-killed"}) {
		t.Errorf("gc removed staging %v", rep.Staging)
	}
	for _, k := range []string{"keep1", "keep2"} {
		if _, err := os.Stat(filepath.Join(stages, k)); err != nil {
			t.Errorf("kept stage %s: %v", k, err)
		}
	}
	// Freed at least: orphan 64 blocks + linked 16 (its last links go with
	// mid and the stage) + staging 8 + two images' 5 files of 4096.
	min := int64((64 + 16 + 8 + 2*5) * 4096)
	if rep.BytesFreed < min || rep.BytesFreed > min+64*4096 {
		t.Errorf("bytes freed %d, want about %d", rep.BytesFreed, min)
	}
	for _, id := range []string{prev, pinned, cur, newest} {
		if err := s.Verify(id); err != nil {
			t.Error(err)
		}
	}
	// Again: nothing else goes (keep 0 still keeps current, previous, pinned).
	rep, err = s.GC(ctx, 0, []string{pinned})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rep.Images, []string{newest}) {
		t.Errorf("gc keep 0 removed %v, want only %s", rep.Images, newest)
	}
}

func TestGCCountsSharedLinksOnce(t *testing.T) {
	state := tempState(t)
	s, _ := Open(state)
	writeBlocks(t, filepath.Join(state, "stages", "shared", "f"), 10)
	id := publish(t, s, "x", "shared")
	os.Link(filepath.Join(state, "stages", "shared", "f"), filepath.Join(state, "images", id, "f"))
	publish(t, s, "y")
	rep, err := s.GC(context.Background(), 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The image (3 artifacts, manifest, log: 5 x 4096) and its shared stage
	// (10 x 4096) both go: each inode counted once.
	if want := int64(15 * 4096); rep.BytesFreed != want {
		t.Errorf("freed %d, want %d", rep.BytesFreed, want)
	}
}

func TestLockHonoursCancel(t *testing.T) {
	s, _ := Open(tempState(t))
	unlock, err := s.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	_, err = s.Lock(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock while held: %v, want context.Canceled", err)
	}
	// A mutation waits for the lock, too.
	ctx2, cancel2 := context.WithCancel(context.Background())
	cancel2()
	_, err = s.GC(ctx2, 1, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("GC while locked: %v", err)
	}
	unlock()
	u2, err := s.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	u2()
}

func TestOpenKeepsTmpWhileLocked(t *testing.T) {
	state := tempState(t)
	s, _ := Open(state)
	unlock, _ := s.Lock(context.Background())
	d, _ := s.StagingDir()
	if _, err := Open(state); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d); err != nil {
		t.Fatalf("Open removed a live staging dir while the lock was held: %v", err)
	}
	unlock()
	if _, err := Open(state); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Open kept a stale staging dir: %v", err)
	}
}

func TestConcurrentPublishAndGC(t *testing.T) {
	ctx := context.Background()
	state := tempState(t)
	s, _ := Open(state)
	base := publish(t, s, "base")
	if _, err := s.Promote(ctx, base, false); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	published := make(chan string, 64)
	// Goroutines in this process...
	for g := 0; g < 3; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 4; i++ {
				unlock, err := s.Lock(ctx)
				if err != nil {
					errs <- err
					return
				}
				id, err := stageAndPublish(s, "g", 64<<10, nil)
				unlock()
				if err != nil {
					errs <- err
					return
				}
				published <- id
			}
		}()
	}
	// ...other processes publishing...
	for p := 0; p < 3; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "HERD_STORE_CHILD=publish", "HERD_STORE_DIR="+state, "HERD_STORE_RECIPE=proc")
			out, err := cmd.Output()
			if err != nil {
				errs <- fmt.Errorf("child: %v %s", err, out)
			}
		}()
	}
	// ...and a gc keeping everything but running in between.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 5; i++ {
			if _, err := s.GC(ctx, 1000, nil); err != nil {
				errs <- err
			}
		}
	}()
	wg.Wait()
	close(errs)
	close(published)
	for err := range errs {
		t.Error(err)
	}
	imgs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 1+12+3 {
		t.Errorf("%d images, want 16", len(imgs))
	}
	for _, im := range imgs {
		if err := s.Verify(im.ID); err != nil {
			t.Error(err)
		}
	}
	for id := range published {
		if _, err := s.Get(id); err != nil {
			t.Error(err)
		}
	}
	if ents := tmpEntries(t, s); len(ents) != 0 {
		t.Errorf("tmp after concurrent publishes: %v", ents)
	}
	// Concurrent gc with keep 1 and promotes: current, pinned survive.
	rep, err := s.GC(ctx, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Images) != 14 {
		t.Errorf("gc removed %d images, want 14", len(rep.Images))
	}
	if _, err := s.Get(base); err != nil {
		t.Errorf("current image removed by gc: %v", err)
	}
}

// TestKilledPublish kills a publishing process at each step and checks
// the store still lists exactly the earlier images, byte for byte intact
// (or, once the rename happened, those plus the complete new one).
func TestKilledPublish(t *testing.T) {
	state := tempState(t)
	s, _ := Open(state)
	earlier := []string{publish(t, s, "a"), publish(t, s, "b")}
	if _, err := s.Promote(context.Background(), earlier[0], false); err != nil {
		t.Fatal(err)
	}
	sums := map[string]map[string]manifest.Artifact{}
	for _, id := range earlier {
		im, _ := s.Get(id)
		sums[id] = im.Manifest.Artifacts
	}
	for _, point := range []string{"hashed", "manifest", "synced", "renamed"} {
		t.Run(point, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "HERD_STORE_CHILD=stop:"+point, "HERD_STORE_DIR="+state, "HERD_STORE_RECIPE=killed-"+point)
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			sc := bufio.NewScanner(out)
			reached := false
			for sc.Scan() {
				if sc.Text() == "at "+point {
					reached = true
					break
				}
			}
			cmd.Process.Signal(syscall.SIGKILL)
			cmd.Wait()
			if !reached {
				t.Fatalf("child never reached %s", point)
			}
			s, err := Open(state) // cleans the killed build's staging
			if err != nil {
				t.Fatal(err)
			}
			if ents := tmpEntries(t, s); len(ents) != 0 {
				t.Errorf("stale staging left after Open: %v", ents)
			}
			imgs, err := s.List()
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, im := range imgs {
				if err := s.Verify(im.ID); err != nil {
					t.Error(err)
				}
				if want, ok := sums[im.ID]; ok {
					if !reflect.DeepEqual(im.Manifest.Artifacts, want) {
						t.Errorf("image %s changed: %v -> %v", im.ID, want, im.Manifest.Artifacts)
					}
					got = append(got, im.ID)
				} else if point != "renamed" || im.Manifest.Recipe != "killed-renamed" {
					t.Errorf("unexpected image %s (%s) after a kill at %s", im.ID, im.Manifest.Recipe, point)
				}
			}
			if !reflect.DeepEqual(sortedOf(got...), sortedOf(earlier...)) {
				t.Errorf("earlier images now %v, want %v", got, earlier)
			}
			if cur, _ := s.Current(); cur != earlier[0] {
				t.Errorf("current changed to %s, was %s", cur, earlier[0])
			}
		})
	}
}

// TestKilledRemove kills `rm` right after it moved the image out of
// images/: the image is gone whole, the others are intact, and the next
// Open clears the leftovers.
func TestKilledRemove(t *testing.T) {
	state := tempState(t)
	s, _ := Open(state)
	keep, gone := publish(t, s, "keep"), publish(t, s, "gone")
	before, _ := s.Get(keep)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "HERD_STORE_CHILD=stop:rm-renamed", "HERD_STORE_DIR="+state, "HERD_STORE_RM="+gone)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	reached := false
	for sc.Scan() {
		if sc.Text() == "at rm-renamed" {
			reached = true
			break
		}
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if !reached {
		t.Fatal("child never reached rm-renamed")
	}
	if ents := tmpEntries(t, s); len(ents) != 1 {
		t.Fatalf("tmp before Open: %v, want the half-removed image", ents)
	}
	s, err = Open(state)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(t, s); !reflect.DeepEqual(got, []string{keep}) {
		t.Errorf("images %v, want [%s]", got, keep)
	}
	if err := s.Verify(keep); err != nil {
		t.Error(err)
	}
	after, _ := s.Get(keep)
	if !reflect.DeepEqual(before.Manifest.Artifacts, after.Manifest.Artifacts) {
		t.Error("kept image changed")
	}
	if ents := tmpEntries(t, s); len(ents) != 0 {
		t.Errorf("tmp after Open: %v", ents)
	}
}

func TestListSkipsBrokenImage(t *testing.T) {
	state := tempState(t)
	s, _ := Open(state)
	good := publish(t, s, "good")
	os.MkdirAll(filepath.Join(state, "images", "0123456789abcdef"), 0o755)
	os.WriteFile(filepath.Join(state, "images", "0123456789abcdef", manifest.FileName), []byte("{not json"), 0o644)
	os.WriteFile(filepath.Join(state, "images", "stray-file"), nil, 0o644)
	if got := ids(t, s); !reflect.DeepEqual(got, []string{good}) {
		t.Errorf("List = %v, want only %s", got, good)
	}
	_, err := s.Get("0123456789abcdef")
	wantErr(t, err, "0123456789abcdef", "not in the store")
}

// tempState is a state dir for one test; published images are read-only
// (0555 dirs), so without root the cleanup first makes them writable.
func tempState(t *testing.T) string {
	d := t.TempDir()
	t.Cleanup(func() {
		filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				os.Chmod(p, 0o755)
			}
			return nil
		})
	})
	return d
}

// The boot server resolves the current image on every /boot/ and /images/
// request through a fresh ReadOnly view; published images never change, so
// their manifests are read from disk once, and again only for a new or
// re-published image. Promote, rollback and remove show at once.
func TestListReadsEachManifestOnce(t *testing.T) {
	state := tempState(t)
	s, err := Open(state)
	if err != nil {
		t.Fatal(err)
	}
	a := publish(t, s, "one")
	b := publish(t, s, "two")
	c := publish(t, s, "three")
	before := manifestReads.Load()
	request := func() *Image { // what httpboot does per request
		t.Helper()
		v := ReadOnly(state)
		cur, err := v.Current()
		if err != nil {
			t.Fatal(err)
		}
		if cur == "" {
			cur = a
		}
		im, err := v.Get(cur)
		if err != nil {
			t.Fatal(err)
		}
		return im
	}
	for range 50 {
		request()
	}
	if n := manifestReads.Load() - before; n > 3 {
		t.Fatalf("50 requests over 3 images read %d manifests from disk, want at most 3", n)
	}
	if _, err := s.Promote(t.Context(), b, false); err != nil {
		t.Fatal(err)
	}
	if im := request(); im.ID != b || !im.Current {
		t.Fatalf("after promote the request resolves %s (current %v), want %s", im.ID, im.Current, b)
	}
	if _, err := s.Remove(t.Context(), c, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadOnly(state).Get(c); err == nil {
		t.Fatalf("removed image %s still listed", c)
	}
	mid := manifestReads.Load()
	d := publish(t, s, "four")
	if _, err := s.Promote(t.Context(), d, false); err != nil {
		t.Fatal(err)
	}
	if im := request(); im.ID != d || im.Manifest.Recipe != "four" {
		t.Fatalf("after publishing and promoting %s the request resolves %s (%s)", d, im.ID, im.Manifest.Recipe)
	}
	if n := manifestReads.Load() - mid; n != 1 {
		t.Fatalf("a new image cost %d manifest reads, want 1", n)
	}
	// The same ID published again after removal (same artifacts, another
	// manifest) is a new manifest file: it is read again.
	same := func(recipe string) string {
		t.Helper()
		unlock, err := s.Lock(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		defer unlock()
		dir, err := s.StagingDir()
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range Artifacts {
			if err := os.WriteFile(filepath.Join(dir, a), []byte("fixed "+a), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		id, err := s.Publish(dir, &manifest.Manifest{Created: time.Now().UTC(), Recipe: recipe})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	e := same("first")
	if im, err := ReadOnly(state).Get(e); err != nil || im.Manifest.Recipe != "first" {
		t.Fatalf("image %s: %+v %v", e, im, err)
	}
	if _, err := s.Remove(t.Context(), e, nil); err != nil {
		t.Fatal(err)
	}
	if e2 := same("second"); e2 != e {
		t.Fatalf("same artifacts gave IDs %s and %s", e, e2)
	}
	if im, err := ReadOnly(state).Get(e); err != nil || im.Manifest.Recipe != "second" {
		t.Fatalf("re-published image %s still shows the old manifest: %+v %v", e, im, err)
	}
}
