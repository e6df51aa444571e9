package testlab

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/herdlab/herd/internal/ldaphash"
)

// SlapdConfig describes a throw-away OpenLDAP server for tests and for
// `herd image test`.
type SlapdConfig struct {
	// Dir holds slapd.conf, the mdb database, certificates and the log.
	Dir string
	// Netns, when set, is where slapd runs; Addr is then required (an
	// address inside it). Without Netns slapd listens on loopback.
	Netns *Netns
	Addr  string
	// Port is the ldap:// port (default: a free loopback port, or 389 in a
	// namespace). LDAPSPort likewise for ldaps:// (default 636 in a namespace).
	Port      int
	LDAPSPort int
	// Base is the suffix (default dc=herd,dc=test); its first RDN is dc=,
	// o= or ou=.
	Base string
	// UsersOU and GroupsOU are where users and groups live, relative to
	// Base, as herd.yaml's ldap.users_ou/groups_ou (default ou=people,
	// ou=groups); each RDN must be ou=. They are seeded empty.
	UsersOU  string
	GroupsOU string
	// TLS generates a CA and a server certificate and also listens on ldaps://;
	// StartTLS works on the ldap:// port.
	TLS bool
	// Binary is /usr/sbin/slapd unless set; SlapaddBinary /usr/sbin/slapadd.
	Binary        string
	SlapaddBinary string
	// Access replaces the default access rules (slapd.conf "access to"
	// lines), e.g. to test how clients cope with a stricter or laxer server.
	Access string
	// DebugLevel is passed to -d (default "0": foreground, quiet); "stats"
	// logs every operation (never attribute values) to LogPath.
	DebugLevel string
}

// Slapd is a running slapd started by this process.
type Slapd struct {
	Config        SlapdConfig
	Base          string
	AdminDN       string
	AdminPassword string
	PeopleDN      string
	GroupsDN      string
	// CAFile is the PEM CA that signed the server certificate ("" without TLS).
	CAFile   string
	ConfPath string
	LogPath  string
	cmd      *exec.Cmd
	done     chan struct{}
}

// slapdSchemas are the schemas herd's entries need: posixAccount,
// shadowAccount (nis), inetOrgPerson (and its cosine prerequisites).
var slapdSchemas = []string{"core", "cosine", "inetorgperson", "nis"}

