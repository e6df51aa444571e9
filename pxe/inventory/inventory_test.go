package inventory

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herdlab/herd/fleet/nodestatus"
)

func TestConcurrentEventsPersist(t *testing.T) {
	dir := t.TempDir()
	inv, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 28, 13, 0, 0, 0, time.UTC)
	var wg sync.WaitGroup
	for n := 0; n < 8; n++ {
		wg.Add(1)
		go func(n int) {
			defer wg.Done()
			mac := fmt.Sprintf("52:54:00:00:00:%02x", n)
			for _, st := range []string{"network", "download", "up"} {
				e := Event{Node: fmt.Sprintf("gpu%d", n), MAC: mac, Stage: st, Image: "abcdef0123456789", Kernel: "6.8.0-149-generic", NVIDIA: "580.178.04"}
				if err := inv.RecordEvent(e, "10.0.0.1", now); err != nil {
					t.Error(err)
				}
			}
		}(n)
	}
	wg.Wait()
	if err := inv.Flush(); err != nil {
		t.Fatal(err)
	}
	again, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	recs := again.Records()
	if len(recs) != 8 {
		t.Fatalf("%d records after reload, want 8", len(recs))
	}
	for _, r := range recs {
		if r.Boots != 1 || r.Stage != "up" || r.Image != "abcdef0123456789" || r.NVIDIA != "580.178.04" {
			t.Errorf("record %+v", r)
		}
	}
	if c := again.CountByImage()["abcdef0123456789"]; c != 8 {
		t.Errorf("CountByImage = %d, want 8", c)
	}
	if err := again.RecordDHCP("52-54-00-00-00-01", "gpu1", "10.0.0.11", now); err != nil {
		t.Fatal(err)
	}
	r, ok := again.Get("52:54:00:00:00:01")
	if !ok || r.LastDHCPIP != "10.0.0.11" || r.Boots != 1 {
		t.Errorf("after DHCP: %+v", r)
	}
	if err := again.Forget("52:54:00:00:00:01"); err != nil {
		t.Fatal(err)
	}
	if third, _ := Load(dir); len(third.Records()) != 7 {
		t.Errorf("forget did not persist")
	}
}

func TestBadEventsRefused(t *testing.T) {
	inv, _ := Load(t.TempDir())
	for _, e := range []Event{
		{MAC: "nonsense", Stage: "up"},
		{MAC: "52:54:00:00:00:01", Stage: "dancing"},
		{MAC: "52:54:00:00:00:01", Stage: "download", Percent: 101},
		{MAC: "52:54:00:00:00:01", Stage: "up", Node: "a\nb"},
	} {
		if err := inv.RecordEvent(e, "", time.Now()); err == nil {
			t.Errorf("accepted %+v", e)
		}
	}
	if len(inv.Records()) != 0 {
		t.Error("a refused event left a record")
	}
}

func TestCorruptFileNamed(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, FileName), []byte("{not json"), 0o644)
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), FileName) {
		t.Fatalf("err = %v, want one naming %s", err, FileName)
	}
}

