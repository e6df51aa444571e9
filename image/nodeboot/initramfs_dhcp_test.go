package nodeboot_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/insomniacslk/dhcp/rfc1035label"
	"github.com/klauspost/compress/zstd"

	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/testlab"
)

// TestInitramfsDHCPHostileServer is the attack test of the node's first
// network step (DESIGN.md "Trust"; attacker: any host on the boot LAN,
// which can answer DHCP faster than herd). The image's own initramfs runs
// the boot script's herd_dhcp (klibc ipconfig) in a chroot of that
// initramfs, in a network namespace whose only other host is the attacker's
// DHCP server. Every string the server sends (host name, domain, root path,
// boot file, search list) carries shell code that would leave a marker
// file; ipconfig writes them to /run/net-<dev>.conf, which initramfs-tools
// sources as root (resolv.conf from it). The attack works if a marker
// appears or a value comes back altered. A rogue server can still hand out
// a wrong address: the node's integrity never rests on DHCP (the image is
// checked against the command line's hashes, secrets go only to the
// enrolled key; the QEMU suites test those).
func TestInitramfsDHCPHostileServer(t *testing.T) {
	testenv.RequireNetns(t)
	testenv.RequireCommands(t, "chroot", "mount", "unshare", "cpio")
	img := testImage(t, "")
	root := t.TempDir()
	extractInitrd(t, img.Initrd, root)
	for _, p := range []string{"bin/ipconfig", "scripts/functions", "scripts/herd", "bin/sh"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err != nil {
			t.Fatalf("image initramfs lacks %s: %v", p, err)
		}
	}
	for _, d := range []string{"proc", "sys", "dev", "run", "tmp"} {
		must(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}

	att, err := testlab.NewNetns("dhcpatt")
	must(t, err)
	t.Cleanup(func() { att.Close() })
	node, err := testlab.NewNetns("dhcpnode")
	must(t, err)
	t.Cleanup(func() { node.Close() })
	must(t, att.IP("link", "add", "att0", "type", "veth", "peer", "name", "eth0", "netns", node.Name))
	must(t, att.IP("addr", "add", "10.99.0.1/24", "dev", "att0"))
	must(t, att.IP("link", "set", "att0", "up"))

	// Each payload, if run by a shell, creates /tmp/pwned-<field>.
	hostile := map[string]string{
		"host":   `n1'$(touch /tmp/pwned-host)'!x`,
		"domain": "lab`touch /tmp/pwned-domain`;touch /tmp/pwned-domain2",
		"root":   `/x";touch /tmp/pwned-root;"'`,
		"file":   `f'$(touch${IFS}/tmp/pwned-file)'`,
		"search": `s$(touch /tmp/pwned-search)`,
	}
	var conn net.PacketConn
	must(t, att.Do(func() (err error) {
		conn, err = server4.NewIPv4UDPConn("att0", &net.UDPAddr{Port: dhcpv4.ServerPort})
		return err
	}))
	t.Cleanup(func() { conn.Close() })
	served := make(chan string, 16)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			req, err := dhcpv4.FromBytes(buf[:n])
			if err != nil || req.OpCode != dhcpv4.OpcodeBootRequest {
				continue
			}
			mt := dhcpv4.MessageTypeOffer
			if req.MessageType() == dhcpv4.MessageTypeRequest {
				mt = dhcpv4.MessageTypeAck
			}
			r, err := dhcpv4.NewReplyFromRequest(req,
				dhcpv4.WithMessageType(mt),
				dhcpv4.WithYourIP(net.IPv4(10, 99, 0, 50)),
				dhcpv4.WithServerIP(net.IPv4(10, 99, 0, 1)),
				dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 99, 0, 1))),
				dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
				dhcpv4.WithRouter(net.IPv4(10, 99, 0, 1)),
				dhcpv4.WithDNS(net.IPv4(10, 99, 0, 1)),
				dhcpv4.WithLeaseTime(600),
				dhcpv4.WithOption(dhcpv4.OptHostName(hostile["host"])),
				dhcpv4.WithOption(dhcpv4.OptDomainName(hostile["domain"])),
				dhcpv4.WithOption(dhcpv4.OptRootPath(hostile["root"])),
				dhcpv4.WithOption(dhcpv4.OptBootFileName(hostile["file"])),
				dhcpv4.WithOption(dhcpv4.OptDomainSearch(&rfc1035label.Labels{Labels: []string{hostile["search"]}})),
			)
			if err != nil {
				continue
			}
			r.BootFileName = hostile["file"]
			conn.WriteTo(r.ToBytes(), &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort})
			select {
			case served <- mt.String():
			default:
			}
		}
	}()

	// The boot script's own function, with initramfs-tools' functions,
	// run by the initramfs's shell; then what initramfs-tools would read
	// back from the file ipconfig wrote.
	inner := `. /scripts/functions; . /scripts/herd; herd_dhcp || exit 9
. /run/net-eth0.conf
printf 'HOSTNAME=%s\nDNSDOMAIN=%s\nROOTPATH=%s\nfilename=%s\nIPV4ADDR=%s\n' "$HOSTNAME" "$DNSDOMAIN" "$ROOTPATH" "$filename" "$IPV4ADDR"`
	outer := fmt.Sprintf(`set -e
mount -t proc proc %[1]s/proc
mount --rbind /sys %[1]s/sys
mount --rbind /dev %[1]s/dev
mount -t tmpfs run %[1]s/run
exec chroot %[1]s /bin/sh -c %[2]s`, testlab.ShellQuote(root), testlab.ShellQuote(inner))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Mount and UTS namespaces of its own: the mounts above end with it
	// (never reaching the host, whose /dev the chroot binds), and ipconfig
	// sets the host name it is given.
	cmd := node.Command(ctx, "unshare", "--uts", "--mount", "--propagation", "private", "--", "sh", "-c", outer)
	out, err := cmd.CombinedOutput()
	t.Logf("initramfs herd_dhcp:\n%s", out)
	if err != nil {
		t.Fatalf("herd_dhcp against the hostile server: %v (served: %d replies)", err, len(served))
	}
	if len(served) == 0 {
		t.Fatal("the hostile server answered nothing: the test did not attack")
	}
	markers, _ := filepath.Glob(filepath.Join(root, "tmp", "pwned-*"))
	if len(markers) > 0 {
		t.Errorf("the DHCP reply's strings ran as shell code in the initramfs: %v", markers)
	}
	got := string(out)
	for k, want := range map[string]string{"HOSTNAME": hostile["host"], "DNSDOMAIN": hostile["domain"], "ROOTPATH": hostile["root"], "filename": hostile["file"], "IPV4ADDR": "10.99.0.50"} {
		if !strings.Contains(got, "\n"+k+"="+want+"\n") && !strings.HasPrefix(got, k+"="+want+"\n") {
			t.Errorf("%s read back from /run/net-eth0.conf is not the server's string %q verbatim", k, want)
		}
	}
	var addrs bytes.Buffer
	show := exec.Command("ip", "-n", node.Name, "-4", "addr", "show", "dev", "eth0")
	show.Stdout = &addrs
	must(t, show.Run())
	if !strings.Contains(addrs.String(), "10.99.0.50/24") {
		t.Errorf("eth0 was not configured with the lease: %s", addrs.String())
	}
}

