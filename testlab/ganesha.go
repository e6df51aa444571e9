package testlab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Export is one NFS export of the test NAS: Path on the host, seen by
// clients at Pseudo (the NFSv4 pseudo-filesystem path, e.g. /export/homes).
type Export struct {
	Pseudo string
	Path   string
}

// GaneshaConfig describes a userspace NFS server (the host kernel has no nfsd).
type GaneshaConfig struct {
	// Netns is where the server runs; Addr is its address there.
	Netns *Netns
	Addr  string
	// Dir holds the config, pid file, log and recovery state.
	Dir     string
	Exports []Export
	// Binary is ganesha.nfsd unless set.
	Binary string
}

// Ganesha is a running nfs-ganesha process started by this process.
type Ganesha struct {
	Config   GaneshaConfig
	ConfPath string
	LogPath  string
	PIDPath  string
	cmd      *exec.Cmd
	done     chan struct{}
	waitErr  error
}

// ganeshaConf renders the server config. NFSv4 only: with v3 enabled ganesha
// needs rpcbind, of which there can be only one per machine (its files live
// in the host's /run). Graceless skips the 90 s grace period a fresh server
// would otherwise impose on opens; numeric owners make uids on the wire match
// the export's files without an idmapd domain.
func ganeshaConf(c GaneshaConfig) string {
	var b strings.Builder
	fmt.Fprintf(&b, `NFS_CORE_PARAM {
	Protocols = 4;
	Bind_Addr = %s;
	NFS_Port = 2049;
	Enable_NLM = false;
	Enable_RQUOTA = false;
}
NFSV4 {
	RecoveryBackend = fs;
	RecoveryRoot = %q;
	Graceless = true;
	Only_Numeric_Owners = true;
}
NFS_KRB5 {
	Active_krb5 = false;
}
LOG {
	Default_Log_Level = EVENT;
}
`, c.Addr, filepath.Join(c.Dir, "recovery"))
	for i, e := range c.Exports {
		fmt.Fprintf(&b, `EXPORT {
	Export_Id = %d;
	Path = %q;
	Pseudo = %q;
	Access_Type = RW;
	Squash = No_Root_Squash;
	Protocols = 4;
	Transports = TCP;
	SecType = sys;
	FSAL {
		Name = VFS;
	}
}
`, i+1, e.Path, e.Pseudo)
	}
	return b.String()
}

// StartGanesha starts nfs-ganesha in the foreground inside the namespace and
// waits until it accepts TCP connections on Addr:2049.
func StartGanesha(ctx context.Context, c GaneshaConfig) (*Ganesha, error) {
	if c.Netns == nil || c.Addr == "" || c.Dir == "" {
		return nil, errors.New("ganesha: Netns, Addr and Dir are required")
	}
	if len(c.Exports) == 0 {
		return nil, errors.New("ganesha: no exports")
	}
	if c.Binary == "" {
		c.Binary = "ganesha.nfsd"
	}
	if err := os.MkdirAll(filepath.Join(c.Dir, "recovery"), 0o755); err != nil {
		return nil, fmt.Errorf("ganesha: %w", err)
	}
	for _, e := range c.Exports {
		if !filepath.IsAbs(e.Path) || !filepath.IsAbs(e.Pseudo) {
			return nil, fmt.Errorf("ganesha: export %q at %q: both paths must be absolute", e.Path, e.Pseudo)
		}
		if err := os.MkdirAll(e.Path, 0o755); err != nil {
			return nil, fmt.Errorf("ganesha: export dir: %w", err)
		}
	}
	g := &Ganesha{
		Config:   c,
		ConfPath: filepath.Join(c.Dir, "ganesha.conf"),
		LogPath:  filepath.Join(c.Dir, "ganesha.log"),
		PIDPath:  filepath.Join(c.Dir, "ganesha.pid"),
		done:     make(chan struct{}),
	}
	if err := os.WriteFile(g.ConfPath, []byte(ganeshaConf(c)), 0o644); err != nil {
		return nil, fmt.Errorf("ganesha: write config: %w", err)
	}
	// Not CommandContext: the server must outlive a start-up context; Stop ends it.
	g.cmd = c.Netns.Command(context.Background(), c.Binary, "-F", "-f", g.ConfPath, "-L", g.LogPath, "-p", g.PIDPath, "-N", "NIV_EVENT")
	out, err := os.Create(filepath.Join(c.Dir, "ganesha.stdout"))
	if err != nil {
		return nil, fmt.Errorf("ganesha: %w", err)
	}
	g.cmd.Stdout, g.cmd.Stderr = out, out
	g.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := g.cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("ganesha: start %s: %w", c.Binary, err)
	}
	go func() { g.waitErr = g.cmd.Wait(); out.Close(); close(g.done) }()
	if err := waitTCP(ctx, c.Netns, net.JoinHostPort(c.Addr, "2049"), 30*time.Second, g.done); err != nil {
		g.Stop()
		return nil, fmt.Errorf("ganesha did not come up: %w (log %s:\n%s)", err, g.LogPath, tailFile(g.LogPath, 20))
	}
	return g, nil
}

// PID is the process id of the server (of `ip netns exec`, which execs it).
func (g *Ganesha) PID() int { return g.cmd.Process.Pid }

// Stop ends the server by its PID (SIGTERM, then SIGKILL) and waits for it.
func (g *Ganesha) Stop() error {
	return stopProcess(g.cmd, g.done, 10*time.Second)
}

// stopProcess sends SIGTERM to the process group of cmd (it was started with
// Setpgid, so the group is exactly cmd and its children), then SIGKILL after
// grace, and waits for done.
func stopProcess(cmd *exec.Cmd, done chan struct{}, grace time.Duration) error {
	if cmd == nil || cmd.Process == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	default:
	}
	pid := cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-done:
		return nil
	case <-time.After(grace):
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	<-done
	return nil
}

// waitTCP dials addr inside ns until it connects, the deadline passes, or
// exited closes (the server died).
func waitTCP(ctx context.Context, ns *Netns, addr string, timeout time.Duration, exited <-chan struct{}) error {
	return waitReady(ctx, timeout, 200*time.Millisecond, exited,
		func() error {
			return ns.Do(func() error {
				c, err := net.DialTimeout("tcp", addr, time.Second)
				if err == nil {
					c.Close()
				}
				return err
			})
		},
		func(err error) error { return fmt.Errorf("connect %s: %w", addr, err) },
		func() error { return fmt.Errorf("process exited before %s accepted connections", addr) })
}

// tailFile returns the last n lines of a file, or a note why it cannot.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	return TailLines(Clean(b), n)
}
