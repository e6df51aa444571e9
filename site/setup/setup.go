// Package setup is `herd init`: it asks what a lab admin must decide (the
// interface facing the nodes, the DHCP mode beside any other DHCP server on
// that segment, the NAS, the LDAP directory), checks each answer against the
// real thing (a DHCPDISCOVER on the interface, an NFSv4 lookup of the
// exports, an LDAP bind), and writes a commented herd.yaml that `herd
// doctor` accepts. Prompts are plain lines (bufio): they work the same on a
// terminal, under tmux or a serial console, and from a pipe.
package setup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"strings"
	"text/template"
	"time"

	"github.com/go-ldap/ldap/v3"
	"go.yaml.in/yaml/v3"

	"github.com/herdlab/herd/directory"
	"github.com/herdlab/herd/internal/atomicfile"
	"github.com/herdlab/herd/site"
)

// Answers is everything herd init decides; empty fields are asked for (or,
// non-interactively, are errors when they have no default).
type Answers struct {
	Interface string // faces the nodes
	Address   string // the server's IPv4 address on Interface
	Subnet    string // Interface's prefix (full mode)
	Router    string // full mode: the router handed to nodes ("" none)
	HTTPPort  int
	// Mode is full, proxy, off, or "" / "auto": probe and choose.
	Mode string
	// Rival is what answered the probe ("" none), for the file's comment.
	Rival string

	NASAddress string
	Homes      string
	Public     string // "none": no shared folder

	LDAPURI               string
	LDAPBase              string
	LDAPAdminDN           string
	LDAPAdminPasswordFile string
	LDAPTLS               string // none (default), ldaps, starttls
	LDAPCAFile            string
}

// Iface is a candidate interface: up, not loopback, with an IPv4 address.
type Iface struct {
	Name   string
	Prefix netip.Prefix // its first IPv4 address with the prefix length
}

// Interfaces lists the interfaces herd could serve on.
func Interfaces() ([]Iface, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []Iface
	for _, ifi := range ifs {
		if ifi.Flags&net.FlagUp == 0 || ifi.Flags&net.FlagLoopback != 0 {
			continue
		}
		if p, ok := ipv4Of(ifi); ok {
			out = append(out, Iface{Name: ifi.Name, Prefix: p})
		}
	}
	return out, nil
}

func ipv4Of(ifi net.Interface) (netip.Prefix, bool) {
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Prefix{}, false
	}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.To4() == nil {
			continue
		}
		ip, _ := netip.AddrFromSlice(ipn.IP.To4())
		ones, _ := ipn.Mask.Size()
		return netip.PrefixFrom(ip, ones), true
	}
	return netip.Prefix{}, false
}

// InterfaceAddress returns name's first IPv4 address and prefix.
func InterfaceAddress(name string) (netip.Prefix, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("interface %s: %w", name, err)
	}
	if ifi.Flags&net.FlagUp == 0 {
		return netip.Prefix{}, fmt.Errorf("interface %s is down", name)
	}
	p, ok := ipv4Of(*ifi)
	if !ok {
		return netip.Prefix{}, fmt.Errorf("interface %s has no IPv4 address (herd serves nodes over IPv4: give it one first)", name)
	}
	return p, nil
}

// Prober sends a DHCPDISCOVER on iface and returns who offered ("" none).
type Prober func(ctx context.Context, iface string) (string, error)

// CheckLDAP binds as the admin DN with the password file's password (the
// bind `herd user` will make) and reads the base entry. It fails when the
// server refuses the bind, naming why.
func CheckLDAP(a Answers) error {
	d, err := directory.Connect(directory.Settings{
		URI: a.LDAPURI, Base: a.LDAPBase, AdminDN: a.LDAPAdminDN, AdminPasswordFile: a.LDAPAdminPasswordFile,
		TLS: a.LDAPTLS, CAFile: a.LDAPCAFile,
	})
	if err != nil {
		return err
	}
	defer d.Close()
	_, err = d.Conn().Search(ldap.NewSearchRequest(a.LDAPBase, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 1, 10, false,
		"(objectClass=*)", []string{"1.1"}, nil))
	if err != nil {
		return fmt.Errorf("bound as %s, but base %s cannot be read: %w", a.LDAPAdminDN, a.LDAPBase, err)
	}
	return nil
}

// NamingContext reads the directory's first naming context from its root
// DSE (anonymously), as a default for the base; "" when it cannot.
func NamingContext(uri string) string {
	conn, err := ldap.DialURL(uri, ldap.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}))
	if err != nil {
		return ""
	}
	defer conn.Close()
	conn.SetTimeout(5 * time.Second)
	res, err := conn.Search(ldap.NewSearchRequest("", ldap.ScopeBaseObject, ldap.NeverDerefAliases, 1, 5, false,
		"(objectClass=*)", []string{"namingContexts"}, nil))
	if err != nil || len(res.Entries) == 0 {
		return ""
	}
	return res.Entries[0].GetAttributeValue("namingContexts")
}

