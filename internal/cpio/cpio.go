// Package cpio writes and reads "newc" cpio archives (SVR4 without CRC), the
// only format the Linux kernel unpacks as an initramfs. herd uses it for the
// per-node runtime overlay that iPXE appends to the initrd.
//
// A newc entry is a 110-byte ASCII header (magic 070701 and 13 eight-digit
// hex fields), the NUL-terminated name padded to a multiple of 4 bytes
// counting the header, then the data padded to 4 bytes. The archive ends
// with an entry named TRAILER!!!.
package cpio

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"strings"
)

// Unix file type bits as stored in the header's mode field.
const (
	TypeReg  = 0o100000
	TypeDir  = 0o040000
	TypeLink = 0o120000
	typeMask = 0o170000
)

const (
	magic   = "070701"
	trailer = "TRAILER!!!"
	hdrLen  = 110
)

// Header is one archive entry.
type Header struct {
	Name  string // relative path, no leading slash
	Mode  uint32 // type bits | permission bits (incl. setuid/setgid/sticky)
	UID   int
	GID   int
	Mtime int64
	Size  int64 // data length; for a symlink, the target's length
}

// FileMode converts an fs.FileMode (with its own setuid/dir/link bits) to
// the Unix mode stored in a header.
func FileMode(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		u |= 0o1000
	}
	switch {
	case m.IsDir():
		u |= TypeDir
	case m&fs.ModeSymlink != 0:
		u |= TypeLink
	default:
		u |= TypeReg
	}
	return u
}

// Writer writes a newc archive.
type Writer struct {
	w       io.Writer
	off     int64
	ino     uint32
	remain  int64
	pad     int64
	closed  bool
	lastErr error
}

// NewWriter starts an archive on w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w, ino: 1} }

func (w *Writer) raw(p []byte) error {
	if w.lastErr != nil {
		return w.lastErr
	}
	n, err := w.w.Write(p)
	w.off += int64(n)
	if err != nil {
		w.lastErr = fmt.Errorf("cpio: %w", err)
	}
	return w.lastErr
}

func (w *Writer) padTo4() error {
	if r := w.off % 4; r != 0 {
		return w.raw(make([]byte, 4-r))
	}
	return nil
}

// WriteHeader begins an entry; write exactly hdr.Size bytes after it.
func (w *Writer) WriteHeader(hdr *Header) error {
	if w.closed {
		return errors.New("cpio: write after Close")
	}
	if w.remain != 0 {
		return fmt.Errorf("cpio: previous entry is %d bytes short", w.remain)
	}
	if err := w.padTo4(); err != nil {
		return err
	}
	if hdr.Name == "" || strings.HasPrefix(hdr.Name, "/") || strings.Contains(hdr.Name, "\x00") {
		return fmt.Errorf("cpio: bad entry name %q (must be relative, non-empty, no NUL)", hdr.Name)
	}
	if hdr.Size < 0 || hdr.Size > 0xffffffff {
		return fmt.Errorf("cpio: %s: size %d does not fit newc's 32-bit field", hdr.Name, hdr.Size)
	}
	if hdr.Mode&typeMask == TypeDir && hdr.Size != 0 {
		return fmt.Errorf("cpio: %s: a directory has no data", hdr.Name)
	}
	nlink := 1
	if hdr.Mode&typeMask == TypeDir {
		nlink = 2
	}
	ino := w.ino
	w.ino++
	h := fmt.Sprintf("%s%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		magic, ino, hdr.Mode, uint32(hdr.UID), uint32(hdr.GID), nlink, uint32(hdr.Mtime),
		uint32(hdr.Size), 0, 0, 0, 0, len(hdr.Name)+1, 0)
	if err := w.raw([]byte(h)); err != nil {
		return err
	}
	if err := w.raw(append([]byte(hdr.Name), 0)); err != nil {
		return err
	}
	if err := w.padTo4(); err != nil {
		return err
	}
	w.remain = hdr.Size
	return nil
}

// Write writes data of the current entry.
func (w *Writer) Write(p []byte) (int, error) {
	if int64(len(p)) > w.remain {
		return 0, fmt.Errorf("cpio: write of %d bytes exceeds the entry's remaining %d", len(p), w.remain)
	}
	if err := w.raw(p); err != nil {
		return 0, err
	}
	w.remain -= int64(len(p))
	return len(p), nil
}

// Close writes the trailer; it does not close the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return nil
	}
	if err := w.WriteHeader(&Header{Name: trailer}); err != nil {
		return err
	}
	w.closed = true
	return w.padTo4()
}

// Entry is one entry read back from an archive.
type Entry struct {
	Header
	Data []byte // file content, or symlink target
}

// ReadAll parses a whole newc archive (used by tests and `herd` inspection).
func ReadAll(r io.Reader) ([]Entry, error) {
	br := bufio.NewReader(r)
	var off int64
	read := func(n int64) ([]byte, error) {
		b := make([]byte, n)
		_, err := io.ReadFull(br, b)
		off += n
		return b, err
	}
	skipPad := func() error {
		if rem := off % 4; rem != 0 {
			_, err := read(4 - rem)
			return err
		}
		return nil
	}
	var out []Entry
	for {
		h, err := read(hdrLen)
		if err != nil {
			return nil, fmt.Errorf("cpio: header at offset %d: %w", off-hdrLen, err)
		}
		if string(h[:6]) != magic {
			return nil, fmt.Errorf("cpio: bad magic %q at offset %d", h[:6], off-hdrLen)
		}
		field := func(i int) (uint64, error) {
			return strconv.ParseUint(string(h[6+8*i:14+8*i]), 16, 32)
		}
		var v [13]uint64
		for i := range v {
			if v[i], err = field(i); err != nil {
				return nil, fmt.Errorf("cpio: header field %d at offset %d: %w", i, off-hdrLen, err)
			}
		}
		nameB, err := read(int64(v[11]))
		if err != nil || len(nameB) == 0 || nameB[len(nameB)-1] != 0 {
			return nil, fmt.Errorf("cpio: bad name at offset %d", off)
		}
		name := string(nameB[:len(nameB)-1])
		if err := skipPad(); err != nil {
			return nil, err
		}
		if name == trailer {
			return out, nil
		}
		data, err := read(int64(v[6]))
		if err != nil {
			return nil, fmt.Errorf("cpio: data of %s: %w", name, err)
		}
		if err := skipPad(); err != nil {
			return nil, err
		}
		out = append(out, Entry{Header: Header{Name: name, Mode: uint32(v[1]), UID: int(v[2]), GID: int(v[3]), Mtime: int64(v[5]), Size: int64(v[6])}, Data: data})
	}
}
