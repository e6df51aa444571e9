// Package inspect reads a built image's rootfs.squashfs directly with
// go-diskfs — no mount, no root — and reports what an admin must check
// before booting nodes from it: the OS release, the kernel module trees and
// the version of the nvidia kernel module inside.
package inspect

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/squashfs"
	"github.com/klauspost/compress/zstd"

	"github.com/herdlab/herd/image/manifest"
)

// Report is what Inspect found in one image.
type Report struct {
	Source string `json:"source"`
	// OS is PRETTY_NAME from os-release ("" when the image has none).
	OS        string            `json:"os"`
	OSRelease map[string]string `json:"os_release"`
	Kernels   []Kernel          `json:"kernels"`
	// EFI lists the Secure Boot chain's binaries next to the image root
	// (shimx64.efi, grubx64.efi of a published image) with their signers.
	EFI []EFIBinary `json:"efi,omitempty"`
}

// EFIBinary is one signed PE file and who signed it.
type EFIBinary struct {
	Name    string   `json:"name"`
	Signers []Signer `json:"signers"`
	Error   string   `json:"error,omitempty"`
}

// Kernel is one module tree, /usr/lib/modules/<abi>.
type Kernel struct {
	ABI string `json:"abi"`
	Dir string `json:"dir"`
	// Modules counts the modules depmod listed (-1 without modules.dep).
	Modules int      `json:"modules"`
	NVIDIA  []Module `json:"nvidia"`
	// Signers are the Authenticode signers of /boot/vmlinuz-<abi>; Keys
	// the certificates built into it (what it checks module signatures
	// against); KernelError says why they could not be read.
	Signers     []Signer `json:"signers,omitempty"`
	Keys        []string `json:"keys,omitempty"`
	KernelError string   `json:"kernel_error,omitempty"`
}

// Module is one nvidia.ko found in a module tree.
type Module struct {
	Path string `json:"path"`
	// Version is modinfo's version= (the driver version, e.g. 580.95.05).
	Version string `json:"version"`
	// Vermagic is the kernel release and options the module was built for.
	Vermagic string `json:"vermagic,omitempty"`
	// Compression is "zstd" for .ko.zst, "" for a plain .ko.
	Compression string `json:"compression,omitempty"`
	// Signed: the module carries an appended kernel module signature.
	Signed bool `json:"signed"`
	// Signer names who signed it (PKCS#7 issuer and serial); Trusted says
	// that certificate is one of the kernel's built-in keys (Kernel.Keys).
	Signer  *Signer `json:"signer,omitempty"`
	Trusted bool    `json:"trusted"`
	// Error says why the module could not be read.
	Error string `json:"error,omitempty"`
}

// NVIDIAVersion is the version of the first nvidia module found, "" if none.
func (r *Report) NVIDIAVersion() string {
	for _, k := range r.Kernels {
		for _, m := range k.NVIDIA {
			if m.Version != "" {
				return m.Version
			}
		}
	}
	return ""
}

// maxModule bounds a decompressed module (nvidia.ko is about 130 MB).
const maxModule = 1 << 30

// maxLinks bounds symlink hops, like the kernel's ELOOP limit.
const maxLinks = 40

// Image is an open squashfs image.
type Image struct {
	path string
	f    *os.File
	fs   *squashfs.FileSystem
}

// Open opens a squashfs file for reading.
func Open(p string) (*Image, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("inspect %s: not a regular file", p)
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	fs, err := squashfs.Read(file.New(f, true), st.Size(), 0, 0)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("inspect %s: not a readable squashfs image: %w", p, err)
	}
	return &Image{path: p, f: f, fs: fs}, nil
}

// Close releases the image file.
func (im *Image) Close() error { return im.f.Close() }

// File inspects the squashfs image at p.
func File(p string) (*Report, error) {
	im, err := Open(p)
	if err != nil {
		return nil, err
	}
	defer im.Close()
	r, err := im.Report()
	if err != nil {
		return nil, err
	}
	r.EFI = EFIFiles(filepath.Dir(p))
	return r, nil
}

// EFIFiles reports the signers of the Secure Boot chain's binaries in an
// image directory (none when the image has none).
func EFIFiles(dir string) []EFIBinary {
	var out []EFIBinary
	for _, n := range []string{manifest.Shim, manifest.Grub} {
		data, err := os.ReadFile(filepath.Join(dir, n))
		if errors.Is(err, iofs.ErrNotExist) {
			continue
		}
		e := EFIBinary{Name: n, Signers: []Signer{}}
		if err == nil {
			e.Signers, err = PESigners(data)
		}
		if err != nil {
			e.Error = err.Error()
		} else if len(e.Signers) == 0 {
			e.Error = "not signed"
		}
		out = append(out, e)
	}
	return out
}

