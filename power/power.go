// Package power switches nodes on and off and opens their serial console
// through their baseboard management controllers (herd.yaml nodes[].bmc).
//
// IPMI goes through the ipmitool binary (IPMI v2.0 RMCP+, `-I lanplus`): it
// is the reference client every BMC vendor tests against, it has
// serial-over-LAN, and the password reaches it as a file (-f), never on a
// command line. Redfish is not supported (nothing here to test it against).
package power

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/herdlab/herd/site"
)

// Actions of Power.
const (
	On    = "on"
	Off   = "off"   // hard power off
	Cycle = "cycle" // off, then on (on when it was off)
)

// States of Status.
const (
	StateOn  = "on"
	StateOff = "off"
)

// Controller powers one node.
type Controller interface {
	// Power performs On, Off or Cycle.
	Power(ctx context.Context, action string) error
	// Status is StateOn or StateOff as the BMC reports it.
	Status(ctx context.Context) (string, error)
}

// IPMI is one node's BMC reached with ipmitool over IPMI-over-LAN.
type IPMI struct {
	Node         string
	Host         string
	Port         int
	User         string
	PasswordFile string
	CipherSuite  int // 0: ipmitool chooses
	// Bin is the ipmitool binary (default "ipmitool" on PATH).
	Bin string
}

// ErrNoBMC is returned for a node without a bmc block.
var ErrNoBMC = errors.New("no bmc configured")

// ForNode returns the IPMI controller of the named node of cfg, after
// checking that its password file is private (mode 0600 or stricter); errors
// name the herd.yaml field.
func ForNode(cfg *site.Config, name string) (*IPMI, error) {
	idx := -1
	for i := range cfg.Nodes {
		if cfg.Nodes[i].Name == name {
			idx = i
		}
	}
	if idx < 0 {
		return nil, fmt.Errorf("node %q is not in %s", name, cfg.Path)
	}
	b := cfg.Nodes[idx].BMC
	field := fmt.Sprintf("nodes[%d].bmc", idx)
	if b == nil {
		return nil, fmt.Errorf("%w: %w", ErrNoBMC, cfg.Doc.Errorf(fmt.Sprintf("nodes[%d]", idx), "node %s has no bmc (address, user, password_file)", name))
	}
	host, port, err := b.HostPort()
	if err != nil {
		return nil, cfg.Doc.Errorf(field+".address", "%v", err)
	}
	if err := CheckPasswordFile(b.PasswordFile); err != nil {
		return nil, fmt.Errorf("%w: %w", cfg.Doc.Errorf(field+".password_file", "%v", err), err)
	}
	return &IPMI{Node: name, Host: host, Port: port, User: b.User, PasswordFile: b.PasswordFile, CipherSuite: b.CipherSuite}, nil
}

// CheckPasswordFile refuses a password file that others can read or write,
// or that is empty.
func CheckPasswordFile(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("password file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("password file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("password file %s is mode %04o: it must be readable by its owner only (chmod 600)", path, perm)
	}
	if fi.Size() == 0 {
		return fmt.Errorf("password file %s is empty", path)
	}
	return nil
}

// args is ipmitool's session arguments followed by the command.
func (p *IPMI) args(cmd ...string) []string {
	a := []string{"-I", "lanplus", "-H", p.Host, "-p", strconv.Itoa(p.Port), "-U", p.User, "-f", p.PasswordFile}
	if p.CipherSuite != 0 {
		a = append(a, "-C", strconv.Itoa(p.CipherSuite))
	}
	return append(a, cmd...)
}

func (p *IPMI) bin() string {
	if p.Bin != "" {
		return p.Bin
	}
	return "ipmitool"
}

// run runs one ipmitool command and returns its stdout.
func (p *IPMI) run(ctx context.Context, cmd ...string) (string, error) {
	c := exec.CommandContext(ctx, p.bin(), p.args(cmd...)...)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	if err := c.Run(); err != nil {
		return "", fmt.Errorf("bmc of %s (%s:%d): ipmitool %s: %w: %s", p.Node, p.Host, p.Port,
			strings.Join(cmd, " "), err, strings.TrimSpace(errb.String()+" "+out.String()))
	}
	return out.String(), nil
}

// Status asks the BMC whether the chassis is powered.
func (p *IPMI) Status(ctx context.Context) (string, error) {
	out, err := p.run(ctx, "chassis", "power", "status")
	if err != nil {
		return "", err
	}
	return parseStatus(out)
}

// parseStatus reads ipmitool's "Chassis Power is on|off".
func parseStatus(out string) (string, error) {
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		if rest, ok := strings.CutPrefix(l, "Chassis Power is "); ok {
			switch rest {
			case "on":
				return StateOn, nil
			case "off":
				return StateOff, nil
			}
		}
	}
	return "", fmt.Errorf("unexpected chassis power status %q", strings.TrimSpace(out))
}

// Power switches the node on, off, or cycles it. Cycle on a node that is off
// powers it on (the IPMI spec lets a BMC refuse a cycle when off).
func (p *IPMI) Power(ctx context.Context, action string) error {
	switch action {
	case On, Off:
	case Cycle:
		st, err := p.Status(ctx)
		if err != nil {
			return err
		}
		if st == StateOff {
			action = On
		}
	default:
		return fmt.Errorf("power action %q is not on, off or cycle", action)
	}
	_, err := p.run(ctx, "chassis", "power", action)
	return err
}

// Console attaches stdin/stdout to the node's serial console (IPMI
// serial-over-LAN, `ipmitool sol activate`; "~." ends it). With force, a
// session already open elsewhere is closed first.
func (p *IPMI) Console(ctx context.Context, force bool, stdin io.Reader, stdout, stderr io.Writer) error {
	if force {
		_, _ = p.run(ctx, "sol", "deactivate") // fails when none is open
	}
	c := exec.CommandContext(ctx, p.bin(), p.args("sol", "activate")...)
	c.Stdin, c.Stdout, c.Stderr = stdin, stdout, stderr
	if err := c.Run(); err != nil {
		return fmt.Errorf("bmc of %s (%s:%d): serial-over-LAN: %w", p.Node, p.Host, p.Port, err)
	}
	return nil
}
