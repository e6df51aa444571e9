package nodeboot

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// imageServer serves one blob with Range support (http.ServeContent) and
// can break a transfer after a number of bytes or flip a byte.
type imageServer struct {
	mu         sync.Mutex
	blob       []byte
	breakAt    []int64 // per request: close the connection after this many body bytes (0 = no)
	corrupt    bool
	ranges     []string
	noRange    bool
	requests   int
	failFirst  int    // answer 503 to the first n requests
	retryAfter string // the Retry-After of those 503s
}

func (s *imageServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests++
	n := s.requests
	s.ranges = append(s.ranges, r.Header.Get("Range"))
	var brk int64
	if len(s.breakAt) > 0 {
		brk, s.breakAt = s.breakAt[0], s.breakAt[1:]
	}
	blob := s.blob
	if s.corrupt {
		blob = append([]byte(nil), s.blob...)
		blob[len(blob)/2] ^= 0xff
	}
	noRange, fail := s.noRange, n <= s.failFirst
	s.mu.Unlock()
	if fail && s.retryAfter != "" {
		w.Header().Set("Retry-After", s.retryAfter)
	}
	if fail {
		http.Error(w, "warming up", http.StatusServiceUnavailable)
		return
	}
	if noRange {
		r.Header.Del("Range")
	}
	if brk > 0 {
		// Hijack after brk bytes of body: a broken transfer, as when the
		// server or the link dies mid-download.
		w = &breakingWriter{ResponseWriter: w, left: brk}
	}
	http.ServeContent(w, r, "rootfs.squashfs", time.Unix(0, 0), strings.NewReader(string(blob)))
}

type breakingWriter struct {
	http.ResponseWriter
	left int64
}

func (b *breakingWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, _ := b.ResponseWriter.Write(p)
	b.left -= int64(n)
	if b.left <= 0 {
		if hj, ok := b.ResponseWriter.(http.Hijacker); ok {
			if f, ok := b.ResponseWriter.(http.Flusher); ok {
				f.Flush()
			}
			conn, _, err := hj.Hijack()
			if err == nil {
				conn.Close()
			}
		}
		return n, errors.New("connection broken on purpose")
	}
	return n, nil
}

func newBlob(t *testing.T, n int) ([]byte, string) {
	b := make([]byte, n)
	rand.Read(b)
	s := sha256.Sum256(b)
	return b, hex.EncodeToString(s[:])
}

func fastDownloader() *Downloader {
	return &Downloader{Attempts: 5, Backoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond}
}

func TestFetchResumesAfterBrokenTransfers(t *testing.T) {
	blob, sum := newBlob(t, 3*mib+123)
	srv := &imageServer{blob: blob, breakAt: []int64{mib, mib/2 + 7}}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	dir := ImageDir{Dir: t.TempDir()}
	d := fastDownloader()
	var pcts []int
	d.Progress = func(p int, done, total int64) { pcts = append(pcts, p) }
	if err := d.Fetch(context.Background(), hs.URL+"/rootfs.squashfs", sum, dir); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dir.Path(sum))
	must(t, err)
	if string(got) != string(blob) {
		t.Fatal("downloaded image differs")
	}
	if _, err := os.Stat(dir.Partial(sum)); !os.IsNotExist(err) {
		t.Error("partial file left behind")
	}
	// Three requests: full, resume at 1 MiB, resume at 1.5 MiB + 7.
	want := []string{"", fmt.Sprintf("bytes=%d-", mib), fmt.Sprintf("bytes=%d-", mib+mib/2+7)}
	if fmt.Sprint(srv.ranges) != fmt.Sprint(want) {
		t.Errorf("Range headers %q, want %q", srv.ranges, want)
	}
	if len(pcts) == 0 || pcts[len(pcts)-1] != 100 {
		t.Errorf("progress %v does not end at 100", pcts)
	}
	ok, err := dir.Verify(sum, nil)
	if !ok || err != nil {
		t.Errorf("Verify after download: %v %v", ok, err)
	}
}

func TestFetchCorruptedBytesAreNeverPlaced(t *testing.T) {
	blob, sum := newBlob(t, mib)
	srv := &imageServer{blob: blob, corrupt: true}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	dir := ImageDir{Dir: t.TempDir()}
	d := fastDownloader()
	d.Attempts = 2
	err := d.Fetch(context.Background(), hs.URL+"/i", sum, dir)
	if !errors.Is(err, ErrChecksum) {
		t.Fatalf("err = %v, want ErrChecksum", err)
	}
	ents, _ := os.ReadDir(dir.Dir)
	if len(ents) != 0 {
		t.Errorf("files left after a corrupt download: %v", ents)
	}
	// The server is fixed: the next fetch succeeds from scratch.
	srv.corrupt = false
	if err := d.Fetch(context.Background(), hs.URL+"/i", sum, dir); err != nil {
		t.Fatal(err)
	}
}

func TestFetchServerIgnoringRangeAndErrors(t *testing.T) {
	blob, sum := newBlob(t, 2*mib)
	srv := &imageServer{blob: blob, breakAt: []int64{mib}, noRange: true, failFirst: 0}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	dir := ImageDir{Dir: t.TempDir()}
	if err := fastDownloader().Fetch(context.Background(), hs.URL+"/i", sum, dir); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(dir.Path(sum))
	if string(got) != string(blob) {
		t.Fatal("image differs after a 200 answer to a Range request")
	}

	// 503s then success; and a server that never answers well gives an
	// error naming the URL and the status, with nothing placed.
	srv2 := &imageServer{blob: blob, failFirst: 2}
	hs2 := httptest.NewServer(srv2)
	defer hs2.Close()
	dir2 := ImageDir{Dir: t.TempDir()}
	if err := fastDownloader().Fetch(context.Background(), hs2.URL+"/i", sum, dir2); err != nil {
		t.Fatal(err)
	}
	srv3 := &imageServer{blob: blob, failFirst: 100}
	hs3 := httptest.NewServer(srv3)
	defer hs3.Close()
	dir3 := ImageDir{Dir: t.TempDir()}
	err := fastDownloader().Fetch(context.Background(), hs3.URL+"/i", sum, dir3)
	if err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), hs3.URL) {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(dir3.Path(sum)); err == nil {
		t.Error("image placed although every attempt failed")
	}
}

