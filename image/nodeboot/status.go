package nodeboot

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/herdlab/herd/fleet/nodestatus"
	"github.com/herdlab/herd/internal/atomicfile"
	"github.com/herdlab/herd/internal/nodeauth"
	"github.com/herdlab/herd/internal/nvsmi"
)

// StatusAgent is `herd-boot status` (herd-status.service): every Interval
// it fills a nodestatus.Report (sessions, GPUs and their processes, health
// against the site's expected GPUs, self-checks), posts it signed (purpose
// "status") and does what the server's Reply asks: a wall message once per
// WallID, a clean reboot, another interval.
type StatusAgent struct {
	Node, Image string
	// Root is the node's root ("/"); NodeConfig, /proc and /run are under it.
	Root    string
	SysRoot string // /sys
	Kmsg    string // /dev/kmsg
	// StateFile keeps LastBusy and the walls shown across restarts of the
	// agent (in /run: a boot starts afresh).
	StateFile string
	Client    *nodeauth.Client
	Console   io.Writer
	// Exec runs a command and returns its standard output (tests replace it).
	Exec func(ctx context.Context, stdin string, name string, args ...string) ([]byte, error)
	Now  func() time.Time

	state agentState
}

type agentState struct {
	LastBusy time.Time `json:"last_busy,omitzero"`
	Walls    []string  `json:"walls,omitempty"` // WallIDs shown, newest last
}

// maxWalls bounds the remembered WallIDs.
const maxWalls = 64

// startWait is how long the status agent waits for start-up to finish
// before its first report.
const startWait = 5 * time.Minute

