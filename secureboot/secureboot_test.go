package secureboot

import (
	"bytes"
	"context"
	"debug/pe"
	"encoding/asn1"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf16"

	"github.com/herdlab/herd/image/inspect"
	"github.com/herdlab/herd/internal/testenv"
)

// hostStub is Debian's systemd-stub (package systemd-boot-efi): the image's
// own (Ubuntu's) is what herd serve uses; the PE layout is the same.
const hostStub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

func TestKeysMadeOnceAndPrivate(t *testing.T) {
	state := t.TempDir()
	ks, created, err := Init(state, "lab")
	if err != nil || !created {
		t.Fatalf("Init: created=%v err=%v", created, err)
	}
	fi, err := os.Stat(Dir(state))
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("keys dir mode %v (%v), want 0700", fi.Mode().Perm(), err)
	}
	for _, role := range Roles {
		k := ks.ByRole[role]
		fi, err := os.Stat(k.KeyPath)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v (%v), want 0600", k.KeyPath, fi.Mode().Perm(), err)
		}
		if want := "lab Secure Boot " + role; k.Cert.Subject.CommonName != want {
			t.Errorf("%s subject %q, want %q", role, k.Cert.Subject.CommonName, want)
		}
	}
	again, created, err := Init(state, "lab")
	if err != nil || created {
		t.Fatalf("second Init: created=%v err=%v (keys must be made once)", created, err)
	}
	if !again.DB().Cert.Equal(ks.DB().Cert) || again.Owner != ks.Owner {
		t.Fatal("second Init replaced the keys")
	}
	// A key readable by others is refused, not used.
	if err := os.Chmod(ks.DB().KeyPath, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(state); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("Load with a 0644 key: %v, want a refusal naming chmod 600", err)
	}
}

func TestGUIDRoundTrip(t *testing.T) {
	for _, s := range []string{GlobalVariableGUID, ImageSecurityGUID, certX509GUID} {
		g, err := ParseGUID(s)
		if err != nil || FormatGUID(g) != s {
			t.Errorf("%s → %x → %s (%v)", s, g, FormatGUID(g), err)
		}
	}
	// EFI_GLOBAL_VARIABLE in memory (UEFI spec: Data1..3 little-endian).
	g, _ := ParseGUID(GlobalVariableGUID)
	if !bytes.Equal(g[:4], []byte{0x61, 0xdf, 0xe4, 0x8b}) {
		t.Errorf("GUID byte order %x", g)
	}
}