func TestFetchResumesPartialFromEarlierBoot(t *testing.T) {
	blob, sum := newBlob(t, 2*mib)
	srv := &imageServer{blob: blob}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	dir := ImageDir{Dir: t.TempDir()}
	must(t, os.WriteFile(dir.Partial(sum), blob[:mib+5], 0o644))
	if err := fastDownloader().Fetch(context.Background(), hs.URL+"/i", sum, dir); err != nil {
		t.Fatal(err)
	}
	if srv.ranges[0] != fmt.Sprintf("bytes=%d-", mib+5) {
		t.Errorf("first request Range %q", srv.ranges[0])
	}
	// A complete partial: the server answers 416 and the file is finished.
	dir2 := ImageDir{Dir: t.TempDir()}
	must(t, os.WriteFile(dir2.Partial(sum), blob, 0o644))
	if err := fastDownloader().Fetch(context.Background(), hs.URL+"/i", sum, dir2); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir2.Path(sum)); err != nil {
		t.Error(err)
	}
}

func TestVerifyDetectsCorruptionAndTruncation(t *testing.T) {
	blob, sum := newBlob(t, mib)
	dir := ImageDir{Dir: t.TempDir()}
	if ok, err := dir.Verify(sum, nil); ok || !errors.Is(err, ErrNotCached) {
		t.Fatalf("empty cache: %v %v", ok, err)
	}
	must(t, os.WriteFile(dir.Path(sum), blob, 0o644))
	if ok, err := dir.Verify(sum, nil); !ok || err != nil {
		t.Fatalf("good image: %v %v", ok, err)
	}
	bad := append([]byte(nil), blob...)
	bad[12345] ^= 1
	must(t, os.WriteFile(dir.Path(sum), bad, 0o644))
	if ok, err := dir.Verify(sum, nil); ok || err != nil {
		t.Fatalf("flipped bit: %v %v", ok, err)
	}
	if _, err := os.Stat(dir.Path(sum)); !os.IsNotExist(err) {
		t.Error("corrupt image not removed")
	}
	must(t, os.WriteFile(dir.Path(sum), blob[:len(blob)-1], 0o644))
	if ok, _ := dir.Verify(sum, nil); ok {
		t.Fatal("truncated image accepted")
	}
}

func TestPruneKeepsNewestAndCurrent(t *testing.T) {
	dir := ImageDir{Dir: t.TempDir()}
	shas := make([]string, 5)
	base := time.Now().Add(-time.Hour)
	for i := range shas {
		_, shas[i] = newBlob(t, 16)
		must(t, os.WriteFile(dir.Path(shas[i]), []byte("x"), 0o644))
		mt := base.Add(time.Duration(i) * time.Minute) // shas[4] newest
		must(t, os.Chtimes(dir.Path(shas[i]), mt, mt))
	}
	must(t, os.WriteFile(dir.Partial(shas[0]), []byte("p"), 0o644))        // partial of an old image
	must(t, os.WriteFile(filepath.Join(dir.Dir, "notes.txt"), nil, 0o644)) // not ours: left alone
	// Current is the oldest image: it stays, plus the newest other one.
	removed, err := dir.Prune(2, shas[0])
	must(t, err)
	left, _ := dir.Cached()
	if fmt.Sprint(left) != fmt.Sprint([]string{shas[4], shas[0]}) {
		t.Errorf("left %v, want [%s %s]; removed %v", left, shas[4], shas[0], removed)
	}
	if _, err := os.Stat(dir.Partial(shas[0])); err != nil {
		t.Error("partial of the current image removed")
	}
	if _, err := os.Stat(filepath.Join(dir.Dir, "notes.txt")); err != nil {
		t.Error("foreign file removed")
	}
	// Touch makes an image the newest by use.
	dir.Touch(shas[0])
	removed, err = dir.Prune(1, shas[0])
	must(t, err)
	left, _ = dir.Cached()
	if fmt.Sprint(left) != fmt.Sprint([]string{shas[0]}) {
		t.Errorf("keep 1: left %v, removed %v", left, removed)
	}
}

// TestFetchHonoursRetryAfter: a busy herd serve (download queue full)
// answers 503 with Retry-After; the downloader waits at least that long
// before the next try instead of its short backoff, and then succeeds.
func TestFetchHonoursRetryAfter(t *testing.T) {
	blob, sum := newBlob(t, 64*1024)
	srv := &imageServer{blob: blob, failFirst: 2, retryAfter: "1"}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	d := fastDownloader()
	var waits []time.Duration
	d.Retry = func(_ int, wait time.Duration, _ error) { waits = append(waits, wait) }
	if err := d.Fetch(context.Background(), hs.URL+"/rootfs.squashfs", sum, ImageDir{Dir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	if len(waits) != 2 || waits[0] < time.Second || waits[1] < time.Second {
		t.Errorf("waits before retries %v, want two of at least the 1 s Retry-After", waits)
	}
}
