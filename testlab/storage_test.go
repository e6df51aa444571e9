package testlab

import (
	"bufio"
	"context"
	"net"
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

// TestQMPWithSendsArguments: QMPWith sends the command with its arguments
// (set_link needs them; the plain QMP sent the whole JSON as a command
// name, which QEMU refused: CommandNotFound). A stand-in QMP server on a
// unix socket records what arrives: no QEMU is started for this.
func TestQMPWithSendsArguments(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "qmp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte(`{"QMP": {"version": {}}}` + "\n"))
		r := bufio.NewReader(c)
		var lines []string
		for range 2 {
			line, err := r.ReadString('\n')
			if err != nil {
				break
			}
			lines = append(lines, strings.TrimSpace(line))
			c.Write([]byte(`{"return": {}}` + "\n"))
		}
		got <- lines
	}()
	v := &VM{QMPPath: sock}
	if _, err := v.QMPWith("set_link", map[string]any{"name": StorageNICID, "up": false}); err != nil {
		t.Fatal(err)
	}
	lines := <-got
	want := []string{`{"execute":"qmp_capabilities"}`, `{"arguments":{"name":"stor0","up":false},"execute":"set_link"}`}
	if len(lines) != 2 || lines[0] != want[0] || lines[1] != want[1] {
		t.Fatalf("QMP got %q, want %q", lines, want)
	}
}
