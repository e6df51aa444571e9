package httpboot

import (
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Download limits (server.max_http is the number of slots).
const (
	// DefaultWriteIdle is how long a response may make no progress.
	DefaultWriteIdle = 60 * time.Second
	// QueuePerSlot bounds the downloads waiting for a slot: QueuePerSlot ×
	// max_http; one more is answered 503 with Retry-After.
	QueuePerSlot = 4
	// QueueWait bounds one download's wait for a slot before it is
	// answered 503 with Retry-After.
	QueueWait = 60 * time.Second
	// RetryAfter is the Retry-After of a 503, in seconds. iPXE and curl
	// --retry honour it; herd-boot's downloader waits at least as long.
	RetryAfter = 5
	// chunk is how much is written per deadline extension: at the 60 s
	// default a link must move 1 MiB a minute (~17 KiB/s) to stay open.
	chunk = 1 << 20
)

// downloads counts waiting and running downloads.
type downloads struct {
	waiting atomic.Int64
	running atomic.Int64
	peak    atomic.Int64
	mu      sync.Mutex
}

// PeakDownloads returns the most image downloads that ran at once since
// the server started (tests and diagnostics).
func (s *Server) PeakDownloads() int { return int(s.dl.peak.Load()) }

// acquire waits for a download slot; on a full queue or a wait longer than
// QueueWait it answers 503 with Retry-After and returns false.
func (s *Server) acquire(w http.ResponseWriter, r *http.Request) (release func(), ok bool) {
	slots := *s.slots.Load()
	got := false
	select {
	case slots <- struct{}{}:
		got = true
	default:
	}
	if !got {
		if s.dl.waiting.Add(1) > int64(QueuePerSlot*cap(slots)) {
			s.dl.waiting.Add(-1)
			busy(w, "download queue full")
			return nil, false
		}
		s.queued.Inc()
		t := time.NewTimer(QueueWait)
		select {
		case slots <- struct{}{}:
			got = true
		case <-r.Context().Done():
		case <-t.C:
		}
		t.Stop()
		s.queued.Dec()
		s.dl.waiting.Add(-1)
		if !got {
			if r.Context().Err() == nil {
				busy(w, "no download slot free")
			}
			return nil, false
		}
	}
	s.active.Inc()
	n := s.dl.running.Add(1)
	s.dl.mu.Lock()
	if n > s.dl.peak.Load() {
		s.dl.peak.Store(n)
	}
	s.dl.mu.Unlock()
	return func() { s.dl.running.Add(-1); <-slots; s.active.Dec() }, true
}

// busy answers 503 with Retry-After.
func busy(w http.ResponseWriter, why string) {
	w.Header().Set("Retry-After", strconv.Itoa(RetryAfter))
	http.Error(w, "herd: "+why+", retry in "+strconv.Itoa(RetryAfter)+" s", http.StatusServiceUnavailable)
}

// progressWriter moves the connection's write deadline before each chunk,
// so a download on a slow link runs as long as it makes progress and one
// whose reader stopped ends after idle. ReadFrom keeps sendfile(2): each
// chunk is an io.LimitedReader over the same file.
type progressWriter struct {
	http.ResponseWriter
	rc   *http.ResponseController
	idle time.Duration
}

func (p *progressWriter) Unwrap() http.ResponseWriter { return p.ResponseWriter }

func (p *progressWriter) extend() { p.rc.SetWriteDeadline(time.Now().Add(p.idle)) }

func (p *progressWriter) Write(b []byte) (int, error) {
	done := 0
	for done < len(b) {
		p.extend()
		n, err := p.ResponseWriter.Write(b[done:min(len(b), done+chunk)])
		done += n
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

func (p *progressWriter) ReadFrom(src io.Reader) (int64, error) {
	var total int64
	lr, limited := src.(*io.LimitedReader)
	for {
		p.extend()
		var part *io.LimitedReader
		if limited {
			if lr.N <= 0 {
				return total, nil
			}
			part = &io.LimitedReader{R: lr.R, N: min(lr.N, chunk)}
		} else {
			part = &io.LimitedReader{R: src, N: chunk}
		}
		want := part.N
		n, err := io.Copy(p.ResponseWriter, part)
		total += n
		if limited {
			lr.N -= n
		}
		if err != nil {
			return total, err
		}
		if n < want {
			return total, nil // the source ended
		}
	}
}