// RunStatus is `herd-boot status` in the booted system: it reports now and
// then every interval until ctx ends (once: a single report).
func RunStatus(ctx context.Context, s *System, once bool) error {
	p, err := ReadCmdline(s.Cmdline)
	if err != nil {
		return err
	}
	if p.Server == "" || p.Node == "" {
		return errors.New("status: no herd.server or herd.node on the kernel command line")
	}
	key, _, err := LoadBootedKey(s)
	if err != nil {
		// Without the node key nothing can be signed; the server would
		// refuse every report. Say so and stop cleanly (no restart loop).
		if s.Console != nil {
			fmt.Fprintf(s.Console, "herd: node %s: %v: status reports cannot be signed and are not sent\n", p.Node, err)
		}
		return nil
	}
	a := &StatusAgent{Node: p.Node, Image: p.ID, Root: s.root(), SysRoot: s.SysRoot, Kmsg: filepath.Join(s.DevRoot, "kmsg"),
		StateFile: filepath.Join(s.RunDir, "status-state.json"), Console: s.Console,
		Client: &nodeauth.Client{Base: p.Server, Node: p.Node, Key: key, HTTP: s.Client}}
	a.load()
	// The first report waits until start-up is over: a report while units
	// still start says only "starting", and its commands (loginctl,
	// systemctl, nvidia-smi) would take CPU from the boot itself. A boot
	// that never finishes is reported after startWait, as it stands.
	if !once {
		waitSystemStarted(ctx, startWait)
	}
	for {
		interval := time.Duration(nodestatus.DefaultInterval) * time.Second
		reply, err := a.ReportOnce(ctx)
		if err != nil {
			a.say("herd: status report not delivered: %v", err)
		} else if reply.Interval > 0 {
			interval = time.Duration(min(max(reply.Interval, 5), 3600)) * time.Second
		}
		if once {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}

func (a *StatusAgent) say(format string, args ...any) {
	if a.Console != nil {
		fmt.Fprintf(a.Console, format+"\n", args...)
	}
}

func (a *StatusAgent) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

func (a *StatusAgent) path(p string) string { return filepath.Join(a.Root, p) }

func (a *StatusAgent) run(ctx context.Context, stdin, name string, args ...string) ([]byte, error) {
	if a.Exec != nil {
		return a.Exec(ctx, stdin, name, args...)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(string(out))
		}
		if msg != "" {
			err = fmt.Errorf("%w: %s", err, oneLine(msg))
		}
	}
	return out, err
}

func (a *StatusAgent) load() {
	if a.StateFile == "" {
		return
	}
	if b, err := os.ReadFile(a.StateFile); err == nil {
		json.Unmarshal(b, &a.state)
	}
}

func (a *StatusAgent) save() {
	if a.StateFile == "" {
		return
	}
	b, _ := json.Marshal(a.state)
	os.MkdirAll(filepath.Dir(a.StateFile), 0o755)
	if err := atomicfile.WriteFile(a.StateFile, b, 0o600); err != nil {
		a.say("herd: status state: %v", err)
	}
}

// ReportOnce collects, posts and applies the reply once.
func (a *StatusAgent) ReportOnce(ctx context.Context) (nodestatus.Reply, error) {
	var reply nodestatus.Reply
	rep := a.Collect(ctx)
	body, err := json.Marshal(rep)
	if err != nil {
		return reply, err
	}
	pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	out, err := a.Client.Status(pctx, body)
	cancel()
	if err != nil {
		return reply, err
	}
	if err := json.Unmarshal(out, &reply); err != nil {
		return reply, fmt.Errorf("status reply: %w", err)
	}
	a.Apply(ctx, reply)
	return reply, nil
}

// Apply does what a Reply asks: wall once per WallID, then reboot.
func (a *StatusAgent) Apply(ctx context.Context, r nodestatus.Reply) {
	if r.Wall != "" {
		id := r.WallID
		if id == "" {
			id = r.Wall
		}
		shown := false
		for _, w := range a.state.Walls {
			shown = shown || w == id
		}
		if !shown {
			msg := "herd: " + r.Wall
			if _, err := a.run(ctx, msg+"\n", "wall"); err != nil {
				a.say("herd: wall: %v", err)
			} else {
				a.say("herd: told logged-in users: %s", r.Wall)
				a.state.Walls = append(a.state.Walls, id)
				if len(a.state.Walls) > maxWalls {
					a.state.Walls = a.state.Walls[len(a.state.Walls)-maxWalls:]
				}
				a.save()
			}
		}
	}
	if r.Reboot {
		a.say("herd: the server asks for a reboot; rebooting cleanly")
		if _, err := a.run(ctx, "", "systemctl", "reboot"); err != nil {
			a.say("herd: reboot: %v", err)
		}
	}
}

// Collect fills one report. A collector that fails leaves its part empty
// and says why in a check; it never stops the report.
func (a *StatusAgent) Collect(ctx context.Context) *nodestatus.Report {
	now := a.now().UTC()
	rep := &nodestatus.Report{Node: a.Node, Image: a.Image, Time: now, Sessions: []nodestatus.Session{},
		GPUs: []nodestatus.GPU{}, GPUProcesses: []nodestatus.GPUProcess{}, Checks: []nodestatus.Check{}}
	if b, err := os.ReadFile(a.path("proc/uptime")); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			rep.UptimeSeconds, _ = strconv.ParseFloat(f[0], 64)
		}
	}
	cfg, cfgErr := a.nodeConfig()
	rep.Sessions = a.sessions(ctx, now, rep.UptimeSeconds)

	facts := GPUFacts{Loaded: a.loadedDriver()}
	if out, err := a.run(ctx, "", "modinfo", "-F", "version", "nvidia"); err == nil {
		facts.Installed = strings.TrimSpace(string(out))
	}
	smiCheck := nodestatus.Check{Name: "nvidia-smi", OK: true}
	expectNone := cfg.ExpectGPUs == nil || cfg.ExpectGPUs.Count == 0
	if n, known := a.pciGPUs(); known && n == 0 {
		// Nothing for the driver to see: do not wake it every minute.
		smiCheck.OK, smiCheck.Detail = expectNone, "no NVIDIA GPU on the PCI bus"
	} else if out, err := a.run(ctx, "", "nvidia-smi", "-q", "-x"); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			smiCheck.Detail = "not installed"
			smiCheck.OK = expectNone
		} else {
			facts.SMIErr = oneLine(err.Error())
			smiCheck.OK, smiCheck.Detail = expectNone, facts.SMIErr
		}
	} else if l, err := nvsmi.Parse(out); err != nil {
		facts.SMIErr = err.Error()
		smiCheck.OK, smiCheck.Detail = false, facts.SMIErr
	} else {
		facts.SMI = l
		smiCheck.Detail = fmt.Sprintf("%d GPUs, driver %s", len(l.GPUs), l.Driver)
		rep.GPUs = l.GPUs
		for _, p := range l.Processes {
			if !p.Compute() {
				continue
			}
			gp := p.GPUProcess
			gp.User = a.processUser(ctx, gp.PID)
			rep.GPUProcesses = append(rep.GPUProcesses, gp)
		}
	}
	if x, err := ReadXid(a.Kmsg); err == nil {
		facts.Xid = x
	}
	rep.Health = EvaluateHealth(cfg.ExpectGPUs, facts)
	if rep.Busy() {
		a.state.LastBusy = now
		a.save()
	}
	rep.LastBusy = a.state.LastBusy
	rep.Checks = append(rep.Checks, smiCheck)
	if cfgErr != nil {
		rep.Checks = append(rep.Checks, nodestatus.Check{Name: "node-config", Detail: cfgErr.Error()})
	}
	rep.Checks = append(rep.Checks, a.selfChecks(ctx, cfg, len(rep.GPUs))...)
	rep.Network = a.network(ctx)
	sanitize(rep)
	return rep
}

