package server

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/internal/privdrop"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/pxe/inventory"
	"github.com/herdlab/herd/testlab"
)

// TestServeDropsRoot: `herd serve --user nobody` started as root in a
// network namespace binds DHCP (67), TFTP (69) and HTTP (80), then runs
// as nobody with no capabilities in any thread (/proc/<pid>/task/*/status,
// attacker: whoever takes over the process through a bug gets an
// unprivileged user, not root). A real client in another namespace still
// gets its lease (udhcpc), script and kernel (curl) and the iPXE loader
// (atftp) from the dropped server. herd starts as root with only the
// capability bounding set of the .deb's unit (packaging/herd.service), so
// the test fails if the unit does not give what the start needs. Also: root without --user refuses a
// state dir that belongs to someone else, and --user refuses a state dir
// the user does not own.
func TestServeDropsRoot(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireNetns(t)
	testenv.RequireCommands(t, "udhcpc", "curl", "atftp", "setpriv")
	testenv.RequireFiles(t, "package ipxe", "/usr/lib/ipxe/undionly.kpxe")
	herd := testenv.Bin(t, "HERD_BIN")
	nobody, err := privdrop.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	// A directory nobody may traverse (t.TempDir's are 0700 root).
	dir, err := os.MkdirTemp("", "herd-privdrop-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	state := filepath.Join(dir, "state")
	id := publish(t, state, map[string]int{manifest.Kernel: 2 << 20, manifest.Initrd: 1000, manifest.Rootfs: 1000})

	ns, err := testlab.NewNetns("privdrop")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := ns.AddBridge("br0", "10.94.0.1/24"); err != nil {
		t.Fatal(err)
	}
	client, err := testlab.NewNetns("privdropc")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	const mac = "52:54:00:94:00:11"
	if err := ns.AddVethPeer("v1", "br0", client, "eth0", ""); err != nil {
		t.Fatal(err)
	}
	for _, a := range [][]string{{"link", "set", "eth0", "down"}, {"link", "set", "eth0", "address", mac}, {"link", "set", "eth0", "up"}} {
		if err := client.IP(a...); err != nil {
			t.Fatal(err)
		}
	}
	cfgPath := filepath.Join(dir, "herd.yaml")
	os.WriteFile(cfgPath, []byte(`server:
  interface: br0
  address: 10.94.0.1
  http_port: 80
  tftp_root: /usr/lib/ipxe
dhcp:
  mode: full
  subnet: 10.94.0.0/24
  lease_time: 1h
overlays: [base]
nodes:
  - {name: node1, mac: "`+mac+`", ip: 10.94.0.11}
`), 0o644)
	// Root as the .deb's unit makes it: only the unit's bounding set
	// (no other capability to fall back on), its ambient capabilities
	// (systemd raises them in the inheritable set too), the state dir 0750.
	caps := unitCaps(t, "CapabilityBoundingSet")
	inh, amb := "-all", []string{}
	if a := unitCaps(t, "AmbientCapabilities"); a != "-all" {
		inh, amb = a, []string{"--ambient-caps", a}
	}
	serve := func(args ...string) (*exec.Cmd, *logBuf, chan error) {
		log := &logBuf{}
		full := append(append([]string{"--bounding-set", caps, "--inh-caps", inh}, amb...), append([]string{"--", herd, "-v", "--config", cfgPath, "--state", state, "serve"}, args...)...)
		c := ns.Command(context.Background(), "setpriv", full...)
		c.Stdout, c.Stderr = log, log
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- c.Wait() }()
		return c, log, done
	}

	t.Run("root-refuses-someone-elses-state-dir", func(t *testing.T) {
		chownTree(t, state, nobody.UID, nobody.GID)
		c, log, done := serve()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(log.String(), "--user") {
				t.Fatalf("herd serve as root with nobody's state dir: %v\n%s", err, log)
			}
		case <-time.After(30 * time.Second):
			c.Process.Kill()
			<-done
			t.Fatal("herd serve as root ran on a state dir owned by nobody")
		}
	})
	t.Run("user-must-own-state-dir", func(t *testing.T) {
		chownTree(t, state, 0, 0)
		c, log, done := serve("--user", "nobody")
		select {
		case err := <-done:
			if err == nil || !strings.Contains(log.String(), "chown -R nobody") {
				t.Fatalf("--user nobody with root's state dir: %v\n%s", err, log)
			}
		case <-time.After(30 * time.Second):
			c.Process.Kill()
			<-done
			t.Fatal("herd serve --user nobody ran on root's state dir")
		}
	})

	chownTree(t, state, nobody.UID, nobody.GID)
	os.Chmod(state, 0o750) // as the package's postinst makes it
	c, log, done := serve("--user", "nobody")
	defer func() {
		c.Process.Signal(syscall.SIGTERM)
		<-done
		if t.Failed() {
			t.Logf("herd serve log:\n%s", log)
		}
	}()
	for i := 0; !strings.Contains(logText(log), "dropped root"); i++ {
		select {
		case err := <-done:
			done <- err // for the deferred wait
			t.Fatalf("herd serve --user nobody exited: %v\n%s", err, logText(log))
		case <-time.After(100 * time.Millisecond):
		}
		if i > 600 {
			t.Fatalf("herd serve never dropped root:\n%s", logText(log))
		}
	}
	pid := c.Process.Pid // ip netns exec execs herd in place
	t.Run("proc-status-unprivileged", func(t *testing.T) {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
		if len(tasks) < 2 {
			t.Fatalf("threads of %d: %v", pid, tasks)
		}
		for _, p := range append(tasks, fmt.Sprintf("/proc/%d/status", pid)) {
			st, err := privdrop.ReadStatus(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Unprivileged(nobody.UID, nobody.GID); err != nil {
				t.Errorf("%s: %v", p, err)
			}
		}
		u, _ := user.LookupId(strconv.Itoa(nobody.UID))
		t.Logf("herd serve pid %d runs as %s in all %d threads, no capabilities", pid, u.Username, len(tasks))
	})
	t.Run("serves-after-drop", func(t *testing.T) {
		ev := udhcpcOnce(t, client)
		if !strings.Contains(ev, "bound 10.94.0.11") {
			t.Fatalf("no lease from the dropped server: %q", ev)
		}
		out := filepath.Join(t.TempDir(), "out")
		get := func(url string) []byte {
			b, err := client.Command(context.Background(), "curl", "-fsS", "--max-time", "60", "-o", out, url).CombinedOutput()
			if err != nil {
				t.Fatalf("curl %s: %v %s", url, err, b)
			}
			data, _ := os.ReadFile(out)
			return data
		}
		if s := get("http://10.94.0.1/boot/" + mac + ".ipxe"); !bytes.Contains(s, []byte("#!ipxe")) {
			t.Errorf("script: %q", s)
		}
		want, _ := os.ReadFile(filepath.Join(state, "images", id, manifest.Kernel))
		if k := get("http://10.94.0.1/images/" + id + "/" + manifest.Kernel); !bytes.Equal(k, want) {
			t.Errorf("kernel: %d bytes, want %d", len(k), len(want))
		}
		if b, err := client.Command(context.Background(), "atftp", "--get", "-r", "undionly.kpxe", "-l", out, "10.94.0.1", "69").CombinedOutput(); err != nil {
			t.Fatalf("atftp: %v %s", err, b)
		}
		wantPXE, _ := os.ReadFile("/usr/lib/ipxe/undionly.kpxe")
		if got, _ := os.ReadFile(out); !bytes.Equal(got, wantPXE) {
			t.Errorf("TFTP undionly.kpxe: %d bytes, want %d", len(got), len(wantPXE))
		}
		// A root CLI command on the running server's state: herd serve (as
		// nobody) must still act on what it wrote (GiveToStateOwner).
		if b, err := exec.Command(herd, "--config", cfgPath, "--state", state, "node", "forget", "node1").CombinedOutput(); err != nil {
			t.Fatalf("herd node forget as root: %v %s", err, b)
		}
		fdir := filepath.Join(state, inventory.ForgetDirName)
		for i := 0; ; i++ {
			ents, err := os.ReadDir(fdir)
			if err == nil && len(ents) == 0 {
				break
			}
			if i > 100 {
				t.Fatalf("herd serve (nobody) never applied the forget request a root command left in %s: %v %v", fdir, ents, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		// What it wrote after the drop belongs to nobody.
		time.Sleep(3 * time.Second) // nodes.json is written at most every 2 s
		filepath.WalkDir(state, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if owner, _ := privdrop.Owner(p); owner == 0 && !strings.Contains(p, "/images") {
				t.Errorf("%s is root's after the drop", p)
			}
			return nil
		})
	})
}

func logText(b *logBuf) string { return b.String() }

// unitCaps is packaging/herd.service's capability setting key
// (CapabilityBoundingSet, AmbientCapabilities) in setpriv's form
// ("-all,+net_bind_service,..."); "-all" when the unit has none.
func unitCaps(t *testing.T, key string) string {
	t.Helper()
	b, err := os.ReadFile("../../packaging/herd.service")
	if err != nil {
		t.Fatal(err)
	}
	out := "-all"
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, key+"="); ok {
			for _, c := range strings.Fields(v) {
				out += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
			}
		}
	}
	if out == "-all" && key == "CapabilityBoundingSet" {
		t.Fatal("herd.service has no CapabilityBoundingSet")
	}
	return out
}

func chownTree(t *testing.T, root string, uid, gid int) {
	t.Helper()
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil {
			os.Lchown(p, uid, gid)
		}
		return nil
	})
}

// udhcpcOnce runs busybox udhcpc on eth0 in ns, configuring the address
// it is given, and returns what its script recorded.
func udhcpcOnce(t *testing.T, ns *testlab.Netns) string {
	t.Helper()
	d := t.TempDir()
	out, script := filepath.Join(d, "events"), filepath.Join(d, "script")
	os.WriteFile(script, []byte("#!/bin/sh\necho \"$1 $ip\" >> "+out+"\n[ \"$1\" = bound ] && ip addr replace $ip/24 dev $interface\nexit 0\n"), 0o755)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b, _ := ns.Command(ctx, "udhcpc", "-f", "-q", "-n", "-t", "5", "-T", "2", "-i", "eth0", "-s", script).CombinedOutput()
	t.Logf("udhcpc: %s", b)
	data, _ := os.ReadFile(out)
	return string(data)
}
