// Package directory manages the lab's users and groups in LDAP
// (posixAccount/shadowAccount/inetOrgPerson and posixGroup entries) for
// `herd user`, `herd group` and `herd ldap check`.
package directory

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/herdlab/herd/internal/strictyaml"
	"github.com/herdlab/herd/site"
)

// Settings is what the directory code needs from herd.yaml.
type Settings struct {
	URI, Base         string
	AdminDN           string
	AdminPasswordFile string
	// BindDN/BindPasswordFile is how nodes (SSSD) bind; empty is anonymous.
	BindDN            string
	BindPasswordFile  string
	TLS               string // none, ldaps, starttls
	CAFile            string
	UsersOU, GroupsOU string
	UIDMin, GIDMin    int
	DefaultShell      string
	DefaultGroup      string
	HomeRoot          string // where homes appear on nodes (/home)
	NASHomes          string // the homes export on the NAS (for instructions)
	NASAddress        string
	// Doc locates fields in herd.yaml for error messages (nil: no lines).
	Doc *strictyaml.Doc
}

// fieldErr names the herd.yaml field (with file:line:col when known).
func (s Settings) fieldErr(field, format string, args ...any) error {
	if s.Doc != nil {
		return s.Doc.Errorf(field, format, args...)
	}
	return fmt.Errorf("%s: "+format, append([]any{field}, args...)...)
}

// FromSite takes the LDAP and NAS settings of a loaded herd.yaml.
func FromSite(c *site.Config) Settings {
	return Settings{
		URI: c.LDAP.URI, Base: c.LDAP.Base,
		AdminDN: c.LDAP.AdminDN, AdminPasswordFile: c.LDAP.AdminPasswordFile,
		BindDN: c.LDAP.BindDN, BindPasswordFile: c.LDAP.BindPasswordFile,
		TLS: c.LDAP.TLS, CAFile: c.LDAP.CAFile,
		UsersOU: c.LDAP.UsersOU, GroupsOU: c.LDAP.GroupsOU,
		UIDMin: c.LDAP.UIDMin, GIDMin: c.LDAP.GIDMin,
		DefaultShell: c.LDAP.OverrideShell, DefaultGroup: c.LDAP.DefaultGroup,
		HomeRoot: c.NAS.HomeRoot, NASHomes: c.NAS.Homes, NASAddress: c.NAS.Address,
		Doc: c.Doc,
	}
}

// Dir is an admin connection to the directory.
type Dir struct {
	S    Settings
	conn *ldap.Conn
	// TLS reports whether the connection is encrypted (ldaps or StartTLS).
	TLS bool
	// noPasswordModify makes SetPassword take the {SSHA} fallback even when
	// the server offers the extended operation (tests: OpenLDAP always
	// offers it, so the fallback cannot be reached otherwise).
	noPasswordModify bool
}

// ReadSecretFile reads a one-line secret, refusing files that group or
// others can read, so the admin password cannot leak through a lax mode.
func ReadSecretFile(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s is readable by group or others (mode %04o); run: chmod 600 %s",
			path, st.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return pw, nil
}

// tlsConfig trusts CAFile (or the system roots without it) and checks the
// server name from the URI.
func (s Settings) tlsConfig() (*tls.Config, error) {
	u, err := url.Parse(s.URI)
	if err != nil {
		return nil, s.fieldErr("ldap.uri", "%q: %v", s.URI, err)
	}
	tc := &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
	if s.CAFile != "" {
		pemData, err := os.ReadFile(s.CAFile)
		if err != nil {
			return nil, s.fieldErr("ldap.ca_file", "%v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemData) {
			return nil, s.fieldErr("ldap.ca_file", "%s holds no PEM certificate", s.CAFile)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

// Connect dials ldap.uri, negotiates TLS as configured and binds as
// ldap.admin_dn with the password from ldap.admin_password_file.
func Connect(s Settings) (*Dir, error) {
	if s.URI == "" {
		return nil, s.fieldErr("ldap.uri", "not set (e.g. ldap://nas.lab/)")
	}
	if s.Base == "" {
		return nil, s.fieldErr("ldap.base", "not set (e.g. dc=lab,dc=example)")
	}
	if s.AdminDN == "" {
		return nil, s.fieldErr("ldap.admin_dn", "not set (the DN herd binds as to manage users)")
	}
	if s.AdminPasswordFile == "" {
		return nil, s.fieldErr("ldap.admin_password_file", "not set (a file holding the admin password, mode 0600)")
	}
	pw, err := ReadSecretFile(s.AdminPasswordFile)
	if err != nil {
		return nil, s.fieldErr("ldap.admin_password_file", "%v", err)
	}
	d, err := dial(s)
	if err != nil {
		return nil, err
	}
	if err := d.conn.Bind(s.AdminDN, pw); err != nil {
		d.Close()
		if ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
			return nil, fmt.Errorf("bind as %s failed: invalid credentials (check ldap.admin_password_file %s)", s.AdminDN, s.AdminPasswordFile)
		}
		return nil, fmt.Errorf("bind as %s at %s failed: %w", s.AdminDN, s.URI, err)
	}
	slog.Debug("ldap bound", "uri", s.URI, "dn", s.AdminDN, "tls", d.TLS)
	return d, nil
}

// dial opens the connection and applies ldaps/StartTLS.
func dial(s Settings) (*Dir, error) {
	tc, err := s.tlsConfig()
	if err != nil {
		return nil, err
	}
	opts := []ldap.DialOpt{ldap.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second})}
	ldaps := strings.HasPrefix(s.URI, "ldaps://")
	if ldaps {
		opts = append(opts, ldap.DialWithTLSConfig(tc))
	}
	conn, err := ldap.DialURL(s.URI, opts...)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the LDAP server at %s (ldap.uri): %w", s.URI, err)
	}
	conn.SetTimeout(30 * time.Second)
	d := &Dir{S: s, conn: conn, TLS: ldaps}
	if s.TLS == "starttls" && !ldaps {
		if err := conn.StartTLS(tc); err != nil {
			conn.Close()
			return nil, fmt.Errorf("StartTLS with %s failed (ldap.tls starttls, ldap.ca_file %q): %w", s.URI, s.CAFile, err)
		}
		d.TLS = true
	}
	return d, nil
}

// Close ends the connection.
func (d *Dir) Close() error {
	if d == nil || d.conn == nil {
		return nil
	}
	return d.conn.Close()
}

// Conn exposes the bound connection (for tests and `herd ldap check`).
func (d *Dir) Conn() *ldap.Conn { return d.conn }

// usersDN is where new users are created.
func (d *Dir) usersDN() string { return d.S.UsersOU + "," + d.S.Base }

// groupsDN is where new groups are created.
func (d *Dir) groupsDN() string { return d.S.GroupsOU + "," + d.S.Base }

// search runs a subtree search under the base and returns all entries.
func (d *Dir) search(filter string, attrs ...string) ([]*ldap.Entry, error) {
	req := ldap.NewSearchRequest(d.S.Base, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 0, 0, false, filter, attrs, nil)
	res, err := d.conn.SearchWithPaging(req, 500)
	if err != nil {
		return nil, fmt.Errorf("search %s under %s: %w", filter, d.S.Base, err)
	}
	return res.Entries, nil
}
