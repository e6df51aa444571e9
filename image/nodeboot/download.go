package nodeboot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/herdlab/herd/internal/atomicfile"
)

// Downloader fetches an image over HTTP into an ImageDir: resuming with
// Range after a broken transfer, retrying with exponential backoff, hashing
// while it writes, and renaming into place only after the sha256 matched
// and the data was fsynced.
type Downloader struct {
	Client     *http.Client
	Attempts   int           // tries per Fetch (default 6)
	Backoff    time.Duration // first wait between tries (default 1 s), doubled each time
	MaxBackoff time.Duration // cap (default 30 s)
	// Progress is called with the percentage (0..100) about every 10 %.
	Progress func(percent int, done, total int64)
	// Retry is called before each wait with the error that caused it.
	Retry func(attempt int, wait time.Duration, err error)
}

// busyError is a 503 with Retry-After: the next try waits at least after.
type busyError struct {
	after time.Duration
	err   error
}

func (e *busyError) Error() string { return e.err.Error() + " (retry after " + e.after.String() + ")" }
func (e *busyError) Unwrap() error { return e.err }

// ErrChecksum means the complete download did not hash to the expected
// sha256; the partial file is deleted.
var ErrChecksum = errors.New("sha256 mismatch")

// Fetch downloads url into dir as <sha>.squashfs, verified.
func (d *Downloader) Fetch(ctx context.Context, url, sha string, dir ImageDir) error {
	attempts := d.Attempts
	if attempts <= 0 {
		attempts = 6
	}
	wait := d.Backoff
	if wait <= 0 {
		wait = time.Second
	}
	maxWait := d.MaxBackoff
	if maxWait <= 0 {
		maxWait = 30 * time.Second
	}
	var last error
	for a := 1; a <= attempts; a++ {
		err := d.try(ctx, url, sha, dir)
		if err == nil {
			return nil
		}
		last = err
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if a == attempts {
			break
		}
		this := wait
		var be *busyError
		if errors.As(err, &be) && be.after > this {
			this = be.after
		}
		if d.Retry != nil {
			d.Retry(a, this, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(this):
		}
		wait = min(wait*2, maxWait)
	}
	return fmt.Errorf("download %s: %d attempts failed, last: %w", url, attempts, last)
}

// try is one attempt: resume the partial file if any, append the rest.
func (d *Downloader) try(ctx context.Context, url, sha string, dir ImageDir) error {
	part := dir.Partial(sha)
	f, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("open %s: %w", part, err)
	}
	defer f.Close()
	// Re-hash what an earlier attempt (or boot) already fetched.
	h := sha256.New()
	have, err := io.Copy(h, f)
	if err != nil {
		f.Close()
		os.Remove(part)
		return fmt.Errorf("read partial download %s: %w (removed)", part, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("request %s: %w", url, err)
	}
	if have > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(have, 10)+"-")
	}
	client := d.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	total := int64(-1)
	switch {
	case resp.StatusCode == http.StatusPartialContent && have > 0:
		start, size, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if !ok || start != have {
			// The server answered a different range than asked: start over.
			return restart(f, part, fmt.Errorf("GET %s: unexpected Content-Range %q for offset %d", url, resp.Header.Get("Content-Range"), have))
		}
		total = size
	case resp.StatusCode == http.StatusOK:
		if have > 0 { // Range ignored: the body is the whole file.
			if err := f.Truncate(0); err != nil {
				return fmt.Errorf("truncate %s: %w", part, err)
			}
			have = 0
			h = sha256.New()
		}
		total = resp.ContentLength
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && have > 0:
		// Either the partial is already complete or longer than the file.
		if _, size, ok := parseContentRange(resp.Header.Get("Content-Range")); ok && size == have {
			return d.finish(f, h, part, sha, dir)
		}
		return restart(f, part, fmt.Errorf("GET %s: partial download longer than the file, starting over", url))
	case resp.StatusCode == http.StatusServiceUnavailable:
		// The server is busy (its download queue is full): wait at least
		// as long as it asks (Retry-After in seconds), then try again.
		err := fmt.Errorf("GET %s: %s", url, resp.Status)
		if secs, perr := strconv.Atoi(strings.TrimSpace(resp.Header.Get("Retry-After"))); perr == nil && secs > 0 {
			return &busyError{after: time.Duration(min(secs, 300)) * time.Second, err: err}
		}
		return err
	default:
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if _, err := f.Seek(have, io.SeekStart); err != nil {
		return fmt.Errorf("seek %s: %w", part, err)
	}
	lastPct := -1
	if total > 0 {
		lastPct = int(have * 100 / total / 10 * 10)
	}
	done := have
	buf := make([]byte, 256*1024)
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, err := f.Write(buf[:n]); err != nil {
				return fmt.Errorf("write %s: %w", part, err)
			}
			h.Write(buf[:n])
			done += int64(n)
			if total > 0 && d.Progress != nil {
				if pct := int(done * 100 / total); pct/10*10 > lastPct {
					lastPct = pct / 10 * 10
					d.Progress(pct, done, total)
				}
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("GET %s: transfer broke at %d bytes: %w", url, done, rerr)
		}
	}
	if total >= 0 && done != total {
		return fmt.Errorf("GET %s: transfer ended at %d of %d bytes", url, done, total)
	}
	return d.finish(f, h, part, sha, dir)
}

// finish checks the hash, fsyncs and renames the partial into place.
func (d *Downloader) finish(f *os.File, h hash.Hash, part, sha string, dir ImageDir) error {
	got := hex.EncodeToString(h.Sum(nil))
	if got != sha {
		f.Close()
		os.Remove(part)
		return fmt.Errorf("%w: got %s, want %s (download removed)", ErrChecksum, got, sha)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", part, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", part, err)
	}
	if err := os.Rename(part, dir.Path(sha)); err != nil {
		return fmt.Errorf("rename %s into place: %w", part, err)
	}
	return atomicfile.SyncDir(filepath.Dir(part))
}

func restart(f *os.File, part string, err error) error {
	f.Close()
	os.Remove(part)
	return err
}

// parseContentRange reads "bytes START-END/SIZE" or "bytes */SIZE".
func parseContentRange(v string) (start, size int64, ok bool) {
	rest, found := strings.CutPrefix(v, "bytes ")
	if !found {
		return 0, 0, false
	}
	rng, sz, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, false
	}
	size, err := strconv.ParseInt(sz, 10, 64)
	if err != nil {
		return 0, 0, false
	}
	if rng == "*" {
		return -1, size, true
	}
	s, _, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, false
	}
	start, err = strconv.ParseInt(s, 10, 64)
	return start, size, err == nil
}
