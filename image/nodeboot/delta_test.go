package nodeboot

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/herdlab/herd/image/chunks"
)

// chunkServer serves an index and the chunks of one image over loopback,
// counting the bytes of chunks sent; tamper lets a test change a chunk.
type chunkServer struct {
	url      string
	indexSHA string // sha256 of the index it serves (herd.index_sha256)
	mu       sync.Mutex
	sent     int64
	tamper   func(id string, b []byte) []byte
	busy     int // answer this many chunk requests 503 Retry-After: 1 first
}

func newChunkServer(t *testing.T, data []byte) *chunkServer {
	t.Helper()
	x, err := chunks.Split(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	ib, _ := x.MarshalBinary()
	byID := map[string]chunks.Chunk{}
	for _, c := range x.Chunks {
		byID[c.Hex()] = c
	}
	cs := &chunkServer{indexSHA: shaHex(ib)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /rootfs.index", func(w http.ResponseWriter, r *http.Request) { w.Write(ib) })
	mux.HandleFunc("GET /chunks/{id}", func(w http.ResponseWriter, r *http.Request) {
		c, ok := byID[r.PathValue("id")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		b := append([]byte(nil), data[c.Offset:c.Offset+int64(c.Size)]...)
		cs.mu.Lock()
		if cs.busy > 0 {
			cs.busy--
			cs.mu.Unlock()
			w.Header().Set("Retry-After", "1")
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		if cs.tamper != nil {
			b = cs.tamper(c.Hex(), b)
		}
		cs.sent += int64(len(b))
		cs.mu.Unlock()
		w.Write(b)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	cs.url = "http://" + ln.Addr().String()
	return cs
}

func shaHex(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// cacheWith puts an image and its index in a fresh ImageDir.
func cacheWith(t *testing.T, data []byte) ImageDir {
	t.Helper()
	dir := ImageDir{Dir: t.TempDir()}
	sha := shaHex(data)
	if err := os.WriteFile(dir.Path(sha), data, 0o644); err != nil {
		t.Fatal(err)
	}
	x, _ := chunks.Split(bytes.NewReader(data))
	ib, _ := x.MarshalBinary()
	if err := os.WriteFile(dir.IndexPath(sha), ib, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// indexModes: FetchDelta with herd.index_sha256 and without it.
var indexModes = []struct {
	name string
	sha  func(*chunkServer) string
}{
	{"index vouched for", func(cs *chunkServer) string { return cs.indexSHA }},
	{"no index sha256", func(*chunkServer) string { return "" }},
}

func randBytes(n int) []byte { b := make([]byte, n); rand.Read(b); return b }

// generations: N, and N+1 with 100 KiB inserted in the middle and 4 KiB
// changed near the end.
func generations() (old, next []byte) {
	old = randBytes(8 << 20)
	next = append(append(append([]byte(nil), old[:3<<20]...), randBytes(100<<10)...), old[3<<20:]...)
	copy(next[7<<20:], randBytes(4096))
	return old, next
}

// TestFetchDeltaFetchesOnlyWhatChanged, with the index vouched for by
// herd.index_sha256 (no pass over the whole file) and without (an older
// server: the whole file is hashed).
func TestFetchDeltaFetchesOnlyWhatChanged(t *testing.T) {
	for _, m := range indexModes {
		t.Run(m.name, func(t *testing.T) {
			old, next := generations()
			cs := newChunkServer(t, next)
			dir := cacheWith(t, old)
			sha := shaHex(next)
			res, err := FetchDelta(context.Background(), http.DefaultClient, cs.url+"/rootfs.index", m.sha(cs), cs.url+"/chunks", sha, dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(dir.Path(sha))
			if err != nil || !bytes.Equal(got, next) {
				t.Fatalf("assembled image differs from generation N+1 (%v)", err)
			}
			if cs.sent != res.Fetched || res.Fetched+res.Reused != int64(len(next)) {
				t.Errorf("accounting: sent %d, result %+v", cs.sent, res)
			}
			// Exactly the chunks of N+1 that N lacks, and those are only the ones
			// around the two edits (104 KiB changed; each edit touches at most two
			// chunks of at most MaxSize).
			xo, _ := chunks.Split(bytes.NewReader(old))
			xn, _ := chunks.Split(bytes.NewReader(next))
			if want, _ := chunks.Missing(xn, xo); res.Fetched != want {
				t.Errorf("fetched %d bytes, the new index lacks %d from the old", res.Fetched, want)
			}
			if res.Fetched > 104<<10+4*chunks.MaxSize {
				t.Errorf("fetched %d bytes of %d for a 104 KiB change", res.Fetched, len(next))
			}
			if _, err := chunks.ReadIndexFile(dir.IndexPath(sha)); err != nil {
				t.Errorf("new image's index not kept for the next update: %v", err)
			}
			if leftovers, _ := filepath.Glob(filepath.Join(dir.Dir, "*.delta")); len(leftovers) != 0 {
				t.Errorf("assembly file left: %v", leftovers)
			}
		})
	}
}

// TestFetchDeltaAttacks (attacker: a LAN host answering the node's HTTP in
// herd's place, or a damaged SSD): a server that sends a wrong chunk, and a
// seed on the SSD whose bytes changed, never end in the cache: the wrong
// chunk fails the delta (nothing placed), the damaged seed chunk is
// fetched. Both with and without herd.index_sha256. A swapped index (with
// chunks that match it) is caught by the final sha256 without
// herd.index_sha256, and before any chunk is fetched with it.
func TestFetchDeltaAttacks(t *testing.T) {
	old, next := generations()
	sha := shaHex(next)
	for _, m := range indexModes {
		t.Run(m.name+"/server sends other bytes for a chunk", func(t *testing.T) {
			cs := newChunkServer(t, next)
			cs.tamper = func(_ string, b []byte) []byte { b[0] ^= 1; return b }
			dir := cacheWith(t, old)
			_, err := FetchDelta(context.Background(), http.DefaultClient, cs.url+"/rootfs.index", m.sha(cs), cs.url+"/chunks", sha, dir, nil)
			if !errors.Is(err, ErrChecksum) {
				t.Fatalf("tampered chunk: err = %v, want a checksum error", err)
			}
			if _, err := os.Stat(dir.Path(sha)); err == nil {
				t.Fatal("an image built with a tampered chunk was placed in the cache")
			}
			if leftovers, _ := filepath.Glob(filepath.Join(dir.Dir, "*.delta")); len(leftovers) != 0 {
				t.Errorf("assembly file left: %v", leftovers)
			}
		})
		t.Run(m.name+"/seed image damaged on the SSD", func(t *testing.T) {
			cs := newChunkServer(t, next)
			dir := cacheWith(t, old)
			f, _ := os.OpenFile(dir.Path(shaHex(old)), os.O_RDWR, 0)
			f.WriteAt([]byte("corrupt"), 1<<20)
			f.Close()
			res, err := FetchDelta(context.Background(), http.DefaultClient, cs.url+"/rootfs.index", m.sha(cs), cs.url+"/chunks", sha, dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := os.ReadFile(dir.Path(sha)); !bytes.Equal(got, next) {
				t.Fatal("assembled image took the damaged seed bytes")
			}
			if res.FetchedChunks < 2 {
				t.Errorf("damaged seed chunk not fetched: %+v", res)
			}
		})
		t.Run(m.name+"/no seed", func(t *testing.T) {
			cs := newChunkServer(t, next)
			dir := ImageDir{Dir: t.TempDir()}
			if _, err := FetchDelta(context.Background(), http.DefaultClient, cs.url+"/rootfs.index", m.sha(cs), cs.url+"/chunks", sha, dir, nil); !errors.Is(err, errNoSeed) {
				t.Fatalf("err = %v, want errNoSeed", err)
			}
		})
	}
	// The attacker serves the index and chunks of an image of its own (N
	// with a 4 KiB change) where the node asks for N+1.
	evil := append([]byte(nil), old...)
	copy(evil[5<<20:], randBytes(4096))
	t.Run("swapped index, no index sha256", func(t *testing.T) {
		cs := newChunkServer(t, evil)
		dir := cacheWith(t, old)
		_, err := FetchDelta(context.Background(), http.DefaultClient, cs.url+"/rootfs.index", "", cs.url+"/chunks", sha, dir, nil)
		if !errors.Is(err, ErrChecksum) {
			t.Fatalf("err = %v, want the final sha256 check to fail", err)
		}
		if _, err := os.Stat(dir.Path(sha)); err == nil {
			t.Fatal("the attacker's image was placed as N+1")
		}
	})
	t.Run("swapped index, index sha256 vouched for", func(t *testing.T) {
		cs := newChunkServer(t, evil)
		dir := cacheWith(t, old)
		trusted := newChunkServer(t, next).indexSHA
		_, err := FetchDelta(context.Background(), http.DefaultClient, cs.url+"/rootfs.index", trusted, cs.url+"/chunks", sha, dir, nil)
		if !errors.Is(err, ErrChecksum) || !strings.Contains(err.Error(), "herd.index_sha256") {
			t.Fatalf("err = %v, want the index refused for its sha256", err)
		}
		if _, err := os.Stat(dir.Path(sha)); err == nil {
			t.Fatal("the attacker's image was placed as N+1")
		}
		if cs.sent != 0 {
			t.Errorf("%d chunk bytes fetched after a refused index", cs.sent)
		}
	})
}

// TestFetchDeltaWaitsOutBusyServer: a server whose download slots are all
// taken answers chunks 503 with Retry-After; the node waits and carries
// on instead of giving up the delta after three tries.
func TestFetchDeltaWaitsOutBusyServer(t *testing.T) {
	old, next := generations()
	cs := newChunkServer(t, next)
	cs.busy = 8
	dir := cacheWith(t, old)
	sha := shaHex(next)
	if _, err := FetchDelta(context.Background(), http.DefaultClient, cs.url+"/rootfs.index", cs.indexSHA, cs.url+"/chunks", sha, dir, nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(dir.Path(sha)); !bytes.Equal(got, next) {
		t.Fatal("assembled image differs")
	}
}

// TestCacheState: the up event's cache report lists the cached root images
// (not partial downloads, indexes or assembly files), newest first; no
// images directory is RAM mode.
func TestCacheState(t *testing.T) {
	if c := CacheState(filepath.Join(t.TempDir(), "missing")); c == nil || c.Disk || len(c.Images) != 0 {
		t.Fatalf("no cache dir: %+v", c)
	}
	dir := ImageDir{Dir: t.TempDir()}
	a, b := strings.Repeat("a", 64), strings.Repeat("b", 64)
	for _, n := range []string{a + ".squashfs", a + ".index", b + ".squashfs", b + ".partial", strings.Repeat("c", 64) + ".delta", "notes.txt"} {
		os.WriteFile(filepath.Join(dir.Dir, n), []byte("x"), 0o644)
	}
	dir.Touch(b)
	c := CacheState(dir.Dir)
	if !c.Disk || len(c.Images) != 2 || c.Images[0] != b || c.Images[1] != a {
		t.Fatalf("cache report: %+v", c)
	}
}
