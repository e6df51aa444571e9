package build

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// inMountNS runs fn on a fresh OS thread that has its own private mount
// namespace. Every mount fn makes (overlay layers, proc, sys, dev, the .deb
// cache) lives only in that namespace: it vanishes when the thread exits,
// also when herd is killed with SIGKILL, so no build can leave a mount
// behind on the host. Commands started from fn inherit the namespace because
// Go forks from the calling thread, which stays locked to this goroutine.
func inMountNS(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the runtime then ends the thread with the goroutine,
		// taking the namespace (and its mounts) with it.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNS | unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare mount namespace: %w", err)
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			errc <- fmt.Errorf("make mounts private: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// mounts records mounts made in a namespace so they are undone in reverse.
type mounts struct {
	points []string
	remove []string // files lent to the tree for the build, removed after
}

func (m *mounts) mount(src, target, fstype string, flags uintptr, data string) error {
	if err := unix.Mount(src, target, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s (%s): %w", src, target, fstype, err)
	}
	m.points = append(m.points, target)
	return nil
}

// unmountAll undoes every mount, newest first; a busy mount is detached.
func (m *mounts) unmountAll() error {
	var errs []error
	// Lent files first, while the tree they were put in is still mounted.
	for _, p := range m.remove {
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
		}
	}
	m.remove = nil
	for i := len(m.points) - 1; i >= 0; i-- {
		if err := unix.Unmount(m.points[i], 0); err != nil {
			if err2 := unix.Unmount(m.points[i], unix.MNT_DETACH); err2 != nil {
				errs = append(errs, fmt.Errorf("unmount %s: %w", m.points[i], err))
			}
		}
	}
	m.points = nil
	return errors.Join(errs...)
}

// overlay mounts the layers (top first) at merged; with upper == "" the
// result is read-only.
func (m *mounts) overlay(layers []string, upper, work, merged string) error {
	opts := "lowerdir=" + strings.Join(layers, ":")
	var flags uintptr
	if upper != "" {
		opts += ",upperdir=" + upper + ",workdir=" + work
	} else {
		flags = unix.MS_RDONLY
		if len(layers) == 1 {
			// overlayfs needs two lower layers without an upper: bind instead.
			return m.mount(layers[0], merged, "", unix.MS_BIND|unix.MS_RDONLY, "")
		}
	}
	return m.mount("overlay", merged, "overlay", flags, opts)
}

// chrootMounts gives a tree what package scripts expect: /proc, /sys, /dev,
// /dev/pts, an empty /run and working name resolution.
func (m *mounts) chrootMounts(root string) error {
	if err := m.mount("proc", filepath.Join(root, "proc"), "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return err
	}
	if err := m.mount("sysfs", filepath.Join(root, "sys"), "sysfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return err
	}
	if err := m.mount("/dev", filepath.Join(root, "dev"), "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return err
	}
	// /run is a tmpfs on a booted node; files left there must not land in the image.
	if err := os.MkdirAll(filepath.Join(root, "run"), 0o755); err != nil {
		return fmt.Errorf("mkdir run: %w", err)
	}
	if err := m.mount("tmpfs", filepath.Join(root, "run"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
		return err
	}
	return resolvConf(m, root)
}

// resolvConf lets apt in the chroot resolve the archive's name with the
// host's resolver. Ubuntu's /etc/resolv.conf is a symlink into /run (the
// systemd-resolved stub), which is our tmpfs: write the host's file there.
// A regular file gets the host's file bind-mounted over it (never edited).
func resolvConf(m *mounts, root string) error {
	host, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return nil // no resolver on the host: a file:// mirror still works
	}
	p := filepath.Join(root, "etc/resolv.conf")
	fi, err := os.Lstat(p)
	switch {
	case err == nil && fi.Mode()&os.ModeSymlink != 0:
		target, err := os.Readlink(p)
		if err != nil {
			return fmt.Errorf("read link %s: %w", p, err)
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join("/etc", target)
		}
		if !strings.HasPrefix(filepath.Clean(target), "/run/") {
			return nil
		}
		full := filepath.Join(root, filepath.Clean(target))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return fmt.Errorf("resolv.conf: %w", err)
		}
		return os.WriteFile(full, host, 0o644)
	case err == nil && fi.Mode().IsRegular():
		return m.mount("/etc/resolv.conf", p, "", unix.MS_BIND|unix.MS_RDONLY, "")
	case os.IsNotExist(err):
		// The image has none (nodes get one from DHCP): lend the host's for
		// the build and take it away again before the layer is kept.
		if err := os.WriteFile(p, host, 0o644); err != nil {
			return fmt.Errorf("resolv.conf: %w", err)
		}
		m.remove = append(m.remove, p)
	}
	return nil
}

// command prepares a program to run in its own PID namespace: when it
// ends, or herd dies, the kernel kills everything it started (apt's dpkg,
// maintainer scripts, daemons a postinst forgot), so nothing keeps writing
// into a staging tree after the build is gone. Output goes to log.
func command(ctx context.Context, log io.Writer, name string, args ...string) *exec.Cmd {
	full := append([]string{"--pid", "--fork", "--kill-child=SIGKILL", "--", name}, args...)
	cmd := exec.CommandContext(ctx, "unshare", full...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8", "DEBIAN_FRONTEND=noninteractive", "DEBCONF_NONINTERACTIVE_SEEN=true")
	// If herd dies, unshare dies, and --kill-child takes the namespace down.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// run runs a prepared command, naming it in the error.
func run(cmd *exec.Cmd) error {
	fmt.Fprintf(cmd.Stdout, "+ %s\n", strings.Join(cmd.Args[5:], " "))
	t0 := time.Now()
	err := cmd.Run()
	fmt.Fprintf(cmd.Stdout, "+ (%.1fs, %v)\n", time.Since(t0).Seconds(), cmd.ProcessState)
	if err != nil {
		return fmt.Errorf("%s: %w", strings.Join(cmd.Args[5:], " "), err)
	}
	return nil
}

// inChroot runs a shell command inside root.
func inChroot(ctx context.Context, log io.Writer, root, script string) error {
	return run(command(ctx, log, "chroot", root, "/bin/sh", "-euc", script))
}
