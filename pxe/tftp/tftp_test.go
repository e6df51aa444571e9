package tftp

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/herdlab/herd/internal/testenv"
)

// start runs a server on a loopback port and returns its port.
func start(t *testing.T, root string, max int) (*Server, int) {
	t.Helper()
	reg := prometheus.NewRegistry()
	s, err := New(Config{Root: root, MaxTransfers: max, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(conn) }()
	t.Cleanup(func() {
		s.Shutdown()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return s, conn.LocalAddr().(*net.UDPAddr).Port
}

func ipxeDir(t *testing.T) string {
	t.Helper()
	const dir = "/usr/lib/ipxe"
	testenv.RequireFiles(t, "package ipxe", filepath.Join(dir, "undionly.kpxe"))
	return dir
}

// TestCurlFetchesIPXEWithBlksize fetches the real iPXE binaries with curl's
// TFTP client asking blksize 1468 and compares the bytes.
func TestCurlFetchesIPXEWithBlksize(t *testing.T) {
	testenv.RequireCommands(t, "curl")
	dir := ipxeDir(t)
	s, port := start(t, dir, 4)
	for _, name := range []string{"undionly.kpxe", "snponly.efi", "ipxe.efi"} {
		want, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(t.TempDir(), name)
		cmd := exec.Command("curl", "-sS", "--tftp-blksize", "1468", "-o", out,
			"tftp://127.0.0.1:"+strconv.Itoa(port)+"/"+name)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("curl %s: %v: %s", name, err, b)
		}
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: got %d bytes, want %d identical bytes", name, len(got), len(want))
		}
	}
	// curl exits once it has sent its last ACK; the server counts the
	// transfer when that ACK arrives, a moment later.
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(s.transfers.WithLabelValues("ok")) < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := testutil.ToFloat64(s.transfers.WithLabelValues("ok")); n != 3 {
		t.Errorf("ok transfers metric = %v, want 3", n)
	}
}

// TestAtftpNegotiatesBlksize checks with atftp's trace that the OACK carries
// blksize 1468 and the file's tsize, and that the file arrives intact.
func TestAtftpNegotiatesBlksize(t *testing.T) {
	testenv.RequireCommands(t, "atftp")
	dir := ipxeDir(t)
	_, port := start(t, dir, 4)
	want, _ := os.ReadFile(filepath.Join(dir, "undionly.kpxe"))
	out := filepath.Join(t.TempDir(), "u.kpxe")
	cmd := exec.Command("atftp", "--trace", "--option", "blksize 1468", "--option", "tsize 0",
		"-g", "-r", "undionly.kpxe", "-l", out, "127.0.0.1", strconv.Itoa(port))
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("atftp: %v: %s", err, b)
	}
	trace := string(b)
	if !strings.Contains(trace, "blksize: 1468") {
		t.Errorf("no blksize 1468 in the OACK; trace:\n%s", trace)
	}
	if !strings.Contains(trace, "tsize: "+strconv.Itoa(len(want))) {
		t.Errorf("no tsize %d in the OACK; trace:\n%s", len(want), trace)
	}
	got, _ := os.ReadFile(out)
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, want %d identical bytes", len(got), len(want))
	}
}

