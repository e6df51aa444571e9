package testlab

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"github.com/herdlab/herd/image/inspect"
)

// LabSite is where the lab's NAS and directory live, as the node sees them.
// An image bakes these into its autofs maps and sssd.conf at build time, so
// a lab that tests an image built for a real site must serve them at the
// same addresses, paths and base (inside its own namespace only).
type LabSite struct {
	NASAddr    string // NFS server address
	Homes      string // export holding one directory per user
	Public     string // shared export
	NFSVersion string // "4", "4.1" or "4.2" (the lab's nfs-ganesha serves NFSv4 only)
	LDAPAddr   string // slapd address
	LDAPPort   int
	Base       string // LDAP suffix
	HomeRoot   string // where homes appear on nodes (nas.home_root)
	UsersOU    string // users' entries, relative to Base (ldap.users_ou)
	GroupsOU   string // groups' entries, relative to Base (ldap.groups_ou)
	BindDN     string // what nodes bind as (ldap.bind_dn; "" is anonymous)
	SudoGroup  string // the directory group with sudo (sudo.group); lab users are in it
	// NTP is site.ntp as timesyncd's NTP= line (space-separated); NoNTP
	// when the image sets none. The lab serves no NTP: nodes only send to it.
	NTP string
}

// NoNTP is LabSite.NTP for an image built without site.ntp.
const NoNTP = "none"

// ntpServers lists the site's NTP servers (none for NoNTP).
func (s LabSite) ntpServers() []string {
	if s.NTP == NoNTP {
		return nil
	}
	return strings.Fields(s.NTP)
}

// DefaultLabSite is the reference lab's NAS and directory.
func DefaultLabSite() LabSite {
	return LabSite{NASAddr: LabNAS, Homes: "/export/homes", Public: "/export/Public", NFSVersion: "4.2",
		LDAPAddr: LabNAS, LDAPPort: 389, Base: LabBase, HomeRoot: "/home", UsersOU: "ou=people", GroupsOU: "ou=groups",
		SudoGroup: "members", NTP: LabServer}
}

// withDefaults fills the zero fields from DefaultLabSite.
func (s LabSite) withDefaults() LabSite {
	d := DefaultLabSite()
	for _, f := range []struct {
		v *string
		d string
	}{
		{&s.NASAddr, d.NASAddr}, {&s.Homes, d.Homes}, {&s.Public, d.Public}, {&s.NFSVersion, d.NFSVersion},
		{&s.LDAPAddr, d.LDAPAddr}, {&s.Base, d.Base}, {&s.HomeRoot, d.HomeRoot}, {&s.UsersOU, d.UsersOU},
		{&s.GroupsOU, d.GroupsOU}, {&s.SudoGroup, d.SudoGroup}, {&s.NTP, d.NTP},
	} {
		if *f.v == "" {
			*f.v = f.d
		}
	}
	if s.LDAPPort == 0 {
		s.LDAPPort = d.LDAPPort
	}
	return s
}

// Validate says why the lab cannot serve s, if it cannot.
func (s LabSite) Validate() error {
	s = s.withDefaults()
	sub := netip.MustParsePrefix(LabSubnet)
	for _, a := range []struct{ what, v string }{{"NAS address", s.NASAddr}, {"LDAP address", s.LDAPAddr}} {
		ip, err := netip.ParseAddr(a.v)
		if err != nil || !ip.Is4() {
			return fmt.Errorf("lab: %s %q is not an IPv4 address", a.what, a.v)
		}
		if a.v == LabServer {
			return fmt.Errorf("lab: %s %s is the lab's own server address", a.what, a.v)
		}
		if sub.Contains(ip) {
			for _, n := range DefaultLabNodes {
				if n.IP == a.v {
					return fmt.Errorf("lab: %s %s is the lab node %s's address", a.what, a.v, n.Name)
				}
			}
		}
	}
	switch s.NFSVersion {
	case "4", "4.0", "4.1", "4.2":
	default:
		return fmt.Errorf("lab: NFS version %q: the lab's nfs-ganesha serves NFSv4 only", s.NFSVersion)
	}
	if _, err := seedLDIF(s.Base, s.UsersOU, s.GroupsOU); err != nil {
		return fmt.Errorf("lab: the directory cannot be seeded: %w", err)
	}
	if s.BindDN != "" {
		if _, _, err := bindEntry(s.BindDN, s.Base); err != nil {
			return fmt.Errorf("lab: %w", err)
		}
	}
	if !strings.HasPrefix(s.HomeRoot, "/") {
		return fmt.Errorf("lab: home root %q is not an absolute path", s.HomeRoot)
	}
	return nil
}