// Report reads os-release, the module trees and the nvidia modules.
func (im *Image) Report() (*Report, error) {
	r := &Report{Source: im.path, OSRelease: map[string]string{}, Kernels: []Kernel{}}
	// /etc/os-release is normally a relative link to ../usr/lib/os-release;
	// os-release(5) names /usr/lib/os-release as the fallback.
	for _, p := range []string{"/etc/os-release", "/usr/lib/os-release"} {
		data, err := im.ReadFile(p)
		if errors.Is(err, iofs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("inspect %s: %w", im.path, err)
		}
		r.OSRelease = ParseOSRelease(data)
		r.OS = r.OSRelease["PRETTY_NAME"]
		break
	}
	// /lib is a link to usr/lib on merged-/usr systems such as Ubuntu.
	modDir, err := im.Resolve("/lib/modules")
	if errors.Is(err, iofs.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", im.path, err)
	}
	ents, err := im.readDir(modDir)
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", im.path, err)
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		k, err := im.kernel(path.Join(modDir, e.Name()), e.Name())
		if err != nil {
			return nil, fmt.Errorf("inspect %s: %w", im.path, err)
		}
		r.Kernels = append(r.Kernels, k)
	}
	sort.Slice(r.Kernels, func(i, j int) bool { return r.Kernels[i].ABI < r.Kernels[j].ABI })
	return r, nil
}

func isNVIDIA(name string) (compression string, ok bool) {
	switch name {
	case "nvidia.ko":
		return "", true
	case "nvidia.ko.zst":
		return "zstd", true
	case "nvidia.ko.xz":
		return "xz", true
	}
	return "", false
}

func (im *Image) kernel(dir, abi string) (Kernel, error) {
	k := Kernel{ABI: abi, Dir: dir, Modules: -1, NVIDIA: []Module{}}
	var paths []string
	dep, err := im.ReadFile(path.Join(dir, "modules.dep"))
	switch {
	case err == nil:
		// modules.dep: "kernel/dir/name.ko.zst: dependency ..." per module,
		// paths relative to the tree.
		k.Modules = 0
		sc := bufio.NewScanner(bytes.NewReader(dep))
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			mod, _, ok := strings.Cut(sc.Text(), ":")
			if !ok {
				continue
			}
			k.Modules++
			if _, nv := isNVIDIA(path.Base(mod)); nv {
				paths = append(paths, path.Join(dir, mod))
			}
		}
	case errors.Is(err, iofs.ErrNotExist):
		// No depmod run: walk the tree.
		if err := im.walk(dir, func(p string) {
			if _, nv := isNVIDIA(path.Base(p)); nv {
				paths = append(paths, p)
			}
		}); err != nil {
			return k, err
		}
	default:
		return k, err
	}
	sort.Strings(paths)
	var keys []*x509.Certificate
	if vmlinuz, err := im.ReadFile("/boot/vmlinuz-" + abi); err != nil {
		k.KernelError = fmt.Sprintf("/boot/vmlinuz-%s: %v", abi, err)
	} else {
		if k.Signers, err = PESigners(vmlinuz); err != nil {
			k.KernelError = fmt.Sprintf("/boot/vmlinuz-%s: %v", abi, err)
		}
		if keys, err = KernelKeys(vmlinuz); err != nil {
			k.KernelError = fmt.Sprintf("/boot/vmlinuz-%s: built-in keys: %v", abi, err)
		}
		for _, c := range keys {
			k.Keys = append(k.Keys, c.Subject.String())
		}
	}
	for _, p := range paths {
		k.NVIDIA = append(k.NVIDIA, im.module(p, keys))
	}
	return k, nil
}

func (im *Image) walk(dir string, fn func(p string)) error {
	ents, err := im.readDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		p := path.Join(dir, e.Name())
		switch {
		case e.IsDir():
			if err := im.walk(p, fn); err != nil {
				return err
			}
		case e.Type().IsRegular(), e.Type()&iofs.ModeSymlink != 0:
			fn(p)
		}
	}
	return nil
}

// module reads one module's .modinfo; problems end up in Module.Error so
// the rest of the report still shows.
func (im *Image) module(p string, keys []*x509.Certificate) Module {
	comp, _ := isNVIDIA(path.Base(p))
	m := Module{Path: p, Compression: comp}
	real, err := im.Resolve(p)
	if err != nil {
		m.Error = err.Error()
		return m
	}
	f, size, err := im.open(real)
	if err != nil {
		m.Error = err.Error()
		return m
	}
	var ra io.ReaderAt = f
	switch comp {
	case "":
	case "zstd":
		dec, err := zstd.NewReader(&sequential{f: f, size: size}, zstd.WithDecoderConcurrency(1))
		if err != nil {
			m.Error = fmt.Sprintf("zstd: %v", err)
			return m
		}
		defer dec.Close()
		data, err := io.ReadAll(io.LimitReader(dec, maxModule+1))
		if err != nil {
			m.Error = fmt.Sprintf("decompress %s: %v", p, err)
			return m
		}
		if len(data) > maxModule {
			m.Error = fmt.Sprintf("decompress %s: larger than %d bytes", p, maxModule)
			return m
		}
		ra, size = bytes.NewReader(data), int64(len(data))
	default:
		m.Error = fmt.Sprintf("%s: %s-compressed modules are not read (Ubuntu uses zstd)", p, comp)
		return m
	}
	info, signed, err := modinfo(ra, size)
	if err != nil {
		m.Error = fmt.Sprintf("%s: %v", p, err)
		return m
	}
	m.Version, m.Vermagic, m.Signed = info["version"], strings.TrimSpace(info["vermagic"]), signed
	if signed {
		ss, ids, err := moduleSignature(ra, size)
		if err != nil {
			m.Error = fmt.Sprintf("%s: signature: %v", p, err)
			return m
		}
		m.Signer, m.Trusted = &ss[0], trusted(keys, ids)
	}
	if m.Version == "" {
		m.Error = fmt.Sprintf("%s: .modinfo has no version=", p)
	}
	return m
}

