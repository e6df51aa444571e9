package testlab

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/site"
)

// TestStorageLabSite: the two-network lab's herd.yaml is a valid site whose
// NAS is on the storage network and whose nodes name their storage NIC by
// MAC; the single-network lab's stays without networks.
func TestStorageLabSite(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "herd.yaml")
	if err := WriteStorageLabSite(p); err != nil {
		t.Fatal(err)
	}
	cfg, err := site.Load(p, nil)
	if err != nil {
		data, _ := os.ReadFile(p)
		t.Fatalf("%v\n%s", err, data)
	}
	if cfg.NASNetwork() != "storage" || cfg.NAS.Address != StorageNAS || cfg.Networks["storage"].MTU != StorageMTU || !strings.Contains(cfg.LDAP.URI, StorageNAS) {
		t.Fatalf("storage lab site: nas %s on %q, networks %+v, ldap %s", cfg.NAS.Address, cfg.NASNetwork(), cfg.Networks, cfg.LDAP.URI)
	}
	for i, n := range cfg.Nodes {
		if len(n.Interfaces) != 1 || n.Interfaces[0].MAC != StorageLabNodes[i].StorageMAC || n.Interfaces[0].Address != StorageLabNodes[i].StorageIP {
			t.Errorf("node %s interfaces: %+v", n.Name, n.Interfaces)
		}
	}
	if len(cfg.Admin.SSHKeys) != 1 {
		t.Errorf("admin keys: %v", cfg.Admin.SSHKeys)
	}
	_, pub := StorageAdminKey()
	if _, pub2 := StorageAdminKey(); pub != pub2 {
		t.Errorf("the admin key changes between calls: the image cache would never hold")
	}
	plain := filepath.Join(dir, "plain.yaml")
	if err := WriteLabSite(plain); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(plain); strings.Contains(string(data), "networks:") || strings.Contains(string(data), "interfaces:") {
		t.Errorf("the single-network lab site grew networks:\n%s", data)
	}
	args := VMConfig{Name: "n", Tap: "tap0", MAC: "52:54:00:77:00:11", Dir: dir, NICs: []NIC{{Tap: "stap1", MAC: "52:54:00:78:00:11", ID: StorageNICID}}}.Args()
	if !strings.Contains(strings.Join(args, " "), "-netdev tap,id=stor0,ifname=stap1,script=no,downscript=no -device virtio-net-pci,netdev=stor0,mac=52:54:00:78:00:11,romfile=") {
		t.Errorf("qemu args lack the storage NIC: %v", args)
	}
}

// TestStorageLabNASOnlyOnStorageBridge starts a two-network lab (no node
// boots): the NAS and LDAP addresses stand on the storage bridge alone, at
// MTU 9000, the boot bridge keeps only the server, and herd user add
// reaches slapd there.
func TestStorageLabNASOnlyOnStorageBridge(t *testing.T) {
	testenv.RequireNetns(t)
	testenv.RequireCommands(t, "ganesha.nfsd", "slapd")
	herd := testenv.Bin(t, "HERD_BIN")
	lab, err := StartLab(context.Background(), StorageLabConfig(t.TempDir(), herd, fakeImage(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	show := func(dev string) string {
		out, err := exec.Command("ip", "-n", lab.Netns.Name, "addr", "show", "dev", dev).CombinedOutput()
		if err != nil {
			t.Fatalf("ip addr show %s: %v %s", dev, err, out)
		}
		return string(out)
	}
	stor, boot := show(StorageBridge), show(LabBridge)
	if !strings.Contains(stor, "inet "+StorageNAS+"/24") || !strings.Contains(stor, "mtu 9000") {
		t.Errorf("%s:\n%s", StorageBridge, stor)
	}
	if strings.Contains(boot, StorageNAS) || strings.Contains(boot, LabNAS) {
		t.Errorf("the NAS is on the boot bridge too:\n%s", boot)
	}
	if _, _, err := lab.AddUser(context.Background(), "alice", "wonder-land-42"); err != nil {
		t.Fatalf("%v (%s)", err, lab.Logs())
	}
}
