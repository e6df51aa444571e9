package inspect

// Signers of what a Secure Boot node runs: the Authenticode signatures of
// EFI binaries and the kernel (PE files: the certificate table holds
// WIN_CERTIFICATE entries wrapping PKCS#7 SignedData), the appended PKCS#7
// signature of kernel modules, and the X.509 keys built into the kernel
// (its system keyring: the keys it checks module signatures against).
// Parsed with the standard library (debug/pe, encoding/asn1, crypto/x509):
// only who signed is read here; whether a signature verifies is the
// firmware's, shim's and the kernel's job at boot, and the Secure Boot e2e
// test (qemu-tests) proves they accept these files.

import (
	"bytes"
	"compress/gzip"
	"crypto/x509"
	"crypto/x509/pkix"
	"debug/pe"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"

	"github.com/klauspost/compress/zstd"
)

// Signer names who signed: the signing certificate's subject when the
// signature carries it, else the issuer and serial it names (module
// signatures carry no certificate).
type Signer struct {
	Subject string `json:"subject,omitempty"`
	Issuer  string `json:"issuer"`
	Serial  string `json:"serial"`
}

// String is the subject when known, else "issuer <name> serial <hex>".
func (s Signer) String() string {
	if s.Subject != "" {
		return s.Subject
	}
	return "issuer " + s.Issuer + " serial " + s.Serial
}

// signerID is a SignerInfo's issuer and serial, raw for matching.
type signerID struct {
	issuerRaw []byte
	serial    *big.Int
}

// pkcs7Signers parses DER PKCS#7 SignedData and names each signer.
func pkcs7Signers(der []byte) ([]Signer, []signerID, error) {
	var ci struct {
		Type    asn1.ObjectIdentifier
		Content asn1.RawValue `asn1:"explicit,tag:0"`
	}
	if _, err := asn1.Unmarshal(der, &ci); err != nil {
		return nil, nil, fmt.Errorf("PKCS#7: %w", err)
	}
	var sd struct {
		Version     int
		Digests     asn1.RawValue
		Content     asn1.RawValue
		Certs       asn1.RawValue `asn1:"optional,tag:0"`
		CRLs        asn1.RawValue `asn1:"optional,tag:1"`
		SignerInfos asn1.RawValue
	}
	if _, err := asn1.Unmarshal(ci.Content.Bytes, &sd); err != nil {
		return nil, nil, fmt.Errorf("PKCS#7 SignedData: %w", err)
	}
	var certs []*x509.Certificate
	if len(sd.Certs.Bytes) > 0 {
		c, err := x509.ParseCertificates(sd.Certs.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("PKCS#7 certificates: %w", err)
		}
		certs = c
	}
	var out []Signer
	var ids []signerID
	rest := sd.SignerInfos.Bytes
	for len(rest) > 0 {
		var si asn1.RawValue
		var err error
		if rest, err = asn1.Unmarshal(rest, &si); err != nil {
			return nil, nil, fmt.Errorf("PKCS#7 SignerInfo: %w", err)
		}
		var head struct {
			Version int
			SID     struct {
				Issuer asn1.RawValue
				Serial *big.Int
			}
		}
		// SignerInfo has more fields after the sid; asn1 reads the
		// leading ones and leaves the rest.
		if _, err := asn1.UnmarshalWithParams(si.FullBytes, &head, ""); err != nil {
			return nil, nil, fmt.Errorf("PKCS#7 SignerInfo issuer and serial (subject key IDs are not read): %w", err)
		}
		var rdn pkix.RDNSequence
		if _, err := asn1.Unmarshal(head.SID.Issuer.FullBytes, &rdn); err != nil {
			return nil, nil, fmt.Errorf("PKCS#7 signer issuer: %w", err)
		}
		var issuer pkix.Name
		issuer.FillFromRDNSequence(&rdn)
		s := Signer{Issuer: issuer.String(), Serial: fmt.Sprintf("%x", head.SID.Serial)}
		for _, c := range certs {
			if c.SerialNumber.Cmp(head.SID.Serial) == 0 && bytes.Equal(c.RawIssuer, head.SID.Issuer.FullBytes) {
				s.Subject = c.Subject.String()
			}
		}
		out = append(out, s)
		ids = append(ids, signerID{head.SID.Issuer.FullBytes, head.SID.Serial})
	}
	if len(out) == 0 {
		return nil, nil, errors.New("PKCS#7: no signer")
	}
	return out, ids, nil
}

// PESigners names the Authenticode signers of a PE file (shim, GRUB, the
// kernel's EFI stub); an unsigned file gives none and no error.
func PESigners(data []byte) ([]Signer, error) {
	f, err := pe.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("not a PE file: %w", err)
	}
	var dir pe.DataDirectory
	switch h := f.OptionalHeader.(type) {
	case *pe.OptionalHeader64:
		if len(h.DataDirectory) > pe.IMAGE_DIRECTORY_ENTRY_SECURITY {
			dir = h.DataDirectory[pe.IMAGE_DIRECTORY_ENTRY_SECURITY]
		}
	case *pe.OptionalHeader32:
		if len(h.DataDirectory) > pe.IMAGE_DIRECTORY_ENTRY_SECURITY {
			dir = h.DataDirectory[pe.IMAGE_DIRECTORY_ENTRY_SECURITY]
		}
	}
	if dir.Size == 0 {
		return nil, nil
	}
	// The security directory's address is a file offset, not an RVA.
	end := uint64(dir.VirtualAddress) + uint64(dir.Size)
	if end > uint64(len(data)) {
		return nil, fmt.Errorf("certificate table [%d, %d) is outside the %d-byte file", dir.VirtualAddress, end, len(data))
	}
	tbl := data[dir.VirtualAddress:end]
	var out []Signer
	for len(tbl) >= 8 {
		n := binary.LittleEndian.Uint32(tbl)
		typ := binary.LittleEndian.Uint16(tbl[6:])
		if n < 8 || uint64(n) > uint64(len(tbl)) {
			return nil, fmt.Errorf("WIN_CERTIFICATE length %d does not fit", n)
		}
		if typ == 2 { // WIN_CERT_TYPE_PKCS_SIGNED_DATA
			s, _, err := pkcs7Signers(tbl[8:n])
			if err != nil {
				return nil, err
			}
			out = append(out, s...)
		}
		adv := uint64(n+7) &^ 7 // entries are 8-byte aligned
		if adv >= uint64(len(tbl)) {
			break
		}
		tbl = tbl[adv:]
	}
	return out, nil
}