// Paths inside an image where the autofs and ldap overlays bake the site.
const (
	imageAutoHome   = "/etc/auto.home"
	imageAutoPublic = "/etc/auto.public"
	imageSSSDConf   = "/etc/sssd/sssd.conf"
	imageAutoMaster = "/etc/auto.master"
	imageSudoers    = "/etc/sudoers.d/herd"
	imageTimesyncd  = "/etc/systemd/timesyncd.conf.d/herd.conf"
)

// SiteFromImage reads the NAS and directory an image was built for from its
// root file system (the autofs maps, sssd.conf, sudoers and timesyncd
// drop-ins the overlays wrote), so `herd image test` can stand the lab up
// where the image will look, with the directory laid out as it expects. Notes
// say what the image lacks (then those parts keep the reference lab's
// values and their checks will fail); an error means the lab cannot play
// the site's part (e.g. an LDAP URI with a host name or TLS).
func SiteFromImage(rootfs string) (LabSite, []string, error) {
	site := DefaultLabSite()
	var notes []string
	im, err := inspect.Open(rootfs)
	if err != nil {
		return site, nil, fmt.Errorf("read the image's site settings: %w", err)
	}
	defer im.Close()
	read := func(p string) (string, bool, error) {
		b, err := im.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			return "", false, nil
		}
		if err != nil {
			return "", false, fmt.Errorf("read the image's %s: %w", p, err)
		}
		return string(b), true, nil
	}

	home, ok, err := read(imageAutoHome)
	if err != nil {
		return site, nil, err
	}
	if !ok {
		notes = append(notes, "the image has no "+imageAutoHome+" (built without the autofs overlay or without nas settings): NFS home checks will fail")
	} else {
		addr, path, vers, err := parseAutofsEntry(home, "*")
		if err != nil {
			return site, nil, fmt.Errorf("image %s: %w", imageAutoHome, err)
		}
		site.NASAddr, site.Homes, site.NFSVersion = addr, strings.TrimSuffix(path, "/&"), vers
		if master, ok, err := read(imageAutoMaster); err != nil {
			return site, nil, err
		} else if ok {
			for _, line := range strings.Split(master, "\n") {
				if f := strings.Fields(line); len(f) >= 2 && f[1] == imageAutoHome && !strings.HasPrefix(f[0], "#") {
					site.HomeRoot = f[0]
				}
			}
		}
		site.Public = ""
		if pub, ok, err := read(imageAutoPublic); err != nil {
			return site, nil, err
		} else if ok {
			paddr, ppath, _, err := parseAutofsEntry(pub, "")
			if err != nil {
				return site, nil, fmt.Errorf("image %s: %w", imageAutoPublic, err)
			}
			if paddr != site.NASAddr {
				return site, nil, fmt.Errorf("image %s: the shared folder is on %s, the homes on %s: the lab has one NAS", imageAutoPublic, paddr, site.NASAddr)
			}
			site.Public = ppath
		}
	}

	conf, ok, err := read(imageSSSDConf)
	if err != nil {
		return site, nil, err
	}
	if !ok {
		notes = append(notes, "the image has no "+imageSSSDConf+" (built without the ldap overlay or without ldap settings): LDAP user checks will fail")
	} else {
		kv := iniValues(conf)
		site.LDAPAddr, site.LDAPPort, err = parseLabLDAPURI(kv["ldap_uri"])
		if err != nil {
			return site, nil, fmt.Errorf("image %s ldap_uri: %w", imageSSSDConf, err)
		}
		if kv["ldap_id_use_start_tls"] == "true" {
			return site, nil, fmt.Errorf("image %s uses StartTLS (ldap.tls: starttls): the lab's slapd cannot present a certificate from the site's CA; test an image built with ldap.tls: none", imageSSSDConf)
		}
		if site.Base = kv["ldap_search_base"]; site.Base == "" {
			return site, nil, fmt.Errorf("image %s has no ldap_search_base", imageSSSDConf)
		}
		for _, o := range []struct {
			key string
			ou  *string
		}{{"ldap_user_search_base", &site.UsersOU}, {"ldap_group_search_base", &site.GroupsOU}} {
			v := kv[o.key]
			if v == "" {
				continue
			}
			rel, ok := strings.CutSuffix(v, ","+site.Base)
			if !ok {
				return site, nil, fmt.Errorf("image %s %s %q is not under ldap_search_base %q: the lab's directory has that one suffix", imageSSSDConf, o.key, v, site.Base)
			}
			*o.ou = rel
		}
		if site.BindDN = kv["ldap_default_bind_dn"]; site.BindDN != "" {
			if _, _, err := bindEntry(site.BindDN, site.Base); err != nil {
				return site, nil, fmt.Errorf("image %s ldap_default_bind_dn: %w", imageSSSDConf, err)
			}
		}
	}

	sudo, ok, err := read(imageSudoers)
	if err != nil {
		return site, nil, err
	}
	group, all := sudoGroup(sudo)
	switch {
	case !ok:
		notes = append(notes, "the image has no "+imageSudoers+" (built without the base overlay): the lab user cannot use sudo, so the fscache-hits check will fail")
	case group == "":
		notes = append(notes, "the image's "+imageSudoers+" gives no directory group sudo (sudo.group is empty): the fscache-hits check, which drops the page cache with sudo, will fail")
	default:
		site.SudoGroup = group
		if !all {
			notes = append(notes, "sudo for %"+group+" is limited to sudo.commands in the image's "+imageSudoers+": the fscache-hits check, which drops the page cache with sudo sh, will fail")
		}
	}
	site.NTP = NoNTP
	if ts, ok, err := read(imageTimesyncd); err != nil {
		return site, nil, err
	} else if ok {
		if site.NTP = iniValues(ts)["NTP"]; site.NTP == "" {
			return site, nil, fmt.Errorf("image %s sets no NTP= servers", imageTimesyncd)
		}
	}
	if site.Public == "" {
		site.Public = DefaultLabSite().Public // exported but unused by the image
	}
	return site, notes, site.Validate()
}

