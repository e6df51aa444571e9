package testlab

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/store"
)

// Booted is one node booted in a lab, with the LDAP user the checks log in
// as. The e2e suite and `herd image test` run the same Checks against it.
type Booted struct {
	Lab  *Lab
	VM   *VM
	Node LabNode
	// User is alice over SSH (password login, sudo through the members group).
	User     *Guest
	UID, GID int
	Manifest *manifest.Manifest
	// Approved is the fingerprint BootNode approved from the node's
	// console (LabConfig.Approve), "" when the node enrolled in a window.
	Approved string
}

// Check is one thing a lab user or admin would verify on a booted node.
type Check struct {
	Name string
	Run  func(ctx context.Context, b *Booted) error
}

// BootNode starts a QEMU node for reservation name and waits until it
// reaches multi-user and alice can log in over SSH.
func BootNode(ctx context.Context, l *Lab, name string, uefi bool, user, password string, uid, gid int) (*Booted, error) {
	n, ok := l.Node(name)
	if !ok {
		return nil, fmt.Errorf("lab: no node %q", name)
	}
	vm, err := l.StartNode(ctx, name, uefi)
	if err != nil {
		return nil, err
	}
	img, err := store.ReadOnly(l.StateDir).Get(l.ImageID)
	if err != nil {
		vm.Stop()
		return nil, fmt.Errorf("lab: manifest: %w", err)
	}
	b := &Booted{Lab: l, VM: vm, Node: n, UID: uid, GID: gid, Manifest: img.Manifest,
		User: &Guest{Netns: l.Netns, Addr: n.IP, User: user, Password: password}}
	if slices.Contains(l.Config.Approve, name) {
		if b.Approved, err = l.approveFromConsole(ctx, vm, name); err != nil {
			return b, err
		}
	}
	if err := b.WaitUp(ctx); err != nil {
		return b, err
	}
	return b, nil
}

// approveRE is the line herd-boot prints while its key waits for approval.
var approveRE = regexp.MustCompile(`herd node approve (\S+) --fingerprint (SHA256:[A-Za-z0-9+/]+)`)

// approveFromConsole is the admin approving a new node: it waits for the
// node's console to print its key's fingerprint and the approve command,
// and runs that command (which refuses any other pending key).
func (l *Lab) approveFromConsole(ctx context.Context, vm *VM, name string) (string, error) {
	for {
		m, err := vm.Console.Expect(ctx, approveRE, BootTimeout)
		if err != nil {
			return "", fmt.Errorf("%s: its console never asked for approval: %w", name, err)
		}
		if m[1] != name {
			continue
		}
		if _, err := l.Herd(ctx, "", "node", "approve", name, "--fingerprint", m[2]); err != nil {
			return "", err
		}
		return m[2], nil
	}
}

// BootTimeout bounds one boot under TCG: firmware PXE, a ~800 MB squashfs
// download over the bridge, systemd to multi-user. About 3 minutes on an idle
// 2-core machine; a busy one needs more. $HERD_BOOT_TIMEOUT overrides it.
var BootTimeout = envDuration("HERD_BOOT_TIMEOUT", 15*time.Minute)

func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil && d > 0 {
		return d
	}
	return def
}

// multiUser matches systemd reaching multi-user.target on the serial
// console (the getty's login prompt does not always reach ttyS0).
var multiUser = regexp.MustCompile(`Reached target .{0,40}multi-user\.target|Multi-User System|(\S+) login: `)

// WaitUp waits (from the console's current position) until systemd reaches
// multi-user on the serial console, then until alice can log in over SSH,
// pinning the host keys herd generated for the node.
func (b *Booted) WaitUp(ctx context.Context) error {
	if _, err := b.VM.Console.Expect(ctx, multiUser, BootTimeout); err != nil {
		return fmt.Errorf("%s did not reach multi-user: %w\n(%s)", b.Node.Name, err, b.Lab.Logs())
	}
	keys, err := NodeHostKeys(b.Lab.StateDir, b.Node.Name)
	if err != nil {
		return err
	}
	b.User.HostKeys = keys
	return b.User.WaitSSH(ctx, 5*time.Minute)
}

