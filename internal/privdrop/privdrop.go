// Package privdrop is how `herd serve` stops being root once its
// privileged sockets are bound: it switches the whole process (every
// thread: Go's syscall.Setuid/Setgid/Setgroups apply to all threads on
// Linux since Go 1.16) to an unprivileged user, which also empties its
// permitted, effective and ambient capabilities, then checks /proc that it
// worked. No cgo is needed.
package privdrop

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Target is the user to run as.
type Target struct {
	Name     string
	UID, GID int
}

// Lookup resolves a user name (or a numeric uid) to its uid and primary gid.
func Lookup(name string) (Target, error) {
	u, err := user.Lookup(name)
	if err != nil {
		if _, nerr := strconv.Atoi(name); nerr == nil {
			u, err = user.LookupId(name)
		}
	}
	if err != nil {
		return Target{}, fmt.Errorf("user %q: %w (create it, e.g. adduser --system --group %s)", name, err, name)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return Target{}, fmt.Errorf("user %q: non-numeric uid %q or gid %q", name, u.Uid, u.Gid)
	}
	if uid == 0 {
		return Target{}, fmt.Errorf("user %q is root: name an unprivileged user", name)
	}
	return Target{Name: u.Username, UID: uid, GID: gid}, nil
}

// Owner is the uid owning path.
func Owner(path string) (int, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("%s: no owner information", path)
	}
	return int(sys.Uid), nil
}

// Drop switches every thread of the process to t (supplementary groups
// just t.GID), then verifies it in /proc: all threads run as t with no
// capabilities. An error means the process must not go on serving.
func Drop(t Target) error {
	if t.UID == 0 {
		return errors.New("privdrop: refusing to drop to uid 0")
	}
	if err := syscall.Setgroups([]int{t.GID}); err != nil {
		return fmt.Errorf("privdrop: setgroups: %w", err)
	}
	if err := syscall.Setgid(t.GID); err != nil {
		return fmt.Errorf("privdrop: setgid %d: %w", t.GID, err)
	}
	if err := syscall.Setuid(t.UID); err != nil {
		return fmt.Errorf("privdrop: setuid %d: %w", t.UID, err)
	}
	// Getting root back must fail now.
	if err := syscall.Setuid(0); err == nil {
		return errors.New("privdrop: setuid(0) succeeded after the drop")
	}
	return Verify(t)
}

// Verify checks every thread of this process (/proc/self/task/*/status):
// real, effective, saved and file-system uid and gid are t's, and the
// inheritable, permitted, effective and ambient capability sets are empty.
func Verify(t Target) error {
	tasks, err := filepath.Glob("/proc/self/task/*/status")
	if err != nil || len(tasks) == 0 {
		return fmt.Errorf("privdrop: no /proc/self/task: %v", err)
	}
	for _, p := range tasks {
		st, err := ReadStatus(p)
		if err != nil {
			return err
		}
		if err := st.Unprivileged(t.UID, t.GID); err != nil {
			return fmt.Errorf("privdrop: thread %s: %w", filepath.Base(filepath.Dir(p)), err)
		}
	}
	return nil
}

// Status is what /proc/<pid>/status says about identity and capabilities.
type Status struct {
	UID, GID                       [4]int // real, effective, saved, fs
	CapInh, CapPrm, CapEff, CapAmb uint64
	CapBnd                         uint64
	NoNewPrivs                     bool
}

// ReadStatus parses a /proc/<pid>/status (or task status) file.
func ReadStatus(path string) (Status, error) {
	var s Status
	f, err := os.Open(path)
	if err != nil {
		return s, fmt.Errorf("privdrop: %w", err)
	}
	defer f.Close()
	seen := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		switch k {
		case "Uid", "Gid":
			if len(fields) != 4 {
				return s, fmt.Errorf("privdrop: %s: bad %s line", path, k)
			}
			dst := &s.UID
			if k == "Gid" {
				dst = &s.GID
			}
			for i, x := range fields {
				n, err := strconv.Atoi(x)
				if err != nil {
					return s, fmt.Errorf("privdrop: %s: %s: %w", path, k, err)
				}
				dst[i] = n
			}
			seen++
		case "CapInh", "CapPrm", "CapEff", "CapAmb", "CapBnd":
			if len(fields) != 1 {
				return s, fmt.Errorf("privdrop: %s: bad %s line", path, k)
			}
			n, err := strconv.ParseUint(fields[0], 16, 64)
			if err != nil {
				return s, fmt.Errorf("privdrop: %s: %s: %w", path, k, err)
			}
			switch k {
			case "CapInh":
				s.CapInh = n
			case "CapPrm":
				s.CapPrm = n
			case "CapEff":
				s.CapEff = n
			case "CapAmb":
				s.CapAmb = n
			case "CapBnd":
				s.CapBnd = n
			}
			seen++
		case "NoNewPrivs":
			s.NoNewPrivs = len(fields) == 1 && fields[0] == "1"
		}
	}
	if err := sc.Err(); err != nil {
		return s, fmt.Errorf("privdrop: %s: %w", path, err)
	}
	if seen < 7 {
		return s, fmt.Errorf("privdrop: %s: Uid, Gid or Cap lines missing", path)
	}
	return s, nil
}

// Unprivileged reports an error unless every uid is uid, every gid is gid
// and no capability is held (inheritable, permitted, effective, ambient).
func (s Status) Unprivileged(uid, gid int) error {
	for i, u := range s.UID {
		if u != uid {
			return fmt.Errorf("uid %v, want %d everywhere (index %d)", s.UID, uid, i)
		}
	}
	for _, g := range s.GID {
		if g != gid {
			return fmt.Errorf("gid %v, want %d everywhere", s.GID, gid)
		}
	}
	if s.CapInh|s.CapPrm|s.CapEff|s.CapAmb != 0 {
		return fmt.Errorf("capabilities left: inheritable %x permitted %x effective %x ambient %x", s.CapInh, s.CapPrm, s.CapEff, s.CapAmb)
	}
	return nil
}