// network is the node's links now, checked against its declared networks
// as ReportUp checks them but without waiting: a link replugged or lost
// since boot shows in the next report.
func (a *StatusAgent) network(ctx context.Context) *nodestatus.Network {
	server := ""
	if a.Client != nil {
		server = a.Client.Base
	}
	mac, _ := BootLink(server)
	links, degraded, err := NetworkReport(ctx, a.SysRoot, a.Root, mac, 0)
	if err != nil {
		degraded = append(degraded, "degraded: cannot read the node's networks: "+err.Error())
	}
	return &nodestatus.Network{Interfaces: StatusLinks(links), Degraded: append([]string{}, degraded...)}
}

// StatusLinks is links in the status report's form.
func StatusLinks(links []Link) []nodestatus.Link {
	out := make([]nodestatus.Link, 0, len(links))
	for _, l := range links {
		out = append(out, l.Link)
	}
	return out
}

// nodeConfig reads etc/herd/node.json; missing: no expectations.
func (a *StatusAgent) nodeConfig() (nodestatus.NodeConfig, error) {
	var c nodestatus.NodeConfig
	b, err := os.ReadFile(a.path(nodestatus.NodeConfigPath))
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return nodestatus.NodeConfig{}, fmt.Errorf("%s: %w", nodestatus.NodeConfigPath, err)
	}
	return c, nil
}

// pciGPUs counts NVIDIA display controllers (vendor 0x10de, class 0x03xxxx)
// in sysfs; known is false when sysfs cannot be read.
func (a *StatusAgent) pciGPUs() (n int, known bool) {
	dir := filepath.Join(a.SysRoot, "bus/pci/devices")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, false
	}
	for _, e := range ents {
		v, err1 := os.ReadFile(filepath.Join(dir, e.Name(), "vendor"))
		c, err2 := os.ReadFile(filepath.Join(dir, e.Name(), "class"))
		if err1 == nil && err2 == nil && strings.TrimSpace(string(v)) == "0x10de" && strings.HasPrefix(strings.TrimSpace(string(c)), "0x03") {
			n++
		}
	}
	return n, true
}

