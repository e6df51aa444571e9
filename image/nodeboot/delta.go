package nodeboot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/herdlab/herd/image/chunks"
	"github.com/herdlab/herd/internal/atomicfile"
)

// IndexPath is where the chunk index of a cached image is kept, for
// seeding later updates. It is a hint only: every chunk taken from a seed
// is checked against the new image's index.
func (c ImageDir) IndexPath(sha string) string { return filepath.Join(c.Dir, sha+".index") }

// assembling is the file a delta update is built in.
func (c ImageDir) assembling(sha string) string { return filepath.Join(c.Dir, sha+".delta") }

// DeltaResult says what a delta update moved.
type DeltaResult struct {
	Size, Fetched, Reused int64
	FetchedChunks, Chunks int
}

// errNoSeed means no cached image can seed a delta update.
var errNoSeed = errors.New("no cached image with a chunk index to build from")

const maxIndexBytes = 64 << 20

// fetchIndex GETs and parses a chunk index; with wantSHA (herd.index_sha256)
// it refuses an index whose sha256 differs, with ErrChecksum.
func fetchIndex(ctx context.Context, client *http.Client, url, wantSHA string) (*chunks.Index, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxIndexBytes+1))
	if err != nil {
		return nil, nil, fmt.Errorf("GET %s: %w", url, err)
	}
	if len(b) > maxIndexBytes {
		return nil, nil, fmt.Errorf("GET %s: index larger than %d bytes", url, maxIndexBytes)
	}
	if wantSHA != "" {
		if got := sha256.Sum256(b); hex.EncodeToString(got[:]) != wantSHA {
			return nil, nil, fmt.Errorf("%w: chunk index %s has sha256 %x, herd.index_sha256 says %s", ErrChecksum, url, got, wantSHA)
		}
	}
	x, err := chunks.Parse(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", url, err)
	}
	return x, b, nil
}

// SaveIndex fetches the image's chunk index (checked against indexSHA when
// the command line gives one) and keeps it next to the cached image, so the
// next generation can be assembled from this one.
func SaveIndex(ctx context.Context, client *http.Client, url, indexSHA, sha string, dir ImageDir) error {
	_, b, err := fetchIndex(ctx, client, url, indexSHA)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(dir.IndexPath(sha), b, 0o644)
}

type seedChunk struct {
	file string
	off  int64
}

// FetchDelta builds image sha in dir from the chunks of the cached images
// that have an index and fetches only the chunks none of them holds from
// chunkBase/<chunk sha256>. Every chunk is checked against the new index
// before it is written. The index is trusted when it matches indexSHA
// (herd.index_sha256, from the same signed boot chain as sha): chunks that
// match a trusted index tile the image exactly (chunks.Parse derives each
// offset from the sizes before it), so the file is the image and is not
// hashed again. Without indexSHA the whole file is checked against sha
// before it is renamed into place. Either way a lying server or seed index
// costs only time.
func FetchDelta(ctx context.Context, client *http.Client, indexURL, indexSHA, chunkBase, sha string, dir ImageDir, progress func(done, total int)) (*DeltaResult, error) {
	seeds := map[[32]byte]seedChunk{}
	cached, _ := dir.Cached()
	for _, s := range cached {
		if s == sha {
			continue
		}
		x, err := chunks.ReadIndexFile(dir.IndexPath(s))
		if err != nil {
			continue
		}
		if st, err := os.Stat(dir.Path(s)); err != nil || st.Size() != x.Size {
			continue
		}
		for _, c := range x.Chunks {
			if _, ok := seeds[c.ID]; !ok {
				seeds[c.ID] = seedChunk{dir.Path(s), c.Offset}
			}
		}
	}
	if len(seeds) == 0 {
		return nil, errNoSeed
	}
	want, wantBytes, err := fetchIndex(ctx, client, indexURL, indexSHA)
	if err != nil {
		return nil, err
	}
	part := dir.assembling(sha)
	f, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", part, err)
	}
	defer f.Close()
	fail := func(err error) (*DeltaResult, error) {
		f.Close()
		os.Remove(part)
		return nil, err
	}
	if err := f.Truncate(want.Size); err != nil {
		return fail(fmt.Errorf("size %s: %w", part, err))
	}
	res := &DeltaResult{Size: want.Size, Chunks: len(want.Chunks)}
	var missing []chunks.Chunk
	open := map[string]*os.File{}
	defer func() {
		for _, sf := range open {
			sf.Close()
		}
	}()
	buf := make([]byte, chunks.MaxSize)
	for _, c := range want.Chunks {
		sc, ok := seeds[c.ID]
		if ok {
			sf := open[sc.file]
			if sf == nil {
				if sf, err = os.Open(sc.file); err != nil {
					ok = false
				} else {
					open[sc.file] = sf
				}
			}
			if ok {
				b := buf[:c.Size]
				if _, err := sf.ReadAt(b, sc.off); err != nil || sha256.Sum256(b) != c.ID {
					ok = false // the seed's copy is damaged: fetch it
				} else if _, err := f.WriteAt(b, c.Offset); err != nil {
					return fail(fmt.Errorf("write %s: %w", part, err))
				} else {
					res.Reused += int64(c.Size)
				}
			}
		}
		if !ok {
			missing = append(missing, c)
		}
	}
	done, total := 0, len(missing)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	work := make(chan chunks.Chunk)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				b, err := fetchChunk(ctx, client, chunkBase+"/"+c.Hex(), c)
				if err == nil {
					_, err = f.WriteAt(b, c.Offset)
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					continue
				}
				mu.Lock()
				res.Fetched += int64(c.Size)
				res.FetchedChunks++
				done++
				if progress != nil {
					progress(done, total) // serialized: callers need no lock
				}
				mu.Unlock()
			}
		}()
	}