// sudoGroup returns the directory group the image's sudoers drop-in names
// (its %group line) and whether that group may run every command.
func sudoGroup(text string) (group string, all bool) {
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || !strings.HasPrefix(f[0], "%") {
			continue
		}
		return f[0][1:], f[len(f)-1] == "ALL" && len(f) == 3
	}
	return "", false
}

// parseAutofsEntry finds the map line whose key is key ("" = any) and
// returns the NFS server, path and vers= of its location "addr:path".
func parseAutofsEntry(text, key string) (addr, path, vers string, err error) {
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || strings.HasPrefix(f[0], "#") || (key != "" && f[0] != key) {
			continue
		}
		loc := f[len(f)-1]
		i := strings.LastIndex(loc, ":")
		if i <= 0 {
			return "", "", "", fmt.Errorf("map entry %q: location %q is not server:path", line, loc)
		}
		addr, path = strings.Trim(loc[:i], "[]"), loc[i+1:]
		for _, o := range strings.Split(strings.TrimPrefix(f[1], "-"), ",") {
			if v, ok := strings.CutPrefix(o, "vers="); ok {
				vers = v
			}
		}
		if net.ParseIP(addr) == nil {
			return "", "", "", fmt.Errorf("map entry %q: NAS %q is a host name; the lab can only stand in for an IP address", line, addr)
		}
		if vers == "" {
			vers = "4.2"
		}
		return addr, path, vers, nil
	}
	return "", "", "", fmt.Errorf("no map entry (key %q)", key)
}

// parseLabLDAPURI accepts the one URI form the lab can serve:
// ldap://<IPv4>[:port][/].
func parseLabLDAPURI(uri string) (string, int, error) {
	first := strings.TrimSpace(strings.Split(uri, ",")[0])
	u, err := url.Parse(first)
	if err != nil || first == "" {
		return "", 0, fmt.Errorf("%q is not a URI", uri)
	}
	if u.Scheme != "ldap" {
		return "", 0, fmt.Errorf("%q: the lab serves plain ldap:// only (it has no certificate from the site's CA); test an image built with ldap.uri ldap://<address>/ and ldap.tls: none", uri)
	}
	ip, err := netip.ParseAddr(u.Hostname())
	if err != nil || !ip.Is4() {
		return "", 0, fmt.Errorf("%q: the host is not an IPv4 address; the lab has no DNS for the site's names, so build the image under test with the LDAP server's address", uri)
	}
	port := 389
	if p := u.Port(); p != "" {
		if port, err = strconv.Atoi(p); err != nil || port < 1 || port > 65535 {
			return "", 0, fmt.Errorf("%q: bad port", uri)
		}
	}
	return ip.String(), port, nil
}

// iniValues returns key = value pairs of an INI-style file (last one wins;
// sections are ignored: sssd.conf has one domain in herd images).
func iniValues(text string) map[string]string {
	kv := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' || line[0] == '[' {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok {
			kv[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return kv
}