// Reboot resets the machine and waits until it is up again.
func (b *Booted) Reboot(ctx context.Context) error {
	b.VM.Console.Mark()
	if err := b.VM.Reset(); err != nil {
		return err
	}
	return b.WaitUp(ctx)
}

// NodeChecks are the checks of issue 8 on one booted node, in order: later
// ones rely on what earlier ones showed (e.g. the home mount).
func NodeChecks() []Check {
	return []Check{
		{"address-and-hostname", checkAddress},
		{"root-is-squashfs-overlay", checkRoot},
		{"ldap-user-resolves", checkGetent},
		{"ssh-login", checkSSH},
		{"node-key-enrolled", checkNodeKey},
		{"home-autofs-nfs-fsc", checkHome},
		{"cachefilesd-on-ssd", checkCachefilesd},
		{"fscache-hits", checkFSCacheHits},
		{"nvidia-pinned", checkNVIDIA},
		{"timesyncd-site-ntp", checkTimeSync},
		{"nothing-failed", checkNothingFailed},
		{"node-list-up", checkNodeList},
	}
}

func checkAddress(ctx context.Context, b *Booted) error {
	out, err := b.User.Run(ctx, "hostname; ip -4 -o addr show scope global")
	if err != nil {
		return err
	}
	lines := strings.SplitN(out, "\n", 2)
	if strings.TrimSpace(lines[0]) != b.Node.Name {
		return fmt.Errorf("hostname is %q, want %q", strings.TrimSpace(lines[0]), b.Node.Name)
	}
	if !strings.Contains(out, " "+b.Node.IP+"/24") {
		return fmt.Errorf("reserved address %s not configured:\n%s", b.Node.IP, out)
	}
	return nil
}

func checkRoot(ctx context.Context, b *Booted) error {
	out, err := b.User.Run(ctx, "findmnt -n -o FSTYPE /; cat /proc/mounts")
	if err != nil {
		return err
	}
	if first := strings.SplitN(out, "\n", 2)[0]; strings.TrimSpace(first) != "overlay" {
		return fmt.Errorf("/ is %q, want overlay:\n%s", first, out)
	}
	if !regexp.MustCompile(`(?m)^\S+ \S+ squashfs ro`).MatchString(out) {
		return fmt.Errorf("no read-only squashfs mounted:\n%s", out)
	}
	return nil
}

func checkGetent(ctx context.Context, b *Booted) error {
	out, err := b.User.Run(ctx, "getent passwd "+b.User.User)
	if err != nil {
		return err
	}
	f := strings.Split(strings.TrimSpace(out), ":")
	if len(f) < 7 || f[2] != strconv.Itoa(b.UID) || f[3] != strconv.Itoa(b.GID) {
		return fmt.Errorf("getent passwd %s = %q, want uid %d gid %d", b.User.User, out, b.UID, b.GID)
	}
	// Only the directory knows her: the image's files must not.
	if out, err := b.User.Run(ctx, "getent -s files passwd "+b.User.User+" || echo none"); err != nil || strings.TrimSpace(out) != "none" {
		return fmt.Errorf("%s found in local files (%q, %v), not only in LDAP", b.User.User, out, err)
	}
	return nil
}

func checkSSH(ctx context.Context, b *Booted) error {
	out, err := b.User.Run(ctx, "id -un; id -Gn")
	if err != nil {
		return err
	}
	l := strings.SplitN(out, "\n", 2)
	if strings.TrimSpace(l[0]) != b.User.User {
		return fmt.Errorf("logged in as %q, want %q", l[0], b.User.User)
	}
	if g := b.Lab.Config.Site.SudoGroup; len(l) < 2 || !slices.Contains(strings.Fields(l[1]), g) {
		return fmt.Errorf("%s is not in the %s group on the node: %q", b.User.User, g, out)
	}
	return nil
}

