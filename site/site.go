// Package site parses and validates herd.yaml, the one file that holds a
// lab's own settings (server, DHCP, nodes, NAS, LDAP, cache, accounts). Both
// the image builder and the PXE server read it through this package so they
// can never disagree about what a field means.
package site

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/herdlab/herd/internal/strictyaml"
)

// DefaultPath is where herd looks for the site config when --config is not given.
const DefaultPath = "/etc/herd/herd.yaml"

// Config is the whole site file.
type Config struct {
	Server      Server      `yaml:"server"`
	DHCP        DHCP        `yaml:"dhcp"`
	Nodes       []Node      `yaml:"nodes"`
	NAS         NAS         `yaml:"nas"`
	LDAP        LDAP        `yaml:"ldap"`
	Cache       Cache       `yaml:"cache"`
	Cachefilesd Cachefilesd `yaml:"cachefilesd"`
	Admin       Admin       `yaml:"admin"`
	Sudo        Sudo        `yaml:"sudo"`
	Root        Root        `yaml:"root"`
	Timezone    string      `yaml:"timezone"`
	// SecureBoot is how UEFI nodes boot: "off" (iPXE, default) or "distro"
	// (Microsoft-signed shim, Canonical-signed GRUB and kernel from the image's
	// own packages; the kernel enforces module signatures). BIOS nodes keep iPXE.
	// "herd": one UKI per image generation signed with herd's own keys
	// (package secureboot), enrolled into the nodes' firmware.
	SecureBoot string `yaml:"secure_boot"`
	// KernelArgs are appended to every node's kernel command line, before
	// the node's own; with secure_boot: herd they are the only extra
	// arguments (the signed UKI carries no per-node values).
	KernelArgs string   `yaml:"kernel_args"`
	NTP        []string `yaml:"ntp"`
	NVIDIA     NVIDIA   `yaml:"nvidia"`
	Tuning     Tuning   `yaml:"tuning"`
	// Networks are node networks beside the boot network, by name (e.g.
	// storage); nodes join them through nodes[].interfaces.
	Networks  map[string]Network `yaml:"networks"`
	Dashboard Dashboard          `yaml:"dashboard"`
	// ExpectGPUs is how many GPUs (and which model) every node should have;
	// nodes[].expect_gpus overrides it. Unset: no expectation (a node then
	// reports what it sees and stays ready).
	ExpectGPUs *ExpectGPUs `yaml:"expect_gpus"`
	// Overlays lists the system overlays baked into images, in order.
	Overlays []string `yaml:"overlays"`

	// Doc remembers where each field was written, for later error messages.
	Doc *strictyaml.Doc `yaml:"-"`
	// Path is the file the config was read from ("" for built-in defaults).
	Path string `yaml:"-"`
}

// Server is the boot server itself.
type Server struct {
	// Interface is the network interface facing the nodes (DHCP binds here).
	Interface string `yaml:"interface"`
	// Address is the server's IPv4 address on that interface.
	Address string `yaml:"address"`
	// HTTPPort serves boot scripts, images and overlays (default 8080).
	HTTPPort int `yaml:"http_port"`
	// TFTPRoot holds the iPXE binaries (default /usr/lib/ipxe, the ipxe package).
	TFTPRoot string `yaml:"tftp_root"`
	// MaxTFTP and MaxHTTP bound concurrent transfers so a boot storm queues.
	MaxTFTP int `yaml:"max_tftp"`
	MaxHTTP int `yaml:"max_http"`
	// ImageMirror is the base URL of a mirror or caching proxy (e.g. nginx
	// proxy_cache in front of this server) that serves the same
	// /images/<id>/ paths; nodes then fetch rootfs.squashfs from it. Only the
	// image goes there: its sha256 comes from this server's boot script, so a
	// mirror cannot change what a node boots. "" fetches from this server.
	ImageMirror string `yaml:"image_mirror"`
}

// DHCP modes.
const (
	DHCPFull  = "full"
	DHCPProxy = "proxy"
	DHCPOff   = "off"
)

// Unknown-MAC policies.
const (
	UnknownIgnore   = "ignore"
	UnknownDiscover = "discover"
)

// DHCP configures herd's built-in DHCP server.
type DHCP struct {
	Mode string `yaml:"mode"` // full, proxy (default) or off
	// Subnet is the provisioning network in CIDR form (full mode).
	Subnet string   `yaml:"subnet"`
	Router string   `yaml:"router"`
	DNS    []string `yaml:"dns"`
	Domain string   `yaml:"domain"`
	// LeaseTime is how long an address is leased (default 12h).
	LeaseTime time.Duration `yaml:"lease_time"`
	// RangeStart/RangeEnd is the dynamic pool, used only for unknown MACs
	// when Unknown is "discover".
	RangeStart string `yaml:"range_start"`
	RangeEnd   string `yaml:"range_end"`
	// Unknown is the policy for MACs not in nodes: ignore (default) or discover.
	Unknown string `yaml:"unknown"`
}