// StartSlapd writes a plain slapd.conf, seeds the base entries with slapadd,
// starts slapd in the foreground and waits (bounded) until an admin bind works.
func StartSlapd(ctx context.Context, c SlapdConfig) (*Slapd, error) {
	if c.Dir == "" {
		return nil, errors.New("slapd: Dir is required")
	}
	if c.Netns != nil && c.Addr == "" {
		return nil, errors.New("slapd: Addr is required with Netns")
	}
	if c.Addr == "" {
		c.Addr = "127.0.0.1"
	}
	if c.Base == "" {
		c.Base = "dc=herd,dc=test"
	}
	if c.Binary == "" {
		c.Binary = "/usr/sbin/slapd"
	}
	if c.SlapaddBinary == "" {
		c.SlapaddBinary = "/usr/sbin/slapadd"
	}
	if c.DebugLevel == "" {
		c.DebugLevel = "0"
	}
	var err error
	if c.Port == 0 {
		if c.Port, err = freePort(c); err != nil {
			return nil, err
		}
	}
	// The kernel may hand the just-released port out again: ask until the
	// two differ.
	for tries := 0; c.TLS && (c.LDAPSPort == 0 || c.LDAPSPort == c.Port); tries++ {
		if tries == 10 {
			return nil, errors.New("slapd: no second free port for ldaps")
		}
		if c.LDAPSPort, err = freePort(c); err != nil {
			return nil, err
		}
	}
	if c.UsersOU == "" {
		c.UsersOU = "ou=people"
	}
	if c.GroupsOU == "" {
		c.GroupsOU = "ou=groups"
	}
	seed, err := seedLDIF(c.Base, c.UsersOU, c.GroupsOU)
	if err != nil {
		return nil, err
	}
	s := &Slapd{
		Config:   c,
		Base:     c.Base,
		AdminDN:  "cn=admin," + c.Base,
		PeopleDN: c.UsersOU + "," + c.Base,
		GroupsDN: c.GroupsOU + "," + c.Base,
		ConfPath: filepath.Join(c.Dir, "slapd.conf"),
		LogPath:  filepath.Join(c.Dir, "slapd.log"),
		done:     make(chan struct{}),
	}
	if s.AdminPassword, err = randomSecret(); err != nil {
		return nil, err
	}
	dbDir := filepath.Join(c.Dir, "db")
	if err := os.MkdirAll(dbDir, 0o700); err != nil {
		return nil, fmt.Errorf("slapd: %w", err)
	}
	var tlsConf string
	if c.TLS {
		ca, crt, key, err := writeTestPKI(c.Dir, c.Addr)
		if err != nil {
			return nil, err
		}
		s.CAFile = ca
		tlsConf = fmt.Sprintf("TLSCACertificateFile %s\nTLSCertificateFile %s\nTLSCertificateKeyFile %s\n", ca, crt, key)
	}
	hash, err := SSHA(s.AdminPassword)
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	for _, sc := range slapdSchemas {
		fmt.Fprintf(&b, "include /etc/ldap/schema/%s.schema\n", sc)
	}
	fmt.Fprintf(&b, "pidfile %s\nargsfile %s\nmodulepath /usr/lib/ldap\nmoduleload back_mdb\n%s",
		filepath.Join(c.Dir, "slapd.pid"), filepath.Join(c.Dir, "slapd.args"), tlsConf)
	// Access: the rootdn bypasses all of this. Everyone may read users and
	// groups (SSSD binds anonymously) except userPassword, which anonymous
	// may only use to authenticate and its owner may change (Password Modify
	// runs as the bound user).
	access := c.Access
	if access == "" {
		access = `access to attrs=userPassword
	by self write
	by anonymous auth
	by * none
access to attrs=shadowLastChange
	by self write
	by * read
access to *
	by * read`
	}
	fmt.Fprintf(&b, `%s
database mdb
maxsize 268435456
suffix %q
rootdn %q
rootpw %s
directory %s
index objectClass eq
index uid,uidNumber,gidNumber,memberUid,cn eq
`, access, c.Base, s.AdminDN, hash, dbDir)
	if err := os.WriteFile(s.ConfPath, []byte(b.String()), 0o600); err != nil {
		return nil, fmt.Errorf("slapd: write config: %w", err)
	}
	seedPath := filepath.Join(c.Dir, "base.ldif")
	if err := os.WriteFile(seedPath, []byte(seed), 0o600); err != nil {
		return nil, fmt.Errorf("slapd: %w", err)
	}
	if out, err := exec.CommandContext(ctx, c.SlapaddBinary, "-f", s.ConfPath, "-l", seedPath).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("slapd: seed base entries with %s: %w: %s", c.SlapaddBinary, err, Clean(out))
	}

	urls := []string{fmt.Sprintf("ldap://%s/", net.JoinHostPort(c.Addr, strconv.Itoa(c.Port)))}
	if c.TLS {
		urls = append(urls, fmt.Sprintf("ldaps://%s/", net.JoinHostPort(c.Addr, strconv.Itoa(c.LDAPSPort))))
	}
	// -d keeps slapd in the foreground, so the PID we hold is slapd's own
	// (through `ip netns exec`, which execs it).
	args := []string{"-f", s.ConfPath, "-h", strings.Join(urls, " "), "-d", c.DebugLevel}
	if c.Netns != nil {
		s.cmd = c.Netns.Command(context.Background(), c.Binary, args...)
	} else {
		s.cmd = exec.Command(c.Binary, args...)
	}
	logf, err := os.Create(s.LogPath)
	if err != nil {
		return nil, fmt.Errorf("slapd: %w", err)
	}
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("slapd: start %s: %w", c.Binary, err)
	}
	go func() { _ = s.cmd.Wait(); logf.Close(); close(s.done) }()
	if err := s.waitBind(ctx, 30*time.Second); err != nil {
		s.Stop()
		return nil, fmt.Errorf("slapd did not come up: %w (log %s:\n%s)", err, s.LogPath, tailFile(s.LogPath, 20))
	}
	return s, nil
}

