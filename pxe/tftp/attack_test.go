package tftp

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/testlab"
)

// floodPy sends RRQs from a raw socket, so the source address and port of
// each can be chosen (a LAN attacker can spoof both). Arguments: server ip,
// server port, count, seconds, source mode ("one": the attacker's own
// address, a new port each; "spoof": random addresses in 10.93.4.0/22).
const floodPy = `
import random, socket, struct, sys, time
dst, dport, count, secs, mode, own = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
payload = b"\x00\x01undionly.kpxe\x00octet\x00blksize\x001468\x00tsize\x000\x00"
def csum(b):
    if len(b) % 2: b += b"\x00"
    t = sum(struct.unpack("!%dH" % (len(b)//2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
start = time.time()
for i in range(count):
    src = own if mode == "one" else "10.93.%d.%d" % (4 + random.randrange(4), 1 + random.randrange(254))
    sport = random.randrange(1024, 65535)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xffff, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    s.sendto(ip + udp, (dst, 0))
    lag = start + secs * (i + 1) / count - time.time()
    if lag > 0: time.sleep(lag)
print("sent", count)
`

// procFDs counts this process's open file descriptors.
func procFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// procRSS reads this process's resident set size in KiB.
func procRSS(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// txPackets reads an interface's transmitted-packet counter in ns.
func txPackets(t *testing.T, ns *testlab.Netns, dev string) int {
	out, err := exec.Command("ip", "netns", "exec", ns.Name, "cat", "/sys/class/net/"+dev+"/statistics/tx_packets").Output()
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return n
}

// TestAttackRRQFlood is the measured case of issue #15: 2,000 RRQs in two
// seconds (once from one address with a new port each, once from spoofed
// addresses) while a real client fetches undionly.kpxe. Attacker: any host on
// the boot LAN. It fails if the legitimate fetch does not complete before a
// generous deadline, if the server's open file descriptors or memory grow
// with the flood instead of with its caps, or if the server sends the
// flooding address more packets than it sent requests (amplification).
func TestAttackRRQFlood(t *testing.T) {
	testenv.RequireNetns(t)
	testenv.RequireCommands(t, "curl", "atftp", "python3")
	dir := ipxeDir(t)
	want, err := os.ReadFile(filepath.Join(dir, "undionly.kpxe"))
	if err != nil {
		t.Fatal(err)
	}

	lab, err := testlab.NewNetns("tftpfl")
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	attacker, err := testlab.NewNetns("tftpat")
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	client, err := testlab.NewNetns("tftpcl")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if err := lab.AddBridge("br0", "10.93.0.1/16"); err != nil {
		t.Fatal(err)
	}
	if err := lab.AddVethPeer("va0", "br0", attacker, "eth0", "10.93.0.66/16"); err != nil {
		t.Fatal(err)
	}
	if err := lab.AddVethPeer("vc0", "br0", client, "eth0", "10.93.0.50/16"); err != nil {
		t.Fatal(err)
	}

	s, err := New(Config{Root: dir})
	if err != nil {
		t.Fatal(err)
	}
	var conn net.PacketConn
	if err := lab.Do(func() (err error) { conn, err = net.ListenPacket("udp4", "10.93.0.1:0"); return }); err != nil {
		t.Fatal(err)
	}
	port := conn.LocalAddr().(*net.UDPAddr).Port
	served := make(chan error, 1)
	// Serve runs on a thread inside the lab namespace: any socket the
	// server makes for its transfers is made there.
	go func() { served <- lab.Do(func() error { return s.Serve(conn) }) }()
	defer func() {
		s.Shutdown()
		<-served
	}()

	fetch := func(tag string) error {
		start := time.Now()
		defer func() { t.Logf("%s: fetch took %.1fs", tag, time.Since(start).Seconds()) }()
		out := filepath.Join(t.TempDir(), tag)
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		// curl retries the RRQ itself; --max-time is the liveness deadline.
		b, err := client.Command(ctx, "curl", "-sS", "--max-time", "60", "--tftp-blksize", "1428",
			"-o", out, fmt.Sprintf("tftp://10.93.0.1:%d/undionly.kpxe", port)).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: curl: %v: %s", tag, err, b)
		}
		got, _ := os.ReadFile(out)
		if !bytes.Equal(got, want) {
			return fmt.Errorf("%s: got %d bytes, want %d identical bytes", tag, len(got), len(want))
		}
		return nil
	}
	if err := fetch("before"); err != nil {
		t.Fatal(err)
	}
	baseFD, baseRSS := procFDs(t), procRSS(t)

	script := filepath.Join(t.TempDir(), "flood.py")
	if err := os.WriteFile(script, []byte(floodPy), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"one", "spoof"} {
		t.Run(mode, func(t *testing.T) {
			var peakFD, peakRSS atomic.Int64
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					if n := int64(procFDs(t)); n > peakFD.Load() {
						peakFD.Store(n)
					}
					if n := int64(procRSS(t)); n > peakRSS.Load() {
						peakRSS.Store(n)
					}
					select {
					case <-stop:
						return
					case <-time.After(20 * time.Millisecond):
					}
				}
			}()
			tx0 := txPackets(t, lab, "va0")
			flood := attacker.Command(context.Background(), "/usr/bin/python3", script,
				"10.93.0.1", strconv.Itoa(port), "2000", "2", mode, "10.93.0.66")
			var floodOut bytes.Buffer
			flood.Stdout, flood.Stderr = &floodOut, &floodOut
			if err := flood.Start(); err != nil {
				t.Fatal(err)
			}
			// The legitimate node powers on in the middle of the flood.
			time.Sleep(500 * time.Millisecond)
			fetchErr := fetch("during-" + mode)
			if err := flood.Wait(); err != nil {
				t.Fatalf("flood: %v: %s", err, floodOut.String())
			}
			if fetchErr != nil {
				t.Errorf("legitimate fetch during the flood: %v", fetchErr)
			}
			// And one right after it, as in the measured case.
			if err := fetch("after-" + mode); err != nil {
				t.Errorf("legitimate fetch after the flood: %v", err)
			}
			// Transfers the flood started end within Timeout (no ACK ever
			// comes); give them that and more before counting.
			time.Sleep(3 * time.Second)
			close(stop)
			wg.Wait()
			tx := txPackets(t, lab, "va0") - tx0

			// The caps: at most MaxTransfers (32) files and sockets at once,
			// plus the client's own transfer; 2,000 requests must not mean
			// 2,000 of anything.
			if d := int(peakFD.Load()) - baseFD; d > 2*32+16 {
				t.Errorf("open fds grew by %d during the flood (base %d), want at most %d", d, baseFD, 2*32+16)
			}
			if d := (int(peakRSS.Load()) - baseRSS) / 1024; d > 64 {
				t.Errorf("RSS grew by %d MiB during the flood, want at most 64", d)
			}
			if d := procFDs(t) - baseFD; d > 4 {
				t.Errorf("%d more fds open after the flood than before", d)
			}
			t.Logf("%s: fds peak +%d, RSS peak +%d KiB, packets toward the attacker port %d for 2000 requests",
				mode, int(peakFD.Load())-baseFD, int(peakRSS.Load())-baseRSS, tx)
			if mode == "one" && tx > 2000 {
				t.Errorf("server sent %d packets toward an address that never acknowledged a block, for 2000 requests (amplification)", tx)
			}
		})
	}
}
