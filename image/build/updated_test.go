package build

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/squashfs"
)

// needsUpdate is systemd's ConditionNeedsUpdate= test (condition.c, v255)
// as it reads a tree whose filesystem keeps only seconds, like the node's
// squashfs: whole seconds first, then the stamp file's TIMESTAMP_NSEC.
func needsUpdate(t *testing.T, root, dir string) bool {
	t.Helper()
	usr, err := os.Lstat(filepath.Join(root, "usr"))
	if err != nil {
		t.Fatal(err)
	}
	stamp := filepath.Join(root, dir, ".updated")
	st, err := os.Lstat(stamp)
	if err != nil {
		return true
	}
	us, ss := usr.ModTime().Unix(), st.ModTime().Unix() // squashfs: seconds
	if us != ss {
		return us > ss
	}
	b, err := os.ReadFile(stamp)
	if err != nil {
		t.Fatal(err)
	}
	ns, ok := stampNsec(string(b))
	if !ok {
		return true // systemd: no timestamp in the file, so update
	}
	return us*int64(time.Second) > ns
}

// stampNsec is the TIMESTAMP_NSEC a stamp file holds, false if none.
func stampNsec(content string) (int64, bool) {
	m := regexp.MustCompile(`(?m)^TIMESTAMP_NSEC=(\d+)$`).FindStringSubmatch(content)
	if m == nil {
		return 0, false
	}
	ns, err := strconv.ParseInt(m[1], 10, 64)
	return ns, err == nil
}

func TestStampUpdated(t *testing.T) {
	root := t.TempDir()
	usrTime := time.Date(2026, 11, 2, 10, 4, 5, 123456789, time.UTC)
	etcTime := time.Date(2026, 11, 2, 9, 0, 0, 5, time.UTC)
	for _, d := range []string{"usr", "etc", "var"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chtimes(filepath.Join(root, "usr"), usrTime, usrTime); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"etc", "var"} {
		if err := os.Chtimes(filepath.Join(root, d), etcTime, etcTime); err != nil {
			t.Fatal(err)
		}
		if !needsUpdate(t, root, d) {
			t.Fatalf("/%s without a stamp: systemd would not rerun its update units; the test's model is wrong", d)
		}
	}
	rootTime := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	if err := os.Chtimes(root, rootTime, rootTime); err != nil {
		t.Fatal(err)
	}
	if err := StampUpdated(root); err != nil {
		t.Fatal(err)
	}
	if ri, err := os.Lstat(root); err != nil || !ri.ModTime().Equal(rootTime) {
		t.Errorf("/: mtime %v (%v) after stamping, want it kept at %v", ri.ModTime(), err, rootTime)
	}
	for _, d := range []string{"etc", "var"} {
		if needsUpdate(t, root, d) {
			t.Errorf("/%s/.updated: systemd would still rerun the update units", d)
		}
		st, err := os.Lstat(filepath.Join(root, d, ".updated"))
		if err != nil {
			t.Fatal(err)
		}
		if !st.ModTime().Equal(usrTime) || st.Mode().Perm() != 0o644 {
			t.Errorf("/%s/.updated: mtime %v mode %v, want /usr's %v and 0644", d, st.ModTime(), st.Mode(), usrTime)
		}
		di, err := os.Lstat(filepath.Join(root, d))
		if err != nil {
			t.Fatal(err)
		}
		if !di.ModTime().Equal(etcTime) {
			t.Errorf("/%s: mtime %v after stamping, want it kept at %v", d, di.ModTime(), etcTime)
		}
	}
	// A /usr newer than the stamps (a later layer changed it) needs an
	// update again: the stamps say exactly what they were made from.
	later := usrTime.Add(2 * time.Second)
	if err := os.Chtimes(filepath.Join(root, "usr"), later, later); err != nil {
		t.Fatal(err)
	}
	if !needsUpdate(t, root, "etc") {
		t.Error("a /usr newer than /etc/.updated does not need an update: the stamp is too late")
	}
}

func TestStampUpdatedNoUsr(t *testing.T) {
	root := t.TempDir()
	err := StampUpdated(root)
	if err == nil || !regexp.MustCompile(`stat /usr`).MatchString(err.Error()) {
		t.Fatalf("StampUpdated on a tree without /usr: %v, want an error naming /usr", err)
	}
}

// checkUpdateStamps reads a built rootfs.squashfs (go-diskfs) and fails
// unless /etc/.updated and /var/.updated say what systemd needs to skip
// its update units on a node: dated /usr's second, TIMESTAMP_NSEC not
// before it.
func checkUpdateStamps(t *testing.T, sq string) {
	t.Helper()
	f, err := os.Open(sq)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	fsys, err := squashfs.Read(file.New(f, true), fi.Size(), 0, 0)
	if err != nil {
		t.Fatalf("go-diskfs cannot read %s: %v", sq, err)
	}
	mtime := func(dir, name string) (time.Time, bool) {
		ents, err := fsys.ReadDir(dir)
		if err != nil {
			t.Fatalf("%s: read %s: %v", sq, dir, err)
		}
		for _, e := range ents {
			if e.Name() == name {
				info, err := e.Info()
				if err != nil {
					t.Fatal(err)
				}
				return info.ModTime(), true
			}
		}
		return time.Time{}, false
	}
	// go-diskfs names the root "." and other paths without a leading slash.
	usr, ok := mtime(".", "usr")
	if !ok {
		t.Fatalf("%s has no /usr", sq)
	}
	for _, d := range []string{"etc", "var"} {
		st, ok := mtime(d, ".updated")
		if !ok {
			t.Errorf("/%s/.updated is missing from the image: every boot would rerun ldconfig", d)
			continue
		}
		ns, _ := stampNsec(unsquashCat(t, sq, d+"/.updated"))
		if st.Unix() != usr.Unix() || ns/int64(time.Second) != usr.Unix() {
			t.Errorf("/%s/.updated: mtime %v, TIMESTAMP_NSEC %d; the image's /usr is from %v", d, st, ns, usr)
		}
	}
}
