// Package verity describes the dm-verity hash tree herd appends to an
// image's rootfs.squashfs: the build makes it (veritysetup), the server puts
// its root hash on the node's kernel command line, and the node maps its
// cached copy through dm-verity so every block is checked when read instead
// of hashing the whole file at every boot.
//
// Format (fixed, so the command line needs only the root hash and the data
// block count): dm-verity hash type 1, sha256, 4096-byte data and hash
// blocks, no salt, no superblock; the hash tree starts right after the
// squashfs (which mksquashfs pads to 4096 bytes), in the same file.
package verity

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"

	"github.com/herdlab/herd/image/manifest"
)

// BlockSize is the data and hash block size of herd's verity trees.
const BlockSize = 4096

// Algorithm is the hash of herd's verity trees.
const Algorithm = "sha256"

// hashesPerBlock is how many sha256 digests one hash block holds.
const hashesPerBlock = BlockSize / 32

// Params is what a node needs to map an image through dm-verity: the root
// hash and the number of data blocks (the hash tree starts after them).
type Params struct {
	RootHash   string // 64 lower-case hex digits
	DataBlocks int64
}

// FromManifest returns the image's verity parameters, or nil when the
// image was built without a hash tree.
func FromManifest(m *manifest.Manifest) *Params {
	if m == nil || m.Verity == nil {
		return nil
	}
	return &Params{RootHash: m.Verity.RootHash, DataBlocks: m.Verity.DataBlocks}
}

// String is the herd.verity kernel argument's value: <root hash>:<data blocks>.
func (p Params) String() string {
	return p.RootHash + ":" + strconv.FormatInt(p.DataBlocks, 10)
}

// Parse reads a herd.verity value written by String.
func Parse(v string) (*Params, error) {
	h, n, ok := strings.Cut(v, ":")
	if !ok {
		return nil, fmt.Errorf("%q: want <root hash>:<data blocks>", v)
	}
	h = strings.ToLower(h)
	if b, err := hex.DecodeString(h); err != nil || len(b) != 32 {
		return nil, fmt.Errorf("%q: root hash %q is not 64 hex digits", v, h)
	}
	blocks, err := strconv.ParseInt(n, 10, 64)
	if err != nil || blocks < 1 || blocks > 1<<40 {
		return nil, fmt.Errorf("%q: data block count %q is not a whole number between 1 and 2^40", v, n)
	}
	return &Params{RootHash: h, DataBlocks: blocks}, nil
}

// HashOffset is the byte offset of the hash tree in the file.
func (p Params) HashOffset() int64 { return p.DataBlocks * BlockSize }

// FileSize is the exact size of an image file carrying data and tree.
func (p Params) FileSize() int64 { return p.HashOffset() + TreeBlocks(p.DataBlocks)*BlockSize }

// TreeBlocks is the number of hash blocks dm-verity's format gives a tree
// over n data blocks: every level but the top holds one digest per block
// of the level below, 128 to a block.
func TreeBlocks(n int64) int64 {
	var total int64
	for {
		n = (n + hashesPerBlock - 1) / hashesPerBlock
		total += n
		if n <= 1 {
			return total
		}
	}
}

// Table is the device-mapper table line (without start and length) that
// maps dev (data and hash tree in one device, "major:minor") through
// dm-verity; a block that does not match fails its read with EIO. opts
// are dm-verity's optional arguments (such as "try_verify_in_tasklet").
func (p Params) Table(dev string, opts ...string) string {
	t := fmt.Sprintf("1 %s %s %d %d %d %d %s %s -", dev, dev, BlockSize, BlockSize, p.DataBlocks, p.DataBlocks, Algorithm, p.RootHash)
	if len(opts) > 0 {
		t += fmt.Sprintf(" %d %s", len(opts), strings.Join(opts, " "))
	}
	return t
}

var rootHashRE = regexp.MustCompile(`(?m)^Root hash:\s*([0-9a-f]{64})\s*$`)

// Format appends a hash tree to the squashfs at path with veritysetup and
// returns the manifest's record of it. The file's size must be a multiple
// of BlockSize (mksquashfs pads to 4 KiB). No salt: the same squashfs
// always gets the same tree, so an unchanged rebuild keeps its image ID.
func Format(ctx context.Context, path string, log io.Writer) (*manifest.Verity, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("verity: %w", err)
	}
	if st.Size() == 0 || st.Size()%BlockSize != 0 {
		return nil, fmt.Errorf("verity: %s is %d bytes, not a whole number of %d-byte blocks (mksquashfs without -nopad pads it)", path, st.Size(), BlockSize)
	}
	blocks := st.Size() / BlockSize
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "veritysetup", "format", "--no-superblock",
		"--hash=sha256", "--data-block-size=4096", "--hash-block-size=4096", "--salt=-",
		"--data-blocks="+strconv.FormatInt(blocks, 10), "--hash-offset="+strconv.FormatInt(st.Size(), 10),
		path, path)
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return nil, fmt.Errorf("verity: veritysetup not found (Debian/Ubuntu package cryptsetup-bin): %w", err)
		}
		return nil, fmt.Errorf("verity: veritysetup format %s: %w: %s", path, err, strings.TrimSpace(out.String()))
	}
	if log != nil {
		log.Write(out.Bytes())
	}
	m := rootHashRE.FindSubmatch(out.Bytes())
	if m == nil {
		return nil, fmt.Errorf("verity: veritysetup printed no root hash: %s", strings.TrimSpace(out.String()))
	}
	p := Params{RootHash: string(m[1]), DataBlocks: blocks}
	st2, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("verity: %w", err)
	}
	if st2.Size() != p.FileSize() {
		return nil, fmt.Errorf("verity: %s is %d bytes after veritysetup, want %d (data %d + tree %d blocks)", path, st2.Size(), p.FileSize(), blocks, TreeBlocks(blocks))
	}
	return &manifest.Verity{RootHash: p.RootHash, DataBlocks: blocks, HashOffset: p.HashOffset(),
		Algorithm: Algorithm, BlockSize: BlockSize, Format: "dm-verity v1, no salt, no superblock, tree appended to " + manifest.Rootfs}, nil
}
