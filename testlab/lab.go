package testlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/herdlab/herd/image/store"
)

// Lab addresses: the reference lab's provisioning network, only ever used
// inside the lab's own namespace.
const (
	LabSubnet = "10.77.0.0/24"
	LabServer = "10.77.0.1"
	LabNAS    = "10.77.0.2"
	LabBridge = "br-herd"
	LabBase   = "dc=lab,dc=internal"
	LabHTTP   = 8080
)

// LabNode is a node reservation in the lab's herd.yaml.
type LabNode struct {
	Name string
	MAC  string
	IP   string
	// StorageMAC and StorageIP are the node's second NIC in a storage lab
	// (LabConfig.Storage): on the storage bridge, named by MAC in herd.yaml.
	StorageMAC string
	StorageIP  string
	// KernelArgs is the node's kernel_args in herd.yaml.
	KernelArgs string
	// NodeYAML is more of the node's herd.yaml entry, each line indented
	// four spaces (e.g. "    expect_gpus: {count: 1}\n").
	NodeYAML string
}

// LabConfig describes a whole lab: namespace, bridge, NAS (nfs-ganesha +
// slapd on a second address), herd.yaml and `herd serve`.
type LabConfig struct {
	// Dir holds everything the lab writes (state, NAS exports, logs, VMs).
	Dir string
	// HerdBin is the herd binary `herd serve` and `herd user` run from.
	HerdBin string
	// ImageDir is a published image directory (images/<id> of some store);
	// it is hard-linked (or copied) into the lab's own state and made current.
	ImageDir string
	Nodes    []LabNode
	// AdminKeys go into admin.ssh_keys.
	AdminKeys []string
	// Cache is cache.disk (default auto).
	Cache string
	// ExtraYAML is appended to the generated herd.yaml.
	ExtraYAML string
	// Site is where the NAS and directory appear to nodes (zero fields: the
	// reference lab's); it must match what the booted image was built for.
	Site LabSite
	// Storage makes a two-network lab (storage.go): a second bridge with
	// MTU 9000 where the NAS and LDAP stand alone (StorageNAS by default),
	// and a second NIC per node with a StorageMAC.
	Storage bool
	// NoEnroll leaves node enrollment to the test: by default the lab opens
	// an enrollment window for every node (`herd node enroll ... --for`),
	// the admin's path for installing many nodes, so its nodes get their
	// secrets on first boot.
	NoEnroll bool
	// Approve names nodes left out of that window: BootNode approves each
	// with `herd node approve NAME --fingerprint F` once its console shows F.
	Approve []string
	// TPM names nodes that get a TPM 2.0 (VMConfig.TPM, a real swtpm):
	// their node key lives in it, not on their SSD.
	TPM []string
	// SecureBoot starts UEFI nodes with OVMF's Secure Boot build and
	// Microsoft's keys (VMConfig.SecureBoot); the site needs
	// `secure_boot: distro` (ExtraYAML) for them to boot.
	SecureBoot bool
	// SetupMode starts UEFI nodes with OVMF's Secure Boot build and its
	// blank variable store (Setup Mode: no keys), for secure_boot: herd's
	// enrollment path (VMConfig.SetupMode).
	SetupMode bool
	// ServeArgs are more flags for `herd serve`.
	ServeArgs []string
}

// Lab is a running lab.
type Lab struct {
	Config     LabConfig
	Netns      *Netns
	NAS        *Ganesha
	LDAP       *Slapd
	StateDir   string
	ConfigPath string
	ServerLog  string
	HomesDir   string
	PublicDir  string
	ImageID    string
	server     *exec.Cmd
	serverDone chan struct{}
	taps       atomic.Int32 // nodes boot concurrently; each needs its own tap
}

// DefaultLabNodes are two reservations: gpu01 and gpu02.
var DefaultLabNodes = []LabNode{
	{Name: "gpu01", MAC: "52:54:00:77:00:11", IP: "10.77.0.11"},
	{Name: "gpu02", MAC: "52:54:00:77:00:12", IP: "10.77.0.12"},
}