// extractInitrd unpacks an initramfs-tools initrd into dir: the
// uncompressed early archives (kernel modules and microcode) are skipped,
// the compressed main archive (gzip or zstd) is written out.
func extractInitrd(t *testing.T, path, dir string) {
	t.Helper()
	b, err := os.ReadFile(path)
	must(t, err)
	for bytes.HasPrefix(b, []byte("070701")) {
		i := bytes.Index(b, []byte("TRAILER!!!\x00"))
		if i < 0 {
			t.Fatalf("%s: uncompressed archive without a trailer", path)
		}
		b = b[(i+len("TRAILER!!!\x00")+3)/4*4:]
		b = bytes.TrimLeft(b, "\x00")
	}
	var r io.Reader
	switch {
	case bytes.HasPrefix(b, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(bytes.NewReader(b))
		must(t, err)
		r = zr
	case bytes.HasPrefix(b, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(bytes.NewReader(b))
		must(t, err)
		defer zr.Close()
		r = zr
	default:
		t.Fatalf("%s: main archive is neither gzip nor zstd (starts %x)", path, b[:min(len(b), 4)])
	}
	// GNU cpio, for the hard links busybox's applets are (newc stores
	// their data once, in the last link).
	x := exec.Command("cpio", "-idm", "--quiet", "--no-absolute-filenames")
	x.Dir, x.Stdin = dir, r
	if out, err := x.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i of %s: %v: %s", path, err, out)
	}
}
