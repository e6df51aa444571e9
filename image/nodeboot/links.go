package nodeboot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/herdlab/herd/fleet/nodestatus"
	"github.com/herdlab/herd/site"
)

// Link is one network interface as the node reports it, in its "up"
// event and in its status reports (the fields are nodestatus.Link's), plus
// what the node alone needs to label it.
type Link struct {
	nodestatus.Link
	// physical: the link has a device behind it (sysfs device/), so it is
	// a NIC and not a bond or VLAN that merely carries a NIC's MAC.
	physical bool
}

// ReadLinks lists the node's interfaces (loopback left out) from sysfs
// and the kernel's address list.
func ReadLinks(sysRoot string) ([]Link, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []Link
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		dir := filepath.Join(sysRoot, "class", "net", ifc.Name)
		l := Link{Link: nodestatus.Link{Name: ifc.Name, MAC: ifc.HardwareAddr.String(), MTU: ifc.MTU, State: readTrim(filepath.Join(dir, "operstate"))}}
		l.Carrier = readTrim(filepath.Join(dir, "carrier")) == "1"
		_, err := os.Stat(filepath.Join(dir, "device"))
		l.physical = err == nil
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
				l.Addresses = append(l.Addresses, ipn.String())
			}
		}
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// ReadDeclared reads the runtime overlay's etc/herd/networks.json under
// root; a node without declared interfaces has none (nil, nil).
func ReadDeclared(root string) (*site.NodeNetworks, error) {
	b, err := os.ReadFile(filepath.Join(root, site.DeclaredPath))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var n site.NodeNetworks
	if err := json.Unmarshal(b, &n); err != nil {
		return nil, fmt.Errorf("%s: %w", site.DeclaredPath, err)
	}
	return &n, nil
}

// CheckLinks labels links with the declared interface they are and returns
// one "degraded: <network> network down (...)" line per declared network
// whose interface is missing, down, or without its address.
func CheckLinks(links []Link, decl *site.NodeNetworks) (labelled []Link, degraded []string) {
	labelled = append([]Link(nil), links...)
	if decl == nil {
		return labelled, nil
	}
	for _, d := range decl.Interfaces {
		idx := -1
		for i, l := range labelled {
			var hit bool
			switch d.Kind {
			case "nic":
				hit = strings.EqualFold(l.MAC, d.MAC) && l.physical
			case "match":
				hit, _ = filepath.Match(d.Match, l.Name)
				hit = hit && l.physical
			default:
				hit = l.Name == d.Name
			}
			if hit {
				idx = i
				break
			}
		}
		if idx >= 0 {
			labelled[idx].Label, labelled[idx].Network = d.Label, d.Network
		}
		if d.Network == "" {
			continue // a link that only carries VLANs: its VLANs are checked
		}
		why := ""
		switch {
		case idx < 0:
			why = "missing"
		case !labelled[idx].Carrier || labelled[idx].State == "down" || labelled[idx].State == "lowerlayerdown":
			why = "link down"
		case d.Address == site.AddressDHCP && len(labelled[idx].Addresses) == 0:
			why = "no DHCP address"
		case d.Address != site.AddressDHCP && d.Address != "" && !contains(labelled[idx].Addresses, d.Address):
			why = "address " + d.Address + " not configured"
		case d.MTU > 0 && labelled[idx].MTU != d.MTU:
			why = fmt.Sprintf("MTU %d, want %d", labelled[idx].MTU, d.MTU)
		}
		if why != "" {
			what := d.Label
			if d.MAC != "" && d.MAC != d.Label {
				what += " " + d.MAC
			}
			degraded = append(degraded, fmt.Sprintf("degraded: %s network down (%s: %s)", d.Network, what, why))
		}
	}
	return labelled, degraded
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// BootLink is the interface the node reaches server (a base URL) through:
// the kernel's route to it, found by connecting a UDP socket (nothing is
// sent). On a two-NIC node the first NIC with an address may well be the
// storage NIC, so this, not PrimaryMAC, names the node's boot MAC.
func BootLink(server string) (mac, name string) {
	u, err := url.Parse(server)
	if err != nil || u.Hostname() == "" {
		return PrimaryMAC()
	}
	port := u.Port()
	if port == "" {
		port = "80"
	}
	c, err := net.Dial("udp4", net.JoinHostPort(u.Hostname(), port))
	if err != nil {
		return PrimaryMAC()
	}
	local := c.LocalAddr().(*net.UDPAddr).IP
	c.Close()
	ifs, _ := net.Interfaces()
	for _, ifc := range ifs {
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.Equal(local) && len(ifc.HardwareAddr) > 0 {
				return ifc.HardwareAddr.String(), ifc.Name
			}
		}
	}
	return PrimaryMAC()
}

// NetworkReport reads the node's links and checks them against what herd.yaml
// declares (etc/herd/networks.json under root). A declared interface that is
// not (yet) up is given until wait to come up: networkd configures it after
// the boot NIC, which is all network-online waits for.
func NetworkReport(ctx context.Context, sysRoot, root, bootMAC string, wait time.Duration) ([]Link, []string, error) {
	decl, err := ReadDeclared(root)
	if err != nil {
		return nil, nil, err
	}
	deadline := time.Now().Add(wait)
	for {
		links, err := ReadLinks(sysRoot)
		if err != nil {
			return nil, nil, err
		}
		labelled, degraded := CheckLinks(links, decl)
		for i := range labelled {
			labelled[i].Boot = bootMAC != "" && strings.EqualFold(labelled[i].MAC, bootMAC) && labelled[i].Label == "" && len(labelled[i].Addresses) > 0
		}
		if len(degraded) == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return labelled, degraded, nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
}

// FormatLinks is one line per link, for the console.
func FormatLinks(links []Link) string {
	var b strings.Builder
	for _, l := range links {
		tag := l.Network
		if l.Boot {
			tag = "boot"
		}
		fmt.Fprintf(&b, "herd:   %s %s %s carrier=%s mtu=%d %s %s\n", l.Name, l.MAC, l.State, strconv.FormatBool(l.Carrier), l.MTU, strings.Join(l.Addresses, ","), tag)
	}
	return b.String()
}