// TestSignedUpdates checks each exported .auth file field by field and has
// openssl verify its PKCS#7 signature over what the firmware hashes
// (name, GUID, attributes, timestamp, data), signed by the right key.
func TestSignedUpdates(t *testing.T) {
	testenv.RequireCommands(t, "sbvarsign", "openssl")
	state := t.TempDir()
	ks, _, err := Init(state, "")
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if _, err := ks.Export(context.Background(), out); err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	for _, tc := range []struct {
		role   string
		append bool
		signer string
	}{{DB, false, KEK}, {DB, true, KEK}, {KEK, false, PK}, {KEK, true, PK}, {PK, false, PK}} {
		name := UpdateName(tc.role, tc.append)
		t.Run(name, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(out, name))
			if err != nil {
				t.Fatal(err)
			}
			attrs := le.Uint32(b)
			want := uint32(0x07 | 0x20)
			if tc.append {
				want |= 0x40
			}
			if attrs != want {
				t.Errorf("attributes %#x, want %#x", attrs, want)
			}
			ts := b[4:20]
			wc := b[20:]
			length := le.Uint32(wc)
			if le.Uint16(wc[4:]) != 0x200 || le.Uint16(wc[6:]) != 0x0ef1 {
				t.Fatalf("WIN_CERTIFICATE revision %#x type %#x, want 0x200 0x0ef1", le.Uint16(wc[4:]), le.Uint16(wc[6:]))
			}
			pkcs7GUID, _ := ParseGUID("4aafd29d-68df-49ee-8aa9-347d375665a7")
			if !bytes.Equal(wc[8:24], pkcs7GUID[:]) {
				t.Errorf("cert type %x is not EFI_CERT_TYPE_PKCS7_GUID", wc[8:24])
			}
			sig := wc[24:length]
			data := wc[length:]
			if !bytes.Equal(data, ks.ESL(tc.role)) {
				t.Fatalf("payload is not the %s signature list", tc.role)
			}
			var signed bytes.Buffer
			for _, r := range utf16.Encode([]rune(tc.role)) {
				binary.Write(&signed, binary.LittleEndian, r)
			}
			g, _ := ParseGUID(VarGUID(tc.role))
			signed.Write(g[:])
			binary.Write(&signed, binary.LittleEndian, attrs)
			signed.Write(ts)
			signed.Write(data)
			dir := t.TempDir()
			// sbvarsign writes a bare SignedData (as the firmware takes
			// it); openssl wants it inside a ContentInfo.
			ci, err := asn1.Marshal(struct {
				Type    asn1.ObjectIdentifier
				Content asn1.RawValue
			}{asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: sig}})
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(dir, "sig"), ci, 0o600)
			os.WriteFile(filepath.Join(dir, "data"), signed.Bytes(), 0o600)
			verify := func(content string) error {
				if o, err := exec.Command("openssl", "smime", "-verify", "-binary", "-inform", "DER", "-in", filepath.Join(dir, "sig"), "-content", content, "-noverify", "-signer", filepath.Join(dir, "who.pem"), "-out", "/dev/null").CombinedOutput(); err != nil {
					t.Logf("openssl: %s", o)
				}
				return exec.Command("openssl", "smime", "-verify", "-binary", "-inform", "DER", "-in", filepath.Join(dir, "sig"),
					"-content", content, "-noverify", "-signer", filepath.Join(dir, "who.pem"), "-out", "/dev/null").Run()
			}
			if err := verify(filepath.Join(dir, "data")); err != nil {
				t.Fatalf("openssl does not verify the update's signature: %v", err)
			}
			who, _ := os.ReadFile(filepath.Join(dir, "who.pem"))
			wantPEM, _ := os.ReadFile(ks.ByRole[tc.signer].CertPath)
			if !bytes.Equal(bytes.TrimSpace(who), bytes.TrimSpace(wantPEM)) {
				t.Errorf("signed by\n%s\nwant %s's certificate", who, tc.signer)
			}
			// Attack: the same signature over another certificate list
			// (an attacker's key slipped into db) does not verify.
			forged := bytes.Replace(signed.Bytes(), data, SignatureList(ks.Owner, ks.ByRole[PK].Cert.Raw), 1)
			if tc.role == PK {
				forged = bytes.Replace(signed.Bytes(), data, SignatureList(ks.Owner, ks.ByRole[DB].Cert.Raw), 1)
			}
			os.WriteFile(filepath.Join(dir, "forged"), forged, 0o600)
			if err := verify(filepath.Join(dir, "forged")); err == nil {
				t.Errorf("the signature also verifies over a different key list")
			}
		})
	}
	for _, f := range []string{"PK.crt", "PK.cer", "KEK.esl", "db.crt", "db.cer", "db.esl"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("export: %v", err)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(out, "*.key")); len(m) != 0 {
		t.Errorf("export wrote private keys: %v", m)
	}
}

