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
	res, err := rpcCall(c, body)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint32(res), nil
}

// rpcCall sends one ONC RPC call message (body starts with its xid) as a
// single TCP record and returns the accepted reply from its accept_stat on,
// after checking the xid, REPLY and MSG_ACCEPTED and skipping the verifier.
func rpcCall(c net.Conn, body []byte) ([]byte, error) {
	msg := binary.BigEndian.AppendUint32(nil, 0x80000000|uint32(len(body)))
	if _, err := c.Write(append(msg, body...)); err != nil {
		return nil, err
	}
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return nil, err
	}
	reply := make([]byte, binary.BigEndian.Uint32(hdr[:])&^0x80000000)
	if _, err := io.ReadFull(c, reply); err != nil {
		return nil, err
	}
	if len(reply) < 20 {
		return nil, fmt.Errorf("short RPC reply (%d bytes)", len(reply))
	}
	u := func(off int) uint32 { return binary.BigEndian.Uint32(reply[off:]) }
	// xid, REPLY, MSG_ACCEPTED, verifier flavor and length, verifier, accept_stat.
	for i, want := range []uint32{binary.BigEndian.Uint32(body), 1, 0} {
		if v := u(4 * i); v != want {
			return nil, fmt.Errorf("unexpected RPC reply header word %d = %d, want %d", i, v, want)
		}
	}
	off := 20 + int(u(16)+3)&^3
	if off+4 > len(reply) {
		return nil, fmt.Errorf("short RPC reply (%d bytes)", len(reply))
	}
	return reply[off:], nil
}

// xdrString appends an XDR string/opaque: length, bytes, zero padding to 4.
func xdrString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	b = append(b, s...)
	return append(b, make([]byte, (4-len(s)%4)%4)...)
}

// nfs4Lookup walks path from the server's pseudo-root as a kernel client's
// mount does: one NFSv4.0 COMPOUND of PUTROOTFH, a LOOKUP per component and
// GETFH, with AUTH_SYS root credentials (the exports are SecType sys). It
// returns the COMPOUND's status: 0 NFS4_OK (the path resolves), 2
// NFS4ERR_NOENT. The host has no NFS client, so this stands in for a mount.
func nfs4Lookup(c net.Conn, xid uint32, path string) (uint32, error) {
	var cred []byte
	cred = binary.BigEndian.AppendUint32(cred, 0) // stamp
	cred = xdrString(cred, "herd-test")
	for _, v := range []uint32{0, 0, 0} { // uid, gid, no extra gids
		cred = binary.BigEndian.AppendUint32(cred, v)
	}
	var parts []string
	for _, p := range strings.Split(path, "/") {
		if p != "" {
			parts = append(parts, p)
		}
	}
	body := make([]byte, 0, 128)
	for _, v := range []uint32{xid, 0 /*CALL*/, 2 /*rpcvers*/, 100003, 4, 1 /*COMPOUND*/, 1 /*AUTH_SYS*/} {
		body = binary.BigEndian.AppendUint32(body, v)
	}
	body = xdrString(body, string(cred))
	body = binary.BigEndian.AppendUint32(body, 0) // verf AUTH_NONE
	body = binary.BigEndian.AppendUint32(body, 0)
	body = xdrString(body, "")                    // tag
	body = binary.BigEndian.AppendUint32(body, 0) // minorversion
	body = binary.BigEndian.AppendUint32(body, uint32(len(parts)+2))
	body = binary.BigEndian.AppendUint32(body, 24) // PUTROOTFH
	for _, p := range parts {
		body = binary.BigEndian.AppendUint32(body, 15) // LOOKUP
		body = xdrString(body, p)
	}
	body = binary.BigEndian.AppendUint32(body, 10) // GETFH
	res, err := rpcCall(c, body)
	if err != nil {
		return 0, err
	}
	if st := binary.BigEndian.Uint32(res); st != 0 {
		return 0, fmt.Errorf("RPC accept_stat %d", st)
	}
	if len(res) < 8 {
		return 0, fmt.Errorf("short COMPOUND reply (%d bytes)", len(res))
	}
	return binary.BigEndian.Uint32(res[4:]), nil // COMPOUND4res status
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
	for _, c := range []struct {
		path string
		want uint32
	}{{"/export/homes", 0}, {"/export/Public", 0}, {"/export/nope", 2}} {
		if st, err := nfs4Lookup(conn, 9, c.path); err != nil || st != c.want {
			t.Errorf("NFSv4 lookup of %s: status %d, %v; want %d", c.path, st, err, c.want)
		}
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
