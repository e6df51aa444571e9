package directory

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/go-ldap/ldap/v3"
)

// RotateBindPassword gives the nodes' bind DN (ldap.bind_dn) a new random
// password in the directory and in ldap.bind_password_file (0600), which
// `herd serve` reads for every runtime overlay: each node gets the new
// password at its next boot, and a node that was forgotten (or a copy of
// an old overlay) keeps only the old one, which the directory refuses from
// now on. Nodes still running on the old password lose their directory
// binds until they reboot. The new password is first kept next to the file
// (path.new), so a failure at any step leaves it recoverable; it never
// appears in an error.
func (d *Dir) RotateBindPassword() error {
	dn, path := d.S.BindDN, d.S.BindPasswordFile
	if dn == "" {
		return d.S.fieldErr("ldap.bind_dn", "not set: nodes bind anonymously, there is no bind password to rotate")
	}
	if path == "" {
		return d.S.fieldErr("ldap.bind_password_file", "not set (the file herd serve hands the bind password to nodes from)")
	}
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return fmt.Errorf("rotate bind password: %w", err)
	}
	pw := base64.RawURLEncoding.EncodeToString(raw)
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(pw+"\n"), 0o600); err != nil {
		return fmt.Errorf("rotate bind password: %w", err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fmt.Errorf("rotate bind password: %w", err)
	}
	// Same owner as before: herd serve --user reads it as its own user.
	if st, err := os.Stat(path); err == nil {
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			if err := os.Chown(tmp, int(sys.Uid), int(sys.Gid)); err != nil {
				os.Remove(tmp)
				return fmt.Errorf("rotate bind password: %w", err)
			}
		}
	}
	if err := d.setPasswordDN(dn, pw); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("rotate bind password (the directory and %s are unchanged): %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("the directory has %s's new password, but %s could not be replaced (the new password is in %s: move it there): %w", dn, path, tmp, err)
	}
	if f, err := os.Open(filepath.Dir(path)); err == nil {
		f.Sync()
		f.Close()
	}
	return nil
}

// setPasswordDN sets dn's password with the Password Modify extended
// operation when the server offers it, else as an {SSHA} userPassword.
func (d *Dir) setPasswordDN(dn, password string) error {
	ok, err := d.SupportsPasswordModify()
	if err != nil {
		return err
	}
	if ok && !d.noPasswordModify {
		if _, err := d.conn.PasswordModify(ldap.NewPasswordModifyRequest(dn, "", password)); err != nil {
			return fmt.Errorf("password modify for %s: %w", dn, err)
		}
		return nil
	}
	hash, err := HashSSHA(password)
	if err != nil {
		return err
	}
	mod := ldap.NewModifyRequest(dn, nil)
	mod.Replace("userPassword", []string{hash})
	if err := d.conn.Modify(mod); err != nil {
		return fmt.Errorf("set userPassword of %s: %w", dn, err)
	}
	return nil
}
