package solo

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/pxe/inventory"
	"github.com/herdlab/herd/testlab"
)

// TestStorageNetwork boots a two-network lab (issue 21): the NAS (NFS +
// LDAP) stands only on a storage bridge with MTU 9000, the node has a
// second NIC there, named by MAC in herd.yaml. TestLab's lab and `herd
// image test` stay single-network and prove the old layout still works.
func TestStorageNetwork(t *testing.T) {
	herd := testlab.RequireLab(t)
	ctx := context.Background()

	img := storageImage(t, herd)
	dir := testlab.TempLabDir(t)
	cfg := testlab.StorageLabConfig(dir, herd, img)
	cfg.Nodes = append([]testlab.LabNode(nil), cfg.Nodes...) // not the package's slice
	// gpu02 (booted unplugged): systemd logs to the kernel ring, so a
	// crash of PID 1 ("Caught <SIG>", "Freezing execution") reaches the
	// serial console; with the journal it is lost with the machine (an
	// earlier run's gpu02 stalled that way, journald's keep-alives to PID
	// 1 refused).
	cfg.Nodes[1].KernelArgs = "systemd.log_target=kmsg"
	lab, err := testlab.StartLab(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var booted []*testlab.Booted
	t.Cleanup(func() {
		if t.Failed() {
			for _, b := range booted {
				t.Logf("--- serial console of %s (%s) ---\n%s", b.Node.Name, b.VM.SerialPath, b.VM.Console.Tail(80))
			}
			t.Logf("--- server log (%s) ---\n%s", lab.ServerLog, testlab.TailLines([]byte(lab.ServerLogText()), 40))
			t.Logf("NAS logs: %s (kept in %s)", lab.Logs(), dir)
		}
		for _, b := range booted {
			b.VM.Stop()
		}
		lab.Close()
	})
	uid, gid, err := lab.AddUser(ctx, "alice", alicePassword)
	if err != nil {
		t.Fatal(err)
	}

	// gpu02 boots at the same time with its storage cable pulled from
	// power-on (QEMU set_link off): it must come up anyway, say it is
	// degraded and not send NFS over the boot network.
	type result struct {
		b   *testlab.Booted
		err error
	}
	unplugged := make(chan result, 1)
	go func() {
		b, err := testlab.StartNodeUnplugged(ctx, lab, "gpu02", false)
		unplugged <- result{b, err}
	}()
	gpu01, err := testlab.BootNode(ctx, lab, "gpu01", false, "alice", alicePassword, uid, gid)
	if gpu01 != nil {
		booted = append(booted, gpu01)
	}
	gpu02 := <-unplugged
	if gpu02.b != nil {
		booted = append(booted, gpu02.b)
	}
	if err != nil {
		t.Fatalf("gpu01 did not boot: %v", err)
	}
	storageNodeChecks(t, ctx, lab, gpu01)
	t.Run("unplugged-storage-nic", func(t *testing.T) {
		if gpu02.err != nil {
			t.Fatalf("gpu02 (storage NIC unplugged) did not come up: %v", gpu02.err)
		}
		unpluggedChecks(t, ctx, lab, gpu02.b)
	})
}

// unpluggedChecks: a node whose storage NIC has no carrier reached
// multi-user and its admin's SSH login (StartNodeUnplugged), reports
// "degraded: storage network down", and the NAS guard keeps NFS off the
// boot network (nas.allow_fallback is not set).
func unpluggedChecks(t *testing.T, ctx context.Context, lab *testlab.Lab, b *testlab.Booted) {
	n := b.Node
	r := waitReport(t, ctx, lab, n.Name, func(r *inventory.Record) bool { return !r.UpTime.IsZero() })
	found := false
	for _, d := range r.Degraded {
		found = found || strings.HasPrefix(d, "degraded: storage network down")
	}
	if !found {
		t.Errorf("%s with its storage NIC unplugged reports degraded=%q, want \"degraded: storage network down ...\"", n.Name, r.Degraded)
	}
	for _, l := range r.Interfaces {
		if l.Network == "storage" && l.Carrier {
			t.Errorf("%s reports carrier on its unplugged storage NIC: %+v", n.Name, l)
		}
	}
	out, err := lab.Herd(ctx, "", "node", "list")
	if err != nil || !strings.Contains(out2s(out), "degraded") {
		t.Errorf("herd node list does not show %s degraded: %v\n%s", n.Name, err, out)
	}
	// No fallback: the NAS is unreachable, not routed over the boot NIC.
	out2, err := b.User.Run(ctx, "ip route get "+testlab.StorageNAS+" 2>&1; true")
	// The kernel answers a lookup that ends on an unreachable route with
	// EHOSTUNREACH ("RTNETLINK answers: No route to host"); a route over
	// the boot NIC would print "dev <boot NIC>".
	if err != nil || !(strings.Contains(out2, "No route to host") || strings.HasPrefix(strings.TrimSpace(out2), "unreachable")) {
		t.Errorf("ip route get %s on %s: want unreachable (the NAS guard), got %v\n%s", testlab.StorageNAS, n.Name, err, out2)
	}
	if out, err := b.User.Run(ctx, "ping -c 1 -W 2 "+testlab.StorageNAS); err == nil {
		t.Errorf("%s reached the NAS with its storage NIC unplugged:\n%s", n.Name, out)
	}
	// Plugging the cable back in brings the storage network up without a reboot.
	replugged := time.Now().UTC()
	if err := b.VM.SetStorageLink(true); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, err := b.User.Run(ctx, "ping -c 1 -W 2 "+testlab.StorageNAS)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the NAS is still unreachable 2 minutes after the storage cable came back: %v\n%s", n.Name, err, out)
		}
		time.Sleep(3 * time.Second)
	}
	replugChecks(t, ctx, lab, n.Name, replugged)
}