// Node is one server in the inventory.
type Node struct {
	Name string `yaml:"name" herd:"required"`
	MAC  string `yaml:"mac" herd:"required"`
	IP   string `yaml:"ip"`
	// Image pins the node to an image ID instead of the current one.
	Image string `yaml:"image"`
	// KernelArgs are appended to the kernel command line.
	KernelArgs string `yaml:"kernel_args"`
	// CacheDisk overrides cache.disk for this node.
	CacheDisk string `yaml:"cache_disk"`
	// Interfaces are the node's NICs, bonds and VLANs beside the boot NIC,
	// configured by systemd-networkd files in its runtime overlay.
	Interfaces []Interface `yaml:"interfaces"`
	// InsecureRAMIdentity: INSECURE. For a node with no cache disk and no
	// TPM, which cannot keep a key across boots: the server accepts any key
	// presented for this node and hands it the node's secrets, so anyone on
	// the LAN who asks first gets them. Leave false unless that is acceptable.
	InsecureRAMIdentity bool `yaml:"insecure_ram_identity"`
	// BMC is the node's baseboard management controller (power, console);
	// nil: herd cannot power-control the node.
	BMC *BMC `yaml:"bmc"`
	// ExpectGPUs overrides the site's expect_gpus for this node.
	ExpectGPUs *ExpectGPUs `yaml:"expect_gpus"`
}

// BMC protocols.
const (
	BMCIPMI = "ipmi" // IPMI v2.0 over LAN (RMCP+), through ipmitool
)

// BMC is how herd reaches a node's baseboard management controller.
type BMC struct {
	// Address is the BMC's host name or IP, optionally with :port (default 623).
	Address string `yaml:"address" herd:"required"`
	// User is the BMC account (IPMI allows at most 16 bytes).
	User string `yaml:"user" herd:"required"`
	// PasswordFile holds the password on its first line; it must be readable
	// by its owner only (0600 or 0400), checked when it is used.
	PasswordFile string `yaml:"password_file" herd:"required"`
	// Protocol is "ipmi" (default). Redfish is not supported: there is no
	// Redfish implementation to test against here.
	Protocol string `yaml:"protocol"`
	// CipherSuite is the RMCP+ cipher suite (ipmitool -C); 0 lets ipmitool
	// choose (17 where the BMC offers it, else 3).
	CipherSuite int `yaml:"cipher_suite"`
}

// ExpectGPUs is an expected GPU count and, optionally, model (matched
// case-insensitively as part of nvidia-smi's product name, e.g. "1080 Ti").
type ExpectGPUs struct {
	Count int    `yaml:"count"`
	Model string `yaml:"model"`
}

// MaxExpectGPUs bounds expect_gpus.count (a node report holds at most 64).
const MaxExpectGPUs = 64

// ExpectedGPUs is what node n should have: its own expect_gpus, else the
// site's; nil when neither is set.
func (c *Config) ExpectedGPUs(n *Node) *ExpectGPUs {
	if n != nil && n.ExpectGPUs != nil {
		return n.ExpectGPUs
	}
	return c.ExpectGPUs
}

// NAS is the lab's file server (NFS exports).
type NAS struct {
	Address    string `yaml:"address"`
	NFSVersion string `yaml:"nfs_version"` // default "4.2"
	// Homes is the export holding one directory per user, mounted at /home/<user>.
	Homes string `yaml:"homes"`
	// Public is the shared export mounted at /media/Public ("" to skip).
	Public       string `yaml:"public"`
	MountOptions string `yaml:"mount_options"`
	// HomeRoot is where user homes appear on the nodes (default /home).
	HomeRoot string `yaml:"home_root"`
	// PublicMount is where the shared folder appears (default /media/Public).
	PublicMount string `yaml:"public_mount"`
	// Network is the declared network the NAS is reached on (default
	// storage when networks.storage exists); nodes with an interface on it
	// never send NFS over the boot network unless AllowFallback is set.
	Network       string `yaml:"network"`
	AllowFallback bool   `yaml:"allow_fallback"`
}

// LDAP is the lab directory, used by nodes (SSSD) and by `herd user`.
type LDAP struct {
	URI  string `yaml:"uri"`
	Base string `yaml:"base"`
	// BindDN/BindPasswordFile is what nodes bind as; empty means anonymous.
	// The password reaches nodes only in the runtime overlay (mode 0600).
	BindDN           string `yaml:"bind_dn"`
	BindPasswordFile string `yaml:"bind_password_file"`
	// AdminDN/AdminPasswordFile is what `herd user` binds as.
	AdminDN           string `yaml:"admin_dn"`
	AdminPasswordFile string `yaml:"admin_password_file"`
	// TLS is none (default), ldaps or starttls; CAFile is the site's CA.
	TLS    string `yaml:"tls"`
	CAFile string `yaml:"ca_file"`
	// UsersOU/GroupsOU are relative to Base (default ou=people, ou=groups).
	UsersOU  string `yaml:"users_ou"`
	GroupsOU string `yaml:"groups_ou"`
	// UIDMin/GIDMin are the lowest numbers herd hands out (default 10000).
	UIDMin int `yaml:"uid_min"`
	GIDMin int `yaml:"gid_min"`
	// OverrideShell forces a login shell on nodes (default /bin/bash).
	OverrideShell string `yaml:"override_shell"`
	// DefaultGroup is the primary group of new users (default "members").
	DefaultGroup string `yaml:"default_group"`
}

