// Package secureboot is herd's own Secure Boot level (site secure_boot: herd):
// herd's PK/KEK/db keys kept in the state directory, the signed updates
// that enroll them into a node's firmware, and one signed unified kernel
// image (UKI) per image generation. Signing is done by sbsigntool's
// sbsign/sbvarsign (HACKING.md "Why not a library").
package secureboot

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/herdlab/herd/internal/atomicfile"
)

// Roles of herd's keys, in enrollment order reversed: PK signs KEK's
// update, KEK signs db's, db signs the UKIs.
const (
	PK  = "PK"
	KEK = "KEK"
	DB  = "db"
)

// Roles lists the key roles in the order their variables are written to a
// node in Setup Mode: db and KEK first, PK last (writing PK ends Setup Mode).
var Roles = []string{DB, KEK, PK}

// Key is one of herd's Secure Boot keys: an RSA-2048 key (the size every
// firmware accepts) and its self-signed certificate.
type Key struct {
	Role     string
	Cert     *x509.Certificate
	Private  *rsa.PrivateKey
	KeyPath  string // PEM private key, 0600
	CertPath string // PEM certificate
}

// Keys are herd's PK, KEK and db keys and the owner GUID of their
// signature list entries.
type Keys struct {
	Dir    string
	Owner  [16]byte
	ByRole map[string]*Key
}

// DB is the key that signs the UKIs.
func (k *Keys) DB() *Key { return k.ByRole[DB] }

// Dir is where herd's keys live under the state directory.
func Dir(state string) string { return filepath.Join(state, "secureboot", "keys") }

// Load reads herd's keys; an error wrapping os.ErrNotExist means they were
// never made (`herd secureboot init`).
func Load(state string) (*Keys, error) {
	dir := Dir(state)
	ks := &Keys{Dir: dir, ByRole: map[string]*Key{}}
	g, err := os.ReadFile(filepath.Join(dir, "owner-guid"))
	if err != nil {
		return nil, fmt.Errorf("herd's Secure Boot keys: %w", err)
	}
	if ks.Owner, err = ParseGUID(string(g)); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "owner-guid"), err)
	}
	for _, role := range Roles {
		k := &Key{Role: role, KeyPath: filepath.Join(dir, role+".key"), CertPath: filepath.Join(dir, role+".crt")}
		if k.Private, err = readKey(k.KeyPath); err != nil {
			return nil, err
		}
		if k.Cert, err = readCert(k.CertPath); err != nil {
			return nil, err
		}
		if !k.Private.PublicKey.Equal(k.Cert.PublicKey) {
			return nil, fmt.Errorf("%s does not match %s", k.CertPath, k.KeyPath)
		}
		ks.ByRole[role] = k
	}
	return ks, nil
}

// Init makes herd's keys once: it returns the existing ones when present
// (created false) and never replaces a key. Keys are 0600 in a 0700
// directory.
func Init(state, commonName string) (ks *Keys, created bool, err error) {
	if ks, err := Load(state); err == nil {
		return ks, false, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	dir := Dir(state)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, false, err
	}
	for _, role := range Roles {
		// A half-made set (a crash between files) is not reused.
		for _, ext := range []string{".key", ".crt"} {
			if _, err := os.Stat(filepath.Join(dir, role+ext)); err == nil {
				return nil, false, fmt.Errorf("%s: incomplete Secure Boot key set (%s exists but %s is unreadable); move the directory away to make new keys",
					dir, role+ext, filepath.Join(dir, "owner-guid"))
			}
		}
	}
	var owner [16]byte
	if _, err := rand.Read(owner[:]); err != nil {
		return nil, false, err
	}
	owner[6] = owner[6]&0x0f | 0x40 // version 4
	owner[8] = owner[8]&0x3f | 0x80
	if commonName == "" {
		commonName = "herd"
	}
	for _, role := range Roles {
		priv, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, false, err
		}
		serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
		if err != nil {
			return nil, false, err
		}
		now := time.Now().UTC()
		tmpl := &x509.Certificate{
			SerialNumber: serial,
			Subject:      pkix.Name{CommonName: commonName + " Secure Boot " + role},
			NotBefore:    now.Add(-time.Hour),
			// Firmware does not check validity periods; a long one keeps
			// tools that do from complaining.
			NotAfter:              now.AddDate(30, 0, 0),
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
			BasicConstraintsValid: true,
			IsCA:                  role != DB,
			SubjectKeyId:          ski(&priv.PublicKey),
		}
		if role == DB {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
		if err != nil {
			return nil, false, fmt.Errorf("certificate for %s: %w", role, err)
		}
		keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(priv)})
		if err := atomicfile.WriteFile(filepath.Join(dir, role+".key"), keyPEM, 0o600); err != nil {
			return nil, false, err
		}
		if err := atomicfile.WriteFile(filepath.Join(dir, role+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
			return nil, false, err
		}
	}
	// The GUID goes last: its presence marks a complete set.
	if err := atomicfile.WriteFile(filepath.Join(dir, "owner-guid"), []byte(FormatGUID(owner)+"\n"), 0o644); err != nil {
		return nil, false, err
	}
	ks, err = Load(state)
	return ks, err == nil, err
}

func ski(pub *rsa.PublicKey) []byte {
	h := sha256.Sum256(x509.MarshalPKCS1PublicKey(pub))
	return h[:20]
}

func readKey(path string) (*rsa.PrivateKey, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("herd's Secure Boot keys: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is readable by group or others (mode %v): chmod 600 it", path, fi.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "RSA PRIVATE KEY" {
		return nil, fmt.Errorf("%s: not a PEM RSA private key", path)
	}
	k, err := x509.ParsePKCS1PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

func readCert(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("herd's Secure Boot keys: %w", err)
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: not a PEM certificate", path)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// FormatGUID writes an EFI GUID (mixed-endian in memory) as text.
func FormatGUID(g [16]byte) string {
	return fmt.Sprintf("%02x%02x%02x%02x-%02x%02x-%02x%02x-%s-%s",
		g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], hex.EncodeToString(g[8:10]), hex.EncodeToString(g[10:]))
}

// ParseGUID reads the text form of an EFI GUID.
func ParseGUID(s string) ([16]byte, error) {
	var g [16]byte
	s = trimSpace(s)
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return g, fmt.Errorf("%q is not a GUID", s)
	}
	b, err := hex.DecodeString(s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:])
	if err != nil {
		return g, fmt.Errorf("%q is not a GUID: %w", s, err)
	}
	g[0], g[1], g[2], g[3] = b[3], b[2], b[1], b[0]
	g[4], g[5] = b[5], b[4]
	g[6], g[7] = b[7], b[6]
	copy(g[8:], b[8:])
	return g, nil
}

func trimSpace(s string) string {
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == ' ' || s[len(s)-1] == '\r') {
		s = s[:len(s)-1]
	}
	return s
}