// StartLab brings the whole lab up; on error everything started is stopped.
func StartLab(ctx context.Context, c LabConfig) (l *Lab, err error) {
	if c.Dir == "" || c.HerdBin == "" || c.ImageDir == "" {
		return nil, errors.New("lab: Dir, HerdBin and ImageDir are required")
	}
	if len(c.Nodes) == 0 {
		c.Nodes = DefaultLabNodes
	}
	if c.Cache == "" {
		c.Cache = "auto"
	}
	c.Site = storageSite(c).withDefaults()
	if err := c.Site.Validate(); err != nil {
		return nil, err
	}
	l = &Lab{
		Config:     c,
		StateDir:   filepath.Join(c.Dir, "state"),
		ConfigPath: filepath.Join(c.Dir, "herd.yaml"),
		ServerLog:  filepath.Join(c.Dir, "server.log"),
		HomesDir:   filepath.Join(c.Dir, "nas", "homes"),
		PublicDir:  filepath.Join(c.Dir, "nas", "Public"),
	}
	defer func() {
		if err != nil {
			l.Close()
			l = nil
		}
	}()
	if l.ImageID, err = LinkImage(ctx, c.ImageDir, l.StateDir, true); err != nil {
		return l, err
	}
	if l.Netns, err = NewNetns("lab"); err != nil {
		return l, err
	}
	if err = l.Netns.AddBridge(LabBridge, LabServer+"/24"); err != nil {
		return l, err
	}
	// The NAS and LDAP addresses live on the bridge too. One outside the
	// lab subnet gets a /32: nodes send it to their router, 10.77.0.1,
	// which is this namespace, so it is delivered here and goes no further.
	nasBridge, err := l.startStorageBridge()
	if err != nil {
		return l, err
	}
	for _, a := range uniq(c.Site.NASAddr, c.Site.LDAPAddr) {
		if err = l.Netns.AddAddress(nasBridge, a+labPrefix(a)); err != nil {
			return l, err
		}
	}
	if l.NAS, err = StartGanesha(ctx, GaneshaConfig{Netns: l.Netns, Addr: c.Site.NASAddr, Dir: filepath.Join(c.Dir, "nas", "ganesha"),
		Exports: []Export{{Pseudo: c.Site.Homes, Path: l.HomesDir}, {Pseudo: c.Site.Public, Path: l.PublicDir}}}); err != nil {
		return l, err
	}
	// The Public export is world-writable with the sticky bit, like /tmp, so
	// any lab user can leave files there.
	if err = os.Chmod(l.PublicDir, 0o1777); err != nil {
		return l, fmt.Errorf("lab: %w", err)
	}
	ldapDir := filepath.Join(c.Dir, "nas", "slapd")
	if err = os.MkdirAll(ldapDir, 0o700); err != nil {
		return l, fmt.Errorf("lab: %w", err)
	}
	if l.LDAP, err = StartSlapd(ctx, SlapdConfig{Dir: ldapDir, Netns: l.Netns, Addr: c.Site.LDAPAddr, Port: c.Site.LDAPPort,
		Base: c.Site.Base, UsersOU: c.Site.UsersOU, GroupsOU: c.Site.GroupsOU}); err != nil {
		return l, err
	}
	secret := filepath.Join(c.Dir, "ldap-admin.secret")
	if err = l.LDAP.WriteAdminPassword(secret); err != nil {
		return l, fmt.Errorf("lab: %w", err)
	}
	if c.Site.BindDN != "" {
		if err = l.addBindEntry(bindSecretPath(c)); err != nil {
			return l, err
		}
	}
	if err = os.WriteFile(l.ConfigPath, []byte(SiteYAML(c, l.LDAP.AdminDN, secret)), 0o644); err != nil {
		return l, fmt.Errorf("lab: %w", err)
	}
	// The site's sudo rule names this group and `herd user add` puts new
	// users in it; herd refuses to create it implicitly.
	if _, err = l.Herd(ctx, "", "group", "add", c.Site.SudoGroup); err != nil {
		return l, err
	}
	if err = l.startServer(ctx); err != nil {
		return l, err
	}
	if !c.NoEnroll {
		args := []string{"node", "enroll"}
		for _, n := range c.Nodes {
			if !slices.Contains(c.Approve, n.Name) {
				args = append(args, n.Name)
			}
		}
		if len(args) > 2 {
			if _, err = l.Herd(ctx, "", append(args, "--for", EnrollWindow.String())...); err != nil {
				return l, err
			}
		}
	}
	return l, nil
}