feed:
	for _, c := range missing {
		select {
		case work <- c:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		return fail(firstErr)
	}
	if ctx.Err() != nil {
		return fail(ctx.Err())
	}
	if indexSHA == "" {
		// An index nothing vouches for: the assembled file must be the
		// image the command line names.
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return fail(err)
		}
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return fail(fmt.Errorf("read %s: %w", part, err))
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != sha {
			return fail(fmt.Errorf("%w: assembled image is %s, want %s (removed)", ErrChecksum, got, sha))
		}
	}
	if err := f.Sync(); err != nil {
		return fail(fmt.Errorf("fsync %s: %w", part, err))
	}
	if err := f.Close(); err != nil {
		return fail(fmt.Errorf("close %s: %w", part, err))
	}
	if err := atomicfile.WriteFile(dir.IndexPath(sha), wantBytes, 0o644); err != nil {
		return fail(err)
	}
	if err := os.Rename(part, dir.Path(sha)); err != nil {
		return fail(fmt.Errorf("rename %s into place: %w", part, err))
	}
	return res, atomicfile.SyncDir(dir.Dir)
}

// chunkBusyWaits bounds how often one chunk waits out a busy server (503
// with Retry-After) before the delta gives up for a whole download.
const chunkBusyWaits = 60

// fetchChunk GETs one chunk (three tries, plus waits while the server says
// it is busy) and checks it against its ID.
func fetchChunk(ctx context.Context, client *http.Client, url string, c chunks.Chunk) ([]byte, error) {
	var last error
	busy := 0
	for try := 0; try < 3; try++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, err
		}
		resp, err := client.Do(req)
		if err != nil {
			last = fmt.Errorf("GET %s: %w", url, err)
			if ctx.Err() != nil {
				return nil, last
			}
			continue
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, int64(c.Size)+1))
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable && busy < chunkBusyWaits {
			// All download slots taken (server.max_http): wait as asked.
			secs, perr := strconv.Atoi(strings.TrimSpace(resp.Header.Get("Retry-After")))
			if perr != nil || secs <= 0 {
				secs = 1
			}
			busy++
			try--
			last = fmt.Errorf("GET %s: %s", url, resp.Status)
			select {
			case <-ctx.Done():
				return nil, last
			case <-time.After(time.Duration(min(secs, 30)) * time.Second):
			}
			continue
		}
		switch {
		case resp.StatusCode != http.StatusOK:
			last = fmt.Errorf("GET %s: %s", url, resp.Status)
		case err != nil:
			last = fmt.Errorf("GET %s: %w", url, err)
		case len(b) != int(c.Size) || sha256.Sum256(b) != c.ID:
			last = fmt.Errorf("GET %s: %w: the chunk's bytes do not match its sha256", url, ErrChecksum)
		default:
			return b, nil
		}
	}
	return nil, last
}
