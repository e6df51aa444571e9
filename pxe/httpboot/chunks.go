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

// MaxChunkImages is how many images' chunk indexes the server keeps in
// memory for /chunks/ (the ones last named in boot scripts or current);
// about 100 bytes per 64 KiB chunk, so a few MiB per image.
const MaxChunkImages = 8

// chunkMap finds a chunk by its sha256 in the published images whose
// indexes the server has loaded: the images it last named in boot scripts,
// and the current one. There is no separate chunk store: a chunk is read
// out of an image's rootfs.squashfs at the offset its index gives.
type chunkMap struct {
	mu     sync.Mutex
	images []chunkImage // least recently used first, at most MaxChunkImages
	byID   map[[32]byte]chunkAt
}

type chunkImage struct {
	id, rootfs string
	x          *chunks.Index
}

type chunkAt struct {
	path string
	off  int64
	size uint32
}

// rebuild remakes byID from images (the first image listing a chunk wins).
// Call with mu held.
func (c *chunkMap) rebuild() {
	c.byID = map[[32]byte]chunkAt{}
	for _, im := range c.images {
		for _, ch := range im.x.Chunks {
			if _, ok := c.byID[ch.ID]; !ok {
				c.byID[ch.ID] = chunkAt{im.rootfs, ch.Offset, ch.Size}
			}
		}
	}
}

// touch moves image id to the most recently used end; false if not loaded.
// Call with mu held.
func (c *chunkMap) touch(id string) bool {
	for i, im := range c.images {
		if im.id == id {
			c.images = append(append(c.images[:i:i], c.images[i+1:]...), im)
			return true
		}
	}
	return false
}

// drop forgets the image whose rootfs is path (removed from the store).
func (c *chunkMap) drop(path string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	kept := c.images[:0]
	for _, im := range c.images {
		if im.rootfs != path {
			kept = append(kept, im)
		}
	}
	c.images = kept
	c.rebuild()
}

// loadChunks makes the chunks of image id (a full ID) servable if it has
// an index, evicting the least recently used image beyond MaxChunkImages.
func (s *Server) loadChunks(id string) {
	c := &s.chunks
	if id == "" {
		return
	}
	c.mu.Lock()
	done := c.touch(id)
	c.mu.Unlock()
	if done {
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
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.touch(id) {
		return // loaded meanwhile
	}
	c.images = append(c.images, chunkImage{id, filepath.Join(dir, manifest.Rootfs), x})
	if len(c.images) > MaxChunkImages {
		c.images = c.images[len(c.images)-MaxChunkImages:]
		c.rebuild()
		return
	}
	if c.byID == nil {
		c.byID = map[[32]byte]chunkAt{}
	}
	im := c.images[len(c.images)-1]
	for _, ch := range x.Chunks {
		if _, ok := c.byID[ch.ID]; !ok {
			c.byID[ch.ID] = chunkAt{im.rootfs, ch.Offset, ch.Size}
		}
	}
}

func (s *Server) lookupChunk(id [32]byte) (chunkAt, bool) {
	s.chunks.mu.Lock()
	defer s.chunks.mu.Unlock()
	at, ok := s.chunks.byID[id]
	return at, ok
}

// findChunk looks a chunk up, loading the current image's index on a miss.
func (s *Server) findChunk(id [32]byte) (chunkAt, bool) {
	if at, ok := s.lookupChunk(id); ok {
		return at, true
	}
	if cur, err := s.opt.Images.Current(); err == nil {
		s.loadChunks(cur)
	}
	return s.lookupChunk(id)
}

// serveChunk answers GET /chunks/<sha256>: the chunk's bytes, checked
// against its name before they leave (an image file changed on disk is
// refused, not served), cacheable for ever. Each request holds a download
// slot (server.max_http) while it reads, so memory is bounded by
// max_http × chunks.MaxSize.
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
	at, ok := s.findChunk(id)
	if !ok {
		http.Error(w, "no published image holds chunk "+name, http.StatusNotFound)
		return
	}
	release, ok := s.acquire(w, r)
	if !ok {
		return
	}
	defer release()
	f, err := os.Open(at.path)
	if os.IsNotExist(err) {
		// The image was removed (gc, rm): forget it and look again.
		s.chunks.drop(at.path)
		if at, ok = s.findChunk(id); ok {
			f, err = os.Open(at.path)
		}
	}
	if err != nil || !ok {
		http.Error(w, "no published image holds chunk "+name, http.StatusNotFound)
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