func checkHome(ctx context.Context, b *Booted) error {
	home := b.home()
	name := "from-" + b.Node.Name + "-" + randHex(4)
	out, err := b.User.Run(ctx, fmt.Sprintf("cd %s && echo hello-from-node > %s && findmnt -n -o FSTYPE,OPTIONS,SOURCE --target %s", home, name, home))
	if err != nil {
		return err
	}
	if !strings.HasPrefix(out, "nfs4 ") || !regexp.MustCompile(`(^|,)fsc(,|\s|$)`).MatchString(out) {
		return fmt.Errorf("%s is not NFSv4 with fsc: %q", home, out)
	}
	if nas := b.Lab.Config.Site.NASAddr; !strings.Contains(out, nas+":") {
		return fmt.Errorf("%s does not come from the NAS %s: %q", home, nas, out)
	}
	root := b.Lab.Config.Site.HomeRoot
	if auto, err := b.User.Run(ctx, "findmnt -n -o FSTYPE "+root); err != nil || !strings.Contains(auto, "autofs") {
		return fmt.Errorf("%s is not an autofs mount point: %q %v", root, auto, err)
	}
	onNAS := filepath.Join(b.Lab.HomesDir, b.User.User, name)
	data, err := os.ReadFile(onNAS)
	if err != nil || string(data) != "hello-from-node\n" {
		return fmt.Errorf("file written on the node not on the NAS export %s: %q %v", onNAS, data, err)
	}
	if uid, gid, err := FileOwner(onNAS); err != nil || uid != b.UID || gid != b.GID {
		return fmt.Errorf("%s owned by %d:%d, want %d:%d (%v)", onNAS, uid, gid, b.UID, b.GID, err)
	}
	return nil
}

// home is the user's home directory on the node (under the site's home root).
func (b *Booted) home() string { return path.Join(b.Lab.Config.Site.HomeRoot, b.User.User) }

func checkCachefilesd(ctx context.Context, b *Booted) error {
	out, err := b.User.Run(ctx, "systemctl is-active cachefilesd; findmnt -n -o SOURCE,FSTYPE --target /var/cache/herd/fscache; findmnt -n -o SOURCE /")
	if err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	l := strings.Split(strings.TrimSpace(out), "\n")
	if len(l) < 3 || l[0] != "active" {
		return fmt.Errorf("cachefilesd not active: %q", out)
	}
	if !strings.HasPrefix(l[1], "/dev/") || !strings.HasSuffix(l[1], "ext4") {
		return fmt.Errorf("the FS-Cache dir is not on the SSD's ext4 partition: %q", l[1])
	}
	conf, err := b.User.Run(ctx, "cat /etc/cachefilesd.conf")
	if err != nil {
		return err
	}
	if !regexp.MustCompile(`(?m)^dir\s+/var/cache/herd/fscache\s*$`).MatchString(conf) {
		return fmt.Errorf("cachefilesd.conf does not point at the SSD:\n%s", conf)
	}
	return nil
}

// fscacheStats parses /proc/fs/fscache/stats into "Section.key" counters.
func fscacheStats(s string) map[string]int64 {
	m := map[string]int64{}
	for _, line := range strings.Split(s, "\n") {
		sec, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		sec = strings.TrimSpace(sec)
		for _, f := range strings.Fields(rest) {
			k, v, ok := strings.Cut(f, "=")
			if !ok {
				continue
			}
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				m[sec+"."+k] = n
			}
		}
	}
	return m
}

