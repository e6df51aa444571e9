// Package manifest describes one built image: what went in (recipe, packages,
// kernel, driver, overlay files) and what came out (artifacts with sizes and
// sha256). The store, the server, `image diff` and the node all read it.
package manifest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/herdlab/herd/internal/atomicfile"
)

// FileName is the manifest's name inside an image directory.
const FileName = "manifest.json"

// Artifact names inside an image directory.
const (
	Kernel = "vmlinuz"
	Initrd = "initrd.img"
	Rootfs = "rootfs.squashfs"
	// Shim and Grub are the Secure Boot chain's first two stages, taken
	// from the image's own archive (shim-signed, grub-efi-amd64-signed):
	// Microsoft-signed shim and Canonical-signed network GRUB.
	Shim = "shimx64.efi"
	Grub = "grubx64.efi"
	// Stub is systemd-stub (systemd-boot-efi's linuxx64.efi.stub, unsigned):
	// secure_boot: herd wraps it around the kernel, initrd and command
	// line into one UKI signed with herd's key.
	Stub = "linuxx64.efi.stub"
)

// Manifest is the record of one image.
type Manifest struct {
	// ID is the image's content hash (see ComputeID).
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	// Recipe is the recipe's name (file name without .yaml).
	Recipe       string `json:"recipe"`
	RecipeSHA256 string `json:"recipe_sha256"`
	HerdVersion  string `json:"herd_version"`
	Distribution string `json:"distribution"` // e.g. ubuntu
	Suite        string `json:"suite"`        // e.g. noble
	// KernelABI is the exact kernel release, e.g. 6.8.0-149-generic.
	KernelABI string `json:"kernel"`
	// NVIDIA is the driver package version ("" when the image has none).
	NVIDIA string `json:"nvidia"`
	// Packages maps every installed package to its version.
	Packages map[string]string `json:"packages"`
	// Artifacts maps vmlinuz, initrd.img, rootfs.squashfs to size and hash.
	Artifacts map[string]Artifact `json:"artifacts"`
	// Stages records each build stage: its cache key, whether it was reused, and its time.
	Stages []Stage `json:"stages"`
	// Overlays lists every file the system overlays put into the image.
	Overlays []OverlayFile `json:"overlays,omitempty"`
	// Verity describes the dm-verity hash tree appended to rootfs.squashfs
	// (nil for images built without one: nodes hash those whole).
	Verity *Verity `json:"verity,omitempty"`
	// Chunks describes rootfs.index, the content-defined chunk list of
	// rootfs.squashfs (image/chunks) nodes fetch updates by; nil without one.
	Chunks *ChunkIndex `json:"chunks,omitempty"`
}

// ChunkIndex is the record of an image's chunk index file.
type ChunkIndex struct {
	File   string `json:"file"` // rootfs.index, next to rootfs.squashfs
	Count  int    `json:"count"`
	SHA256 string `json:"sha256"` // of the index file
}

// Verity is the record of rootfs.squashfs's dm-verity hash tree (image/verity).
type Verity struct {
	RootHash   string `json:"root_hash"`
	DataBlocks int64  `json:"data_blocks"` // squashfs size / BlockSize
	HashOffset int64  `json:"hash_offset"` // byte offset of the tree in rootfs.squashfs
	Algorithm  string `json:"algorithm"`
	BlockSize  int    `json:"block_size"` // data and hash blocks
	Format     string `json:"format"`
}

// Artifact is one file of an image.
type Artifact struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Stage is one build stage's record.
type Stage struct {
	Name    string  `json:"name"`
	Key     string  `json:"key"`
	Cached  bool    `json:"cached"`
	Seconds float64 `json:"seconds"`
}

// OverlayFile is one file an overlay placed in the image.
type OverlayFile struct {
	Overlay string `json:"overlay"`
	Path    string `json:"path"`
	Mode    string `json:"mode"` // octal, e.g. "0600"
	UID     int    `json:"uid"`
	GID     int    `json:"gid"`
	SHA256  string `json:"sha256,omitempty"` // empty for directories and symlinks
	Link    string `json:"link,omitempty"`
}

// ComputeID derives the image ID from its artifacts' hashes: the same bytes
// always give the same ID, so an unchanged rebuild is recognisable.
func (m *Manifest) ComputeID() string {
	names := make([]string, 0, len(m.Artifacts))
	for n := range m.Artifacts {
		names = append(names, n)
	}
	sort.Strings(names)
	h := sha256.New()
	for _, n := range names {
		fmt.Fprintf(h, "%s %s\n", n, m.Artifacts[n].SHA256)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// HashFile returns the size and sha256 of a file.
func HashFile(path string) (Artifact, error) {
	f, err := os.Open(path)
	if err != nil {
		return Artifact{}, fmt.Errorf("hash %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return Artifact{}, fmt.Errorf("hash %s: %w", path, err)
	}
	return Artifact{Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// Read loads the manifest of the image in dir.
func Read(dir string) (*Manifest, error) {
	data, err := os.ReadFile(filepath.Join(dir, FileName))
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("parse %s: %w", filepath.Join(dir, FileName), err)
	}
	return &m, nil
}

// Write stores the manifest in dir atomically.
func (m *Manifest) Write(dir string) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("encode manifest: %w", err)
	}
	return atomicfile.WriteFile(filepath.Join(dir, FileName), append(data, '\n'), 0o644)
}

// Size is the total size of the image's artifacts in bytes.
func (m *Manifest) Size() int64 {
	var n int64
	for _, a := range m.Artifacts {
		n += a.Size
	}
	return n
}