// Cache is the node-side SSD cache policy.
type Cache struct {
	// Disk is auto (default), none, or a /dev/disk/by-id/... path.
	Disk string `yaml:"disk"`
	// KeepImages is how many images a node keeps on its SSD (default 2).
	KeepImages int `yaml:"keep_images"`
	// ScratchDir is where the SSD's scratch/ directory is bind-mounted; each
	// user gets ScratchDir/<user> (0700) at first login (default /scratch;
	// "none": no scratch). Nodes without an SSD have none.
	ScratchDir string `yaml:"scratch_dir"`
	// ScratchAge removes files in scratch not read or written for this long
	// (a systemd time span, default 30d), checked daily.
	ScratchAge string `yaml:"scratch_age"`
	// SwapSize, if set (e.g. "16G"), creates a swap file on the SSD.
	SwapSize string `yaml:"swap_size"`
}

// Scratch is the per-user scratch root on nodes with an SSD, "" when the
// site turned it off (scratch_dir: none).
func (c Cache) Scratch() string {
	if c.ScratchDir == "none" {
		return ""
	}
	return c.ScratchDir
}

// Cachefilesd holds FS-Cache culling limits in percent.
type Cachefilesd struct {
	Brun  int `yaml:"brun"`
	Bcull int `yaml:"bcull"`
	Bstop int `yaml:"bstop"`
	Frun  int `yaml:"frun"`
	Fcull int `yaml:"fcull"`
	Fstop int `yaml:"fstop"`
}

// Admin is the local account that works when the NAS and LDAP are down.
type Admin struct {
	User         string   `yaml:"user"`
	UID          int      `yaml:"uid"`
	PasswordHash string   `yaml:"password_hash"`
	SSHKeys      []string `yaml:"ssh_keys"`
}

// Sudo is the sudoers rule for a directory group.
type Sudo struct {
	Group string `yaml:"group"`
	// Commands limits what the group may run; empty means ALL.
	Commands []string `yaml:"commands"`
}

// Root controls the root account on nodes.
type Root struct {
	// PasswordHash unlocks root with this crypt hash; empty keeps root locked.
	PasswordHash string   `yaml:"password_hash"`
	SSHKeys      []string `yaml:"ssh_keys"`
}

// NVIDIA holds driver settings applied on nodes.
type NVIDIA struct {
	ModuleOptions []string `yaml:"module_options"`
}

// Dashboard configures herd serve's read-only web dashboard and JSON API.
type Dashboard struct {
	// Listen is "" (serve on the boot HTTP port, the default), "off", or an
	// address host:port of the dashboard's own listener.
	Listen string `yaml:"listen"`
	// ShowGPUUsers lets pages and the API show who runs each GPU process
	// (default off: user names are personal data on a shared lab LAN).
	ShowGPUUsers bool `yaml:"show_gpu_users"`
}

// DashboardOff is the Dashboard.Listen value that turns the dashboard off.
const DashboardOff = "off"

// Tuning holds kernel tunables.
type Tuning struct {
	RmemDefault int `yaml:"rmem_default"`
	WmemDefault int `yaml:"wmem_default"`
	RmemMax     int `yaml:"rmem_max"`
	WmemMax     int `yaml:"wmem_max"`
	// TmpAge is how old files in /tmp may get before cleanup (default 10d).
	TmpAge string `yaml:"tmp_age"`
}

// AllOverlays is the default list of system overlays, in render order.
var AllOverlays = []string{"base", "tuning", "ssd-cache", "cachefilesd", "autofs", "ldap", "nvidia"}