func checkFSCacheHits(ctx context.Context, b *Booted) error {
	// A file put on the NAS by the host, read twice by the node with the
	// page cache dropped in between: the second read must be served by
	// FS-Cache (counters, not timing: under TCG the cache can be slower).
	name := "fscache-probe-" + randHex(4)
	data := make([]byte, 4<<20)
	rand.Read(data)
	p := filepath.Join(b.Lab.HomesDir, b.User.User, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		return err
	}
	os.Chown(p, b.UID, b.GID)
	f := path.Join(b.home(), name)
	stats := func() (map[string]int64, string, error) {
		out, err := b.User.Run(ctx, "cat /proc/fs/fscache/stats")
		return fscacheStats(out), out, err
	}
	before, _, err := stats()
	if err != nil {
		return err
	}
	if _, err := b.User.Run(ctx, "md5sum "+f); err != nil {
		return err
	}
	// cachefilesd writes the cache in the background; wait (bounded) until
	// the writes are counted before dropping the page cache.
	var mid map[string]int64
	for i := 0; i < 60; i++ {
		if mid, _, err = stats(); err != nil {
			return err
		}
		if mid["IO.wr"] > before["IO.wr"] {
			break
		}
		time.Sleep(time.Second)
	}
	if mid["IO.wr"] <= before["IO.wr"] {
		return fmt.Errorf("the first read wrote nothing to the cache (IO.wr %d → %d)", before["IO.wr"], mid["IO.wr"])
	}
	if _, err := b.User.Sudo(ctx, "sync; echo 3 > /proc/sys/vm/drop_caches"); err != nil {
		return err
	}
	if _, err := b.User.Run(ctx, "md5sum "+f); err != nil {
		return err
	}
	after, raw, err := stats()
	if err != nil {
		return err
	}
	if after["IO.rd"] <= mid["IO.rd"] {
		return fmt.Errorf("the second read did not come from FS-Cache (IO.rd %d → %d):\n%s", mid["IO.rd"], after["IO.rd"], raw)
	}
	return nil
}

func checkNVIDIA(ctx context.Context, b *Booted) error {
	out, err := b.User.Run(ctx, "/sbin/modinfo -F version nvidia")
	if err != nil {
		return err
	}
	got := strings.TrimSpace(out)
	want := b.Manifest.NVIDIA
	if got == "" || want == "" || !strings.HasPrefix(want, got) {
		return fmt.Errorf("modinfo nvidia version %q, image pins %q", got, want)
	}
	units, err := b.User.Run(ctx, "systemctl list-units --all --plain --no-legend 'nvidia*' | awk '{print $1, $3}'")
	if err != nil {
		return err
	}
	for _, l := range strings.Split(strings.TrimSpace(units), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[1] == "active" && strings.HasSuffix(f[0], ".service") {
			return fmt.Errorf("NVIDIA service %s is active on a node without a GPU", f[0])
		}
	}
	return nil
}

// checkTimeSync: timesyncd runs and uses the site's NTP servers (none of
// herd's when the image sets none). The lab serves no NTP, so whether the
// clock actually synchronised is not something it can check.
func checkTimeSync(ctx context.Context, b *Booted) error {
	out, err := b.User.Run(ctx, "systemctl is-active systemd-timesyncd; timedatectl show-timesync --property=SystemNTPServers --value")
	if err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	l := strings.SplitN(strings.TrimSpace(out), "\n", 2)
	if l[0] != "active" {
		return fmt.Errorf("systemd-timesyncd is %q", l[0])
	}
	got := ""
	if len(l) == 2 {
		got = strings.Join(strings.Fields(l[1]), " ")
	}
	if want := strings.Join(b.Lab.Config.Site.ntpServers(), " "); got != want {
		return fmt.Errorf("timesyncd's NTP servers are %q, the site's (site.ntp) %q", got, want)
	}
	return nil
}

func checkNothingFailed(ctx context.Context, b *Booted) error {
	out, err := b.User.Run(ctx, "systemctl --failed --plain --no-legend")
	if err != nil {
		return err
	}
	if s := strings.TrimSpace(out); s != "" {
		return fmt.Errorf("failed units:\n%s", s)
	}
	return nil
}

