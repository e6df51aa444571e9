package testlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/herdlab/herd/pxe/httpboot"
)

// Guest runs commands on a booted node over SSH, the way a lab user logs in.
// The TCP connection is made inside the lab namespace.
type Guest struct {
	Netns    *Netns
	Addr     string // IP of the node
	User     string
	Password string
	Signer   ssh.Signer
	// HostKeys, when set, are the only host keys accepted: the keys herd
	// generated for this node and sent in its runtime overlay.
	HostKeys []ssh.PublicKey
}

func (g *Guest) config() *ssh.ClientConfig {
	var auth []ssh.AuthMethod
	if g.Signer != nil {
		auth = append(auth, ssh.PublicKeys(g.Signer))
	}
	if g.Password != "" {
		pw := g.Password
		auth = append(auth, ssh.Password(pw), ssh.KeyboardInteractive(func(_, _ string, qs []string, _ []bool) ([]string, error) {
			a := make([]string, len(qs))
			for i := range a {
				a[i] = pw
			}
			return a, nil
		}))
	}
	hk := ssh.InsecureIgnoreHostKey() // only when the caller has no keys to pin
	if len(g.HostKeys) > 0 {
		keys := g.HostKeys
		hk = func(host string, _ net.Addr, key ssh.PublicKey) error {
			for _, k := range keys {
				if bytes.Equal(k.Marshal(), key.Marshal()) {
					return nil
				}
			}
			return fmt.Errorf("host key %s of %s is not one herd generated for this node", ssh.FingerprintSHA256(key), host)
		}
	}
	return &ssh.ClientConfig{User: g.User, Auth: auth, HostKeyCallback: hk, Timeout: 10 * time.Second}
}

// Dial opens an SSH connection to the node from inside the namespace.
func (g *Guest) Dial() (*ssh.Client, error) {
	var conn net.Conn
	addr := net.JoinHostPort(g.Addr, "22")
	if err := g.Netns.Do(func() (err error) { conn, err = net.DialTimeout("tcp", addr, 10*time.Second); return }); err != nil {
		return nil, err
	}
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, g.config())
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("ssh %s@%s: %w", g.User, addr, err)
	}
	return ssh.NewClient(c, chans, reqs), nil
}

// Run runs cmd in a login session and returns its stdout; a non-zero exit
// is an error carrying stderr.
func (g *Guest) Run(ctx context.Context, cmd string) (string, error) {
	c, s, err := g.session(ctx)
	if err != nil {
		return "", err
	}
	defer c.Close()
	defer s.Close()
	var out, errb bytes.Buffer
	s.Stdout, s.Stderr = &out, &errb
	done := make(chan error, 1)
	go func() { done <- s.Run(cmd) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		c.Close()
		return out.String(), fmt.Errorf("ssh %s@%s %q: %w", g.User, g.Addr, cmd, ctx.Err())
	}
	if err != nil {
		return out.String(), fmt.Errorf("ssh %s@%s %q: %w: %s", g.User, g.Addr, cmd, err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// sessionTries is how often session dials again when the node's sshd
// closed a logged-in connection before opening a session on it.
const sessionTries = 3

// session dials the node and opens a session. Under TCG load a node's sshd
// has closed an authenticated connection at the channel open ("unexpected
// packet in response to channel open: <nil>", TestLab, 2026-12-01, gpu01
// ten minutes after its reboot): no command ran, so dialling again is safe; a node
// that keeps doing it still fails after sessionTries.
func (g *Guest) session(ctx context.Context) (*ssh.Client, *ssh.Session, error) {
	var err error
	for i := 0; i < sessionTries; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return nil, nil, fmt.Errorf("ssh %s@%s: %w (after %v)", g.User, g.Addr, ctx.Err(), err)
			case <-time.After(3 * time.Second):
			}
		}
		var c *ssh.Client
		if c, err = g.Dial(); err != nil {
			return nil, nil, err
		}
		var s *ssh.Session
		if s, err = c.NewSession(); err == nil {
			return c, s, nil
		}
		c.Close()
		err = fmt.Errorf("ssh %s@%s: session: %w", g.User, g.Addr, err)
	}
	return nil, nil, err
}

// Sudo runs cmd as root through sudo, answering its password prompt with
// the user's password (the site's sudo rule for the members group).
func (g *Guest) Sudo(ctx context.Context, cmd string) (string, error) {
	if g.User == "root" {
		return g.Run(ctx, cmd)
	}
	q := "'" + strings.ReplaceAll(cmd, "'", `'\''`) + "'"
	return g.Run(ctx, fmt.Sprintf("printf '%%s\\n' %s | sudo -S -p '' sh -c %s", ShellQuote(g.Password), q))
}

// ShellQuote quotes s as one word for a POSIX shell.
func ShellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// WaitSSH retries until a command runs over SSH or timeout passes; it
// returns the last error.
func (g *Guest) WaitSSH(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, last = g.Run(cctx, "true")
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
	return fmt.Errorf("no SSH login as %s on %s within %s: %w", g.User, g.Addr, timeout, last)
}

// NodeHostKeys reads the SSH host keys herd serve generated for node (via
// httpboot.LoadSecrets), so a test can pin them.
func NodeHostKeys(stateDir, node string) ([]ssh.PublicKey, error) {
	sec, err := httpboot.LoadSecrets(stateDir, node)
	if err != nil {
		return nil, err
	}
	var keys []ssh.PublicKey
	for _, k := range sec.SSHHostKeys {
		pk, _, _, _, err := ssh.ParseAuthorizedKey(k.Public)
		if err != nil {
			return nil, fmt.Errorf("node %s %s host key: %w", node, k.Type, err)
		}
		keys = append(keys, pk)
	}
	if len(keys) == 0 {
		return nil, errors.New("no host keys for node " + node)
	}
	return keys, nil
}

// HostKeySeen connects to the node's SSH server and returns the fingerprint
// of the host key it presents: what a user's ssh would show and remember.
func (g *Guest) HostKeySeen() (string, error) {
	var conn net.Conn
	addr := net.JoinHostPort(g.Addr, "22")
	if err := g.Netns.Do(func() (err error) { conn, err = net.DialTimeout("tcp", addr, 10*time.Second); return }); err != nil {
		return "", err
	}
	defer conn.Close()
	var seen string
	errSeen := errors.New("host key recorded")
	cfg := &ssh.ClientConfig{User: g.User, Timeout: 10 * time.Second, HostKeyCallback: func(_ string, _ net.Addr, k ssh.PublicKey) error {
		seen = ssh.FingerprintSHA256(k)
		return errSeen
	}}
	_, _, _, err := ssh.NewClientConn(conn, addr, cfg)
	if seen == "" {
		return "", fmt.Errorf("ssh %s: no host key: %w", addr, err)
	}
	return seen, nil
}
