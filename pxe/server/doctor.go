package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/pxe/httpboot"
	"github.com/herdlab/herd/pxe/inventory"
	"github.com/herdlab/herd/pxe/tftp"
	"github.com/herdlab/herd/site"
)

// Check is one result of Doctor.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Skip   bool   `json:"skipped,omitempty"`
	Detail string `json:"detail"`
}

// DHCPProbe asks on iface whether another DHCP server answers; it returns
// the answering server's address, or "" when none answered.
type DHCPProbe func(ctx context.Context, iface string) (string, error)

// DoctorOptions tune Doctor.
type DoctorOptions struct {
	StateDir string
	Images   httpboot.Images // default StateImages
	// Hash verifies artifact sha256 (reads every byte); otherwise sizes only.
	Hash bool
	// Probe looks for another DHCP server (nil: the check is skipped).
	Probe DHCPProbe
	// TFTPPort is the TFTP port to check (default 69).
	TFTPPort int
	// Pool reports the dynamic pool from <state>/leases.json: its size, the
	// addresses free now and those in probation after a DECLINE (nil: the
	// check is skipped).
	Pool func(cfg *site.Config, stateDir string) (size, free, declined int, err error)
}

// Doctor checks that `herd serve` can run with cfg here: the interface and
// its address, free ports, the iPXE binaries, the current image and its
// artifacts, and no rival DHCP server.
func Doctor(ctx context.Context, cfg *site.Config, opt DoctorOptions) []Check {
	if opt.Images == nil {
		opt.Images = httpboot.StateImages{StateDir: opt.StateDir}
	}
	if opt.TFTPPort == 0 {
		opt.TFTPPort = 69
	}
	var out []Check
	add := func(name string, err error, okDetail string) {
		if err != nil {
			out = append(out, Check{Name: name, Detail: err.Error()})
			return
		}
		out = append(out, Check{Name: name, OK: true, Detail: okDetail})
	}
	skip := func(name, why string) { out = append(out, Check{Name: name, OK: true, Skip: true, Detail: why}) }

	// Interface and address.
	if cfg.Server.Interface == "" {
		skip("interface", "server.interface is not set (dhcp.mode off)")
	} else {
		add("interface", checkInterface(cfg.Server.Interface, cfg.Server.Address), cfg.Server.Interface+" has "+cfg.Server.Address)
	}

	// Ports.
	bind := cfg.Server.Address
	type port struct {
		name, net string
		n         int
		need      bool
	}
	for _, p := range []port{
		{"port dhcp udp/67", "udp4", 67, cfg.DHCP.Mode != site.DHCPOff},
		{"port proxydhcp udp/4011", "udp4", 4011, cfg.DHCP.Mode == site.DHCPProxy},
		{"port tftp udp/" + strconv.Itoa(opt.TFTPPort), "udp4", opt.TFTPPort, true},
		{"port http tcp/" + strconv.Itoa(cfg.Server.HTTPPort), "tcp4", cfg.Server.HTTPPort, true},
	} {
		if !p.need {
			skip(p.name, "not used in dhcp.mode "+cfg.DHCP.Mode)
			continue
		}
		host := bind
		if p.n == 67 || p.n == 4011 {
			host = "" // DHCP listens on all addresses (broadcasts)
		}
		add(p.name, portFree(p.net, host, p.n), "free")
	}

	// iPXE binaries.
	for _, name := range tftp.BootFiles {
		p := filepath.Join(cfg.Server.TFTPRoot, name)
		st, err := os.Stat(p)
		switch {
		case err != nil:
			add("ipxe "+name, fmt.Errorf("%s: %w (install the ipxe package or set server.tftp_root)", p, err), "")
		case !st.Mode().IsRegular() || st.Size() == 0:
			add("ipxe "+name, fmt.Errorf("%s is not a non-empty file", p), "")
		default:
			add("ipxe "+name, nil, fmt.Sprintf("%s (%d bytes)", p, st.Size()))
		}
	}

	// Image store.
	cur, err := opt.Images.Current()
	switch {
	case err != nil:
		add("current image", err, "")
	case cur == "":
		add("current image", errors.New("no image is current (herd image build, then herd image promote)"), "")
	default:
		id, dir, m, err := opt.Images.Resolve(cur)
		if err != nil {
			add("current image", err, "")
			break
		}
		add("current image", nil, id)
		add("current image artifacts", checkArtifacts(dir, m, opt.Hash), map[bool]string{true: "sizes and sha256 match", false: "sizes match (--hash checks sha256)"}[opt.Hash])
	}
	for _, n := range cfg.Nodes {
		if n.Image == "" {
			continue
		}
		if _, _, _, err := opt.Images.Resolve(n.Image); err != nil {
			add("pinned image of "+n.Name, err, "")
		}
	}

	out = append(out, nodeNetworkChecks(cfg, opt.StateDir)...)

	// Rival DHCP server.
	switch {
	case cfg.DHCP.Mode == site.DHCPOff:
		skip("other dhcp server", "dhcp.mode is off")
	case opt.Probe == nil:
		skip("other dhcp server", "this herd has no DHCP probe")
	default:
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		who, err := opt.Probe(pctx, cfg.Server.Interface)
		cancel()
		switch {
		case err != nil:
			add("other dhcp server", fmt.Errorf("probe on %s: %w", cfg.Server.Interface, err), "")
		case who != "" && cfg.DHCP.Mode == site.DHCPFull:
			add("other dhcp server", fmt.Errorf("%s answers DHCP on %s: full mode would fight it (use proxy mode, or --force)", who, cfg.Server.Interface), "")
		case who != "":
			add("other dhcp server", nil, who+" answers (fine in proxy mode: it gives the addresses)")
		default:
			add("other dhcp server", nil, "none answered on "+cfg.Server.Interface)
		}
	}

	// Pool exhaustion (full mode): every address leased, offered or in probation.
	switch {
	case cfg.DHCP.Mode != site.DHCPFull:
		skip("dhcp pool", "dhcp.mode is "+cfg.DHCP.Mode)
	case opt.Pool == nil:
		skip("dhcp pool", "this herd has no DHCP service")
	default:
		size, free, declined, err := opt.Pool(cfg, opt.StateDir)
		switch {
		case err != nil:
			add("dhcp pool", err, "")
		case size == 0:
			skip("dhcp pool", "no dynamic range (dhcp.range_start/range_end): reserved nodes only")
		case free == 0:
			add("dhcp pool", fmt.Errorf("exhausted: none of the %d addresses %s-%s is free (%d in probation after a DECLINE); unknown MACs and nodes without a reserved ip get no lease: widen the range or give nodes an ip",
				size, cfg.DHCP.RangeStart, cfg.DHCP.RangeEnd, declined), "")
		default:
			add("dhcp pool", nil, fmt.Sprintf("%d of %d addresses free (%d in probation)", free, size, declined))
		}
	}
	return out
}