// sigMagic ends a module that carries an appended signature (the kernel's
// module signing format: data, signature, info block, this string).
const sigMagic = "~Module signature appended~\n"

// modinfo reads the key=value strings of an ELF module's .modinfo section
// (NUL separated) and whether a signature is appended after the ELF data.
func modinfo(r io.ReaderAt, size int64) (map[string]string, bool, error) {
	ef, err := elf.NewFile(r)
	if err != nil {
		return nil, false, fmt.Errorf("not an ELF module: %w", err)
	}
	sec := ef.Section(".modinfo")
	if sec == nil {
		return nil, false, errors.New("ELF module has no .modinfo section")
	}
	data, err := sec.Data()
	if err != nil {
		return nil, false, fmt.Errorf("read .modinfo: %w", err)
	}
	info := map[string]string{}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if k, v, ok := strings.Cut(string(kv), "="); ok {
			if _, dup := info[k]; !dup {
				info[k] = v
			}
		}
	}
	signed := false
	if size >= int64(len(sigMagic)) {
		tail := make([]byte, len(sigMagic))
		if _, err := r.ReadAt(tail, size-int64(len(sigMagic))); err == nil || errors.Is(err, io.EOF) {
			signed = string(tail) == sigMagic
		}
	}
	return info, signed, nil
}

// ParseOSRelease parses os-release(5): KEY=value lines, values optionally
// quoted with shell quoting rules.
func ParseOSRelease(data []byte) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			if v[0] == '"' {
				if u, err := strconv.Unquote(v); err == nil {
					v = u
				} else {
					v = v[1 : len(v)-1]
				}
			} else {
				v = v[1 : len(v)-1]
			}
		}
		out[k] = v
	}
	return out
}

// WriteText prints the report for a terminal.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "image:   %s\n", r.Source)
	osName := r.OS
	if osName == "" {
		osName = "(no os-release)"
	}
	fmt.Fprintf(&b, "os:      %s", osName)
	if v := r.OSRelease["VERSION_ID"]; v != "" {
		fmt.Fprintf(&b, " (VERSION_ID %s", v)
		if c := r.OSRelease["VERSION_CODENAME"]; c != "" {
			fmt.Fprintf(&b, ", %s", c)
		}
		b.WriteString(")")
	}
	b.WriteString("\n")
	if len(r.Kernels) == 0 {
		b.WriteString("kernels: none (no /lib/modules)\n")
	}
	for _, k := range r.Kernels {
		mods := "modules.dep missing"
		if k.Modules >= 0 {
			mods = fmt.Sprintf("%d modules", k.Modules)
		}
		fmt.Fprintf(&b, "kernel:  %s (%s, %s)\n", k.ABI, k.Dir, mods)
		for _, s := range k.Signers {
			fmt.Fprintf(&b, "  signed by %s\n", s)
		}
		if k.KernelError != "" {
			fmt.Fprintf(&b, "  signature: %s\n", k.KernelError)
		}
		for _, key := range k.Keys {
			fmt.Fprintf(&b, "  built-in key %s\n", key)
		}
		if len(k.NVIDIA) == 0 {
			b.WriteString("  nvidia: no nvidia module\n")
		}
		for _, m := range k.NVIDIA {
			if m.Error != "" {
				fmt.Fprintf(&b, "  nvidia: %s: %s\n", m.Path, m.Error)
				continue
			}
			extra := []string{}
			if m.Compression != "" {
				extra = append(extra, m.Compression)
			}
			if m.Signed {
				extra = append(extra, "signed")
			} else {
				extra = append(extra, "unsigned")
			}
			fmt.Fprintf(&b, "  nvidia: %s (%s; %s)\n", m.Version, m.Path, strings.Join(extra, ", "))
			if m.Signer != nil {
				trust := "trusted by the kernel's built-in keys"
				if !m.Trusted {
					trust = "NOT among the kernel's built-in keys: it will not load with Secure Boot"
				}
				fmt.Fprintf(&b, "          signer %s (%s)\n", m.Signer, trust)
			}
			if m.Vermagic != "" {
				fmt.Fprintf(&b, "          vermagic %s\n", m.Vermagic)
			}
		}
	}
	for _, e := range r.EFI {
		if e.Error != "" {
			fmt.Fprintf(&b, "efi:     %s: %s\n", e.Name, e.Error)
		}
		for _, s := range e.Signers {
			fmt.Fprintf(&b, "efi:     %s signed by %s\n", e.Name, s)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