// Load reads and validates a site file; overrides are "dotted.key=value".
func Load(path string, overrides []string) (*Config, error) {
	var c Config
	doc, err := strictyaml.LoadFile(path, &c, overrides)
	if err != nil {
		return nil, err
	}
	c.Doc, c.Path = doc, path
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Parse validates a site file held in memory (name is used in errors).
func Parse(name string, data []byte) (*Config, error) {
	var c Config
	doc, err := strictyaml.Decode(name, data, &c, nil)
	if err != nil {
		return nil, err
	}
	c.Doc, c.Path = doc, name
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// LoadOrDefault loads path, or returns the built-in defaults when path does
// not exist and missingOK is set (so `herd image build` works before a site
// is configured).
func LoadOrDefault(path string, missingOK bool) (*Config, error) {
	if _, err := os.Stat(path); err != nil && os.IsNotExist(err) && missingOK {
		c := &Config{Doc: &strictyaml.Doc{File: "(built-in defaults)"}}
		c.ApplyDefaults()
		return c, nil
	}
	return Load(path, nil)
}

// LoadPartsOrDefault is LoadParts, or the built-in defaults when path does
// not exist and missingOK is set (as LoadOrDefault).
func LoadPartsOrDefault(path string, missingOK bool, parts ...string) (*Config, error) {
	if _, err := os.Stat(path); err != nil && os.IsNotExist(err) && missingOK {
		return LoadOrDefault(path, true)
	}
	return LoadParts(path, parts...)
}

// LoadParts reads a site file and validates only the named top-level parts
// (see ValidateParts); the file's syntax and field types are checked whole.
func LoadParts(path string, parts ...string) (*Config, error) {
	var c Config
	doc, err := strictyaml.LoadFile(path, &c, nil)
	if err != nil {
		return nil, err
	}
	c.Doc, c.Path = doc, path
	c.ApplyDefaults()
	if err := c.ValidateParts(parts...); err != nil {
		return nil, err
	}
	return &c, nil
}

// ApplyDefaults fills every unset field with the reference lab's value.
func (c *Config) ApplyDefaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	defInt := func(i *int, v int) {
		if *i == 0 {
			*i = v
		}
	}
	defInt(&c.Server.HTTPPort, 8080)
	def(&c.Server.TFTPRoot, "/usr/lib/ipxe")
	defInt(&c.Server.MaxTFTP, 32)
	defInt(&c.Server.MaxHTTP, 64)
	def(&c.DHCP.Mode, DHCPProxy)
	def(&c.DHCP.Unknown, UnknownIgnore)
	if c.DHCP.LeaseTime == 0 {
		c.DHCP.LeaseTime = 12 * time.Hour
	}
	def(&c.NAS.NFSVersion, "4.2")
	def(&c.NAS.MountOptions, "rw,hard,noatime,nodiratime,tcp,actimeo=120,rsize=262144,wsize=262144,fsc")
	def(&c.NAS.HomeRoot, "/home")
	def(&c.NAS.PublicMount, "/media/Public")
	def(&c.LDAP.TLS, "none")
	def(&c.LDAP.UsersOU, "ou=people")
	def(&c.LDAP.GroupsOU, "ou=groups")
	defInt(&c.LDAP.UIDMin, 10000)
	defInt(&c.LDAP.GIDMin, 10000)
	def(&c.LDAP.OverrideShell, "/bin/bash")
	def(&c.LDAP.DefaultGroup, "members")
	def(&c.Cache.Disk, "auto")
	defInt(&c.Cache.KeepImages, 2)
	def(&c.Cache.ScratchDir, "/scratch")
	def(&c.Cache.ScratchAge, "30d")
	defInt(&c.Cachefilesd.Brun, 30)
	defInt(&c.Cachefilesd.Bcull, 25)
	defInt(&c.Cachefilesd.Bstop, 20)
	defInt(&c.Cachefilesd.Frun, 10)
	defInt(&c.Cachefilesd.Fcull, 7)
	defInt(&c.Cachefilesd.Fstop, 3)
	def(&c.Admin.User, "herdadmin")
	defInt(&c.Admin.UID, 990)
	def(&c.Sudo.Group, "members")
	def(&c.Timezone, "Etc/UTC")
	def(&c.SecureBoot, SecureBootOff)
	defInt(&c.Tuning.RmemDefault, 8388608)
	defInt(&c.Tuning.WmemDefault, 8388608)
	defInt(&c.Tuning.RmemMax, 16777216)
	defInt(&c.Tuning.WmemMax, 16777216)
	def(&c.Tuning.TmpAge, "10d")
	for name, n := range c.Networks {
		if n.MTU == 0 {
			n.MTU = 1500
			c.Networks[name] = n
		}
	}
	if c.Overlays == nil {
		c.Overlays = append([]string(nil), AllOverlays...)
	}
}

// secure_boot values.
const (
	SecureBootOff    = "off"
	SecureBootDistro = "distro"
	SecureBootHerd   = "herd"
)

// ValidNodeName reports whether name is a node name herd accepts: a single
// lower-case DNS label, also safe as a path element under <state>/nodes/.
func ValidNodeName(name string) bool { return nodeNameRe.MatchString(name) }

var (
	nodeNameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	userRe     = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	sizeRe     = regexp.MustCompile(`^[0-9]+[KMGT]?$`)
	tzRe       = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_+/-]*$`)
)

// Enabled reports whether the named system overlay is in the overlay list.
func (c *Config) Enabled(overlay string) bool {
	for _, o := range c.Overlays {
		if o == overlay {
			return true
		}
	}
	return false
}

// Validate checks every field and returns all problems at once, each naming
// the file, line and field.
func (c *Config) Validate() error { return c.validate(nil) }

// ValidateParts checks only the fields under the named top-level keys (such
// as "ldap", "nas"), with the same errors as Validate: for commands that use
// only those parts of the site file, so a file holding only them works.
func (c *Config) ValidateParts(parts ...string) error {
	want := map[string]bool{}
	for _, p := range parts {
		want[p] = true
	}
	return c.validate(want)
}

// validate checks every field, keeping only the problems under the top-level
// keys in parts (all of them when parts is nil).
func (c *Config) validate(parts map[string]bool) error {
	var errs strictyaml.Errors
	bad := func(field, format string, args ...any) {
		if parts != nil && !parts[topKey(field)] {
			return
		}
		errs = append(errs, c.Doc.Errorf(field, format, args...))
	}
	if c.Server.Address != "" {
		if a, err := netip.ParseAddr(c.Server.Address); err != nil || !a.Is4() {
			bad("server.address", "%q is not an IPv4 address", c.Server.Address)
		}
	}
	if c.Server.HTTPPort < 1 || c.Server.HTTPPort > 65535 {
		bad("server.http_port", "port %d is out of range 1-65535", c.Server.HTTPPort)
	}
	if l := c.Dashboard.Listen; l != "" && l != DashboardOff {
		if ap, err := netip.ParseAddrPort(l); err != nil || ap.Port() == 0 {
			bad("dashboard.listen", "%q is not \"\", \"off\" or an address:port such as 10.0.0.1:8081", l)
		}
	}
	if c.Server.MaxTFTP < 1 {
		bad("server.max_tftp", "must be at least 1")
	}
	if c.Server.MaxHTTP < 1 {
		bad("server.max_http", "must be at least 1")
	}
	if m := c.Server.ImageMirror; m != "" {
		u, err := url.Parse(m)
		switch {
		case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil:
			bad("server.image_mirror", "%q is not an http:// or https:// base URL such as http://cache1.lab:8080", m)
		case u.RawQuery != "" || u.Fragment != "" || strings.ContainsAny(m, " \t\r\n${}"):
			bad("server.image_mirror", "%q must be a plain base URL (no query, spaces or ${...}): it goes on the kernel command line", m)
		}
	}
	switch c.DHCP.Mode {
	case DHCPFull, DHCPProxy, DHCPOff:
	default:
		bad("dhcp.mode", "%q is not one of full, proxy, off", c.DHCP.Mode)
	}
	switch c.DHCP.Unknown {
	case UnknownIgnore, UnknownDiscover:
	default:
		bad("dhcp.unknown", "%q is not one of ignore, discover", c.DHCP.Unknown)
	}
	var subnet netip.Prefix
	if c.DHCP.Subnet != "" {
		p, err := netip.ParsePrefix(c.DHCP.Subnet)
		if err != nil || !p.Addr().Is4() {
			bad("dhcp.subnet", "%q is not an IPv4 CIDR such as 10.0.0.0/24", c.DHCP.Subnet)
		} else {
			subnet = p.Masked()
		}
	} else if c.DHCP.Mode == DHCPFull {
		bad("dhcp.subnet", "required in full mode (the provisioning network, e.g. 10.0.0.0/24)")
	}
	if c.DHCP.Mode != DHCPOff && c.Server.Interface == "" {
		bad("server.interface", "required when dhcp.mode is %s (the interface facing the nodes)", c.DHCP.Mode)
	}
	if c.DHCP.Mode != DHCPOff && c.Server.Address == "" {
		bad("server.address", "required when dhcp.mode is %s", c.DHCP.Mode)
	}
	inSubnet := func(field, s string) {
		if s == "" {
			return
		}
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			bad(field, "%q is not an IPv4 address", s)
			return
		}
		if subnet.IsValid() && !subnet.Contains(a) {
			bad(field, "%s is outside dhcp.subnet %s", a, subnet)
		}
	}
	inSubnet("dhcp.router", c.DHCP.Router)
	for i, d := range c.DHCP.DNS {
		if _, err := netip.ParseAddr(d); err != nil {
			bad(fmt.Sprintf("dhcp.dns[%d]", i), "%q is not an IP address", d)
		}
	}
	inSubnet("dhcp.range_start", c.DHCP.RangeStart)
	inSubnet("dhcp.range_end", c.DHCP.RangeEnd)
	if (c.DHCP.RangeStart == "") != (c.DHCP.RangeEnd == "") {
		bad("dhcp.range_end", "range_start and range_end go together")
	}
	if c.DHCP.Mode == DHCPFull && c.DHCP.Unknown == UnknownDiscover && c.DHCP.RangeStart == "" {
		bad("dhcp.range_start", "full mode with unknown: discover needs a dynamic range (range_start, range_end)")
	}
	if c.DHCP.LeaseTime < time.Minute {
		bad("dhcp.lease_time", "%s is shorter than one minute", c.DHCP.LeaseTime)
	}

	names, macs, ips := map[string]int{}, map[string]int{}, map[string]int{}
	for i, n := range c.Nodes {
		f := fmt.Sprintf("nodes[%d]", i)
		if !nodeNameRe.MatchString(n.Name) {
			bad(f+".name", "%q is not a valid host name (lowercase letters, digits, '-')", n.Name)
		} else if j, dup := names[n.Name]; dup {
			bad(f+".name", "%q is already used by nodes[%d]", n.Name, j)
		}
		names[n.Name] = i
		mac, err := net.ParseMAC(n.MAC)
		if err != nil || len(mac) != 6 {
			bad(f+".mac", "%q is not an Ethernet MAC address such as 52:54:00:12:34:56", n.MAC)
		} else {
			c.Nodes[i].MAC = mac.String() // normalised lower-case, colon form
			if j, dup := macs[mac.String()]; dup {
				bad(f+".mac", "%s is already used by nodes[%d]", mac, j)
			}
			macs[mac.String()] = i
		}
		if n.IP == "" {
			if c.DHCP.Mode == DHCPFull {
				bad(f+".ip", "required in full DHCP mode (the node's reserved address)")
			}
		} else {
			inSubnet(f+".ip", n.IP)
			if j, dup := ips[n.IP]; dup {
				bad(f+".ip", "%s is already used by nodes[%d]", n.IP, j)
			}
			ips[n.IP] = i
		}
		if n.Image != "" && !isImageRef(n.Image) {
			bad(f+".image", "%q is not an image ID (hex digits)", n.Image)
		}
		if n.CacheDisk != "" {
			checkDisk(bad, f+".cache_disk", n.CacheDisk)
		}
		if n.BMC != nil {
			validateBMC(bad, f+".bmc", n.BMC)
		}
		if n.ExpectGPUs != nil {
			validateExpectGPUs(bad, f+".expect_gpus", n.ExpectGPUs)
		}
	}
	if c.ExpectGPUs != nil {
		validateExpectGPUs(bad, "expect_gpus", c.ExpectGPUs)
	}
	c.validateNetworks(bad, subnet)
	checkDisk(bad, "cache.disk", c.Cache.Disk)
	if c.Cache.KeepImages < 1 {
		bad("cache.keep_images", "must be at least 1")
	}
	if sd := c.Cache.Scratch(); sd != "" && (!filepath.IsAbs(sd) || filepath.Clean(sd) == "/" || filepath.Clean(sd) != sd) {
		bad("cache.scratch_dir", "%q must be a clean absolute path other than / (or none)", c.Cache.ScratchDir)
	}
	if !timeSpanRe.MatchString(c.Cache.ScratchAge) {
		bad("cache.scratch_age", "%q is not a systemd time span such as 30d, 12h or 2w", c.Cache.ScratchAge)
	}
	if c.Cache.SwapSize != "" && !sizeRe.MatchString(c.Cache.SwapSize) {
		bad("cache.swap_size", "%q is not a size such as 16G or 512M", c.Cache.SwapSize)
	}
	cf := c.Cachefilesd
	for _, p := range []struct {
		name string
		v    int
	}{{"brun", cf.Brun}, {"bcull", cf.Bcull}, {"bstop", cf.Bstop}, {"frun", cf.Frun}, {"fcull", cf.Fcull}, {"fstop", cf.Fstop}} {
		if p.v < 0 || p.v >= 100 {
			bad("cachefilesd."+p.name, "%d%% is not between 0 and 99", p.v)
		}
	}
	if !(cf.Brun > cf.Bcull && cf.Bcull > cf.Bstop) {
		bad("cachefilesd", "limits must satisfy brun > bcull > bstop (got %d, %d, %d)", cf.Brun, cf.Bcull, cf.Bstop)
	}
	if !(cf.Frun > cf.Fcull && cf.Fcull > cf.Fstop) {
		bad("cachefilesd", "limits must satisfy frun > fcull > fstop (got %d, %d, %d)", cf.Frun, cf.Fcull, cf.Fstop)
	}

	known := map[string]bool{}
	for _, o := range AllOverlays {
		known[o] = true
	}
	for i, o := range c.Overlays {
		if !known[o] {
			bad(fmt.Sprintf("overlays[%d]", i), "unknown overlay %q (known: %s)", o, strings.Join(AllOverlays, ", "))
		}
	}
	// Required only because an overlay needs them: checked for the commands
	// that render overlays, not for those that merely read the nas part.
	if c.Enabled("autofs") && (parts == nil || parts["overlays"]) {
		if c.NAS.Address == "" {
			bad("nas.address", "required when the autofs overlay is enabled (the NAS that exports homes)")
		}
		if c.NAS.Homes == "" {
			bad("nas.homes", "required when the autofs overlay is enabled (the export holding user homes)")
		}
	}
	for _, f := range []struct{ name, v string }{{"nas.homes", c.NAS.Homes}, {"nas.public", c.NAS.Public}, {"nas.home_root", c.NAS.HomeRoot}, {"nas.public_mount", c.NAS.PublicMount}} {
		if f.v != "" && !strings.HasPrefix(f.v, "/") {
			bad(f.name, "%q must be an absolute path", f.v)
		}
	}
	switch c.NAS.NFSVersion {
	case "3", "4", "4.0", "4.1", "4.2":
	default:
		bad("nas.nfs_version", "%q is not one of 3, 4, 4.1, 4.2", c.NAS.NFSVersion)
	}
	if c.Enabled("ldap") {
		if c.LDAP.URI == "" {
			bad("ldap.uri", "required when the ldap overlay is enabled (e.g. ldap://nas.lab/)")
		}
		if c.LDAP.Base == "" {
			bad("ldap.base", "required when the ldap overlay is enabled (e.g. dc=lab,dc=example)")
		}
	}
	if c.LDAP.URI != "" && !strings.HasPrefix(c.LDAP.URI, "ldap://") && !strings.HasPrefix(c.LDAP.URI, "ldaps://") {
		bad("ldap.uri", "%q must start with ldap:// or ldaps://", c.LDAP.URI)
	}
	switch c.LDAP.TLS {
	case "none", "ldaps", "starttls":
	default:
		bad("ldap.tls", "%q is not one of none, ldaps, starttls", c.LDAP.TLS)
	}
	if c.LDAP.TLS == "ldaps" && c.LDAP.URI != "" && !strings.HasPrefix(c.LDAP.URI, "ldaps://") {
		bad("ldap.uri", "tls is ldaps but the URI %q does not start with ldaps://", c.LDAP.URI)
	}
	if c.LDAP.BindDN != "" && c.LDAP.BindPasswordFile == "" {
		bad("ldap.bind_password_file", "required when ldap.bind_dn is set")
	}
	if !userRe.MatchString(c.Admin.User) {
		bad("admin.user", "%q is not a valid user name", c.Admin.User)
	}
	if c.Admin.UID < 1 || c.Admin.UID >= 60000 {
		bad("admin.uid", "%d is outside 1-59999", c.Admin.UID)
	}
	if c.Sudo.Group != "" && !userRe.MatchString(c.Sudo.Group) {
		bad("sudo.group", "%q is not a valid group name", c.Sudo.Group)
	}
	for i, cmd := range c.Sudo.Commands {
		if !strings.HasPrefix(cmd, "/") {
			bad(fmt.Sprintf("sudo.commands[%d]", i), "%q must be an absolute path (sudoers requires it)", cmd)
		}
	}
	c.validateOverlayFields(bad)
	if !tzRe.MatchString(c.Timezone) || strings.Contains(c.Timezone, "..") {
		bad("timezone", "%q is not a time zone name such as Europe/Berlin", c.Timezone)
	}
	switch c.SecureBoot {
	case SecureBootOff, SecureBootDistro, SecureBootHerd:
	default:
		bad("secure_boot", "%q is not one of herd, distro, off", c.SecureBoot)
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// topKey is the top-level key of a field path: "nodes" for "nodes[2].mac".
func topKey(field string) string {
	if i := strings.IndexAny(field, ".["); i >= 0 {
		return field[:i]
	}
	return field
}

var (
	cryptRe    = regexp.MustCompile(`^\$[0-9a-z]+\$[^\s:'\\]+$`)
	sshKeyRe   = regexp.MustCompile(`^(ssh-|ecdsa-|sk-)[a-z0-9@.-]+ [A-Za-z0-9+/=]+( [^\r\n]*)?$`)
	timeSpanRe = regexp.MustCompile(`^[0-9]+(us|ms|s|min|h|d|w)?$`)
	modOptRe   = regexp.MustCompile(`^([a-z0-9_]+ )?[A-Za-z0-9_]+=[^\s]+$`)
	plainRe    = regexp.MustCompile(`^[^\s"'\\]+$`)
)

// validateOverlayFields checks the fields the overlays write into node
// files (sudoers, systemd units, autofs maps, modprobe.d, sshd keys), so a
// bad value is an error here instead of a broken file on every node.
func (c *Config) validateOverlayFields(bad func(string, string, ...any)) {
	for _, h := range []struct{ field, v string }{{"admin.password_hash", c.Admin.PasswordHash}, {"root.password_hash", c.Root.PasswordHash}} {
		if h.v != "" && !cryptRe.MatchString(h.v) {
			bad(h.field, "is not a crypt(3) hash such as $6$salt$... or $y$... (make one with mkpasswd or openssl passwd -6)")
		}
	}
	for _, keys := range []struct {
		field string
		v     []string
	}{{"admin.ssh_keys", c.Admin.SSHKeys}, {"root.ssh_keys", c.Root.SSHKeys}} {
		for i, k := range keys.v {
			if !sshKeyRe.MatchString(strings.TrimSpace(k)) {
				bad(fmt.Sprintf("%s[%d]", keys.field, i), "is not one OpenSSH public key line (type base64 [comment])")
			}
		}
	}
	for i, o := range c.NVIDIA.ModuleOptions {
		if !modOptRe.MatchString(o) {
			bad(fmt.Sprintf("nvidia.module_options[%d]", i), "%q is not NAME=VALUE (for the nvidia module) or MODULE NAME=VALUE", o)
		}
	}
	if !timeSpanRe.MatchString(c.Tuning.TmpAge) {
		bad("tuning.tmp_age", "%q is not a systemd time span such as 10d, 12h or 2w", c.Tuning.TmpAge)
	}
	for _, v := range []struct {
		field string
		v     int
	}{{"tuning.rmem_default", c.Tuning.RmemDefault}, {"tuning.wmem_default", c.Tuning.WmemDefault}, {"tuning.rmem_max", c.Tuning.RmemMax}, {"tuning.wmem_max", c.Tuning.WmemMax}} {
		if v.v < 4096 {
			bad(v.field, "%d is smaller than 4096 bytes", v.v)
		}
	}
	if c.Tuning.RmemDefault > c.Tuning.RmemMax {
		bad("tuning.rmem_default", "%d is larger than rmem_max %d", c.Tuning.RmemDefault, c.Tuning.RmemMax)
	}
	if c.Tuning.WmemDefault > c.Tuning.WmemMax {
		bad("tuning.wmem_default", "%d is larger than wmem_max %d", c.Tuning.WmemDefault, c.Tuning.WmemMax)
	}
	for i, n := range c.NTP {
		if !plainRe.MatchString(n) {
			bad(fmt.Sprintf("ntp[%d]", i), "%q is not a host name or address", n)
		}
	}
	for _, f := range []struct{ field, v string }{{"nas.address", c.NAS.Address}, {"nas.mount_options", c.NAS.MountOptions}, {"cache.scratch_dir", c.Cache.ScratchDir}, {"ldap.override_shell", c.LDAP.OverrideShell}, {"nas.homes", c.NAS.Homes}, {"nas.public", c.NAS.Public}, {"nas.home_root", c.NAS.HomeRoot}, {"nas.public_mount", c.NAS.PublicMount}} {
		if f.v != "" && !plainRe.MatchString(f.v) {
			bad(f.field, "%q must not contain blanks, quotes or backslashes", f.v)
		}
	}
	if strings.HasPrefix(c.NAS.MountOptions, "-") || strings.Contains(c.NAS.MountOptions, "fstype=") || strings.Contains(c.NAS.MountOptions, "vers=") {
		bad("nas.mount_options", "%q: give plain mount options; fstype and vers come from nas.nfs_version", c.NAS.MountOptions)
	}
	if c.LDAP.OverrideShell != "" && !strings.HasPrefix(c.LDAP.OverrideShell, "/") {
		bad("ldap.override_shell", "%q must be an absolute path such as /bin/bash", c.LDAP.OverrideShell)
	}
	for i, cmd := range c.Sudo.Commands {
		if strings.ContainsAny(cmd, "\r\n") {
			bad(fmt.Sprintf("sudo.commands[%d]", i), "must be one line")
		}
	}
}

func checkDisk(bad func(string, string, ...any), field, v string) {
	if v == "auto" || v == "none" || strings.HasPrefix(v, "/dev/") {
		return
	}
	bad(field, "%q is not auto, none or a /dev/disk/by-id/... path", v)
}

func isImageRef(s string) bool {
	if len(s) < 8 {
		return false
	}
	for _, r := range s {
		if !strings.ContainsRune("0123456789abcdef", r) {
			return false
		}
	}
	return true
}

// NodeByMAC finds a node by MAC address (any common spelling).
func (c *Config) NodeByMAC(mac string) (*Node, bool) {
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return nil, false
	}
	for i := range c.Nodes {
		if strings.EqualFold(c.Nodes[i].MAC, hw.String()) {
			return &c.Nodes[i], true
		}
	}
	return nil, false
}

