package nodeboot

// secure_boot: herd — the node booted from herd's signed UKI, whose command
// line has no per-node values: it asks the server for its hints by MAC
// (GET <herd.server>/boot/<mac>.json) and, when the admin arranged it
// (`herd secureboot enroll NAME`) and the firmware is in Setup Mode, writes
// herd's Secure Boot keys through efivarfs and reboots.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Hints mirror pxe/httpboot.Hints: a node's name and cache policy (hints:
// identity is the node key's job) and the signed key updates to enroll.
type Hints struct {
	Node   string   `json:"node"`
	Cache  string   `json:"cache"`
	Enroll []string `json:"enroll,omitempty"`
}

// HintsFile is where the agent keeps the hints it got (under RunDir, which
// moves into the booted system as /run/herd) for later agent commands.
const HintsFile = "hints.json"

var nodeNameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func validCache(c string) bool {
	return c == "auto" || c == "none" || strings.HasPrefix(c, "/dev/") && !strings.Contains(c, "..")
}

// apply takes valid hints into p where the command line left them out.
func (h *Hints) apply(p *Params) {
	if p.Node == "" && nodeNameRe.MatchString(h.Node) {
		p.Node = h.Node
	}
	if validCache(h.Cache) {
		p.Cache = h.Cache
	}
}

// Params reads the command line and, when it names no node (a signed
// UKI's), the hints kept by the initramfs. Agent commands use it instead
// of ReadCmdline.
func (s *System) Params() (*Params, error) {
	p, err := ReadCmdline(s.Cmdline)
	if err != nil {
		return nil, err
	}
	if p.Node != "" {
		return p, nil
	}
	if b, err := os.ReadFile(filepath.Join(s.RunDir, HintsFile)); err == nil {
		var h Hints
		if json.Unmarshal(b, &h) == nil {
			h.apply(p)
		}
	}
	return p, nil
}

// fetchHints asks the server for the node's hints (a few tries: the
// network may still be settling), keeps them in RunDir and applies them;
// nil when there are none (the node boots nameless: no per-node secrets).
func (s *System) fetchHints(ctx context.Context, p *Params, mac string) *Hints {
	if p.Node != "" || p.Server == "" || mac == "" {
		return nil
	}
	url := p.Server + "/boot/" + mac + ".json"
	var last error
	for try := 0; try < 6; try++ {
		if try > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(s.hintsWait()):
			}
		}
		h, err := s.getHints(ctx, url)
		if err != nil {
			last = err
			s.say("hints: %v", err)
			continue
		}
		h.apply(p)
		keep := *h
		keep.Enroll = nil
		if b, err := json.Marshal(keep); err == nil {
			os.MkdirAll(s.RunDir, 0o755)
			if err := os.WriteFile(filepath.Join(s.RunDir, HintsFile), b, 0o644); err != nil {
				s.say("hints: keep %s: %v", HintsFile, err)
			}
		}
		s.say("hints from %s: node %s, cache %s", url, p.Node, p.Cache)
		return h
	}
	s.say("no hints from the server (%v): booting without a node name, so without per-node secrets", last)
	return nil
}

func (s *System) hintsWait() time.Duration {
	if s.RoundWait > 0 && s.RoundWait < 5*time.Second {
		return s.RoundWait
	}
	return 5 * time.Second
}

func (s *System) getHints(ctx context.Context, url string) (*Hints, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.client().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	var h Hints
	if err := json.Unmarshal(body, &h); err != nil {
		return nil, fmt.Errorf("%s: %w", url, err)
	}
	return &h, nil
}

func (s *System) client() *http.Client {
	if s.Client != nil {
		return s.Client
	}
	return http.DefaultClient
}

// EFI variable GUIDs (secureboot package; repeated here to keep the agent
// free of the server's dependencies).
const (
	efiGlobalGUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
	efiImageGUID  = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"
)

var updateRe = regexp.MustCompile(`^(db|KEK|PK)(-append)?\.auth$`)

// ErrNotSetupMode: the firmware holds a platform key; herd's keys can only
// be written in Setup Mode.
var ErrNotSetupMode = errors.New("the firmware is not in Setup Mode")

// EnrollKeys writes the signed updates (db, KEK, then PK) fetched from
// <server>/secureboot/ into the firmware through efivarfs. The firmware
// must be in Setup Mode; writing PK ends it.
func (s *System) EnrollKeys(ctx context.Context, server string, updates []string) error {
	dir := filepath.Join(s.SysRoot, "firmware/efi/efivars")
	if _, err := os.Stat(filepath.Join(s.SysRoot, "firmware/efi")); err != nil {
		return fmt.Errorf("not booted through UEFI (%w)", err)
	}
	setup, err := os.ReadFile(filepath.Join(dir, "SetupMode-"+efiGlobalGUID))
	if errors.Is(err, os.ErrNotExist) && s.SysRoot == "/sys" {
		// The initramfs does not mount efivarfs.
		if merr := unix.Mount("efivarfs", dir, "efivarfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); merr != nil && !errors.Is(merr, unix.EBUSY) {
			return fmt.Errorf("mount efivarfs on %s: %w", dir, merr)
		}
		setup, err = os.ReadFile(filepath.Join(dir, "SetupMode-"+efiGlobalGUID))
	}
	if err != nil {
		return fmt.Errorf("read SetupMode: %w", err)
	}
	if len(setup) != 5 || setup[4] != 1 {
		return ErrNotSetupMode
	}
	var data [][]byte
	for _, name := range updates {
		if !updateRe.MatchString(name) {
			return fmt.Errorf("hints name %q, which is not a signed key update", name)
		}
		b, err := s.fetchUpdate(ctx, server+"/secureboot/"+name)
		if err != nil {
			return err
		}
		data = append(data, b)
	}
	for i, name := range updates {
		role := updateRe.FindStringSubmatch(name)[1]
		guid := efiGlobalGUID
		if role == "db" {
			guid = efiImageGUID
		}
		p := filepath.Join(dir, role+"-"+guid)
		clearImmutable(p)
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE, 0o644)
		if err != nil {
			return fmt.Errorf("write %s: %w", role, err)
		}
		// efivarfs takes a variable in one write(2): attributes, then data.
		n, err := f.Write(data[i])
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil && n != len(data[i]) {
			err = io.ErrShortWrite
		}
		if err != nil {
			return fmt.Errorf("write %s (%s): %w (the firmware refused the signed update)", role, name, err)
		}
		s.say("secure boot: wrote %s (%s, %d bytes)", role, name, len(data[i]))
	}
	return nil
}

