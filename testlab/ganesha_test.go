package testlab

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/internal/testenv"
)

// nfsNull sends one ONC RPC call (RFC 5531) for program NFS (100003),
// version vers, procedure 0 (NULL) over TCP with record marking, and returns
// the reply's accept_stat (0 SUCCESS, 2 PROG_MISMATCH). The host has no NFS
// client, so this raw call is how the test talks NFS to the real server; the
// QEMU suite mounts it from a real kernel client.
func nfsNull(c net.Conn, xid, vers uint32) (uint32, error) {
	body := make([]byte, 0, 40)
	for _, v := range []uint32{xid, 0 /*CALL*/, 2 /*rpcvers*/, 100003, vers, 0 /*NULL*/, 0, 0 /*cred none*/, 0, 0 /*verf none*/} {
		body = binary.BigEndian.AppendUint32(body, v)
	}
	msg := binary.BigEndian.AppendUint32(nil, 0x80000000|uint32(len(body)))
	if _, err := c.Write(append(msg, body...)); err != nil {
		return 0, err
	}
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return 0, err
	}
	n := binary.BigEndian.Uint32(hdr[:]) &^ 0x80000000
	reply := make([]byte, n)
	if _, err := io.ReadFull(c, reply); err != nil {
		return 0, err
	}
	if len(reply) < 24 {
		return 0, fmt.Errorf("short RPC reply (%d bytes)", len(reply))
	}
	u := func(i int) uint32 { return binary.BigEndian.Uint32(reply[4*i:]) }
	if u(0) != xid || u(1) != 1 || u(2) != 0 {
		return 0, fmt.Errorf("unexpected RPC reply header xid=%d type=%d stat=%d", u(0), u(1), u(2))
	}
	return u(5), nil // after xid, type, reply_stat, verf flavor, verf len
}

func TestGaneshaServesNFSv4Only(t *testing.T) {
	testenv.RequireNetns(t)
	testenv.RequireCommands(t, "ganesha.nfsd")
	ns, err := NewNetns("nas")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := ns.AddBridge("br0", "10.79.0.2/24"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	g, err := StartGanesha(context.Background(), GaneshaConfig{
		Netns: ns, Addr: "10.79.0.2", Dir: dir,
		Exports: []Export{{Pseudo: "/export/homes", Path: filepath.Join(dir, "homes")}, {Pseudo: "/export/Public", Path: filepath.Join(dir, "Public")}},
	})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			g.Stop()
		}
	}()
	conf, _ := os.ReadFile(g.ConfPath)
	for _, want := range []string{"Protocols = 4;", "Graceless = true;", "Only_Numeric_Owners = true;", "Squash = No_Root_Squash;", "Bind_Addr = 10.79.0.2;", `Pseudo = "/export/Public";`} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("config lacks %q:\n%s", want, conf)
		}
	}
	var conn net.Conn
	if err := ns.Do(func() (err error) { conn, err = net.DialTimeout("tcp", "10.79.0.2:2049", 5*time.Second); return }); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if st, err := nfsNull(conn, 7, 4); err != nil || st != 0 {
		t.Fatalf("NFSv4 NULL: accept_stat %d, %v (log %s)", st, err, g.LogPath)
	}
	if st, err := nfsNull(conn, 8, 3); err != nil || st != 2 {
		t.Fatalf("NFSv3 NULL: want PROG_MISMATCH (2), got %d, %v", st, err)
	}
	pid := g.PID()
	if err := g.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped = true
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
		t.Fatalf("ganesha pid %d still alive after Stop", pid)
	}
}

func TestGaneshaBadExportFails(t *testing.T) {
	_, err := StartGanesha(context.Background(), GaneshaConfig{Netns: &Netns{Name: "x"}, Addr: "10.0.0.1", Dir: t.TempDir(),
		Exports: []Export{{Pseudo: "relative", Path: "/tmp"}}})
	if err == nil || !strings.Contains(err.Error(), "must be absolute") {
		t.Fatalf("want an error about relative paths, got %v", err)
	}
}
