package store

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/herdlab/herd/image/manifest"
)

// Published images never change (a new build is a new directory, made by
// one rename), so List keeps each parsed manifest keyed by its manifest
// file's inode, size and mtime (one stat instead of a read and a parse): the
// boot server lists the store on every /boot/ and /images/ request and must
// not re-read every manifest each time. An image removed and published again
// under the same ID has a new manifest file, so it is read again. The cache is per process and shared by every Store
// value of one state directory (ReadOnly views included).
var (
	cacheMu sync.Mutex
	caches  = map[string]map[string]cachedManifest{} // images dir → entry name → manifest

	// manifestReads counts manifest files read from disk (tests).
	manifestReads atomic.Int64
)

type cachedManifest struct {
	key fileKey
	m   *manifest.Manifest
}

// fileKey identifies one version of a file.
type fileKey struct {
	ino, size uint64
	mtime     int64
}

func keyOf(fi fs.FileInfo) fileKey {
	k := fileKey{size: uint64(fi.Size()), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		k.ino = st.Ino
	}
	return k
}

// cachedRead returns the manifest of the image directory dir (entry name in
// imagesDir), reading it only when the cache has none for this version of
// its manifest file.
func cachedRead(imagesDir, name, dir string) (*manifest.Manifest, error) {
	fi, err := os.Stat(filepath.Join(dir, manifest.FileName))
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	key := keyOf(fi)
	cacheMu.Lock()
	c, ok := caches[imagesDir][name]
	cacheMu.Unlock()
	if ok && c.key == key {
		return c.m, nil
	}
	manifestReads.Add(1)
	m, err := manifest.Read(dir)
	if err != nil {
		return nil, err
	}
	cacheMu.Lock()
	if caches[imagesDir] == nil {
		caches[imagesDir] = map[string]cachedManifest{}
	}
	caches[imagesDir][name] = cachedManifest{key: key, m: m}
	cacheMu.Unlock()
	return m, nil
}

// pruneCache forgets the images of imagesDir not in present (removed ones).
func pruneCache(imagesDir string, present map[string]bool) {
	cacheMu.Lock()
	defer cacheMu.Unlock()
	for name := range caches[imagesDir] {
		if !present[name] {
			delete(caches[imagesDir], name)
		}
	}
}
