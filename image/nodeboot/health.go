package nodeboot

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/herdlab/herd/fleet/nodestatus"
	"github.com/herdlab/herd/internal/nvsmi"
)

// GPUFacts is what the node found out about its GPUs for one report.
type GPUFacts struct {
	// SMI is nvidia-smi's report; nil when nvidia-smi is missing or failed.
	SMI *nvsmi.Log
	// SMIErr says why SMI is nil ("" when nvidia-smi is not installed at all).
	SMIErr string
	// Loaded is the loaded driver's version (/sys/module/nvidia/version),
	// Installed the image's module (modinfo); "" when unknown.
	Loaded, Installed string
	// Xid are the kernel's "NVRM: Xid" lines since boot.
	Xid []string
}

// EvaluateHealth compares what the node sees with what the site expects
// (nil: no expectation) and gives the node's verdict. The GPU count comes
// first in Reason ("3/4 GPUs"), then anything else that is wrong, so a node
// missing a GPU always reads "degraded: 3/4 GPUs...".
func EvaluateHealth(expect *nodestatus.ExpectGPUs, f GPUFacts) nodestatus.Health {
	h := nodestatus.Health{State: nodestatus.Ready, ExpectedGPUs: -1, Xid: f.Xid}
	var gpus []nodestatus.GPU
	if f.SMI != nil {
		gpus = f.SMI.GPUs
	}
	h.SeenGPUs = len(gpus)
	var bad []string
	if expect != nil {
		h.ExpectedGPUs = expect.Count
		if h.SeenGPUs < expect.Count {
			bad = append(bad, fmt.Sprintf("%d/%d GPUs", h.SeenGPUs, expect.Count))
		}
		if expect.Model != "" {
			for _, g := range gpus {
				if !strings.Contains(strings.ToLower(g.Model), strings.ToLower(expect.Model)) {
					bad = append(bad, fmt.Sprintf("GPU %d is %s, not %s", g.Index, g.Model, expect.Model))
				}
			}
		}
	}
	if f.Loaded != "" && f.Installed != "" && f.Loaded != f.Installed {
		bad = append(bad, fmt.Sprintf("driver %s loaded, image has %s", f.Loaded, f.Installed))
	}
	var off, ecc, retired []string
	for i, g := range gpus {
		if i < len(f.SMI.PersistenceKnown) && f.SMI.PersistenceKnown[i] && !g.Persistence {
			off = append(off, fmt.Sprint(g.Index))
		}
		if g.ECCUncorrected > 0 {
			ecc = append(ecc, fmt.Sprint(g.Index))
		}
		if g.RetiredPages > 0 {
			retired = append(retired, fmt.Sprint(g.Index))
		}
	}
	if len(off) > 0 {
		bad = append(bad, "persistence mode off on GPU "+strings.Join(off, ","))
	}
	if len(ecc) > 0 {
		bad = append(bad, "uncorrected ECC errors on GPU "+strings.Join(ecc, ","))
	}
	if len(retired) > 0 {
		bad = append(bad, "retired memory on GPU "+strings.Join(retired, ","))
	}
	if len(f.Xid) > 0 {
		bad = append(bad, fmt.Sprintf("%d Xid errors in the kernel log", len(f.Xid)))
	}
	if len(bad) > 0 {
		h.State, h.Reason = nodestatus.Degraded, strings.Join(bad, "; ")
	} else if f.SMIErr != "" && len(gpus) == 0 && (expect == nil || expect.Count > 0) && f.Loaded != "" {
		// A driver is loaded but nvidia-smi cannot tell what it sees.
		h.State, h.Reason = nodestatus.Unknown, "nvidia-smi: "+f.SMIErr
	}
	if len(h.Reason) > 256 {
		h.Reason = h.Reason[:253] + "..."
	}
	return h
}

// ReadXid returns the "NVRM: Xid" lines of the kernel log (/dev/kmsg,
// read without blocking from its start), at most nodestatus.MaxXid, the
// latest kept.
func ReadXid(kmsg string) ([]string, error) {
	// Plain syscalls, not os.File: Go's poller would wait on EAGAIN, and
	// EAGAIN is exactly how /dev/kmsg says "nothing more".
	fd, err := unix.Open(kmsg, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: kmsg, Err: err}
	}
	defer unix.Close(fd)
	return ParseXid(&kmsgReader{fd: fd}), nil
}

// kmsgReader turns /dev/kmsg's one record per read into lines: EAGAIN (the
// end of the buffer) ends it, EPIPE (a record overwritten meanwhile) is
// skipped.
type kmsgReader struct {
	fd   int
	buf  []byte
	rest []byte
}

func (k *kmsgReader) Read(p []byte) (int, error) {
	for len(k.rest) == 0 {
		if k.buf == nil {
			k.buf = make([]byte, 8192)
		}
		n, err := unix.Read(k.fd, k.buf)
		switch {
		case errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EAGAIN) || (err == nil && n == 0):
			return 0, io.EOF
		case err != nil:
			return 0, err
		}
		k.rest = k.buf[:n]
	}
	n := copy(p, k.rest)
	k.rest = k.rest[n:]
	return n, nil
}

// ParseXid picks the Xid lines out of kernel log records ("prio,seq,ts,flags;message"
// as /dev/kmsg gives them, or plain dmesg lines).
func ParseXid(r io.Reader) []string {
	var out []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 8192), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if _, msg, ok := strings.Cut(line, ";"); ok && !strings.HasPrefix(line, " ") {
			line = msg
		}
		i := strings.Index(line, "NVRM: Xid")
		if i < 0 {
			continue
		}
		x := strings.Map(func(r rune) rune {
			if r < 0x20 {
				return ' '
			}
			return r
		}, line[i:])
		if len(x) > 256 {
			x = x[:256]
		}
		out = append(out, x)
		if len(out) > nodestatus.MaxXid {
			out = out[1:]
		}
	}
	return out
}