func checkInterface(name, addr string) error {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return fmt.Errorf("server.interface %s: %w", name, err)
	}
	if ifi.Flags&net.FlagUp == 0 {
		return fmt.Errorf("server.interface %s is down", name)
	}
	if addr == "" {
		return nil
	}
	want, err := netip.ParseAddr(addr)
	if err != nil {
		return fmt.Errorf("server.address %q: %w", addr, err)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return fmt.Errorf("addresses of %s: %w", name, err)
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr() == want {
			return nil
		}
	}
	return fmt.Errorf("server.address %s is not on %s", addr, name)
}

func portFree(network, host string, port int) error {
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	if network == "tcp4" {
		l, err := net.Listen(network, addr)
		if err != nil {
			return fmt.Errorf("cannot bind %s: %w (is herd serve or another server running?)", addr, err)
		}
		return l.Close()
	}
	c, err := net.ListenPacket(network, addr)
	if err != nil {
		return fmt.Errorf("cannot bind %s/udp: %w (is herd serve or another server running?)", addr, err)
	}
	return c.Close()
}

func checkArtifacts(dir string, m *manifest.Manifest, hash bool) error {
	for _, name := range []string{manifest.Kernel, manifest.Initrd, manifest.Rootfs} {
		want, ok := m.Artifacts[name]
		if !ok {
			return fmt.Errorf("manifest lists no %s", name)
		}
		p := filepath.Join(dir, name)
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if st.Size() != want.Size {
			return fmt.Errorf("%s: %d bytes, manifest says %d", p, st.Size(), want.Size)
		}
		if hash {
			got, err := manifest.HashFile(p)
			if err != nil {
				return err
			}
			if got.SHA256 != want.SHA256 {
				return fmt.Errorf("%s: sha256 %s, manifest says %s", p, got.SHA256, want.SHA256)
			}
		}
	}
	return nil
}

// nodeNetworkChecks is one check per node with interfaces in herd.yaml: its
// links as it last reported them ("up" event or status report), failed
// when it reported itself degraded (e.g. "degraded: storage network down (...)").
func nodeNetworkChecks(cfg *site.Config, stateDir string) []Check {
	var out []Check
	var inv *inventory.Inventory
	for _, n := range cfg.Nodes {
		if len(n.Interfaces) == 0 {
			continue
		}
		name := "networks of " + n.Name
		if inv == nil {
			var err error
			if inv, err = inventory.Load(stateDir); err != nil {
				return append(out, Check{Name: "node networks", Detail: err.Error()})
			}
		}
		r, ok := inv.Get(n.MAC)
		if !ok || (r.UpTime.IsZero() && r.LinksTime.IsZero()) {
			out = append(out, Check{Name: name, OK: true, Skip: true, Detail: "not reported yet (the node reports its links when it is up)"})
			continue
		}
		var links []string
		for _, l := range r.Interfaces {
			role := l.Network
			if l.Boot {
				role = "boot"
			}
			if role == "" {
				continue
			}
			state := l.State
			if !l.Carrier {
				state += ", no carrier"
			}
			links = append(links, fmt.Sprintf("%s %s %s (%s, mtu %d)", role, l.Name, strings.Join(l.Addresses, ","), state, l.MTU))
		}
		detail := strings.Join(links, "; ")
		if len(r.Degraded) > 0 {
			when := r.LinksTime
			if when.IsZero() { // a record from before links_time
				when = r.UpTime
			}
			out = append(out, Check{Name: name, Detail: strings.Join(r.Degraded, "; ") + " — reported " + when.Format(time.RFC3339) + ": " + detail})
			continue
		}
		out = append(out, Check{Name: name, OK: true, Detail: detail})
	}
	return out
}
