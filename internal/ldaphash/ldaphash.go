// Package ldaphash computes userPassword values in the {SSHA} scheme every
// LDAP server (OpenLDAP, 389-ds, NAS directory servers) accepts, for
// directory's fallback when the server lacks Password Modify and for
// testlab's slapd rootpw.
package ldaphash

import (
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
)

// SSHA returns "{SSHA}" + base64(SHA-1(password || salt) || salt) with a
// random 8-byte salt.
func SSHA(password string) (string, error) {
	salt := make([]byte, 8)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("salt: %w", err)
	}
	return "{SSHA}" + base64.StdEncoding.EncodeToString(append(digest(password, salt), salt...)), nil
}

// digest is SHA-1 over password then salt.
func digest(password string, salt []byte) []byte {
	h := sha1.New()
	h.Write([]byte(password))
	h.Write(salt)
	return h.Sum(nil)
}
