package httpboot

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"

	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/herdlab/herd/image/chunks"
	"github.com/herdlab/herd/image/manifest"
)

// chunkMap finds a chunk by its sha256 in the published images whose
// indexes the server has loaded: every image it named in a boot script,
// and the current one. There is no separate chunk store: a chunk is read
// out of an image's rootfs.squashfs at the offset its index gives.
type chunkMap struct {
	mu     sync.Mutex
	loaded map[string]bool
	byID   map[[32]byte]chunkAt
}

type chunkAt struct {
	path string
	off  int64
	size uint32
}

// load adds the chunks of image id (a full ID) if it has an index.
func (s *Server) loadChunks(id string) {
	c := &s.chunks
	c.mu.Lock()
	done := c.loaded[id]
	c.mu.Unlock()
	if done || id == "" {
		return
	}
	full, dir, m, err := s.opt.Images.Resolve(id)
	if err != nil || full != id || m.Chunks == nil {
		return
	}
	x, err := chunks.ReadIndexFile(filepath.Join(dir, chunks.IndexName))
	if err != nil {
		s.log.Warn("chunk index unreadable; nodes download this image whole", "image", id, "err", err)
		return
	}
	rootfs := filepath.Join(dir, manifest.Rootfs)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.loaded == nil {
		c.loaded, c.byID = map[string]bool{}, map[[32]byte]chunkAt{}
	}
	for _, ch := range x.Chunks {
		if _, ok := c.byID[ch.ID]; !ok {
			c.byID[ch.ID] = chunkAt{rootfs, ch.Offset, ch.Size}
		}
	}
	c.loaded[id] = true
}

func (s *Server) lookupChunk(id [32]byte) (chunkAt, bool) {
	s.chunks.mu.Lock()
	defer s.chunks.mu.Unlock()
	at, ok := s.chunks.byID[id]
	return at, ok
}

// serveChunk answers GET /chunks/<sha256>: the chunk's bytes, checked
// against its name before they leave (an image file changed on disk is
// refused, not served), cacheable for ever.
func (s *Server) serveChunk(w http.ResponseWriter, r *http.Request) {
	if !onlyGet(w, r) {
		return
	}
	name := strings.TrimPrefix(r.URL.Path, "/chunks/")
	raw, err := hex.DecodeString(name)
	if err != nil || len(raw) != 32 || strings.ToLower(name) != name {
		http.Error(w, "not /chunks/<sha256>", http.StatusNotFound)
		return
	}
	var id [32]byte
	copy(id[:], raw)
	at, ok := s.lookupChunk(id)
	if !ok {
		if cur, err := s.opt.Images.Current(); err == nil {
			s.loadChunks(cur)
		}
		if at, ok = s.lookupChunk(id); !ok {
			http.Error(w, "no published image holds chunk "+name, http.StatusNotFound)
			return
		}
	}
	f, err := os.Open(at.path)
	if err != nil {
		http.Error(w, "chunk's image missing", http.StatusNotFound)
		return
	}
	defer f.Close()
	buf := make([]byte, at.size)
	if _, err := f.ReadAt(buf, at.off); err != nil || sha256.Sum256(buf) != id {
		s.log.Error("chunk does not match its name: image file changed on disk?", "chunk", name, "file", at.path, "offset", at.off, "err", err)
		http.Error(w, "chunk unavailable", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	w.Header().Set("ETag", `"`+name+`"`)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(buf))
}
