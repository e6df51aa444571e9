package secureboot

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/herdlab/herd/internal/atomicfile"
)

// EFI GUIDs (text form) of the variables herd writes.
const (
	GlobalVariableGUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c" // PK, KEK, SecureBoot, SetupMode
	ImageSecurityGUID  = "d719b2cb-3d3a-4596-a3bc-dad00e67656f" // db, dbx
	certX509GUID       = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072" // EFI_CERT_X509_GUID
)

// VarGUID is the vendor GUID of a key variable (db: image security
// database; PK, KEK: global).
func VarGUID(role string) string {
	if role == DB {
		return ImageSecurityGUID
	}
	return GlobalVariableGUID
}

// SignatureList is an EFI_SIGNATURE_LIST holding one X.509 certificate
// owned by owner.
func SignatureList(owner [16]byte, certDER []byte) []byte {
	typ, _ := ParseGUID(certX509GUID)
	var b bytes.Buffer
	b.Write(typ[:])
	sigSize := 16 + len(certDER)
	binary.Write(&b, binary.LittleEndian, uint32(16+4+4+4+sigSize)) // SignatureListSize
	binary.Write(&b, binary.LittleEndian, uint32(0))                // SignatureHeaderSize
	binary.Write(&b, binary.LittleEndian, uint32(sigSize))          // SignatureSize
	b.Write(owner[:])
	b.Write(certDER)
	return b.Bytes()
}

// ESL is the signature list of role's certificate.
func (k *Keys) ESL(role string) []byte {
	return SignatureList(k.Owner, k.ByRole[role].Cert.Raw)
}

// signerOf is the key whose signature a variable update needs: PK signs
// itself and KEK, KEK signs db.
func signerOf(role string) string {
	if role == DB {
		return KEK
	}
	return PK
}

// Update returns the efivarfs-ready bytes (4 attribute bytes, then an
// EFI_VARIABLE_AUTHENTICATION_2 header, then the signature list) that set
// role's variable to herd's certificate. With appendKeys (db and KEK only)
// the certificate is added to what the variable holds (Microsoft's keys
// stay); PK is always replaced.
func (k *Keys) Update(ctx context.Context, role string, appendKeys bool) ([]byte, error) {
	tmp, err := os.MkdirTemp("", "herd-sbvar-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	esl := filepath.Join(tmp, role+".esl")
	if err := os.WriteFile(esl, k.ESL(role), 0o600); err != nil {
		return nil, err
	}
	attrs := "NON_VOLATILE,BOOTSERVICE_ACCESS,RUNTIME_ACCESS,TIME_BASED_AUTHENTICATED_WRITE_ACCESS"
	if appendKeys && role != PK {
		attrs += ",APPEND_WRITE"
	}
	s := k.ByRole[signerOf(role)]
	out := filepath.Join(tmp, role+".auth")
	cmd := exec.CommandContext(ctx, "sbvarsign", "--key", s.KeyPath, "--cert", s.CertPath, "--include-attrs",
		"--guid", VarGUID(role), "--attr", attrs, "--output", out, role, esl)
	if o, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("sbvarsign %s: %w: %s", role, err, strings.TrimSpace(string(o)))
	}
	return os.ReadFile(out)
}

// UpdateName is the file name of role's signed update: "<role>.auth"
// replaces the variable, "<role>-append.auth" adds to it.
func UpdateName(role string, appendKeys bool) string {
	if appendKeys && role != PK {
		return role + "-append.auth"
	}
	return role + ".auth"
}

// Export writes the certificates (PEM .crt, DER .cer), signature lists
// (.esl) and signed updates (.auth, -append.auth) to dir: what an admin
// enrolls by hand (firmware setup menu, KeyTool, sbkeysync, mokutil).
// Private keys never leave the state directory.
func (k *Keys) Export(ctx context.Context, dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var wrote []string
	put := func(name string, data []byte) error {
		p := filepath.Join(dir, name)
		if err := atomicfile.WriteFile(p, data, 0o644); err != nil {
			return err
		}
		wrote = append(wrote, p)
		return nil
	}
	for _, role := range []string{PK, KEK, DB} {
		c := k.ByRole[role].Cert
		if err := put(role+".crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})); err != nil {
			return nil, err
		}
		if err := put(role+".cer", c.Raw); err != nil {
			return nil, err
		}
		if err := put(role+".esl", k.ESL(role)); err != nil {
			return nil, err
		}
		for _, app := range []bool{false, true} {
			if app && role == PK {
				continue
			}
			u, err := k.Update(ctx, role, app)
			if err != nil {
				return nil, err
			}
			if err := put(UpdateName(role, app), u); err != nil {
				return nil, err
			}
		}
	}
	return wrote, nil
}
