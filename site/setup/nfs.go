package setup

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// NFSv4 over ONC RPC, just enough to ask a NAS whether an export path is
// visible: one COMPOUND of PUTROOTFH and a LOOKUP per path component
// (minor version 0, which needs no client ID or session for these
// operations). Hand-written rather than a library: it is ~150 lines of XDR,
// and nothing packaged for Go speaks NFSv4 as a client.
const (
	rpcCall       = 0
	rpcReply      = 1
	nfsProgram    = 100003
	nfsVersion    = 4
	procCompound  = 1
	authSys       = 1
	opLookup      = 15
	opPutRootFH   = 24
	nfs4OK        = 0
	msgAccepted   = 0
	acceptSuccess = 0
)

// nfs4Errors names the status codes an admin may meet here (RFC 7530).
var nfs4Errors = map[uint32]string{
	1: "NFS4ERR_PERM", 2: "NFS4ERR_NOENT", 5: "NFS4ERR_IO", 13: "NFS4ERR_ACCES",
	20: "NFS4ERR_NOTDIR", 10001: "NFS4ERR_BADHANDLE", 10006: "NFS4ERR_SERVERFAULT",
	10013: "NFS4ERR_GRACE", 10016: "NFS4ERR_WRONGSEC", 10021: "NFS4ERR_MINOR_VERS_MISMATCH",
}

func nfsStatus(s uint32) string {
	if n, ok := nfs4Errors[s]; ok {
		return n
	}
	return fmt.Sprintf("NFSv4 status %d", s)
}

type xdr struct{ bytes.Buffer }

func (x *xdr) u32(v uint32) { binary.Write(&x.Buffer, binary.BigEndian, v) }
func (x *xdr) opaque(b []byte) {
	x.u32(uint32(len(b)))
	x.Write(b)
	if pad := (4 - len(b)%4) % 4; pad > 0 {
		x.Write(make([]byte, pad))
	}
}

// CheckNFSExport asks the NFSv4 server at addr (host, port 2049 unless
// given) whether path (e.g. /export/homes, as a client mounts it) exists,
// as root with AUTH_SYS. It returns nil when every component was found.
func CheckNFSExport(ctx context.Context, addr, path string) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(addr, "2049")
	}
	comps := strings.FieldsFunc(path, func(r rune) bool { return r == '/' })
	if !strings.HasPrefix(path, "/") || len(comps) == 0 {
		return fmt.Errorf("export path %q: give the absolute path a client mounts, e.g. /export/homes", path)
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("no NFS server answers at %s: %w", addr, err)
	}
	defer conn.Close()
	deadline := time.Now().Add(10 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	conn.SetDeadline(deadline)

	var xidb [4]byte
	rand.Read(xidb[:])
	xid := binary.BigEndian.Uint32(xidb[:])
	var m xdr
	m.u32(xid)
	m.u32(rpcCall)
	m.u32(2) // RPC version
	m.u32(nfsProgram)
	m.u32(nfsVersion)
	m.u32(procCompound)
	var cred xdr // AUTH_SYS: stamp, machine name, uid 0, gid 0, no groups
	cred.u32(0)
	cred.opaque([]byte("herd-init"))
	cred.u32(0)
	cred.u32(0)
	cred.u32(0)
	m.u32(authSys)
	m.opaque(cred.Bytes())
	m.u32(0) // verifier AUTH_NONE
	m.u32(0)
	m.opaque([]byte("herd init")) // COMPOUND tag
	m.u32(0)                      // minor version
	m.u32(uint32(1 + len(comps)))
	m.u32(opPutRootFH)
	for _, c := range comps {
		m.u32(opLookup)
		m.opaque([]byte(c))
	}
	rec := make([]byte, 4, 4+m.Len())
	binary.BigEndian.PutUint32(rec, 0x80000000|uint32(m.Len()))
	if _, err := conn.Write(append(rec, m.Bytes()...)); err != nil {
		return fmt.Errorf("send NFS request to %s: %w", addr, err)
	}
	reply, err := readRecord(conn)
	if err != nil {
		return fmt.Errorf("read NFS reply from %s: %w", addr, err)
	}
	r := bytes.NewReader(reply)
	u32 := func() uint32 {
		var v uint32
		if err == nil {
			err = binary.Read(r, binary.BigEndian, &v)
		}
		return v
	}
	skipOpaque := func() {
		n := u32()
		if err == nil {
			_, err = r.Seek(int64(n+(4-n%4)%4), io.SeekCurrent)
		}
	}
	if got := u32(); err == nil && got != xid {
		return fmt.Errorf("NFS reply from %s: transaction id %d, sent %d", addr, got, xid)
	}
	if u32() != rpcReply || err != nil {
		return fmt.Errorf("NFS reply from %s is not an RPC reply: %v", addr, err)
	}
	if st := u32(); st != msgAccepted {
		return fmt.Errorf("%s refused the RPC call (MSG_DENIED %d): AUTH_SYS as root not accepted", addr, u32())
	}
	u32() // verifier flavor
	skipOpaque()
	if st := u32(); err != nil || st != acceptSuccess {
		return fmt.Errorf("%s does not serve NFSv4 (RPC accept status %d, %v)", addr, st, err)
	}
	status := u32()
	skipOpaque() // tag
	n := u32()
	if err != nil {
		return fmt.Errorf("NFS reply from %s: %w", addr, err)
	}
	if status == nfs4OK {
		return nil
	}
	// The last result is the operation that failed: 0 is PUTROOTFH, i>0
	// the LOOKUP of comps[i-1].
	if n >= 2 && int(n-2) < len(comps) {
		return fmt.Errorf("%s on %s: %s has no %q (%s)", path, addr, "/"+strings.Join(comps[:n-2], "/"), comps[n-2], nfsStatus(status))
	}
	return fmt.Errorf("%s on %s: %s", path, addr, nfsStatus(status))
}

// readRecord reads one RPC record (record marking, RFC 5531 §11).
func readRecord(r io.Reader) ([]byte, error) {
	var out []byte
	for {
		var hdr [4]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return nil, err
		}
		h := binary.BigEndian.Uint32(hdr[:])
		n := h & 0x7fffffff
		if len(out)+int(n) > 1<<20 {
			return nil, errors.New("reply larger than 1 MiB")
		}
		frag := make([]byte, n)
		if _, err := io.ReadFull(r, frag); err != nil {
			return nil, err
		}
		out = append(out, frag...)
		if h&0x80000000 != 0 {
			return out, nil
		}
	}
}