// URI is the plain ldap:// URI (StartTLS is available on it with TLS).
func (s *Slapd) URI() string {
	return "ldap://" + net.JoinHostPort(s.Config.Addr, strconv.Itoa(s.Config.Port))
}

// LDAPSURI is the ldaps:// URI ("" without TLS).
func (s *Slapd) LDAPSURI() string {
	if !s.Config.TLS {
		return ""
	}
	return "ldaps://" + net.JoinHostPort(s.Config.Addr, strconv.Itoa(s.Config.LDAPSPort))
}

// PID is the process id of slapd (or of `ip netns exec`, which execs it).
func (s *Slapd) PID() int { return s.cmd.Process.Pid }

// WriteAdminPassword writes the admin password to path with mode 0600, the
// form herd.yaml's ldap.admin_password_file expects.
func (s *Slapd) WriteAdminPassword(path string) error {
	return os.WriteFile(path, []byte(s.AdminPassword+"\n"), 0o600)
}

// Admin opens a connection bound as the rootdn (from the namespace if any).
func (s *Slapd) Admin() (*ldap.Conn, error) {
	conn, err := s.dial(s.URI())
	if err != nil {
		return nil, err
	}
	if err := conn.Bind(s.AdminDN, s.AdminPassword); err != nil {
		conn.Close()
		return nil, fmt.Errorf("bind as %s: %w", s.AdminDN, err)
	}
	return conn, nil
}

// dial connects to uri, inside the namespace when slapd runs in one.
func (s *Slapd) dial(uri string) (*ldap.Conn, error) {
	var conn *ldap.Conn
	do := func() error {
		var err error
		conn, err = ldap.DialURL(uri, ldap.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}))
		return err
	}
	var err error
	if s.Config.Netns != nil {
		err = s.Config.Netns.Do(do)
	} else {
		err = do()
	}
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", uri, err)
	}
	conn.SetTimeout(10 * time.Second)
	return conn, nil
}

// waitBind polls with an admin bind until it works, slapd exits or the
// deadline passes.
func (s *Slapd) waitBind(ctx context.Context, timeout time.Duration) error {
	return waitReady(ctx, timeout, 100*time.Millisecond, s.done,
		func() error {
			conn, err := s.Admin()
			if err == nil {
				conn.Close()
			}
			return err
		},
		func(err error) error { return err },
		func() error { return errors.New("slapd exited") })
}

// Stop ends slapd by its PID (SIGTERM, then SIGKILL) and waits for it.
func (s *Slapd) Stop() error {
	if s == nil {
		return nil
	}
	return stopProcess(s.cmd, s.done, 10*time.Second)
}

// SSHA returns the {SSHA} userPassword value of password (for seeding
// entries in tests).
func SSHA(password string) (string, error) { return ldaphash.SSHA(password) }

