package testlab

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"golang.org/x/crypto/ssh"
)

// The storage network of a two-network lab (LabConfig.Storage): a second
// bridge with jumbo frames where the NAS (nfs-ganesha + slapd) stands
// alone; nodes boot on br-herd and reach the NAS through a second NIC.
const (
	StorageSubnet = "10.78.0.0/24"
	StorageBridge = "br-stor"
	StorageNAS    = "10.78.0.2"
	StorageMTU    = 9000
)

// StorageLabNodes are DefaultLabNodes with a storage NIC each (the second
// NIC, named by MAC in herd.yaml).
var StorageLabNodes = []LabNode{
	{Name: "gpu01", MAC: "52:54:00:77:00:11", IP: "10.77.0.11", StorageMAC: "52:54:00:78:00:11", StorageIP: "10.78.0.11"},
	{Name: "gpu02", MAC: "52:54:00:77:00:12", IP: "10.77.0.12", StorageMAC: "52:54:00:78:00:12", StorageIP: "10.78.0.12"},
}

// storageSite moves the NAS and LDAP of a storage lab onto the storage
// network (unless the caller placed them).
func storageSite(c LabConfig) LabSite {
	s := c.Site
	if c.Storage {
		if s.NASAddr == "" {
			s.NASAddr = StorageNAS
		}
		if s.LDAPAddr == "" {
			s.LDAPAddr = StorageNAS
		}
	}
	return s
}

// storageYAML is the networks section of a storage lab's herd.yaml.
func storageYAML(c LabConfig) string {
	if !c.Storage {
		return ""
	}
	return fmt.Sprintf("networks:\n  storage:\n    subnet: %s\n    mtu: %d\n", StorageSubnet, StorageMTU)
}

// storageInterfaceYAML is a node's interfaces entry in a storage lab.
func storageInterfaceYAML(c LabConfig, n LabNode) string {
	if !c.Storage || n.StorageMAC == "" {
		return ""
	}
	return fmt.Sprintf("    interfaces:\n      - {name: storage0, mac: %q, network: storage, address: %s}\n", n.StorageMAC, n.StorageIP)
}

// startStorageBridge makes the storage bridge (MTU 9000) and returns the
// bridge the NAS addresses go on.
func (l *Lab) startStorageBridge() (string, error) {
	if !l.Config.Storage {
		return LabBridge, nil
	}
	if err := l.Netns.IP("link", "add", StorageBridge, "mtu", fmt.Sprint(StorageMTU), "type", "bridge"); err != nil {
		return "", err
	}
	if err := l.Netns.IP("link", "set", StorageBridge, "up"); err != nil {
		return "", err
	}
	return StorageBridge, nil
}

// addStorageNIC gives a storage lab's node its second NIC: a tap on the
// storage bridge with jumbo frames.
func (l *Lab) addStorageNIC(n LabNode) ([]NIC, error) {
	if !l.Config.Storage || n.StorageMAC == "" {
		return nil, nil
	}
	name := fmt.Sprintf("stap%d", l.taps.Add(1)-1)
	if err := l.Netns.IP("tuntap", "add", "dev", name, "mode", "tap"); err != nil {
		return nil, err
	}
	for _, args := range [][]string{{"link", "set", name, "mtu", fmt.Sprint(StorageMTU)}, {"link", "set", name, "master", StorageBridge}, {"link", "set", name, "up"}} {
		if err := l.Netns.IP(args...); err != nil {
			return nil, err
		}
	}
	return []NIC{{Tap: name, MAC: n.StorageMAC, ID: StorageNICID}}, nil
}

// StorageNICID is the QEMU netdev id of a node's storage NIC, for QMP
// set_link (unplugging the cable).
const StorageNICID = "stor0"

// SetStorageLink plugs (up) or unplugs the VM's storage NIC cable.
func (v *VM) SetStorageLink(up bool) error {
	_, err := v.QMPWith("set_link", map[string]any{"name": StorageNICID, "up": up})
	return err
}

