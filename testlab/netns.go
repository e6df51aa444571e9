// Package testlab starts the real parts of a small lab on one machine — a
// network namespace with a bridge, slapd, nfs-ganesha, QEMU nodes — for the
// end-to-end tests and for `herd image test` / `herd vm run`. Everything it
// starts it also stops, by the PIDs it holds; all traffic stays inside the
// namespaces it creates.
package testlab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Netns is a network namespace created (and deleted) by this process.
type Netns struct {
	Name string
	// devices created inside, removed with the namespace.
	closed atomic.Bool
}

var nsSeq atomic.Int64

// NewNetns creates a fresh namespace named herd-<purpose>-<pid>-<n> with its
// loopback up.
func NewNetns(purpose string) (*Netns, error) {
	name := fmt.Sprintf("herd-%s-%d-%d", purpose, os.Getpid(), nsSeq.Add(1))
	if len(name) > 60 {
		name = name[:60]
	}
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	n := &Netns{Name: name}
	if err := n.IP("link", "set", "lo", "up"); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// IP runs `ip ARGS...` inside the namespace.
func (n *Netns) IP(args ...string) error {
	full := append([]string{"-n", n.Name}, args...)
	if out, err := exec.Command("ip", full...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(full, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// AddBridge creates a bridge with address cidr (e.g. 10.77.0.1/24) and brings it up.
func (n *Netns) AddBridge(name, cidr string) error {
	if err := n.IP("link", "add", name, "type", "bridge"); err != nil {
		return err
	}
	// No STP and no forwarding delay: ports forward the moment they come up,
	// so a PXE ROM's first DISCOVER is not dropped while the port "learns".
	if err := n.IP("link", "set", name, "type", "bridge", "stp_state", "0", "forward_delay", "0"); err != nil {
		return err
	}
	if cidr != "" {
		if err := n.IP("addr", "add", cidr, "dev", name); err != nil {
			return err
		}
	}
	return n.IP("link", "set", name, "up")
}

// AddAddress adds another address (cidr) to dev, e.g. a NAS address on the bridge.
func (n *Netns) AddAddress(dev, cidr string) error {
	return n.IP("addr", "add", cidr, "dev", dev)
}

// AddTap creates a tap device attached to bridge, for a QEMU NIC.
func (n *Netns) AddTap(name, bridge string) error {
	if err := n.IP("tuntap", "add", "dev", name, "mode", "tap"); err != nil {
		return err
	}
	if err := n.IP("link", "set", name, "master", bridge); err != nil {
		return err
	}
	return n.IP("link", "set", name, "up")
}

// AddVethPeer creates a veth pair with one end (inner) on bridge in this
// namespace and the other end (peer) moved into other, addressed with cidr.
// It gives a second "host" on the same L2 segment, e.g. a DHCP client.
func (n *Netns) AddVethPeer(inner, bridge string, other *Netns, peer, cidr string) error {
	if err := n.IP("link", "add", inner, "type", "veth", "peer", "name", peer, "netns", other.Name); err != nil {
		return err
	}
	if err := n.IP("link", "set", inner, "master", bridge); err != nil {
		return err
	}
	if err := n.IP("link", "set", inner, "up"); err != nil {
		return err
	}
	if cidr != "" {
		if err := other.IP("addr", "add", cidr, "dev", peer); err != nil {
			return err
		}
	}
	return other.IP("link", "set", peer, "up")
}

// Command returns a command that runs inside the namespace.
func (n *Netns) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	full := append([]string{"netns", "exec", n.Name, name}, args...)
	return exec.CommandContext(ctx, "ip", full...)
}

// Do runs fn on an OS thread switched into the namespace. Sockets fn creates
// stay in the namespace afterwards, whichever goroutine uses them; goroutines
// fn starts do NOT run inside it.
func (n *Netns) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: Go then discards it when the
		// goroutine ends, so no other goroutine inherits the namespace.
		runtime.LockOSThread()
		target, err := os.Open("/run/netns/" + n.Name)
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", n.Name, err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", n.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Close deletes the namespace and every device in it.
func (n *Netns) Close() error {
	if n == nil || !n.closed.CompareAndSwap(false, true) {
		return nil
	}
	out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput()
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("ip netns del %s: %w: %s", n.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}