// randomSecret is a 24-hex-digit password.
func randomSecret() (string, error) {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random password: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// seedLDIF is the base entry (a dcObject organization, an organization or
// an organizational unit, after base's first RDN) and the organizational
// units of each relative DN in ous, parents first, each once.
func seedLDIF(base string, ous ...string) (string, error) {
	dn, err := ldap.ParseDN(base)
	if err != nil || len(dn.RDNs) == 0 || len(dn.RDNs[0].Attributes) != 1 {
		return "", fmt.Errorf("slapd: base %q is not a DN with a single-valued first RDN", base)
	}
	var b strings.Builder
	a := dn.RDNs[0].Attributes[0]
	fmt.Fprintf(&b, "dn: %s\n", base)
	switch strings.ToLower(a.Type) {
	case "dc":
		fmt.Fprintf(&b, "objectClass: dcObject\nobjectClass: organization\ndc: %s\no: herd test lab\n", a.Value)
	case "o":
		fmt.Fprintf(&b, "objectClass: organization\no: %s\n", a.Value)
	case "ou":
		fmt.Fprintf(&b, "objectClass: organizationalUnit\nou: %s\n", a.Value)
	default:
		return "", fmt.Errorf("slapd: base %q must start with dc=, o= or ou=", base)
	}
	seen := map[string]bool{}
	for _, rel := range ous {
		r, err := ldap.ParseDN(rel)
		if err != nil || len(r.RDNs) == 0 {
			return "", fmt.Errorf("slapd: %q is not a relative DN", rel)
		}
		parent := base
		for i := len(r.RDNs) - 1; i >= 0; i-- {
			rdn := r.RDNs[i]
			if len(rdn.Attributes) != 1 || !strings.EqualFold(rdn.Attributes[0].Type, "ou") {
				return "", fmt.Errorf("slapd: %q: only ou= entries can be seeded", rel)
			}
			parent = "ou=" + ldap.EscapeDN(rdn.Attributes[0].Value) + "," + parent
			if seen[strings.ToLower(parent)] {
				continue
			}
			seen[strings.ToLower(parent)] = true
			fmt.Fprintf(&b, "\ndn: %s\nobjectClass: organizationalUnit\nou: %s\n", parent, rdn.Attributes[0].Value)
		}
	}
	return b.String(), nil
}

// freePort asks the kernel for a free TCP port on loopback. In a namespace
// the well-known ports are free: 389 for ldap://, then 636 for ldaps://.
func freePort(c SlapdConfig) (int, error) {
	if c.Netns != nil {
		if c.Port == 0 {
			return 389, nil
		}
		return 636, nil
	}
	l, err := net.Listen("tcp", net.JoinHostPort(c.Addr, "0"))
	if err != nil {
		return 0, fmt.Errorf("slapd: find a free port on %s: %w", c.Addr, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// writeTestPKI generates a CA and a server certificate for addr (IP SAN plus
// localhost) in dir and returns the CA, certificate and key paths.
func writeTestPKI(dir, addr string) (caPath, crtPath, keyPath string, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", "", fmt.Errorf("slapd: CA key: %w", err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "herd test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return "", "", "", fmt.Errorf("slapd: CA certificate: %w", err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", "", fmt.Errorf("slapd: server key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: addr},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
	}
	if ip := net.ParseIP(addr); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = append(tmpl.DNSNames, addr)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return "", "", "", fmt.Errorf("slapd: server certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", "", fmt.Errorf("slapd: server key: %w", err)
	}
	caPath = filepath.Join(dir, "ca.pem")
	crtPath = filepath.Join(dir, "server.pem")
	keyPath = filepath.Join(dir, "server.key")
	for _, f := range []struct {
		path, typ string
		der       []byte
		mode      os.FileMode
	}{{caPath, "CERTIFICATE", caDER, 0o644}, {crtPath, "CERTIFICATE", der, 0o644}, {keyPath, "PRIVATE KEY", keyDER, 0o600}} {
		data := pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der})
		if err := os.WriteFile(f.path, data, f.mode); err != nil {
			return "", "", "", fmt.Errorf("slapd: %w", err)
		}
	}
	return caPath, crtPath, keyPath, nil
}

// TLSConfig trusts only the fixture's CA (nil without TLS).
func (s *Slapd) TLSConfig() (*tls.Config, error) {
	if s.CAFile == "" {
		return nil, nil
	}
	pemData, err := os.ReadFile(s.CAFile)
	if err != nil {
		return nil, fmt.Errorf("slapd: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		return nil, fmt.Errorf("slapd: no certificate in %s", s.CAFile)
	}
	return &tls.Config{RootCAs: pool, ServerName: s.Config.Addr}, nil
}