// replugChecks: after the storage cable came back, the node's next status
// reports (every 60 s) carry its links, so the server's record drops
// "storage network down" and shows carrier on the storage link, and `herd
// node list` no longer marks the node "up (degraded)" — without a reboot.
func replugChecks(t *testing.T, ctx context.Context, lab *testlab.Lab, name string, replugged time.Time) {
	r := waitReport(t, ctx, lab, name, func(r *inventory.Record) bool {
		if !r.LinksTime.After(replugged) {
			return false
		}
		carrier := false
		for _, l := range r.Interfaces {
			carrier = carrier || (l.Network == "storage" && l.Carrier)
		}
		for _, d := range r.Degraded {
			if strings.Contains(d, "storage network down") {
				return false
			}
		}
		return carrier
	})
	t.Logf("%s after the replug: links reported %s, degraded %q", name, r.LinksTime.Format(time.RFC3339), r.Degraded)
	out, err := lab.Herd(ctx, "", "node", "list")
	if err != nil {
		t.Fatalf("herd node list: %v\n%s", err, out)
	}
	row := ""
	for _, l := range strings.Split(out2s(out), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == name {
			row = l
		}
	}
	if row == "" || strings.Contains(row, "up (degraded)") {
		t.Errorf("herd node list after %s's storage link came back: want its row without \"up (degraded)\"\n%s", name, out)
	}
}

