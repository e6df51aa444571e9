package server

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/pxe/dhcp"
	"github.com/herdlab/herd/site"
	"github.com/herdlab/herd/testlab"
)

// TestDoctor runs the checks inside a namespace with a real bridge: all
// pass, then a taken HTTP port, a missing address and a damaged artifact fail.
func TestDoctor(t *testing.T) {
	testenv.RequireNetns(t)
	ns, err := testlab.NewNetns("doctor")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := ns.AddBridge("br-herd", "10.91.0.1/24"); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	id := publish(t, state, map[string]int{manifest.Kernel: 1000, manifest.Initrd: 1000, manifest.Rootfs: 1000})
	cfg, err := site.Parse("herd.yaml", []byte(`server:
  interface: br-herd
  address: 10.91.0.1
dhcp:
  mode: proxy
overlays: [base]
`))
	if err != nil {
		t.Fatal(err)
	}
	run := func(c *site.Config, hash bool) (res []Check) {
		if err := ns.Do(func() error {
			res = Doctor(context.Background(), c, DoctorOptions{StateDir: state, Hash: hash})
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return res
	}
	failed := func(res []Check) []string {
		var f []string
		for _, c := range res {
			if !c.OK {
				f = append(f, c.Name+": "+c.Detail)
			}
		}
		return f
	}
	if f := failed(run(cfg, true)); len(f) != 0 {
		t.Fatalf("healthy set-up failed: %v", f)
	}

	// Take the HTTP port inside the namespace.
	var l net.Listener
	ns.Do(func() (err error) { l, err = net.Listen("tcp4", "10.91.0.1:8080"); return })
	if l == nil {
		t.Fatal("could not occupy the port")
	}
	f := failed(run(cfg, false))
	l.Close()
	if len(f) != 1 || !strings.Contains(f[0], "port http tcp/8080") {
		t.Errorf("taken port: %v", f)
	}

	// An address the interface does not have.
	bad := *cfg
	bad.Server.Address = "10.91.0.9"
	if f := failed(run(&bad, false)); len(f) == 0 || !strings.Contains(strings.Join(f, "\n"), "10.91.0.9 is not on br-herd") {
		t.Errorf("wrong address: %v", f)
	}

	// A damaged rootfs (same size) fails the hash check only.
	p := filepath.Join(state, "images", id, manifest.Rootfs)
	b, _ := os.ReadFile(p)
	b[0] ^= 0xff
	os.WriteFile(p, b, 0o644)
	if f := failed(run(cfg, false)); len(f) != 0 {
		t.Errorf("size check failed on a same-size file: %v", f)
	}
	if f := failed(run(cfg, true)); len(f) != 1 || !strings.Contains(f[0], "sha256") {
		t.Errorf("hash check: %v", f)
	}
	os.Remove(filepath.Join(state, "current"))
	if f := failed(run(cfg, false)); len(f) != 1 || !strings.Contains(f[0], "no image is current") {
		t.Errorf("no current: %v", fmt.Sprint(f))
	}
}

// TestDoctorPoolExhausted: with every pool address leased in leases.json,
// herd doctor's pool check fails and says so; with one free it passes.
func TestDoctorPoolExhausted(t *testing.T) {
	cfg, err := site.Parse("herd.yaml", []byte(`server: {interface: lo, address: 10.77.0.1}
dhcp: {mode: full, subnet: 10.77.0.0/24, range_start: 10.77.0.100, range_end: 10.77.0.102, lease_time: 1h}
overlays: [base]
`))
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	exp := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	write := func(n int) {
		var ls []string
		for i := 0; i < n; i++ {
			ls = append(ls, fmt.Sprintf(`{"mac":"52:54:00:00:00:%02x","ip":"10.77.0.%d","expires":%q}`, i, 100+i, exp))
		}
		os.WriteFile(filepath.Join(state, "leases.json"), []byte(`{"leases":[`+strings.Join(ls, ",")+`]}`), 0o644)
	}
	pool := func(want int) Check {
		for _, c := range Doctor(context.Background(), cfg, DoctorOptions{StateDir: state, Pool: func(cfg *site.Config, dir string) (int, int, int, error) {
			return dhcp.PoolUsage(cfg, dir, time.Now())
		}}) {
			if c.Name == "dhcp pool" {
				return c
			}
		}
		t.Fatal("no dhcp pool check")
		return Check{}
	}
	write(3)
	if c := pool(0); c.OK || !strings.Contains(c.Detail, "exhausted") {
		t.Errorf("all 3 leased: %+v, want a failed check saying exhausted", c)
	}
	write(2)
	if c := pool(1); !c.OK || !strings.Contains(c.Detail, "1 of 3") {
		t.Errorf("2 of 3 leased: %+v", c)
	}
}
