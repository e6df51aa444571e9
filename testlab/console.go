package testlab

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"sync"
	"time"
)

// Console follows a serial log file that QEMU appends to and waits for
// patterns in it, expect-style. Each successful Expect moves the read
// position past the match, so a second Expect for the same pattern waits for
// a new occurrence (e.g. the login prompt after a reboot).
type Console struct {
	Path string

	mu  sync.Mutex
	pos int64
}

// NewConsole follows the serial log at path (it may not exist yet).
func NewConsole(path string) *Console { return &Console{Path: path} }

// poll is how often the log is re-read while waiting; the log grows slowly
// (115200 baud at most), so re-reading the tail is cheap.
const poll = 200 * time.Millisecond

// Expect waits until re matches the log after the current position, or ctx
// ends, or timeout passes. It returns the submatches and moves past them. On
// failure the error carries the log path and its last lines.
func (c *Console) Expect(ctx context.Context, re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		c.mu.Lock()
		data, err := readFrom(c.Path, c.pos)
		if err == nil {
			if loc := re.FindSubmatchIndex(data); loc != nil {
				m := make([]string, len(loc)/2)
				for i := range m {
					if loc[2*i] >= 0 {
						m[i] = string(data[loc[2*i]:loc[2*i+1]])
					}
				}
				c.pos += int64(loc[1])
				c.mu.Unlock()
				return m, nil
			}
		}
		c.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("serial console %s: no match for %q within %s: %w\n--- last lines of %s ---\n%s",
				c.Path, re.String(), timeout, ctx.Err(), c.Path, c.Tail(40))
		case <-t.C:
		}
	}
}

// Mark moves the read position to the current end of the log, so the next
// Expect only sees output written from now on.
func (c *Console) Mark() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if fi, err := os.Stat(c.Path); err == nil {
		c.pos = fi.Size()
	}
}

// Size is the log's length now: a point to read from later with Since.
func (c *Console) Size() int64 {
	if fi, err := os.Stat(c.Path); err == nil {
		return fi.Size()
	}
	return 0
}

// Since returns the log from byte off on, cleaned as Tail's: what the VM
// printed since Size was taken (a reboot's whole console).
func (c *Console) Since(off int64) (string, error) {
	data, err := readFrom(c.Path, off)
	return string(Clean(data)), err
}

// Contains reports whether re matches anywhere in the whole log.
func (c *Console) Contains(re *regexp.Regexp) bool {
	data, err := os.ReadFile(c.Path)
	return err == nil && re.Match(data)
}

// Tail returns the last n lines of the log with terminal escapes and carriage
// returns removed, for failure messages.
func (c *Console) Tail(n int) string {
	data, err := os.ReadFile(c.Path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", c.Path, err)
	}
	return TailLines(Clean(data), n)
}

var escapes = regexp.MustCompile(`\x1b(\[[0-9;?]*[A-Za-z]|[()][A-Za-z0-9]|[A-Za-z=>])`)

// Clean strips ANSI escape sequences, carriage returns and backspaces that
// firmware and the kernel write to the serial line.
func Clean(b []byte) []byte {
	b = escapes.ReplaceAll(b, nil)
	b = bytes.ReplaceAll(b, []byte("\b \b"), nil)
	b = bytes.ReplaceAll(b, []byte("\r"), nil)
	return b
}

// TailLines returns the last n lines of b.
func TailLines(b []byte, n int) string {
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// readFrom reads path from offset to its end.
func readFrom(path string, off int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() <= off {
		return nil, nil
	}
	buf := make([]byte, fi.Size()-off)
	n, err := f.ReadAt(buf, off)
	if n > 0 {
		return buf[:n], nil
	}
	return nil, err
}

// Follow copies the log to w as it grows (escapes removed when clean is
// set) until ctx ends; it starts at the current position.
func (c *Console) Follow(ctx context.Context, w io.Writer, clean bool) {
	c.mu.Lock()
	pos := c.pos
	c.mu.Unlock()
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		if data, err := readFrom(c.Path, pos); err == nil && len(data) > 0 {
			pos += int64(len(data))
			if clean {
				data = Clean(data)
			}
			w.Write(data)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