// moduleSignature reads a module's appended signature (see sigMagic): the
// 12-byte module_signature block before the magic gives the PKCS#7 length.
func moduleSignature(r io.ReaderAt, size int64) ([]Signer, []signerID, error) {
	tail := int64(len(sigMagic)) + 12
	if size < tail {
		return nil, nil, errors.New("no appended signature")
	}
	b := make([]byte, tail)
	if _, err := r.ReadAt(b, size-tail); err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, err
	}
	if string(b[12:]) != sigMagic {
		return nil, nil, errors.New("no appended signature")
	}
	if b[2] != 2 { // id_type PKEY_ID_PKCS7
		return nil, nil, fmt.Errorf("signature id type %d is not PKCS#7", b[2])
	}
	n := int64(binary.BigEndian.Uint32(b[8:12]))
	if n <= 0 || n > size-tail || n > 64<<10 {
		return nil, nil, fmt.Errorf("signature length %d does not fit", n)
	}
	der := make([]byte, n)
	if _, err := r.ReadAt(der, size-tail-n); err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, err
	}
	return pkcs7Signers(der)
}

// maxVmlinux bounds a decompressed kernel.
const maxVmlinux = 512 << 20

// KernelKeys returns the X.509 certificates built into a bzImage kernel
// (CONFIG_SYSTEM_TRUSTED_KEYS and the build's module signing key: the keys
// it accepts module signatures from without any MOK). The payload is
// decompressed (zstd or gzip, what Ubuntu's and Debian's kernels use) and
// scanned for DER certificates.
func KernelKeys(vmlinuz []byte) ([]*x509.Certificate, error) {
	if len(vmlinuz) < 0x250 || string(vmlinuz[0x202:0x206]) != "HdrS" {
		return nil, errors.New("not a bzImage (no HdrS header)")
	}
	setup := int(vmlinuz[0x1f1])
	if setup == 0 {
		setup = 4
	}
	start := (setup + 1) * 512
	off := int(binary.LittleEndian.Uint32(vmlinuz[0x248:]))
	n := int(binary.LittleEndian.Uint32(vmlinuz[0x24c:]))
	if start+off+n > len(vmlinuz) || n < 8 {
		return nil, fmt.Errorf("payload [%d+%d, %d) is outside the %d-byte kernel", start, off, n, len(vmlinuz))
	}
	payload := vmlinuz[start+off : start+off+n]
	var raw []byte
	switch {
	case bytes.HasPrefix(payload, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxVmlinux))
		if err != nil {
			return nil, err
		}
		defer d.Close()
		// The kernel build appends the decompressed size (4 bytes).
		raw, err = d.DecodeAll(payload[:len(payload)-4], nil)
		if err != nil {
			return nil, fmt.Errorf("decompress the kernel (zstd): %w", err)
		}
	case bytes.HasPrefix(payload, []byte{0x1f, 0x8b}):
		z, err := gzip.NewReader(bytes.NewReader(payload))
		if err != nil {
			return nil, err
		}
		z.Multistream(false)
		raw, err = io.ReadAll(io.LimitReader(z, maxVmlinux))
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("decompress the kernel (gzip): %w", err)
		}
	default:
		return nil, fmt.Errorf("kernel payload compression %x is not read (zstd and gzip are)", payload[:4])
	}
	var out []*x509.Certificate
	// A certificate is SEQUENCE(len 2 bytes) { SEQUENCE(len 2 bytes) tbs ... }.
	for i := 0; i+8 < len(raw); i++ {
		if raw[i] != 0x30 || raw[i+1] != 0x82 || raw[i+4] != 0x30 || raw[i+5] != 0x82 {
			continue
		}
		l := int(raw[i+2])<<8 | int(raw[i+3])
		if l < 200 || i+4+l > len(raw) {
			continue
		}
		c, err := x509.ParseCertificate(raw[i : i+4+l])
		if err != nil {
			continue
		}
		out = append(out, c)
		i += 4 + l - 1
	}
	return out, nil
}

// trusted says whether one of keys is the certificate a signer names.
func trusted(keys []*x509.Certificate, ids []signerID) bool {
	for _, id := range ids {
		for _, k := range keys {
			if k.SerialNumber.Cmp(id.serial) == 0 && bytes.Equal(k.RawIssuer, id.issuerRaw) {
				return true
			}
		}
	}
	return false
}

// ModuleSigner names who signed a kernel module (uncompressed bytes in r)
// and whether that certificate is one of keys (KernelKeys of its kernel).
func ModuleSigner(keys []*x509.Certificate, r io.ReaderAt, size int64) (Signer, bool, error) {
	s, ids, err := moduleSignature(r, size)
	if err != nil {
		return Signer{}, false, err
	}
	return s[0], trusted(keys, ids), nil
}
