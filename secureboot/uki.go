package secureboot

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/herdlab/herd/internal/atomicfile"
)

// Section is one PE section added to systemd-stub to make a UKI.
type Section struct {
	Name string // at most 8 bytes, e.g. ".cmdline"
	Data []byte
}

// UKISections are a UKI's sections in systemd-stub's order: os-release,
// command line, initrd, kernel.
func UKISections(osrel, cmdline string, kernel, initrd []byte) []Section {
	return []Section{
		{".osrel", []byte(osrel)},
		{".cmdline", []byte(cmdline)},
		{".initrd", initrd},
		{".linux", kernel},
	}
}

// PE/COFF offsets (Microsoft PE format, PE32+).
const (
	scnInitializedData = 0x00000040
	scnMemRead         = 0x40000000
	sectionHeaderSize  = 40
)

// AddSections appends sections to a PE32+ image (systemd-stub): each gets a
// section header in the header area's free space, file data aligned to
// FileAlignment after the last section and a virtual address aligned to
// SectionAlignment after the last one, which is what ukify does. An
// existing signature is dropped (it would no longer match).
func AddSections(stub []byte, secs []Section) ([]byte, error) {
	bad := func(f string, a ...any) ([]byte, error) {
		return nil, fmt.Errorf("systemd-stub: "+f, a...)
	}
	if len(stub) < 0x40 || stub[0] != 'M' || stub[1] != 'Z' {
		return bad("not a PE image (no MZ header)")
	}
	le := binary.LittleEndian
	pe := int(le.Uint32(stub[0x3c:]))
	if pe+24 > len(stub) || string(stub[pe:pe+4]) != "PE\x00\x00" {
		return bad("not a PE image (no PE signature)")
	}
	coff := pe + 4
	nsec := int(le.Uint16(stub[coff+2:]))
	optSize := int(le.Uint16(stub[coff+16:]))
	opt := coff + 20
	if opt+optSize > len(stub) || optSize < 152 || le.Uint16(stub[opt:]) != 0x20b {
		return bad("not a PE32+ image")
	}
	secAlign := le.Uint32(stub[opt+32:])
	fileAlign := le.Uint32(stub[opt+36:])
	sizeOfHeaders := int(le.Uint32(stub[opt+60:]))
	if secAlign == 0 || fileAlign == 0 {
		return bad("zero section or file alignment")
	}
	table := opt + optSize
	out := append([]byte(nil), stub...)
	// Drop a signature: the certificate table is the file's tail.
	certOff, certSize := le.Uint32(out[opt+144:]), le.Uint32(out[opt+148:])
	if certSize != 0 && int(certOff) <= len(out) {
		out = out[:certOff]
		le.PutUint32(out[opt+144:], 0)
		le.PutUint32(out[opt+148:], 0)
	}
	firstRaw := len(out)
	var vEnd, fEnd uint32
	for i := 0; i < nsec; i++ {
		h := out[table+i*sectionHeaderSize:]
		name := strings.TrimRight(string(h[:8]), "\x00")
		for _, s := range secs {
			if name == s.Name {
				return bad("already has a %s section", name)
			}
		}
		vsz, va := le.Uint32(h[8:]), le.Uint32(h[12:])
		rsz, raw := le.Uint32(h[16:]), le.Uint32(h[20:])
		if raw != 0 && int(raw) < firstRaw {
			firstRaw = int(raw)
		}
		vEnd = max(vEnd, va+max(vsz, rsz))
		fEnd = max(fEnd, raw+rsz)
	}
	newEnd := table + (nsec+len(secs))*sectionHeaderSize
	if newEnd > sizeOfHeaders || newEnd > firstRaw {
		return bad("no room in the PE header for %d more sections (headers end at %d, first section data at %d)", len(secs), sizeOfHeaders, firstRaw)
	}
	for _, b := range out[table+nsec*sectionHeaderSize : newEnd] {
		if b != 0 {
			return bad("the PE header's free space is not empty")
		}
	}
	if int(fEnd) < len(out) {
		// Trailing data after the last section (none expected once the
		// signature is gone): keep it, place new sections after it.
		fEnd = uint32(len(out))
	}
	align := func(v, a uint32) uint32 { return (v + a - 1) / a * a }
	va := align(vEnd, secAlign)
	raw := align(fEnd, fileAlign)
	initData := le.Uint32(out[opt+8:])
	for i, s := range secs {
		if len(s.Name) > 8 {
			return bad("section name %q is longer than 8 bytes", s.Name)
		}
		if len(s.Data) == 0 {
			return bad("section %s is empty", s.Name)
		}
		size := uint32(len(s.Data))
		rsz := align(size, fileAlign)
		h := out[table+(nsec+i)*sectionHeaderSize:]
		copy(h[:8], s.Name)
		le.PutUint32(h[8:], size)
		le.PutUint32(h[12:], va)
		le.PutUint32(h[16:], rsz)
		le.PutUint32(h[20:], raw)
		le.PutUint32(h[36:], scnInitializedData|scnMemRead)
		if pad := int(raw) - len(out); pad > 0 {
			out = append(out, make([]byte, pad)...)
		}
		out = append(out, s.Data...)
		out = append(out, make([]byte, rsz-size)...)
		initData += rsz
		raw += rsz
		va = align(va+size, secAlign)
	}
	le.PutUint16(out[coff+2:], uint16(nsec+len(secs)))
	le.PutUint32(out[opt+8:], initData)
	le.PutUint32(out[opt+56:], va) // SizeOfImage
	le.PutUint32(out[opt+64:], 0)  // CheckSum: sbsign writes it
	return out, nil
}