// TestRefusals: writes, ../, absolute paths and symlinks out of the root
// all fail with a TFTP error, and nothing is written.
func TestRefusals(t *testing.T) {
	testenv.RequireCommands(t, "curl", "atftp")
	root := t.TempDir()
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("outside the root\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "secret"), filepath.Join(root, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../"+filepath.Base(outside)+"/secret", filepath.Join(root, "relescape")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "ok.bin"), []byte("inside\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(root, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	s, port := start(t, root, 2)
	url := "tftp://127.0.0.1:" + strconv.Itoa(port) + "/"

	// A write: atftp -p must fail and leave no file behind.
	src := filepath.Join(t.TempDir(), "upload")
	os.WriteFile(src, []byte("payload"), 0o644)
	b, err := exec.Command("atftp", "--trace", "-p", "-l", src, "-r", "upload", "127.0.0.1", strconv.Itoa(port)).CombinedOutput()
	if err == nil && !strings.Contains(string(b), "read-only") {
		t.Errorf("atftp put succeeded: %s", b)
	}
	if !strings.Contains(string(b), "read-only") {
		t.Errorf("write error does not say read-only: %s", b)
	}
	if _, err := os.Stat(filepath.Join(root, "upload")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("upload exists in the root: %v", err)
	}

	// Reads that must be refused. curl --path-as-is keeps the ../ as typed.
	for _, name := range []string{"../" + filepath.Base(outside) + "/secret", "sub/../ok.bin", "escape", "relescape", "sub", "%2Fetc%2Fpasswd"} {
		out := filepath.Join(t.TempDir(), "out")
		b, err := exec.Command("curl", "-sS", "--path-as-is", "-o", out, url+name).CombinedOutput()
		if err == nil {
			t.Errorf("%s: curl succeeded, want a TFTP error", name)
		}
		if data, _ := os.ReadFile(out); bytes.Contains(data, []byte("outside")) {
			t.Errorf("%s: leaked the outside file", name)
		}
		_ = b
	}
	// atftp sends the name exactly as given (curl strips the leading slash).
	out := filepath.Join(t.TempDir(), "abs")
	if b, err := exec.Command("atftp", "-g", "-r", filepath.Join(outside, "secret"), "-l", out, "127.0.0.1", strconv.Itoa(port)).CombinedOutput(); err == nil {
		t.Errorf("absolute path served: %s", b)
	}
	// And the file inside is still served.
	out = filepath.Join(t.TempDir(), "ok")
	if b, err := exec.Command("curl", "-sS", "-o", out, url+"ok.bin").CombinedOutput(); err != nil {
		t.Fatalf("ok.bin: %v: %s", err, b)
	}
	if n := testutil.ToFloat64(s.transfers.WithLabelValues("refused")); n < 6 {
		t.Errorf("refused metric = %v, want at least 6", n)
	}
}

// TestQueueUnderStorm: with one transfer slot, eight parallel clients all
// get the file (they wait instead of failing), and never more than one
// transfer held a socket at a time (counted where the socket is made, apart
// from the admission bookkeeping).
func TestQueueUnderStorm(t *testing.T) {
	testenv.RequireCommands(t, "curl")
	root := t.TempDir()
	want := bytes.Repeat([]byte("herd-tftp-"), 20000) // 200 kB
	os.WriteFile(filepath.Join(root, "f"), want, 0o644)
	s, port := start(t, root, 1)
	var cmds []*exec.Cmd
	var outs []string
	for i := 0; i < 8; i++ {
		out := filepath.Join(t.TempDir(), "f")
		c := exec.Command("curl", "-sS", "--tftp-blksize", "1428", "-o", out, "tftp://127.0.0.1:"+strconv.Itoa(port)+"/f")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, outs = append(cmds, c), append(outs, out)
	}
	for i, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Errorf("client %d: %v", i, err)
			continue
		}
		got, _ := os.ReadFile(outs[i])
		if !bytes.Equal(got, want) {
			t.Errorf("client %d: %d bytes, want %d", i, len(got), len(want))
		}
	}
	if n := testutil.ToFloat64(s.transfers.WithLabelValues("busy")); n != 0 {
		t.Errorf("busy = %v, want 0", n)
	}
	if p := s.PeakTransfers(); p != 1 {
		t.Errorf("peak concurrent transfers = %d, want exactly the limit 1", p)
	}
}

func TestCleanPath(t *testing.T) {
	for _, ok := range []string{"undionly.kpxe", "efi/snponly.efi", "a-b_c.1"} {
		if _, err := CleanPath(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a\\b", "a\x00b", "a/", "a\nb", strings.Repeat("a", 256)} {
		if _, err := CleanPath(bad); !errors.Is(err, ErrPath) {
			t.Errorf("%q accepted", bad)
		}
	}
}

// FuzzCleanPath: whatever the name, an accepted one is relative, has no ..
// component and opens only inside a root.
func FuzzCleanPath(f *testing.F) {
	for _, s := range []string{"undionly.kpxe", "../etc/passwd", "/abs", "a/./b", "..", "a\\..\\b", "ok/sub.efi"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		p, err := CleanPath(name)
		if err != nil {
			return
		}
		if filepath.IsAbs(p) || filepath.Clean(p) != p || p == ".." || strings.HasPrefix(p, "../") {
			t.Fatalf("accepted unsafe %q", name)
		}
	})
}
