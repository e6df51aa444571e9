package ldaphash

import (
	"crypto/sha1"
	"encoding/base64"
	"strings"
	"testing"
)

// The hash is salted (two hashes of one password differ) and has the layout
// every LDAP server reads: base64(SHA-1 digest || 8-byte salt). That slapd
// accepts it for a bind is checked with a real slapd in directory's tests
// (TestPasswordModifyAndLogin, its {SSHA} fallback).
func TestSSHAIsSalted(t *testing.T) {
	a, err := SSHA("s3cret")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := SSHA("s3cret")
	if a == b {
		t.Fatal("two hashes of one password are equal: no salt")
	}
	for _, h := range []string{a, b} {
		raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(h, "{SSHA}"))
		if !strings.HasPrefix(h, "{SSHA}") || err != nil || len(raw) != sha1.Size+8 {
			t.Fatalf("hash %q is not {SSHA} base64(digest||salt): %v", h, err)
		}
	}
}