// EnrollWindow is how long the lab's enrollment window stays open: long
// enough for a slow first boot under TCG.
var EnrollWindow = 2 * time.Hour

// SiteYAML is the lab's herd.yaml: full DHCP on the bridge with one
// reservation per node, the NAS and LDAP where c.Site puts them (by default
// on the second address). Images the lab boots must be built with it, or
// for a site it plays (the system overlays bake the NAS and LDAP settings
// in); adminDN and secret only matter to `herd user`.
func SiteYAML(c LabConfig, adminDN, secret string) string {
	if len(c.Nodes) == 0 {
		c.Nodes = DefaultLabNodes
	}
	if c.Cache == "" {
		c.Cache = "auto"
	}
	site := storageSite(c).withDefaults()
	var b strings.Builder
	fmt.Fprintf(&b, `server:
  interface: %s
  address: %s
  http_port: %d
dhcp:
  mode: full
  subnet: %s
  router: %s
  dns: [%s]
  domain: lab.internal
  unknown: ignore
nas:
  address: %s
  nfs_version: %q
  homes: %s
  public: %s
  home_root: %s
ldap:
  uri: ldap://%s/
  base: %s
  users_ou: %q
  groups_ou: %q
  default_group: %s
  admin_dn: %s
  admin_password_file: %s
`, LabBridge, LabServer, LabHTTP, LabSubnet, LabServer, LabServer,
		site.NASAddr, site.NFSVersion, site.Homes, site.Public, site.HomeRoot,
		site.ldapHost(), site.Base, site.UsersOU, site.GroupsOU, site.SudoGroup, adminDN, secret)
	if site.BindDN != "" {
		fmt.Fprintf(&b, "  bind_dn: %q\n  bind_password_file: %s\n", site.BindDN, bindSecretPath(c))
	}
	if ntp := site.ntpServers(); len(ntp) > 0 {
		fmt.Fprintf(&b, "ntp: [%s]\n", strings.Join(ntp, ", "))
	}
	fmt.Fprintf(&b, "sudo:\n  group: %s\ncache:\n  disk: %s\nnodes:\n", site.SudoGroup, c.Cache)
	for _, n := range c.Nodes {
		fmt.Fprintf(&b, "  - name: %s\n    mac: %q\n    ip: %s\n", n.Name, n.MAC, n.IP)
		// no_timer_check on every lab node: under TCG on a loaded host the
		// kernel's IO-APIC timer check can fail ("IO-APIC + timer doesn't
		// work!" panic or a hang after "Freeing initrd memory", seen in
		// TestLab runs); a real server never runs that slowly.
		args := n.KernelArgs
		if !strings.Contains(args, "no_timer_check") {
			args = strings.TrimSpace("no_timer_check " + args)
		}
		fmt.Fprintf(&b, "    kernel_args: %q\n", args)
		b.WriteString(n.NodeYAML)
		b.WriteString(storageInterfaceYAML(c, n))
	}
	b.WriteString(storageYAML(c))
	if len(c.AdminKeys) > 0 {
		b.WriteString("admin:\n  user: herdadmin\n  ssh_keys:\n")
		for _, k := range c.AdminKeys {
			fmt.Fprintf(&b, "    - %q\n", strings.TrimSpace(k))
		}
	}
	b.WriteString(c.ExtraYAML)
	return b.String()
}

// LinkImage imports imageDir (images/<id> of some store) into the image
// store of a fresh state dir through image/store (hard links when on the same
// file system, else copies), and promotes it when promote is set, so the lab
// never changes the store it came from.
func LinkImage(ctx context.Context, imageDir, state string, promote bool) (string, error) {
	st, err := store.Open(state)
	if err != nil {
		return "", fmt.Errorf("lab: %w", err)
	}
	id, err := st.Import(ctx, imageDir)
	if err != nil {
		return "", fmt.Errorf("lab: %w", err)
	}
	if promote {
		if _, err := st.Promote(ctx, id, false); err != nil {
			return "", fmt.Errorf("lab: %w", err)
		}
	}
	return id, nil
}