// TestUKI builds a UKI from systemd-stub, checks its sections with
// debug/pe, that it is signed by herd's db key (sbverify, and
// inspect.PESigners names the signer), and that one flipped byte in any
// section (kernel, initrd, command line) breaks the signature.
func TestUKI(t *testing.T) {
	testenv.RequireCommands(t, "sbsign", "sbverify")
	testenv.RequireFiles(t, "package systemd-boot-efi", hostStub)
	state := t.TempDir()
	ks, _, err := Init(state, "")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	kernel := bytes.Repeat([]byte("KERNEL.."), 300000) // not a real kernel: the stub is never run here
	initrd := bytes.Repeat([]byte("initrd.."), 100001)
	os.WriteFile(filepath.Join(dir, "vmlinuz"), kernel, 0o644)
	os.WriteFile(filepath.Join(dir, "initrd.img"), initrd, 0o644)
	u := &UKI{ImageID: "abc123", Stub: hostStub, Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd.img"),
		Cmdline: "boot=herd herd.sha256=00ff herd.id=abc123"}
	ctx := context.Background()
	p, err := ks.Ensure(ctx, state, u)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(p) != filepath.Join(state, "secureboot", "uki") {
		t.Errorf("UKI at %s", p)
	}
	img, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	f, err := pe.NewFile(bytes.NewReader(img))
	if err != nil {
		t.Fatalf("debug/pe cannot read the UKI: %v", err)
	}
	want := map[string][]byte{".linux": kernel, ".initrd": initrd, ".cmdline": []byte(u.Cmdline + "\x00")}
	for name, data := range want {
		s := f.Section(name)
		if s == nil {
			t.Fatalf("no %s section", name)
		}
		got, err := s.Data()
		if err != nil || !bytes.Equal(got[:s.VirtualSize], data) {
			t.Errorf("%s section holds other data (%v)", name, err)
		}
	}
	if s := f.Section(".osrel"); s == nil {
		t.Error("no .osrel section")
	}
	var prevEnd uint32
	for _, s := range f.Sections {
		if s.VirtualAddress < prevEnd {
			t.Errorf("section %s overlaps the one before", s.Name)
		}
		prevEnd = s.VirtualAddress + s.VirtualSize
	}
	if oh := f.OptionalHeader.(*pe.OptionalHeader64); oh.SizeOfImage < prevEnd {
		t.Errorf("SizeOfImage %d < end of the last section %d", oh.SizeOfImage, prevEnd)
	}
	if err := Verify(ctx, ks.DB().CertPath, p); err != nil {
		t.Fatalf("signed UKI does not verify with herd's db certificate: %v", err)
	}
	if err := Verify(ctx, ks.ByRole[PK].CertPath, p); err == nil {
		t.Error("UKI verifies with the PK certificate: not signed by db alone")
	}
	signers, err := inspect.PESigners(img)
	if err != nil || len(signers) != 1 || !strings.Contains(signers[0].Subject, "herd Secure Boot db") {
		t.Errorf("inspect names signers %v (%v), want herd's db key", signers, err)
	}
	// Ensure is idempotent: the same file for the same generation.
	if p2, err := ks.Ensure(ctx, state, u); err != nil || p2 != p {
		t.Errorf("second Ensure: %s %v", p2, err)
	}
	u2 := *u
	u2.Cmdline += " herd.keep=3"
	if p2, err := ks.Ensure(ctx, state, &u2); err != nil || p2 == p {
		t.Errorf("another command line gives the same UKI file (%v)", err)
	}
	for _, sec := range []string{".linux", ".initrd", ".cmdline"} {
		t.Run("flipped-byte-in-"+strings.TrimPrefix(sec, "."), func(t *testing.T) {
			off, size, err := PESection(img, sec)
			if err != nil {
				t.Fatal(err)
			}
			bad := append([]byte(nil), img...)
			bad[off+size/2] ^= 0x01
			bp := filepath.Join(t.TempDir(), "bad.efi")
			os.WriteFile(bp, bad, 0o644)
			if err := Verify(ctx, ks.DB().CertPath, bp); err == nil {
				t.Fatalf("a UKI with one byte of %s flipped still verifies", sec)
			}
		})
	}
}

func TestAddSectionsRefusesBadInput(t *testing.T) {
	if _, err := AddSections([]byte("not a PE file at all, just some bytes; long enough to have a header offset....."), nil); err == nil {
		t.Error("AddSections accepted a non-PE file")
	}
	testenv.RequireFiles(t, "package systemd-boot-efi", hostStub)
	stub, err := os.ReadFile(hostStub)
	if err != nil {
		t.Fatal(err)
	}
	once, err := AddSections(stub, []Section{{".cmdline", []byte("x")}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := AddSections(once, []Section{{".cmdline", []byte("y")}}); err == nil {
		t.Error("a second .cmdline section was added")
	}
	if _, err := AddSections(stub, []Section{{".toolongname", []byte("y")}}); err == nil {
		t.Error("a section name over 8 bytes was accepted")
	}
}
