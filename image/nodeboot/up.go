package nodeboot

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/herdlab/herd/internal/nodeauth"
)

// ReportUp is `herd-boot report-up` (herd-up.service): it waits until systemd
// has finished starting the system (multi-user reached), then posts stage
// "up" with the running kernel, NVIDIA driver version and image id.
func ReportUp(ctx context.Context, s *System) error {
	p, err := s.Params()
	if err != nil {
		return err
	}
	state := waitSystemStarted(ctx, 20*time.Minute)
	// The boot NIC's MAC keys the node's inventory record: the NIC the
	// server is reached through, not merely the first one with an address.
	mac, _ := BootLink(p.Server)
	rep := &Reporter{Server: p.Server, Node: p.Node, MAC: mac, Image: p.ID, Timeout: 5 * time.Second}
	// The server records only events signed by the node's enrolled key.
	key, _, err := LoadBootedKey(s)
	if err != nil {
		if s.Console != nil {
			fmt.Fprintf(s.Console, "herd: node %s up, but %v: the up report cannot be signed and is not sent\n", p.Node, err)
		}
		return nil
	}
	rep.SetSigner(ctx, &nodeauth.Client{Base: p.Server, Node: p.Node, Key: key})
	ev := Event{Stage: StageUp, Kernel: KernelRelease(), NVIDIA: NVIDIAVersion(s.SysRoot),
		Message: "system " + state}
	links, degraded, err := NetworkReport(ctx, s.SysRoot, s.root(), mac, 60*time.Second)
	if err != nil {
		degraded = append(degraded, "degraded: cannot read the node's networks: "+err.Error())
	}
	ev.Interfaces, ev.Degraded = links, degraded
	ev.Cache = CacheState(filepath.Join(s.root(), BootedCacheImages))
	if len(degraded) > 0 {
		ev.Message += "; " + strings.Join(degraded, "; ")
	}
	if s.Console != nil {
		fmt.Fprintf(s.Console, "herd: node %s up: kernel %s, nvidia %q, image %s, system %s\n", p.Node, ev.Kernel, ev.NVIDIA, p.ID, state)
		fmt.Fprint(s.Console, FormatLinks(links))
		for _, d := range degraded {
			fmt.Fprintf(s.Console, "herd: %s\n", d)
		}
	}
	var last error
	for i, wait := 0, time.Second; i < 6; i, wait = i+1, wait*2 {
		if last = rep.Post(ctx, ev); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
	return fmt.Errorf("report up: %w", last)
}

// waitSystemStarted waits until start-up is over (running or degraded)
// and returns that state. It asks systemd to tell it (`is-system-running
// --wait`, one process that sleeps on the bus) rather than starting
// systemctl every two seconds, which took CPU from the boot it waits for;
// where that fails (no bus yet, an old systemd) it polls.
func waitSystemStarted(ctx context.Context, limit time.Duration) string {
	deadline := time.Now().Add(limit)
	wctx, cancel := context.WithDeadline(ctx, deadline)
	out, _ := exec.CommandContext(wctx, "systemctl", "is-system-running", "--wait").Output()
	cancel()
	switch st := strings.TrimSpace(string(out)); st {
	case "running", "degraded", "maintenance", "stopping":
		return st
	}
	for {
		out, _ := exec.CommandContext(ctx, "systemctl", "is-system-running").Output()
		st := strings.TrimSpace(string(out))
		switch st {
		case "running", "degraded", "maintenance", "stopping":
			return st
		case "":
			if _, err := exec.LookPath("systemctl"); err != nil {
				return "unknown (no systemctl)"
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return st + " (gave up waiting)"
		}
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
}

// KernelRelease is `uname -r`.
func KernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return string(bytes.TrimRight(u.Release[:], "\x00"))
}

// NVIDIAVersion reads the loaded driver's version, else the installed
// module's (modinfo), else "" (no GPU driver).
func NVIDIAVersion(sysRoot string) string {
	if b, err := os.ReadFile(sysRoot + "/module/nvidia/version"); err == nil {
		return strings.TrimSpace(string(b))
	}
	if out, err := exec.Command("modinfo", "-F", "version", "nvidia").Output(); err == nil {
		return strings.TrimSpace(string(out))
	}
	return ""
}

// CacheState reports the image cache under dir (the booted system's
// /var/cache/herd/images): no directory means no cache SSD (RAM mode).
// At most inventory's bound of images is listed, most recently used first.
func CacheState(dir string) *CacheReport {
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return &CacheReport{}
	}
	c := &CacheReport{Disk: true}
	imgs, _ := ImageDir{Dir: dir}.Cached()
	if len(imgs) > maxReportedImages {
		imgs = imgs[:maxReportedImages]
	}
	c.Images = imgs
	return c
}

// maxReportedImages is pxe/inventory.MaxCachedImages (the server refuses more).
const maxReportedImages = 64