// CheckNAS looks up the homes export (and the public one unless "none"/"").
func CheckNAS(ctx context.Context, a Answers) error {
	for _, p := range []string{a.Homes, a.Public} {
		if p == "" || p == "none" {
			continue
		}
		if err := CheckNFSExport(ctx, a.NASAddress, p); err != nil {
			return fmt.Errorf("NAS %s: %w", a.NASAddress, err)
		}
	}
	return nil
}

// Render writes the herd.yaml for a, with comments saying why each choice.
func Render(a Answers, now time.Time) ([]byte, error) {
	var b bytes.Buffer
	err := fileTmpl.Execute(&b, struct {
		Answers
		Date string
	}{a, now.UTC().Format("2006-01-02")})
	return b.Bytes(), err
}

var fileTmpl = template.Must(template.New("herd.yaml").Funcs(template.FuncMap{"q": quote}).Parse(`# herd.yaml written by ` + "`herd init`" + ` on {{.Date}}. Every field not given takes
# the reference lab's value (the package's example lists them all);
# ` + "`herd doctor`" + ` checks this file against the machine.
server:
  interface: {{q .Interface}}   # faces the nodes: DHCP binds here
  address: {{q .Address}}
  http_port: {{.HTTPPort}}
  # image_mirror: http://cache.rack1.lab:8080   # large downloads through a caching proxy

dhcp:
{{- if eq .Mode "proxy"}}
  # proxy: {{if .Rival}}another DHCP server ({{.Rival}}) answered on {{.Interface}}, so it{{else}}the site's own DHCP server{{end}}
  # keeps handing out addresses; herd adds only the boot information (and
  # answers on udp/4011). Nodes on other subnets: README "On a real lab".
  mode: proxy
{{- else if eq .Mode "full"}}
  # full: no other DHCP server answered on {{.Interface}}; herd gives each node in
  # nodes its reserved ip.
  mode: full
  subnet: {{q .Subnet}}
{{- if .Router}}
  router: {{q .Router}}
{{- end}}
{{- else}}
  # off: the site's DHCP server points nodes at herd itself (next-server
  # {{.Address}}, boot file undionly.kpxe / snponly.efi).
  mode: off
{{- end}}
  unknown: ignore       # ignore | discover (list unknown MACs for ` + "`herd node add`" + `)

nodes: []               # herd node add NAME MAC{{if eq .Mode "full"}} --ip ADDRESS{{end}}

nas:
  address: {{q .NASAddress}}
  homes: {{q .Homes}}       # one directory per user, mounted at /home/<user>
{{- if and .Public (ne .Public "none")}}
  public: {{q .Public}}     # shared, mounted at /media/Public
{{- end}}

ldap:
  uri: {{q .LDAPURI}}
  base: {{q .LDAPBase}}
{{- if and .LDAPTLS (ne .LDAPTLS "none")}}
  tls: {{q .LDAPTLS}}
{{- end}}
{{- if .LDAPCAFile}}
  ca_file: {{q .LDAPCAFile}}
{{- end}}
  # what ` + "`herd user`" + ` binds as (checked by herd init); nodes bind anonymously
  # unless bind_dn / bind_password_file are set.
  admin_dn: {{q .LDAPAdminDN}}
  admin_password_file: {{q .LDAPAdminPasswordFile}}
`))

// quote renders s as a YAML scalar (plain when safe, quoted otherwise).
func quote(s string) string {
	out, err := yaml.Marshal(s)
	if err != nil {
		return fmt.Sprintf("%q", s)
	}
	return strings.TrimSuffix(string(out), "\n")
}

// ErrExists is returned by Write when the file exists and force is not set.
var ErrExists = errors.New("exists")

// Write validates data as a site file (the same checks `herd doctor`'s load
// makes) and writes it to path atomically; an existing file is replaced
// only with force.
func Write(path string, data []byte, force bool) error {
	if _, err := site.Parse(path, data); err != nil {
		return fmt.Errorf("the herd.yaml herd init made does not validate (a bug in herd init): %w", err)
	}
	if force {
		return atomicfile.WriteFile(path, data, 0o644)
	}
	if err := atomicfile.WriteNew(path, data, 0o644); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s %w (the package installs an example there): nothing written; pass --force to replace it", path, ErrExists)
		}
		return err
	}
	return nil
}