func (s *System) fetchUpdate(ctx context.Context, url string) ([]byte, error) {
	var last error
	for try := 0; try < 5; try++ {
		if try > 0 {
			time.Sleep(s.hintsWait())
		}
		c, cancel := context.WithTimeout(ctx, 20*time.Second)
		req, _ := http.NewRequestWithContext(c, http.MethodGet, url, nil)
		resp, err := s.client().Do(req)
		if err != nil {
			cancel()
			last = err
			continue
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		cancel()
		if err == nil && resp.StatusCode == http.StatusOK && len(b) > 4 {
			return b, nil
		}
		last = fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil, fmt.Errorf("fetch %s: %w", url, last)
}

// clearImmutable drops the immutable flag efivarfs sets on variables it
// does not know to be removable (db and KEK with Microsoft's keys).
func clearImmutable(path string) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil || flags&fsImmutableFL == 0 {
		return
	}
	unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags&^fsImmutableFL))
}

// enrollAndReboot is the one-shot enrollment: on success the node reboots
// (the firmware then enforces Secure Boot with herd's keys); on failure it
// says why and boots on.
func (s *System) enrollAndReboot(ctx context.Context, server string, updates []string) {
	s.say("secure boot: enrolling herd's keys (%s)", strings.Join(updates, ", "))
	if err := s.EnrollKeys(ctx, server, updates); err != nil {
		if errors.Is(err, ErrNotSetupMode) {
			s.say("secure boot: the firmware is not in Setup Mode: herd's keys were NOT enrolled; clear the Secure Boot keys in the firmware setup, then run herd secureboot enroll again")
		} else {
			s.say("secure boot: enrollment failed: %v", err)
		}
		return
	}
	s.say("secure boot: herd's keys enrolled; rebooting with Secure Boot enforced")
	unix.Sync()
	reboot := s.Reboot
	if reboot == nil {
		reboot = func() error { return unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART) }
	}
	if err := reboot(); err != nil {
		s.say("secure boot: reboot: %v; reboot the node by hand", err)
	}
}

// fsImmutableFL is FS_IMMUTABLE_FL of linux/fs.h.
const fsImmutableFL = 0x00000010

// efivarsDir returns the efivarfs directory, mounting efivarfs in the
// initramfs (which does not) when the firmware is UEFI; "" on BIOS.
func (s *System) efivarsDir() string {
	if _, err := os.Stat(filepath.Join(s.SysRoot, "firmware/efi")); err != nil {
		return ""
	}
	dir := filepath.Join(s.SysRoot, "firmware/efi/efivars")
	if s.SysRoot == "/sys" {
		if ents, err := os.ReadDir(dir); err == nil && len(ents) == 0 {
			if err := unix.Mount("efivarfs", dir, "efivarfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil && !errors.Is(err, unix.EBUSY) {
				s.say("mount efivarfs: %v", err)
			}
		}
	}
	return dir
}

// SecureBootState describes the firmware's Secure Boot state and the
// kernel's lockdown for the console and the first boot event, e.g.
// "secure boot: enabled, lockdown: integrity".
func (s *System) SecureBootState() string {
	dir := s.efivarsDir()
	if dir == "" {
		return "secure boot: no (BIOS boot)"
	}
	state := "unknown"
	if b, err := os.ReadFile(filepath.Join(dir, "SecureBoot-"+efiGlobalGUID)); err == nil && len(b) == 5 {
		state = map[bool]string{true: "enabled", false: "disabled"}[b[4] == 1]
		if m, err := os.ReadFile(filepath.Join(dir, "SetupMode-"+efiGlobalGUID)); err == nil && len(m) == 5 && m[4] == 1 {
			state += " (firmware in Setup Mode)"
		}
	}
	sec := filepath.Join(s.SysRoot, "kernel/security")
	lf := filepath.Join(sec, "lockdown")
	if _, err := os.Stat(lf); err != nil && s.SysRoot == "/sys" {
		unix.Mount("securityfs", sec, "securityfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	}
	lock := "unknown"
	if b, err := os.ReadFile(lf); err == nil {
		// "none [integrity] confidentiality": the bracketed one is in force.
		if i, j := strings.IndexByte(string(b), '['), strings.IndexByte(string(b), ']'); i >= 0 && j > i {
			lock = string(b)[i+1 : j]
		}
	}
	return "secure boot: " + state + ", lockdown: " + lock
}