// storageNodeChecks: gpu01's storage NIC has its address and MTU, jumbo
// frames reach the NAS unfragmented, NFS goes over the storage NIC (route
// and byte counters), FS-Cache still hits, and the node's report says so.
func storageNodeChecks(t *testing.T, ctx context.Context, lab *testlab.Lab, b *testlab.Booted) {
	n := b.Node
	var stor, boot string
	t.Run("storage-address-and-mtu", func(t *testing.T) {
		out, err := b.User.Run(ctx, "ip -o -4 addr show")
		if err != nil {
			t.Fatal(err)
		}
		stor, boot = ifaceWith(out, n.StorageIP+"/24"), ifaceWith(out, n.IP+"/")
		if stor == "" || boot == "" || stor == boot {
			t.Fatalf("want %s/24 on the storage NIC and %s on the boot NIC:\n%s", n.StorageIP, n.IP, out)
		}
		out, err = b.User.Run(ctx, fmt.Sprintf("cat /sys/class/net/%s/address /sys/class/net/%s/mtu /sys/class/net/%s/mtu", stor, stor, boot))
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(out)
		if len(f) != 3 || f[0] != n.StorageMAC || f[1] != strconv.Itoa(testlab.StorageMTU) || f[2] != "1500" {
			t.Fatalf("storage NIC %s: mac, mtu, boot NIC mtu = %q; want %s %d 1500", stor, f, n.StorageMAC, testlab.StorageMTU)
		}
	})
	if stor == "" {
		t.Fatal("no storage NIC: the remaining checks need it")
	}
	t.Run("jumbo-ping-to-nas", func(t *testing.T) {
		// 8972 + 8 (ICMP) + 20 (IP) = 9000: one unfragmented frame (-M do).
		out, err := b.User.Run(ctx, "ping -M do -s 8972 -c 3 -W 5 "+testlab.StorageNAS)
		if err != nil || !strings.Contains(out, " 0% packet loss") {
			t.Fatalf("ping -M do -s 8972 %s: %v\n%s", testlab.StorageNAS, err, out)
		}
		// And the frame really is that big: one byte more does not fit.
		if out, err := b.User.Run(ctx, "ping -M do -s 8973 -c 1 -W 2 "+testlab.StorageNAS); err == nil {
			t.Fatalf("ping -M do -s 8973 went through: the path MTU is not 9000\n%s", out)
		}
	})
	t.Run("nfs-over-storage-nic", func(t *testing.T) {
		out, err := b.User.Run(ctx, "ip route get "+testlab.StorageNAS)
		if err != nil || !strings.Contains(out, " dev "+stor+" ") {
			t.Fatalf("ip route get %s: want dev %s: %v\n%s", testlab.StorageNAS, stor, err, out)
		}
		// A file written on the NAS side, read through alice's NFS home:
		// its bytes must arrive on the storage NIC, not the boot NIC.
		const size = 24 << 20
		name := "storage-net-" + strconv.FormatInt(time.Now().UnixNano(), 36)
		p := filepath.Join(lab.HomesDir, "alice", name)
		data := make([]byte, size)
		rand.Read(data)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chown(p, b.UID, b.GID)
		counters := fmt.Sprintf("cat /sys/class/net/%s/statistics/rx_bytes /sys/class/net/%s/statistics/rx_bytes", stor, boot)
		before, err := b.User.Run(ctx, counters)
		if err != nil {
			t.Fatal(err)
		}
		if out, err := b.User.Run(ctx, "cat ~/"+name+" | md5sum"); err != nil {
			t.Fatalf("read over NFS: %v\n%s", err, out)
		}
		after, err := b.User.Run(ctx, counters)
		if err != nil {
			t.Fatal(err)
		}
		d := deltas(t, before, after)
		if d[0] < size || d[1] >= size/4 {
			t.Fatalf("reading %d bytes over NFS: storage NIC %s received %d bytes, boot NIC %s %d; want the file on the storage NIC", size, stor, d[0], boot, d[1])
		}
		t.Logf("read %d MiB over NFS: storage NIC +%d bytes, boot NIC +%d bytes", size>>20, d[0], d[1])
	})
	// The standard checks that touch the NAS and the SSD, over the storage network.
	for _, c := range testlab.NodeChecks() {
		switch c.Name {
		case "ldap-user-resolves", "home-autofs-nfs-fsc", "cachefilesd-on-ssd", "fscache-hits", "nothing-failed":
			t.Run(c.Name, func(t *testing.T) {
				if err := c.Run(ctx, b); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
	t.Run("node-reports-networks", func(t *testing.T) {
		r := waitReport(t, ctx, lab, n.Name, func(r *inventory.Record) bool { return !r.UpTime.IsZero() })
		if len(r.Degraded) != 0 {
			t.Fatalf("gpu01 reports itself degraded: %q", r.Degraded)
		}
		var sawStor, sawBoot bool
		for _, l := range r.Interfaces {
			switch {
			case l.Network == "storage":
				sawStor = l.MAC == n.StorageMAC && l.State == "up" && l.Carrier && l.MTU == testlab.StorageMTU && len(l.Addresses) == 1 && l.Addresses[0] == n.StorageIP+"/24"
			case l.Boot:
				sawBoot = l.MAC == n.MAC
			}
		}
		if !sawStor || !sawBoot || r.MAC != n.MAC {
			t.Fatalf("gpu01's report (record %s): storage link right %v, boot link right %v: %+v", r.MAC, sawStor, sawBoot, r.Interfaces)
		}
		out, err := lab.Herd(ctx, "", "node", "show", n.Name)
		if err != nil || !strings.Contains(out2s(out), n.StorageIP+"/24") {
			t.Fatalf("herd node show: %v\n%s", err, out)
		}
	})
}

// ifaceWith is the interface of the `ip -o -4 addr show` line holding addr.
func ifaceWith(out, addr string) string {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && strings.Contains(line, " "+addr) {
			return f[1]
		}
	}
	return ""
}

func deltas(t *testing.T, before, after string) [2]int64 {
	b, a := strings.Fields(before), strings.Fields(after)
	if len(b) != 2 || len(a) != 2 {
		t.Fatalf("counters: %q then %q", before, after)
	}
	var d [2]int64
	for i := range d {
		x, _ := strconv.ParseInt(b[i], 10, 64)
		y, _ := strconv.ParseInt(a[i], 10, 64)
		d[i] = y - x
	}
	return d
}

// waitReport polls `herd node show NAME --json` until ok holds for its record.
func waitReport(t *testing.T, ctx context.Context, lab *testlab.Lab, name string, ok func(*inventory.Record) bool) *inventory.Record {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		out, err := lab.Herd(ctx, "", "node", "show", name, "--json")
		var v struct{ Seen *inventory.Record }
		if err == nil && json.Unmarshal(out, &v) == nil && v.Seen != nil && ok(v.Seen) {
			return v.Seen
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's report never came (last: %v %s)", name, err, out)
		}
		time.Sleep(3 * time.Second)
	}
}

func out2s(b []byte) string { return string(b) }

// storageImage is the default recipe built with the storage lab's herd.yaml
// (the NAS address its autofs maps bake in is on the storage network;
// only the overlays stage and after differ from TestLab's image), or
// $HERD_E2E_STORAGE_IMAGE.
func storageImage(t *testing.T, herd string) string {
	return testlab.RecipeImage(t, herd, "HERD_E2E_STORAGE_IMAGE", defaultRecipe, testlab.WriteStorageLabSite)
}