// PESection returns the file range [off, off+size) of a section's data.
func PESection(img []byte, name string) (off, size int, err error) {
	le := binary.LittleEndian
	if len(img) < 0x40 {
		return 0, 0, errors.New("not a PE image")
	}
	pe := int(le.Uint32(img[0x3c:]))
	if pe+24 > len(img) {
		return 0, 0, errors.New("not a PE image")
	}
	coff := pe + 4
	nsec := int(le.Uint16(img[coff+2:]))
	table := coff + 20 + int(le.Uint16(img[coff+16:]))
	for i := 0; i < nsec; i++ {
		h := img[table+i*sectionHeaderSize:]
		if strings.TrimRight(string(h[:8]), "\x00") == name {
			return int(le.Uint32(h[20:])), int(le.Uint32(h[8:])), nil
		}
	}
	return 0, 0, fmt.Errorf("no %s section", name)
}

// Sign signs a PE image with key (Authenticode, sbsign) into out.
func Sign(ctx context.Context, key *Key, in, out string) error {
	cmd := exec.CommandContext(ctx, "sbsign", "--key", key.KeyPath, "--cert", key.CertPath, "--output", out, in)
	if o, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("sbsign %s: %w: %s", in, err, strings.TrimSpace(string(o)))
	}
	return nil
}

// Verify checks that a PE image carries a valid signature by cert (sbverify).
func Verify(ctx context.Context, certPath, file string) error {
	cmd := exec.CommandContext(ctx, "sbverify", "--cert", certPath, file)
	if o, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("sbverify %s: %w: %s", file, err, strings.TrimSpace(string(o)))
	}
	return nil
}

// UKI is one image generation's unified kernel image.
type UKI struct {
	ImageID string
	Stub    string // systemd-stub (linuxx64.efi.stub) from the image's packages
	Kernel  string
	Initrd  string
	Cmdline string // the per-generation command line (no per-node values)
}

// Path is where the signed UKI is kept: one file per image and command
// line under <state>/secureboot/uki/.
func (u *UKI) Path(state string) string {
	h := sha256.Sum256([]byte(u.Cmdline))
	return filepath.Join(state, "secureboot", "uki", u.ImageID+"-"+hex.EncodeToString(h[:8])+".efi")
}

var ukiMu sync.Mutex

// Ensure builds and signs the UKI with herd's db key unless it exists, and
// returns its path.
func (k *Keys) Ensure(ctx context.Context, state string, u *UKI) (string, error) {
	p := u.Path(state)
	ukiMu.Lock()
	defer ukiMu.Unlock()
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	read := func(name, path string) ([]byte, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("UKI of image %s: %s: %w", u.ImageID, name, err)
		}
		return b, nil
	}
	stub, err := read("systemd-stub", u.Stub)
	if err != nil {
		return "", err
	}
	kernel, err := read("kernel", u.Kernel)
	if err != nil {
		return "", err
	}
	initrd, err := read("initrd", u.Initrd)
	if err != nil {
		return "", err
	}
	osrel := fmt.Sprintf("NAME=herd\nID=herd\nPRETTY_NAME=\"herd image %s\"\nVERSION_ID=%s\n", u.ImageID, u.ImageID)
	img, err := AddSections(stub, UKISections(osrel, u.Cmdline+"\x00", kernel, initrd))
	if err != nil {
		return "", fmt.Errorf("UKI of image %s: %w", u.ImageID, err)
	}
	dir := filepath.Dir(p)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(dir, ".unsigned-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(img); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	signed := tmp.Name() + ".signed"
	defer os.Remove(signed)
	if err := Sign(ctx, k.DB(), tmp.Name(), signed); err != nil {
		return "", err
	}
	if err := atomicfile.Copy(signed, p, 0o644); err != nil {
		return "", err
	}
	return p, nil
}

// UKIFile is the TFTP name of the current generation's signed UKI, handed
// to UEFI PXE clients with secure_boot: herd; UKIHTTPPath is its HTTP path
// (UEFI HTTP boot).
const (
	UKIFile     = "herd-uki.efi"
	UKIHTTPPath = "/secureboot/" + UKIFile
)