func (a *StatusAgent) loadedDriver() string {
	b, err := os.ReadFile(filepath.Join(a.SysRoot, "module/nvidia/version"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// processUser is the owner of /proc/<pid>, by name when it resolves
// (getent: LDAP users too), else the uid.
func (a *StatusAgent) processUser(ctx context.Context, pid int) string {
	st, err := os.Stat(a.path(fmt.Sprintf("proc/%d", pid)))
	if err != nil {
		return ""
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	uid := strconv.Itoa(int(sys.Uid))
	if out, err := a.run(ctx, "", "getent", "passwd", uid); err == nil {
		if name, _, ok := strings.Cut(string(out), ":"); ok && name != "" {
			return name
		}
	}
	return uid
}

// sessions lists logind's user sessions (ssh, console; also those without
// a terminal, which utmp never shows) through loginctl.
func (a *StatusAgent) sessions(ctx context.Context, now time.Time, uptime float64) []nodestatus.Session {
	out := []nodestatus.Session{}
	list, err := a.run(ctx, "", "loginctl", "list-sessions", "--no-legend", "--no-pager")
	if err != nil {
		return out
	}
	boot := now.Add(-time.Duration(uptime * float64(time.Second)))
	for _, line := range strings.Split(string(list), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		props, err := a.run(ctx, "", "loginctl", "show-session", f[0], "--no-pager",
			"-p", "Name", "-p", "TTY", "-p", "RemoteHost", "-p", "Class", "-p", "State", "-p", "TimestampMonotonic")
		if err != nil {
			continue
		}
		if s, ok := ParseSession(string(props), boot); ok {
			out = append(out, s)
		}
		if len(out) >= nodestatus.MaxSessions {
			break
		}
	}
	return out
}

// ParseSession reads `loginctl show-session -p Name -p TTY -p RemoteHost -p
// Class -p State -p TimestampMonotonic` output; ok is false for sessions
// that are no user's (greeter, manager) or that are closing.
func ParseSession(props string, boot time.Time) (nodestatus.Session, bool) {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(props))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			m[k] = v
		}
	}
	if m["Name"] == "" || (m["Class"] != "" && m["Class"] != "user") || m["State"] == "closing" {
		return nodestatus.Session{}, false
	}
	s := nodestatus.Session{User: m["Name"], TTY: m["TTY"], From: m["RemoteHost"]}
	if us, err := strconv.ParseInt(m["TimestampMonotonic"], 10, 64); err == nil && us > 0 && !boot.IsZero() {
		s.Since = boot.Add(time.Duration(us) * time.Microsecond).UTC().Truncate(time.Second)
	}
	return s, true
}

// selfChecks are the production-sensible checks of `herd image test`:
// systemd not degraded, root is the image overlay, homes automounted,
// cachefilesd on the SSD, the directory resolves, nvidia-persistenced.
func (a *StatusAgent) selfChecks(ctx context.Context, cfg nodestatus.NodeConfig, gpus int) []nodestatus.Check {
	var out []nodestatus.Check
	add := func(name string, ok bool, detail string) {
		out = append(out, nodestatus.Check{Name: name, OK: ok, Detail: detail})
	}
	st, _ := a.run(ctx, "", "systemctl", "is-system-running")
	state := strings.TrimSpace(string(st))
	detail := state
	if state != "running" {
		if failed, err := a.run(ctx, "", "systemctl", "list-units", "--state=failed", "--no-legend", "--plain", "--no-pager"); err == nil {
			var units []string
			for _, l := range strings.Split(string(failed), "\n") {
				if f := strings.Fields(l); len(f) > 0 {
					units = append(units, f[0])
				}
			}
			if len(units) > 0 {
				detail += ": failed " + strings.Join(units, " ")
			}
		}
	}
	add("system-running", state == "running", detail)

	mounts := readMounts(a.path("proc/mounts"))
	add("root-is-image-overlay", mounts["/"] == "overlay", "/ is "+dashIfEmpty(mounts["/"]))
	if cfg.HomeRoot != "" {
		add("home-automount", mounts[cfg.HomeRoot] == "autofs", cfg.HomeRoot+" is "+dashIfEmpty(mounts[cfg.HomeRoot]))
	}
	if _, ok := mounts["/var/cache/herd"]; ok {
		out2, _ := a.run(ctx, "", "systemctl", "is-active", "cachefilesd")
		s := strings.TrimSpace(string(out2))
		add("cachefilesd", s == "active", "cachefilesd "+dashIfEmpty(s))
	}
	if cfg.LDAPGroup != "" {
		_, err := a.run(ctx, "", "getent", "group", cfg.LDAPGroup)
		d := "group " + cfg.LDAPGroup + " resolves"
		if err != nil {
			d = "group " + cfg.LDAPGroup + " does not resolve: " + err.Error()
		}
		add("ldap-group-resolves", err == nil, d)
	}
	if gpus > 0 {
		out2, _ := a.run(ctx, "", "systemctl", "is-active", "nvidia-persistenced")
		s := strings.TrimSpace(string(out2))
		add("nvidia-persistenced", s == "active", "nvidia-persistenced "+dashIfEmpty(s))
	}
	return out
}

// readMounts maps each mount point to its file system type (the last
// mount on a point wins, as the kernel shows it).
func readMounts(path string) map[string]string {
	m := map[string]string{}
	b, err := os.ReadFile(path)
	if err != nil {
		return m
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 {
			m[unescapeMount(f[1])] = f[2]
		}
	}
	return m
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

func dashIfEmpty(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// clip makes s a single line of at most 256 bytes (the server's bound).
func clip(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > 256 {
		s = s[:253] + "..."
	}
	return s
}

// sanitize keeps every string and list inside the server's bounds.
func sanitize(r *nodestatus.Report) {
	for i := range r.Sessions {
		s := &r.Sessions[i]
		s.User, s.TTY, s.From = clip(s.User), clip(s.TTY), clip(s.From)
	}
	for i := range r.GPUs {
		g := &r.GPUs[i]
		g.UUID, g.Model, g.PCIBus, g.Driver = clip(g.UUID), clip(g.Model), clip(g.PCIBus), clip(g.Driver)
	}
	if len(r.GPUs) > nodestatus.MaxGPUs {
		r.GPUs = r.GPUs[:nodestatus.MaxGPUs]
	}
	if len(r.GPUProcesses) > nodestatus.MaxProcesses {
		r.GPUProcesses = r.GPUProcesses[:nodestatus.MaxProcesses]
	}
	for i := range r.GPUProcesses {
		p := &r.GPUProcesses[i]
		p.User, p.Name, p.GPUUUID = clip(p.User), clip(p.Name), clip(p.GPUUUID)
	}
	for i := range r.Checks {
		c := &r.Checks[i]
		c.Name, c.Detail = clip(c.Name), clip(c.Detail)
	}
	r.Health.Reason = clip(r.Health.Reason)
	r.Image = clip(r.Image)
	if n := r.Network; n != nil {
		sanitizeNetwork(n)
	}
}

// sanitizeNetwork keeps a network report inside the server's bounds: the
// boot link and the declared ones first when there are too many links
// (containers' veths), values cut to 64 bytes.
func sanitizeNetwork(n *nodestatus.Network) {
	if len(n.Interfaces) > nodestatus.MaxLinks {
		sort.SliceStable(n.Interfaces, func(i, j int) bool {
			known := func(l nodestatus.Link) bool { return l.Boot || l.Label != "" }
			return known(n.Interfaces[i]) && !known(n.Interfaces[j])
		})
		n.Interfaces = n.Interfaces[:nodestatus.MaxLinks]
	}
	cut := func(s string) string {
		s = clip(s)
		if len(s) > 64 {
			s = s[:64]
		}
		return s
	}
	for i := range n.Interfaces {
		l := &n.Interfaces[i]
		l.Name, l.MAC, l.State, l.Label, l.Network = cut(l.Name), cut(l.MAC), cut(l.State), cut(l.Label), cut(l.Network)
		if len(l.Addresses) > nodestatus.MaxAddresses {
			l.Addresses = l.Addresses[:nodestatus.MaxAddresses]
		}
		for j := range l.Addresses {
			l.Addresses[j] = cut(l.Addresses[j])
		}
	}
	if len(n.Degraded) > nodestatus.MaxDegraded {
		n.Degraded = n.Degraded[:nodestatus.MaxDegraded]
	}
	for i := range n.Degraded {
		n.Degraded[i] = clip(n.Degraded[i])
	}
}
