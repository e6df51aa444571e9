package build

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// progress reports stages: on a terminal one line per stage whose elapsed
// time is redrawn every second; otherwise plain start/done lines for logs.
type progress struct {
	w    io.Writer
	term bool
	mu   sync.Mutex
	stop chan struct{}
	wg   sync.WaitGroup
}

func newProgress(w io.Writer, term bool) *progress { return &progress{w: w, term: term} }

func (p *progress) start(name string) {
	if !p.term {
		fmt.Fprintf(p.w, "stage %s: started\n", name)
		return
	}
	p.stop = make(chan struct{})
	t0 := time.Now()
	p.wg.Add(1)
	go func(stop chan struct{}) {
		defer p.wg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			p.mu.Lock()
			fmt.Fprintf(p.w, "\r\033[K  %-10s %4.0fs", name, time.Since(t0).Seconds())
			p.mu.Unlock()
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}(p.stop)
}

func (p *progress) done(name string, d time.Duration, cached bool, err error) {
	status := "done"
	switch {
	case err != nil:
		status = "FAILED"
	case cached:
		status = "cached"
	}
	if !p.term {
		fmt.Fprintf(p.w, "stage %s: %s in %.1fs\n", name, status, d.Seconds())
		return
	}
	close(p.stop)
	p.wg.Wait()
	fmt.Fprintf(p.w, "\r\033[K  %-10s %5.1fs  %s\n", name, d.Seconds(), status)
}
