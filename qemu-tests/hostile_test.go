package qemutests

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/herdlab/herd/testlab"
)

// A real node boots through hostile traffic (issue 15, DESIGN.md "Trust";
// attacker: any host on the boot LAN, which may spoof source addresses).
// While gpu02 (OVMF: firmware DHCP, then snponly.efi over TFTP, then HTTP)
// reboots, an attacker host floods herd's TFTP port with read requests
// from its own and spoofed addresses and holds HTTP connections open with
// trickled headers (slowloris). gpu02 must still reach multi-user with its
// SSH login before the suite's generous boot deadline. It is also the
// suite's reboot from the SSD cache (issue 17): gpu02 has the image cached
// and must not download it again, chunk or whole.
func init() {
	labExtras = append(labExtras, labExtra{name: "hostile-traffic-during-reboot", run: hostileReboot})
}

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

func hostileReboot(t *testing.T, ctx context.Context, lab *testlab.Lab, nodes map[string]*testlab.Booted) {
	b := nodes["gpu02"]
	if b == nil {
		b = nodes["gpu01"] // gpu02's failure is reported by seabios-and-ovmf-both-boot
	}
	if b == nil {
		t.Fatal("no node booted")
	}
	att, err := lab.NewAttacker()
	if err != nil {
		t.Fatal(err)
	}
	defer att.Close()
	const own = "10.77.0.66"
	if err := att.Become(own, "52:54:00:66:66:66"); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(t.TempDir(), "hostile.py")
	if err := os.WriteFile(script, []byte(hostilePy), 0o644); err != nil {
		t.Fatal(err)
	}
	fctx, stop := context.WithCancel(ctx)
	defer stop()
	flood := att.Netns.Command(fctx, "/usr/bin/python3", "-u", script, testlab.LabServer, "69", strconv.Itoa(testlab.LabHTTP), "300", own)
	var out bytes.Buffer
	flood.Stdout, flood.Stderr = &out, &out
	if err := flood.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stop(); flood.Wait() }()
	if first := testlab.RootfsDownloads(lab.ServerLogText(), lab.ImageID, b.Node.IP); first == 0 {
		t.Errorf("%s's first boot's rootfs download is not in the server log %s", b.Node.Name, lab.ServerLog)
	}
	before := len(lab.ServerLogText())
	if err := b.Reboot(ctx); err != nil { // BootTimeout is the liveness deadline
		t.Fatalf("%s did not come back up under the flood: %v\nattacker: %s", b.Node.Name, err, lastLine(out.String()))
	}
	if flood.ProcessState != nil {
		t.Fatalf("the attacker stopped before %s was up: %s", b.Node.Name, out.String())
	}
	since := lab.ServerLogText()[before:]
	if !strings.Contains(since, "/boot/"+b.Node.MAC) && !strings.Contains(since, "/boot/"+strings.ReplaceAll(b.Node.MAC, ":", "-")) {
		t.Errorf("%s's reboot did not fetch its boot script from herd (server log %s)", b.Node.Name, lab.ServerLog)
	}
	if cb, rb, _, cn, rn := fetched(since, b.Node.IP, lab.ImageID); cn+rn != 0 {
		t.Errorf("%s downloaded its cached image again on the reboot (%d chunk requests, %d bytes; %d rootfs requests, %d bytes)", b.Node.Name, cn, cb, rn, rb)
	}
	if !regexp.MustCompile(`msg="boot event" .*\bnode=` + b.Node.Name + ` .*\bstage=verify .*cached image`).MatchString(since) {
		t.Errorf("%s's reboot reported no boot from its cached image (server log %s)", b.Node.Name, lab.ServerLog)
	}
	t.Logf("%s rebooted under the flood; attacker: %s", b.Node.Name, lastLine(out.String()))
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}
