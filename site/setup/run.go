package setup

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/herdlab/herd/site"
)

// Options says how Run talks and what it writes.
type Options struct {
	In  io.Reader
	Out io.Writer
	// Interactive asks for what Answers leaves empty; otherwise a missing
	// answer without a default is an error naming its flag.
	Interactive bool
	// Probe looks for another DHCP server (nil: no probe, mode must be given).
	Probe Prober
	// Path is the herd.yaml to write; Force replaces an existing one.
	Path  string
	Force bool
	// Flags names the command-line flag of each question, for errors.
	Flags map[string]string
}

type run struct {
	o Options
	r *bufio.Reader
}

// Run asks, checks and writes herd.yaml; on any refusal nothing is written.
func Run(ctx context.Context, a Answers, o Options) (Answers, error) {
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.In == nil {
		o.In = strings.NewReader("")
	}
	w := &run{o: o, r: bufio.NewReader(o.In)}
	if !o.Force {
		if _, err := os.Lstat(o.Path); err == nil {
			return a, fmt.Errorf("%s %w (the package installs an example there): nothing written; pass --force to replace it", o.Path, ErrExists)
		}
	}
	if a.HTTPPort == 0 {
		a.HTTPPort = 8080
	}
	if err := w.network(ctx, &a); err != nil {
		return a, err
	}
	if err := w.nas(ctx, &a); err != nil {
		return a, err
	}
	if err := w.ldap(&a); err != nil {
		return a, err
	}
	data, err := Render(a, time.Now())
	if err != nil {
		return a, err
	}
	if err := Write(o.Path, data, o.Force); err != nil {
		return a, err
	}
	fmt.Fprintf(o.Out, "\nWrote %s (dhcp.mode %s on %s).\nNext:\n", o.Path, a.Mode, a.Interface)
	add := "herd node add NAME MAC"
	if a.Mode == site.DHCPFull {
		add += " --ip ADDRESS"
	}
	for _, l := range [][2]string{
		{"herd image build RECIPE; herd image promote ID", "the image nodes boot"},
		{add, "each server, by its boot NIC's MAC"},
		{"herd doctor", "checks this file against the machine"},
		{"systemctl enable --now herd", "serve"},
	} {
		fmt.Fprintf(o.Out, "  %-48s # %s\n", l[0], l[1])
	}
	return a, nil
}

// missing is the error for an answer the non-interactive form lacks.
func (w *run) missing(key, what string) error {
	flag := w.o.Flags[key]
	if flag == "" {
		flag = key
	}
	return fmt.Errorf("%s is needed: pass %s (nothing written)", what, flag)
}

// ask prints q with its default and reads one line; an empty line takes
// the default. It re-asks while the answer is empty or check refuses it.
func (w *run) ask(q, def string, check func(string) error) (string, error) {
	for {
		if def != "" {
			fmt.Fprintf(w.o.Out, "%s [%s]: ", q, def)
		} else {
			fmt.Fprintf(w.o.Out, "%s: ", q)
		}
		line, err := w.r.ReadString('\n')
		if err != nil && line == "" {
			fmt.Fprintln(w.o.Out)
			return "", fmt.Errorf("no answer to %q (input ended): nothing written", q)
		}
		v := strings.TrimSpace(line)
		if v == "" {
			v = def
		}
		if v == "" {
			fmt.Fprintln(w.o.Out, "  an answer is needed")
			continue
		}
		if check != nil {
			if err := check(v); err != nil {
				fmt.Fprintf(w.o.Out, "  %v\n", err)
				continue
			}
		}
		return v, nil
	}
}

// value fills *field: kept when set, asked when interactive, else def, else an error.
func (w *run) value(field *string, key, q, def string, check func(string) error) error {
	if *field != "" {
		if check != nil {
			if err := check(*field); err != nil {
				return fmt.Errorf("%s: %w (nothing written)", w.o.Flags[key], err)
			}
		}
		return nil
	}
	if !w.o.Interactive {
		if def == "" {
			return w.missing(key, q)
		}
		*field = def
		return nil
	}
	v, err := w.ask(q, def, check)
	*field = v
	return err
}

