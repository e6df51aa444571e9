package qemutests

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/testlab"
)

// A real node boots through hostile traffic (issue 15, DESIGN.md "Trust";
// attacker: any host on the boot LAN, which may spoof source addresses).
// While gpu02 (OVMF: firmware DHCP, then snponly.efi over TFTP, then HTTP)
// reboots from its SSD (identity_test.go's reboot-from-ssd-under-flood),
// an attacker host floods herd's TFTP port with read requests from its own
// and spoofed addresses and holds HTTP connections open with trickled
// headers (slowloris). gpu02 must still reach multi-user with its SSH
// login before the suite's generous boot deadline. It is also the suite's
// reboot from the SSD cache (issue 17): gpu02 has the image cached and must
// not download it again, chunk or whole (cachedRebootChecks).

// hostilePy floods TFTP RRQs (raw socket: own and spoofed sources) at rate
// per second and keeps slowloris connections to the HTTP port, until
// killed. Arguments: server, tftp port, http port, rate, own address.
const hostilePy = `
import random, socket, struct, sys, time
dst, tport, hport, rate, own = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
names = [b"snponly.efi", b"undionly.kpxe", b"ipxe.efi"]
def csum(b):
    if len(b) % 2: b += b"\x00"
    t = sum(struct.unpack("!%dH" % (len(b)//2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
socks, sent, i = [], 0, 0
last = time.time()
while True:
    i += 1
    src = own if i % 2 else "10.77.0.%d" % random.randrange(100, 250)
    payload = b"\x00\x01" + random.choice(names) + b"\x00octet\x00blksize\x001468\x00"
    udp = struct.pack("!HHHH", random.randrange(1024, 65535), tport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xffff, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    try: raw.sendto(ip + udp, (dst, 0)); sent += 1
    except OSError: pass
    if i % rate == 0:
        if len(socks) < 200:
            for _ in range(20):
                try:
                    s = socket.create_connection((dst, hport), timeout=1)
                    s.send(b"GET /boot/x.ipxe HTTP/1.1\r\nHost: x\r\n"); socks.append(s)
                except OSError: pass
        for s in socks:
            try: s.send(b"X")
            except OSError: pass
        print("sent", sent, "held", len(socks), flush=True)
    time.sleep(1.0 / rate)
`

// flood is hostilePy running in an attacker host of its own on the lab's
// bridge.
type flood struct {
	out  testenv.Buffer
	done chan struct{} // closed when the attacker's process ended
}

// startFlood starts the attacker; the test's cleanup stops it.
func startFlood(t *testing.T, ctx context.Context, lab *testlab.Lab) *flood {
	t.Helper()
	att, err := lab.NewAttacker()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { att.Close() })
	const own = "10.77.0.66"
	if err := att.Become(own, "52:54:00:66:66:66"); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(t.TempDir(), "hostile.py")
	if err := os.WriteFile(script, []byte(hostilePy), 0o644); err != nil {
		t.Fatal(err)
	}
	fctx, stop := context.WithCancel(ctx)
	f := &flood{done: make(chan struct{})}
	cmd := att.Netns.Command(fctx, "/usr/bin/python3", "-u", script, testlab.LabServer, "69", strconv.Itoa(testlab.LabHTTP), "300", own)
	cmd.Stdout, cmd.Stderr = &f.out, &f.out
	if err := cmd.Start(); err != nil {
		stop()
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(f.done) }()
	t.Cleanup(func() { stop(); <-f.done })
	return f
}

// running says whether the attacker is still at it.
func (f *flood) running() bool {
	select {
	case <-f.done:
		return false
	default:
		return true
	}
}

// last is the attacker's latest progress line (packets sent, connections
// held).
func (f *flood) last() string { return lastLine(f.out.String()) }

// cachedRebootChecks are what the server's log must show of b's reboot
// from its SSD cache (since: the log from just before the reboot): its boot
// script came from herd, no byte of its cached image was downloaded again,
// and it reported booting the cached copy.
func cachedRebootChecks(t *testing.T, lab *testlab.Lab, b *testlab.Booted, since string) {
	t.Helper()
	if !strings.Contains(since, "/boot/"+b.Node.MAC) && !strings.Contains(since, "/boot/"+strings.ReplaceAll(b.Node.MAC, ":", "-")) {
		t.Errorf("%s's reboot did not fetch its boot script from herd (server log %s)", b.Node.Name, lab.ServerLog)
	}
	if cb, rb, _, cn, rn := fetched(since, b.Node.IP, lab.ImageID); cn+rn != 0 {
		t.Errorf("%s downloaded its cached image again on the reboot (%d chunk requests, %d bytes; %d rootfs requests, %d bytes)", b.Node.Name, cn, cb, rn, rb)
	}
	if !regexp.MustCompile(`msg="boot event" .*\bnode=` + b.Node.Name + ` .*\bstage=verify .*cached image`).MatchString(since) {
		t.Errorf("%s's reboot reported no boot from its cached image (server log %s)", b.Node.Name, lab.ServerLog)
	}
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}