// StorageAdminKey is the fixed ed25519 key of the storage lab's local
// admin (admin.ssh_keys): images bake admin keys in, so it must be the same
// on every run for the stage cache to hold. It only ever opens nodes inside
// a lab namespace.
func StorageAdminKey() (ssh.Signer, string) {
	seed := sha256.Sum256([]byte("herd testlab storage-network admin key (test only)"))
	signer, err := ssh.NewSignerFromKey(ed25519.NewKeyFromSeed(seed[:]))
	if err != nil {
		panic(err)
	}
	return signer, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))) + " herd-storage-lab"
}

// StorageLabConfig is a two-network lab: StorageLabNodes, the NAS only on
// the storage network, the fixed admin key.
func StorageLabConfig(dir, herdBin, imageDir string) LabConfig {
	_, pub := StorageAdminKey()
	return LabConfig{Dir: dir, HerdBin: herdBin, ImageDir: imageDir, Nodes: StorageLabNodes, Storage: true, AdminKeys: []string{pub}}
}

// WriteStorageLabSite writes the storage lab's herd.yaml for image builds
// (WriteLabSite's two-network twin: the NAS address baked into the autofs
// maps is on the storage network).
func WriteStorageLabSite(path string) error {
	secret := filepath.Join(filepath.Dir(path), "ldap-admin.secret")
	if err := os.WriteFile(secret, []byte("unused-at-build-time\n"), 0o600); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(SiteYAML(StorageLabConfig("", "", ""), "cn=admin,"+LabBase, secret)), 0o644)
}

// AdminGuest is the node's local admin over SSH with the storage lab's key:
// it logs in when the NAS and LDAP are out of reach.
func (b *Booted) AdminGuest() *Guest {
	signer, _ := StorageAdminKey()
	return &Guest{Netns: b.Lab.Netns, Addr: b.Node.IP, User: "herdadmin", Signer: signer, HostKeys: b.User.HostKeys}
}

// pid1Gone is what the console shows once systemd (PID 1) no longer serves
// its notify socket (it crashed and froze, or never came back from a
// re-exec): journald's keep-alives to it fail and the boot cannot finish,
// so waiting out BootTimeout would only cost QEMU time.
var pid1Gone = regexp.MustCompile(`Failed to send WATCHDOG=1 notification message|Freezing execution`)

// upOrPID1Gone matches multi-user or pid1Gone, whichever comes first.
var upOrPID1Gone = regexp.MustCompile(multiUser.String() + "|" + pid1Gone.String())

// StartNodeUnplugged boots a storage lab node with its storage cable pulled
// from power-on, and waits for multi-user and the admin's SSH login (the
// LDAP user cannot log in: the directory is on the storage network).
func StartNodeUnplugged(ctx context.Context, l *Lab, name string, uefi bool) (*Booted, error) {
	n, ok := l.Node(name)
	if !ok {
		return nil, fmt.Errorf("lab: no node %q", name)
	}
	vm, err := l.StartNode(ctx, name, uefi)
	if err != nil {
		return nil, err
	}
	b := &Booted{Lab: l, VM: vm, Node: n, User: &Guest{Netns: l.Netns, Addr: n.IP}}
	if err := vm.SetStorageLink(false); err != nil {
		return b, fmt.Errorf("lab: unplug %s's storage NIC: %w", name, err)
	}
	m, err := vm.Console.Expect(ctx, upOrPID1Gone, BootTimeout)
	if err == nil && pid1Gone.MatchString(m[0]) {
		err = fmt.Errorf("systemd (PID 1) stopped serving its notify socket (console: %q); the boot cannot finish", m[0])
	}
	if err != nil {
		return b, fmt.Errorf("%s did not reach multi-user: %w\n(%s)", name, err, l.Logs())
	}
	keys, err := NodeHostKeys(l.StateDir, name)
	if err != nil {
		return b, err
	}
	b.User.HostKeys = keys
	b.User = b.AdminGuest()
	return b, b.User.WaitSSH(ctx, BootTimeout)
}