func (w *run) network(ctx context.Context, a *Answers) error {
	ifs, err := Interfaces()
	if err != nil {
		return err
	}
	def := ""
	if len(ifs) == 1 {
		def = ifs[0].Name
	}
	if a.Interface == "" && w.o.Interactive {
		fmt.Fprintln(w.o.Out, "Interfaces with an IPv4 address:")
		for _, i := range ifs {
			fmt.Fprintf(w.o.Out, "  %-16s %s\n", i.Name, i.Prefix)
		}
	}
	if a.Interface == "" && !w.o.Interactive && def == "" {
		names := make([]string, len(ifs))
		for i, f := range ifs {
			names[i] = f.Name
		}
		return w.missing("interface", fmt.Sprintf("the interface facing the nodes (one of: %s)", strings.Join(names, ", ")))
	}
	var prefix netip.Prefix
	if err := w.value(&a.Interface, "interface", "Interface facing the nodes (herd's DHCP, TFTP and HTTP)", def, func(v string) error {
		p, err := InterfaceAddress(v)
		prefix = p
		return err
	}); err != nil {
		return err
	}
	if a.Address == "" {
		a.Address = prefix.Addr().String()
	} else if ad, err := netip.ParseAddr(a.Address); err != nil || !ad.Is4() {
		return fmt.Errorf("%s %q is not an IPv4 address (nothing written)", w.o.Flags["address"], a.Address)
	}
	if a.Subnet == "" {
		a.Subnet = prefix.Masked().String()
	}

	mode := strings.ToLower(a.Mode)
	if mode == "auto" {
		mode = ""
	}
	switch mode {
	case "", site.DHCPFull, site.DHCPProxy, site.DHCPOff:
	default:
		return fmt.Errorf("%s %q is not one of auto, full, proxy, off (nothing written)", w.o.Flags["mode"], a.Mode)
	}
	proposed := site.DHCPProxy
	if mode != site.DHCPOff {
		if w.o.Probe == nil {
			if mode == "" {
				return w.missing("mode", "the DHCP mode (this herd cannot probe for another DHCP server)")
			}
		} else {
			fmt.Fprintf(w.o.Out, "Looking for another DHCP server on %s (a DHCPDISCOVER; waiting for offers)...\n", a.Interface)
			who, err := w.o.Probe(ctx, a.Interface)
			switch {
			case err != nil && !errors.Is(err, context.DeadlineExceeded):
				if mode == "" && !w.o.Interactive {
					return fmt.Errorf("probe for another DHCP server on %s: %w: give %s (nothing written)", a.Interface, err, w.o.Flags["mode"])
				}
				fmt.Fprintf(w.o.Out, "  the probe failed: %v; proxy is the safe choice\n", err)
			case who != "":
				a.Rival = who
				fmt.Fprintf(w.o.Out, "  found another DHCP server: %s\n  it keeps giving addresses; herd runs in proxy mode and adds only boot information\n", who)
			default:
				proposed = site.DHCPFull
				fmt.Fprintf(w.o.Out, "  no other DHCP server answered: herd can give the addresses itself (full mode)\n")
			}
		}
	}
	checkMode := func(v string) error {
		switch v {
		case site.DHCPFull:
			if a.Rival != "" {
				return fmt.Errorf("full mode would fight the DHCP server that answered (%s): choose proxy, or stop that server first", a.Rival)
			}
		case site.DHCPProxy, site.DHCPOff:
		default:
			return fmt.Errorf("%q is not one of full, proxy, off", v)
		}
		return nil
	}
	a.Mode = mode
	return w.value(&a.Mode, "mode", "DHCP mode: full (herd gives addresses), proxy (boot info beside another DHCP server), off", proposed, checkMode)
}

func (w *run) nas(ctx context.Context, a *Answers) error {
	given := *a
	for {
		if err := w.value(&a.NASAddress, "nas", "NAS address (NFS server holding the homes)", "", func(v string) error {
			if _, err := netip.ParseAddr(v); err != nil && strings.ContainsAny(v, " /:") {
				return fmt.Errorf("%q is not a host name or IP address", v)
			}
			return nil
		}); err != nil {
			return err
		}
		abs := func(v string) error {
			if v != "none" && !strings.HasPrefix(v, "/") {
				return fmt.Errorf("%q is not an absolute export path such as /export/homes", v)
			}
			return nil
		}
		if err := w.value(&a.Homes, "homes", "Homes export on the NAS (one directory per user)", "/export/homes", abs); err != nil {
			return err
		}
		if err := w.value(&a.Public, "public", "Shared export mounted at /media/Public (none: no shared folder)", "/export/Public", abs); err != nil {
			return err
		}
		fmt.Fprintf(w.o.Out, "Looking up the exports on %s over NFSv4...\n", a.NASAddress)
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		err := CheckNAS(cctx, *a)
		cancel()
		if err == nil {
			fmt.Fprintf(w.o.Out, "  found %s\n", strings.TrimSuffix(a.Homes+" and "+a.Public, " and none"))
			return nil
		}
		if !w.o.Interactive {
			return fmt.Errorf("%w (nothing written)", err)
		}
		fmt.Fprintf(w.o.Out, "  %v\n  Try again.\n", err)
		a.NASAddress, a.Homes, a.Public = given.NASAddress, given.Homes, given.Public
		if a.NASAddress != "" && a.Homes != "" && a.Public != "" {
			return fmt.Errorf("%w (nothing written)", err) // all from flags: asking again changes nothing
		}
	}
}

func (w *run) ldap(a *Answers) error {
	if err := w.value(&a.LDAPURI, "ldap-uri", "LDAP server URI", "ldap://"+a.NASAddress+"/", func(v string) error {
		if !strings.HasPrefix(v, "ldap://") && !strings.HasPrefix(v, "ldaps://") {
			return fmt.Errorf("%q is not an ldap:// or ldaps:// URI", v)
		}
		return nil
	}); err != nil {
		return err
	}
	if a.LDAPTLS == "" && strings.HasPrefix(a.LDAPURI, "ldaps://") {
		a.LDAPTLS = "ldaps"
	}
	baseDef := ""
	if a.LDAPBase == "" {
		baseDef = NamingContext(a.LDAPURI)
	}
	if err := w.value(&a.LDAPBase, "ldap-base", "LDAP base DN", baseDef, nil); err != nil {
		return err
	}
	if err := w.value(&a.LDAPAdminDN, "ldap-admin-dn", "DN herd binds as to manage users", "cn=admin,"+a.LDAPBase, nil); err != nil {
		return err
	}
	if err := w.value(&a.LDAPAdminPasswordFile, "ldap-admin-password-file", "File holding that DN's password (mode 0600)", "/etc/herd/ldap-admin.secret", nil); err != nil {
		return err
	}
	fmt.Fprintf(w.o.Out, "Binding to %s as %s...\n", a.LDAPURI, a.LDAPAdminDN)
	if err := CheckLDAP(*a); err != nil {
		fmt.Fprintf(w.o.Out, "  LDAP refused: %v\n", err)
		return fmt.Errorf("LDAP check failed: %w: nothing written", err)
	}
	fmt.Fprintf(w.o.Out, "  bound, and %s is readable\n", a.LDAPBase)
	return nil
}