// TestInterfacesKeptFromUp: the links and degraded lines of an "up" event
// land in the record and survive a reload; a node cannot bloat the
// inventory with endless interfaces, addresses or degraded lines, nor put
// control characters in what `herd node show` prints.
func TestInterfacesKeptFromUp(t *testing.T) {
	dir := t.TempDir()
	inv, _ := Load(dir)
	up := Event{MAC: "52:54:00:77:00:11", Node: "gpu01", Stage: "up", Interfaces: []Link{
		{Name: "ens3", MAC: "52:54:00:77:00:11", State: "up", Carrier: true, MTU: 1500, Addresses: []string{"10.77.0.11/24"}, Boot: true},
		{Name: "ens4", MAC: "52:54:00:78:00:11", State: "down", MTU: 9000, Label: "st0", Network: "storage"},
	}, Degraded: []string{"degraded: storage network down (st0 52:54:00:78:00:11: link down)"}}
	if err := inv.RecordEvent(up, "10.77.0.11", time.Now()); err != nil {
		t.Fatal(err)
	}
	again, _ := Load(dir)
	r, ok := again.Get("52:54:00:77:00:11")
	if !ok || len(r.Interfaces) != 2 || r.Interfaces[1].Network != "storage" || len(r.Degraded) != 1 {
		t.Fatalf("record after reload: %+v", r)
	}
	many := make([]Link, 65)
	for i := range many {
		many[i] = Link{Name: fmt.Sprintf("dummy%d", i), State: "up"}
	}
	addrs := make([]string, 33)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("10.0.0.%d/24", i)
	}
	for name, e := range map[string]Event{
		"65 interfaces":    {Interfaces: many},
		"33 addresses":     {Interfaces: []Link{{Name: "ens3", Addresses: addrs}}},
		"newline in name":  {Interfaces: []Link{{Name: "ens3\nFAKE"}}},
		"long label":       {Interfaces: []Link{{Name: "ens3", Label: strings.Repeat("x", 65)}}},
		"33 degraded":      {Degraded: make([]string, 33)},
		"newline degraded": {Degraded: []string{"ok\ndegraded: fake"}},
	} {
		e.MAC, e.Stage = "52:54:00:77:00:12", "up"
		if err := inv.RecordEvent(e, "", time.Now()); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, ok := inv.Get("52:54:00:77:00:12"); ok {
		t.Error("a refused event left a record")
	}
}