// checkNodeKey: the node's key is on its cache SSD (0600, root), and it is
// the key herd enrolled for the node, with the same fingerprint. A node
// with a TPM (VMConfig.TPM) keeps its key in the TPM: the console says so,
// its identity/ directory holds only the public half (the enrolled key)
// and no private key is on the SSD's identity/ or in /run/herd/identity
// (where a RAM-mode key would be).
func checkNodeKey(ctx context.Context, b *Booted) error {
	enrolled, err := b.Lab.EnrolledKey(ctx, b.Node.Name)
	if err != nil {
		return err
	}
	if b.VM.Config.TPM {
		out, err := b.User.Sudo(ctx, "ls /sys/class/tpm/ && ssh-keygen -lf /var/cache/herd/identity/node.pub && "+
			"echo private: $(grep -rlE 'PRIVATE KEY|^-----BEGIN' /var/cache/herd/identity /run/herd/identity 2>/dev/null)")
		if err != nil {
			return fmt.Errorf("TPM node key: %w: %s", err, out)
		}
		f := strings.Fields(out)
		if !strings.Contains(out, "tpm0") {
			return fmt.Errorf("the node sees no TPM (/sys/class/tpm): %s", out)
		}
		if !strings.Contains(out, " "+enrolled+" ") || !strings.Contains(out, "(ECDSA)") {
			return fmt.Errorf("identity/node.pub is not the enrolled P-256 key %q: %s", enrolled, out)
		}
		if i := slices.Index(f, "private:"); i < 0 || i != len(f)-1 {
			return fmt.Errorf("a TPM node keeps private key files: %s", out)
		}
		if !b.VM.Console.Contains(regexp.MustCompile(`node key ` + regexp.QuoteMeta(enrolled) + ` \(the TPM\)`)) {
			return fmt.Errorf("the console does not say that key %s is in the TPM", enrolled)
		}
		return nil
	}
	out, err := b.User.Sudo(ctx, "stat -c %a:%U /var/cache/herd/identity/node.key && ssh-keygen -lf /var/cache/herd/identity/node.key")
	if err != nil {
		return fmt.Errorf("node key on the SSD: %w: %s", err, out)
	}
	f := strings.Fields(out)
	if len(f) < 3 || f[0] != "600:root" {
		return fmt.Errorf("node key on the SSD: %q, want mode 600 owned by root and its fingerprint", out)
	}
	if f[2] != enrolled {
		return fmt.Errorf("node key %s on the SSD is not the enrolled key %q", f[2], enrolled)
	}
	return nil
}

// EnrolledKey is the fingerprint `herd node list --json` shows as node's
// enrolled key ("" if none).
func (l *Lab) EnrolledKey(ctx context.Context, node string) (string, error) {
	out, err := l.Herd(ctx, "", "node", "list", "--json")
	if err != nil {
		return "", err
	}
	var views []struct {
		Name     string `json:"name"`
		Identity struct {
			Enrolled string `json:"enrolled"`
			Pending  string `json:"pending"`
		} `json:"identity"`
	}
	if err := json.Unmarshal(out, &views); err != nil {
		return "", fmt.Errorf("herd node list --json: %w: %s", err, out)
	}
	for _, v := range views {
		if v.Name == node {
			return v.Identity.Enrolled, nil
		}
	}
	return "", fmt.Errorf("%s missing from herd node list --json", node)
}

func checkNodeList(ctx context.Context, b *Booted) error {
	out, err := b.Lab.Herd(ctx, "", "node", "list", "--json")
	if err != nil {
		return err
	}
	var views []struct {
		Name string `json:"name"`
		Seen *struct {
			Stage string `json:"stage"`
			Image string `json:"image"`
		} `json:"seen"`
	}
	if err := json.Unmarshal(out, &views); err != nil {
		return fmt.Errorf("herd node list --json: %w: %s", err, out)
	}
	for _, v := range views {
		if v.Name != b.Node.Name {
			continue
		}
		if v.Seen == nil || v.Seen.Stage != "up" || v.Seen.Image != b.Lab.ImageID {
			return fmt.Errorf("herd node list shows %s as %+v, want stage up with image %s", v.Name, v.Seen, b.Lab.ImageID)
		}
		return nil
	}
	return fmt.Errorf("%s missing from herd node list --json: %s", b.Node.Name, out)
}

// RootfsDownloads counts herd serve's access-log lines for GETs of the
// image's rootfs.squashfs from the node's address.
func RootfsDownloads(serverLog, imageID, ip string) int {
	n := 0
	for _, l := range strings.Split(serverLog, "\n") {
		// Only HTTP requests count: boot events also carry the image URL.
		if strings.Contains(l, `msg="http request"`) && strings.Contains(l, " path=/images/"+imageID+"/"+manifest.Rootfs+" ") && strings.Contains(l, "remote="+ip+" ") {
			n++
		}
	}
	return n
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return fmt.Sprintf("%x", b)
}