// NodeByName finds a node by name.
func (c *Config) NodeByName(name string) (*Node, bool) {
	for i := range c.Nodes {
		if c.Nodes[i].Name == name {
			return &c.Nodes[i], true
		}
	}
	return nil, false
}

// ServerURL is the base URL nodes use to reach the HTTP server.
func (c *Config) ServerURL() string {
	return fmt.Sprintf("http://%s:%d", c.Server.Address, c.Server.HTTPPort)
}

// ImageURL is the base URL nodes fetch image roots from: server.image_mirror
// when set, else ServerURL; the paths below it are the same /images/<id>/...
func (c *Config) ImageURL() string {
	if c.Server.ImageMirror != "" {
		return strings.TrimRight(c.Server.ImageMirror, "/")
	}
	return c.ServerURL()
}

// CacheDiskFor is the cache disk policy for a node (its override or the site's).
func (c *Config) CacheDiskFor(n *Node) string {
	if n != nil && n.CacheDisk != "" {
		return n.CacheDisk
	}
	return c.Cache.Disk
}

// bmcHostRe is a DNS name or an IPv4 address (IPv6 goes in brackets with a port).
var bmcHostRe = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$`)

// validateBMC checks one node's bmc block and fills its defaults.
func validateBMC(bad func(field, format string, args ...any), f string, b *BMC) {
	if b.Protocol == "" {
		b.Protocol = BMCIPMI
	}
	switch b.Protocol {
	case BMCIPMI:
	case "redfish":
		bad(f+".protocol", "redfish is not supported yet (no Redfish implementation to test against); use ipmi")
	default:
		bad(f+".protocol", "%q is not ipmi", b.Protocol)
	}
	if _, _, err := b.HostPort(); err != nil {
		bad(f+".address", "%v", err)
	}
	if len(b.User) > 16 || strings.ContainsAny(b.User, " \t\r\n\x00") {
		bad(f+".user", "%q must be at most 16 bytes without spaces (IPMI user names)", b.User)
	}
	if b.PasswordFile != "" && (!filepath.IsAbs(b.PasswordFile) || filepath.Clean(b.PasswordFile) != b.PasswordFile) {
		bad(f+".password_file", "%q must be a clean absolute path", b.PasswordFile)
	}
	switch b.CipherSuite {
	case 0, 3, 8, 12, 17:
	default:
		bad(f+".cipher_suite", "%d is not one of 3, 8, 12, 17 (or 0: ipmitool chooses)", b.CipherSuite)
	}
}

// HostPort splits Address into host and UDP port (623 when absent).
func (b *BMC) HostPort() (string, int, error) {
	host, port := b.Address, 623
	if h, p, err := net.SplitHostPort(b.Address); err == nil {
		n, perr := strconv.Atoi(p)
		if perr != nil || n < 1 || n > 65535 {
			return "", 0, fmt.Errorf("%q: port %q is out of range 1-65535", b.Address, p)
		}
		host, port = h, n
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return a.String(), port, nil
	}
	if !bmcHostRe.MatchString(host) {
		return "", 0, fmt.Errorf("%q is not a host name or IP address (with an optional :port)", b.Address)
	}
	return host, port, nil
}

// validateExpectGPUs checks one expect_gpus entry (site-wide or a node's).
func validateExpectGPUs(bad func(field, format string, args ...any), f string, e *ExpectGPUs) {
	if e.Count < 0 || e.Count > MaxExpectGPUs {
		bad(f+".count", "%d is not a GPU count from 0 to %d", e.Count, MaxExpectGPUs)
	}
	if e.Model != "" && e.Count == 0 {
		bad(f+".model", "a model %q with count 0: give the count of %s GPUs the node should have", e.Model, e.Model)
	}
	if len(e.Model) > 128 || strings.ContainsAny(e.Model, "\x00\r\n") {
		bad(f+".model", "must be one line of at most 128 characters")
	}
}