// TestAttackForgedEventFlood: 10,000 forged boot events for random MACs
// (attacker: any host that can POST /events) cost a few rewrites of
// nodes.json, not one each; the file stays bounded; the records of real
// nodes (seen by DHCP and their script under their configured names)
// survive intact. Fails if every event rewrites the file or the file grows
// with the flood.
func TestAttackForgedEventFlood(t *testing.T) {
	dir := t.TempDir()
	inv, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for n := 1; n <= 3; n++ {
		mac := fmt.Sprintf("52:54:00:77:00:%02x", n)
		name := fmt.Sprintf("gpu%02d", n)
		if err := inv.RecordDHCP(mac, name, fmt.Sprintf("10.77.0.%d", 10+n), now); err != nil {
			t.Fatal(err)
		}
		if err := inv.RecordScript(mac, name, "abcdef0123456789", "10.77.0.1", now); err != nil {
			t.Fatal(err)
		}
		if err := inv.RecordEvent(Event{Node: name, MAC: mac, Stage: "up", Image: "abcdef0123456789", Kernel: "6.8.0-149-generic"}, "10.77.0.1", now); err != nil {
			t.Fatal(err)
		}
	}
	if err := inv.Flush(); err != nil {
		t.Fatal(err)
	}
	w0 := inv.writes
	start := time.Now()
	for i := 0; i < 10000; i++ {
		e := Event{Node: fmt.Sprintf("forged%d", i), MAC: fmt.Sprintf("02:00:00:%02x:%02x:%02x", i>>16&0xff, i>>8&0xff, i&0xff),
			Stage: "up", Image: "ffffffffffffffff", Message: strings.Repeat("x", 200)}
		if err := inv.RecordEvent(e, "10.77.0.66", now.Add(time.Duration(i)*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	if err := inv.Flush(); err != nil {
		t.Fatal(err)
	}
	writes := inv.writes - w0
	if max := int(elapsed/FlushInterval) + 2; writes > max {
		t.Errorf("10,000 events rewrote nodes.json %d times in %s, want at most %d (one per %s)", writes, elapsed, max, FlushInterval)
	}
	st, err := os.Stat(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() > 2<<20 {
		t.Errorf("nodes.json is %d bytes after the flood, want it bounded (at most 2 MiB)", st.Size())
	}
	again, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(again.Records()); n > MaxUnconfirmed+3 {
		t.Errorf("%d records after the flood, want at most %d", n, MaxUnconfirmed+3)
	}
	for n := 1; n <= 3; n++ {
		r, ok := again.Get(fmt.Sprintf("52:54:00:77:00:%02x", n))
		if !ok || r.Name != fmt.Sprintf("gpu%02d", n) || r.Boots != 1 || r.LastDHCPIP != fmt.Sprintf("10.77.0.%d", 10+n) || r.ScriptImage != "abcdef0123456789" {
			t.Errorf("real node %d after the flood: %+v %v", n, r, ok)
		}
	}
	t.Logf("10,000 events: %d rewrites in %s, nodes.json %d bytes", writes, elapsed.Round(time.Millisecond), st.Size())
}

// TestCacheKeptFromUp: the image cache an "up" event reports lands in the
// record (for `herd node list`'s NEXT BOOT) and survives a reload; a node
// cannot bloat the inventory with endless entries or put anything but
// sha256s there.
func TestCacheKeptFromUp(t *testing.T) {
	dir := t.TempDir()
	inv, _ := Load(dir)
	sha := strings.Repeat("ab", 32)
	if err := inv.RecordEvent(Event{MAC: "52:54:00:77:00:11", Node: "gpu01", Stage: "up", Cache: &Cache{Disk: true, Images: []string{sha}}}, "10.77.0.11", time.Now()); err != nil {
		t.Fatal(err)
	}
	again, _ := Load(dir)
	if r, ok := again.Get("52:54:00:77:00:11"); !ok || r.Cache == nil || !r.Cache.Disk || len(r.Cache.Images) != 1 || r.Cache.Images[0] != sha {
		t.Fatalf("record after reload: %+v", r)
	}
	many := make([]string, MaxCachedImages+1)
	for i := range many {
		many[i] = sha
	}
	for name, c := range map[string]*Cache{
		"too many":           {Disk: true, Images: many},
		"upper case":         {Disk: true, Images: []string{strings.ToUpper(sha)}},
		"not hex":            {Disk: true, Images: []string{strings.Repeat("zz", 32)}},
		"short":              {Disk: true, Images: []string{sha[:10]}},
		"images without SSD": {Images: []string{sha}},
		"path":               {Disk: true, Images: []string{"../" + sha[3:]}},
	} {
		if err := inv.RecordEvent(Event{MAC: "52:54:00:77:00:12", Stage: "up", Cache: c}, "", time.Now()); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, ok := inv.Get("52:54:00:77:00:12"); ok {
		t.Error("a refused event left a record")
	}
}

// TestStatusReportFollowsLinks: a node's links and network-degraded lines
// follow its latest status report, not only its boot-time "up" event: a
// replugged storage NIC clears "degraded", a link lost after boot sets it,
// and a report from an older agent (no network) leaves the "up" event's
// view alone.
func TestStatusReportFollowsLinks(t *testing.T) {
	dir := t.TempDir()
	inv, _ := Load(dir)
	const mac = "52:54:00:77:00:12"
	boot := Link{Name: "ens3", MAC: mac, State: "up", Carrier: true, MTU: 1500, Addresses: []string{"10.77.0.12/24"}, Boot: true}
	storageDown := Link{Name: "ens4", MAC: "52:54:00:78:00:12", State: "down", MTU: 1500, Label: "st0", Network: "storage"}
	storageUp := storageDown
	storageUp.State, storageUp.Carrier, storageUp.Addresses = "up", true, []string{"10.88.0.12/24"}
	downLine := "degraded: storage network down (st0 52:54:00:78:00:12: link down)"
	up := Event{MAC: mac, Node: "gpu02", Stage: "up", Interfaces: []Link{boot, storageDown}, Degraded: []string{downLine}}
	t0 := time.Now()
	if err := inv.RecordEvent(up, "10.77.0.12", t0); err != nil {
		t.Fatal(err)
	}
	report := func(n *nodestatus.Network) *nodestatus.Report {
		return &nodestatus.Report{Node: "gpu02", Health: nodestatus.Health{State: nodestatus.Ready}, Network: n}
	}
	get := func() Record {
		r, ok := inv.Get(mac)
		if !ok {
			t.Fatal("no record")
		}
		return r
	}

	// An older agent: no network in its report.
	if err := inv.RecordStatus(mac, report(nil), "10.77.0.12", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if r := get(); len(r.Degraded) != 1 || r.Degraded[0] != downLine || len(r.Interfaces) != 2 || r.Status == nil {
		t.Fatalf("a report without network changed the up event's links: %+v", r)
	}

	// The storage NIC replugged: all declared links up.
	t2 := t0.Add(2 * time.Minute)
	if err := inv.RecordStatus(mac, report(&nodestatus.Network{Interfaces: []Link{boot, storageUp}, Degraded: []string{}}), "10.77.0.12", t2); err != nil {
		t.Fatal(err)
	}
	r := get()
	if len(r.Degraded) != 0 || len(r.Interfaces) != 2 || !r.Interfaces[1].Carrier || r.Interfaces[1].Addresses[0] != "10.88.0.12/24" || !r.LinksTime.Equal(t2.UTC()) {
		t.Fatalf("after a report with every link up: %+v", r)
	}
	if r.Status.Network != nil {
		t.Errorf("the links are kept twice (record and status): %+v", r.Status.Network)
	}

	// The link lost again after boot.
	if err := inv.RecordStatus(mac, report(&nodestatus.Network{Interfaces: []Link{boot, storageDown}, Degraded: []string{downLine}}), "10.77.0.12", t0.Add(3*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if r := get(); len(r.Degraded) != 1 || r.Degraded[0] != downLine || r.Interfaces[1].Carrier {
		t.Fatalf("after a report with the storage link down: %+v", r)
	}
	inv.Flush()
	again, _ := Load(dir)
	if r, _ := again.Get(mac); len(r.Degraded) != 1 || r.LinksTime.IsZero() {
		t.Fatalf("on disk: %+v", r)
	}
}

// TestAttackStatusReportLinkBounds: the attacker is a node, or whoever holds
// its key, sending oversized or garbage link lists in signed reports to
// bloat nodes.json or forge lines in `herd node list`: such a report is
// refused whole and nothing of it is recorded.
func TestAttackStatusReportLinkBounds(t *testing.T) {
	inv, _ := Load(t.TempDir())
	const mac = "52:54:00:77:00:13"
	ok := Link{Name: "ens3", MAC: mac, State: "up", Carrier: true, MTU: 1500, Boot: true}
	if err := inv.RecordEvent(Event{MAC: mac, Node: "gpu03", Stage: "up", Interfaces: []Link{ok}}, "", time.Now()); err != nil {
		t.Fatal(err)
	}
	many := make([]Link, nodestatus.MaxLinks+1)
	for i := range many {
		many[i] = Link{Name: fmt.Sprintf("veth%d", i), State: "up"}
	}
	addrs := make([]string, nodestatus.MaxAddresses+1)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("10.0.%d.1/24", i)
	}
	degraded := make([]string, nodestatus.MaxDegraded+1)
	for i := range degraded {
		degraded[i] = "degraded: x"
	}
	for name, n := range map[string]*nodestatus.Network{
		"65 interfaces":        {Interfaces: many},
		"33 addresses":         {Interfaces: []Link{{Name: "ens3", Addresses: addrs}}},
		"newline in name":      {Interfaces: []Link{{Name: "ens3\nFAKE"}}},
		"long label":           {Interfaces: []Link{{Name: "ens3", Label: strings.Repeat("x", 65)}}},
		"33 degraded":          {Interfaces: []Link{ok}, Degraded: degraded},
		"newline degraded":     {Interfaces: []Link{ok}, Degraded: []string{"ok\ndegraded: fake"}},
		"long degraded":        {Interfaces: []Link{ok}, Degraded: []string{strings.Repeat("d", 257)}},
		"NUL in address":       {Interfaces: []Link{{Name: "ens3", Addresses: []string{"10.0.0.1/24\x00"}}}},
		"carriage return name": {Interfaces: []Link{{Name: "ens3\rgpu01 up"}}},
	} {
		rep := &nodestatus.Report{Node: "gpu03", Health: nodestatus.Health{State: nodestatus.Ready}, Network: n}
		if err := inv.RecordStatus(mac, rep, "", time.Now()); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	r, _ := inv.Get(mac)
	if r.Status != nil || len(r.Interfaces) != 1 || r.Interfaces[0].Name != "ens3" || len(r.Degraded) != 0 {
		t.Errorf("a refused report changed the record: %+v", r)
	}
}
