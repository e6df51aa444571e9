package ldaphash

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herdlab/herd/internal/testenv"
)

func TestSSHAIsSaltedAndVerifies(t *testing.T) {
	a, err := SSHA("s3cret")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := SSHA("s3cret")
	if a == b {
		t.Fatal("two hashes of one password are equal: no salt")
	}
	if !VerifySSHA(a, "s3cret") || !VerifySSHA(b, "s3cret") {
		t.Fatal("hash does not verify")
	}
	if VerifySSHA(a, "s3cret ") || VerifySSHA("{SHA}"+a[6:], "s3cret") || VerifySSHA("{SSHA}!!", "s3cret") {
		t.Fatal("wrong password or malformed hash accepted")
	}
}

// OpenLDAP's own slappasswd must produce hashes our verifier accepts, so
// both sides agree on the format (salt after the digest).
func TestAgreesWithSlappasswd(t *testing.T) {
	testenv.RequireCommands(t, "slappasswd")
	f := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(f, []byte("Tr0ub4dor&3"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("slappasswd", "-h", "{SSHA}", "-T", f).Output()
	if err != nil {
		t.Fatal(err)
	}
	if h := strings.TrimSpace(string(out)); !VerifySSHA(h, "Tr0ub4dor&3") {
		t.Fatalf("slappasswd hash %q does not verify", h)
	}
}