// startServer runs `herd serve` inside the namespace and waits until its
// HTTP side answers.
func (l *Lab) startServer(ctx context.Context) error {
	log, err := os.OpenFile(l.ServerLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	l.server = l.Netns.Command(context.Background(), l.Config.HerdBin, "-v", "--config", l.ConfigPath, "--state", l.StateDir, "serve")
	l.server.Args = append(l.server.Args, l.Config.ServeArgs...)
	l.server.Stdout, l.server.Stderr = log, log
	l.server.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := l.server.Start(); err != nil {
		log.Close()
		return fmt.Errorf("lab: start herd serve: %w", err)
	}
	l.serverDone = make(chan struct{})
	go func() { l.server.Wait(); log.Close(); close(l.serverDone) }()
	url := fmt.Sprintf("http://%s:%d/metrics", LabServer, LabHTTP)
	return waitReady(ctx, 30*time.Second, 200*time.Millisecond, l.serverDone,
		func() error {
			code, _, err := l.HTTPGet(url)
			if err == nil && code != 200 {
				err = fmt.Errorf("HTTP %d", code)
			}
			return err
		},
		func(err error) error {
			return fmt.Errorf("lab: herd serve not answering %s: %v (log %s:\n%s)", url, err, l.ServerLog, tailFile(l.ServerLog, 30))
		},
		func() error {
			return fmt.Errorf("lab: herd serve exited (log %s:\n%s)", l.ServerLog, tailFile(l.ServerLog, 30))
		})
}

// HTTPGet fetches url from inside the lab namespace.
func (l *Lab) HTTPGet(url string) (int, []byte, error) {
	c := l.Netns.HTTPClient()
	resp, err := c.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// HTTPClient returns a client whose connections are made inside the
// namespace. The transport dials on goroutines of its own, so each dial
// goes through Do (which switches a fresh thread into the namespace);
// dialing on the caller's thread would leave from the host's namespace.
func (n *Netns) HTTPClient() *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{DisableKeepAlives: true, Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = n.Do(func() error { c, err = d.DialContext(ctx, network, addr); return err })
			return c, err
		}}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// Herd runs the herd binary against the lab's config and state (inside the
// namespace, so LDAP and the server are reachable) with stdin as input.
func (l *Lab) Herd(ctx context.Context, stdin string, args ...string) ([]byte, error) {
	full := append([]string{"--config", l.ConfigPath, "--state", l.StateDir}, args...)
	cmd := l.Netns.Command(ctx, l.Config.HerdBin, full...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("herd %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.Bytes(), nil
}

// AddUser creates an LDAP user through `herd user add NAME --password-stdin`
// (the admin's own path) and her home directory on the NAS export, owned by
// the uid/gid the directory gave her.
func (l *Lab) AddUser(ctx context.Context, name, password string) (uid, gid int, err error) {
	if _, err := l.Herd(ctx, password+"\n", "user", "add", name, "--password-stdin"); err != nil {
		return 0, 0, err
	}
	uid, gid, err = l.lookupUser(name)
	if err != nil {
		return 0, 0, err
	}
	home := filepath.Join(l.HomesDir, name)
	if err := os.MkdirAll(home, 0o700); err != nil {
		return 0, 0, fmt.Errorf("lab: %w", err)
	}
	if err := os.Chown(home, uid, gid); err != nil {
		return 0, 0, fmt.Errorf("lab: %w", err)
	}
	return uid, gid, nil
}

// lookupUser reads uidNumber/gidNumber of uid=name from the lab's slapd.
func (l *Lab) lookupUser(name string) (int, int, error) {
	var uid, gid int
	err := l.Netns.Do(func() error {
		conn, err := l.LDAP.Admin()
		if err != nil {
			return err
		}
		defer conn.Close()
		return searchUser(conn, l.LDAP.Base, name, &uid, &gid)
	})
	if err != nil {
		return 0, 0, fmt.Errorf("lab: look up %s in LDAP: %w", name, err)
	}
	return uid, gid, nil
}

// AddTap creates the next tap on the lab bridge and returns its name.
func (l *Lab) AddTap() (string, error) {
	name := fmt.Sprintf("tap%d", l.taps.Add(1)-1)
	return name, l.Netns.AddTap(name, LabBridge)
}

// Node returns the reservation called name.
func (l *Lab) Node(name string) (LabNode, bool) {
	for _, n := range l.Config.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return LabNode{}, false
}

// StartNode boots a QEMU node for reservation name on a new tap, with its SSD
// at Dir/vms/<name>/ssd.qcow2 (kept across calls).
func (l *Lab) StartNode(ctx context.Context, name string, uefi bool) (*VM, error) {
	return l.StartNodeArgs(ctx, name, uefi)
}

// StartNodeArgs is StartNode with extra QEMU arguments (e.g. -kernel and
// -append, a loader handing the firmware a kernel and command line).
func (l *Lab) StartNodeArgs(ctx context.Context, name string, uefi bool, extra ...string) (*VM, error) {
	n, ok := l.Node(name)
	if !ok {
		return nil, fmt.Errorf("lab: no node %q in herd.yaml", name)
	}
	tap, err := l.AddTap()
	if err != nil {
		return nil, err
	}
	nics, err := l.addStorageNIC(n)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(l.Config.Dir, "vms", name)
	return StartVM(ctx, VMConfig{Netns: l.Netns, Name: name, Tap: tap, MAC: n.MAC, UEFI: uefi, NICs: nics,
		SecureBoot: uefi && (l.Config.SecureBoot || l.Config.SetupMode), SetupMode: uefi && l.Config.SetupMode,
		TPM: slices.Contains(l.Config.TPM, name),
		Dir: dir, Disk: filepath.Join(dir, "ssd.qcow2"), DiskSize: "8G",
		Accel: os.Getenv("HERD_QEMU_ACCEL"), Extra: extra})
}

// Logs names the lab's log files, for failure messages.
func (l *Lab) Logs() string {
	var parts []string
	parts = append(parts, "server: "+l.ServerLog)
	if l.NAS != nil {
		parts = append(parts, "nfs-ganesha: "+l.NAS.LogPath)
	}
	if l.LDAP != nil {
		parts = append(parts, "slapd: "+l.LDAP.LogPath)
	}
	return strings.Join(parts, ", ")
}

// ServerLogText returns the server log so far.
func (l *Lab) ServerLogText() string {
	b, _ := os.ReadFile(l.ServerLog)
	return string(b)
}

// Close stops the server, the NAS and deletes the namespace (by PID, in that order).
func (l *Lab) Close() error {
	if l.server != nil {
		stopProcess(l.server, l.serverDone, 35*time.Second)
	}
	if l.LDAP != nil {
		l.LDAP.Stop()
	}
	if l.NAS != nil {
		l.NAS.Stop()
	}
	if l.Netns != nil {
		return l.Netns.Close()
	}
	return nil
}

// searchUser reads uidNumber and gidNumber of uid=name under base.
func searchUser(conn *ldap.Conn, base, name string, uid, gid *int) error {
	res, err := conn.Search(ldap.NewSearchRequest(base, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 2, 10, false,
		"(&(objectClass=posixAccount)(uid="+ldap.EscapeFilter(name)+"))", []string{"uidNumber", "gidNumber"}, nil))
	if err != nil {
		return err
	}
	if len(res.Entries) != 1 {
		return fmt.Errorf("%d entries for uid=%s", len(res.Entries), name)
	}
	e := res.Entries[0]
	if _, err := fmt.Sscan(e.GetAttributeValue("uidNumber"), uid); err != nil {
		return fmt.Errorf("%s: uidNumber %q: %w", e.DN, e.GetAttributeValue("uidNumber"), err)
	}
	if _, err := fmt.Sscan(e.GetAttributeValue("gidNumber"), gid); err != nil {
		return fmt.Errorf("%s: gidNumber %q: %w", e.DN, e.GetAttributeValue("gidNumber"), err)
	}
	return nil
}

// uniq returns its arguments without repeats, in order.
func uniq(v ...string) []string {
	var out []string
	for _, s := range v {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// labPrefix is the prefix length an address gets on the lab bridge.
func labPrefix(addr string) string {
	if ip, err := netip.ParseAddr(addr); err == nil && (netip.MustParsePrefix(LabSubnet).Contains(ip) || netip.MustParsePrefix(StorageSubnet).Contains(ip)) {
		return "/24"
	}
	return "/32"
}

// ldapHost is the host[:port] of the lab's LDAP URI (no port for 389, as
// the reference lab's images were built with).
func (s LabSite) ldapHost() string {
	if s.LDAPPort == 389 {
		return s.LDAPAddr
	}
	return net.JoinHostPort(s.LDAPAddr, strconv.Itoa(s.LDAPPort))
}

// bindSecretPath is where the lab keeps the password of the DN nodes bind
// as (herd.yaml's ldap.bind_password_file; herd serve hands it to nodes in
// their runtime overlay).
func bindSecretPath(c LabConfig) string { return filepath.Join(c.Dir, "ldap-bind.secret") }

// bindEntry checks that the lab can create dn, the DN nodes bind as, under
// base, and returns the object classes of the entry and the relative DNs of
// the parents (organizational units) it needs, nearest to base first.
func bindEntry(dn, base string) ([]string, []string, error) {
	rel, ok := strings.CutSuffix(dn, ","+base)
	if !ok {
		return nil, nil, fmt.Errorf("bind DN %q is not under the base %q: the lab's directory has that one suffix", dn, base)
	}
	p, err := ldap.ParseDN(rel)
	if err != nil || len(p.RDNs) == 0 {
		return nil, nil, fmt.Errorf("bind DN %q: not a DN", dn)
	}
	var parents []string
	for i := len(p.RDNs) - 1; i >= 1; i-- {
		r := p.RDNs[i]
		if len(r.Attributes) != 1 || !strings.EqualFold(r.Attributes[0].Type, "ou") {
			return nil, nil, fmt.Errorf("bind DN %q: the lab can only create ou= entries above it", dn)
		}
		parent := "ou=" + ldap.EscapeDN(r.Attributes[0].Value)
		if len(parents) > 0 {
			parent += "," + parents[len(parents)-1]
		}
		parents = append(parents, parent)
	}
	first := p.RDNs[0]
	if len(first.Attributes) != 1 {
		return nil, nil, fmt.Errorf("bind DN %q: a multi-valued RDN", dn)
	}
	switch strings.ToLower(first.Attributes[0].Type) {
	case "cn":
		return []string{"organizationalRole", "simpleSecurityObject"}, parents, nil
	case "uid":
		return []string{"account", "simpleSecurityObject"}, parents, nil
	}
	return nil, nil, fmt.Errorf("bind DN %q: the lab can only create a cn= or uid= entry to bind as", dn)
}

// addBindEntry creates the site's bind DN (and any organizational units
// above it) in the lab's slapd with a fresh password, written to
// secretPath (0600), so nodes bind as the image expects.
func (l *Lab) addBindEntry(secretPath string) error {
	dn, base := l.Config.Site.BindDN, l.Config.Site.Base
	classes, parents, err := bindEntry(dn, base)
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	password, err := randomSecret()
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	hash, err := SSHA(password)
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	conn, err := l.LDAP.Admin()
	if err != nil {
		return fmt.Errorf("lab: create the bind DN: %w", err)
	}
	defer conn.Close()
	for _, p := range parents {
		parent, _ := ldap.ParseDN(p)
		add := ldap.NewAddRequest(p+","+base, nil)
		add.Attribute("objectClass", []string{"organizationalUnit"})
		add.Attribute("ou", []string{parent.RDNs[0].Attributes[0].Value})
		if err := conn.Add(add); err != nil && !ldap.IsErrorWithCode(err, ldap.LDAPResultEntryAlreadyExists) {
			return fmt.Errorf("lab: create %s,%s: %w", p, base, err)
		}
	}
	rdn, _ := ldap.ParseDN(dn)
	a := rdn.RDNs[0].Attributes[0]
	add := ldap.NewAddRequest(dn, nil)
	add.Attribute("objectClass", classes)
	add.Attribute(a.Type, []string{a.Value})
	add.Attribute("userPassword", []string{hash})
	if err := conn.Add(add); err != nil {
		return fmt.Errorf("lab: create the bind DN %s: %w", dn, err)
	}
	if err := os.WriteFile(secretPath, []byte(password+"\n"), 0o600); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	return nil
}
