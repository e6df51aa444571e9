package overlays

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"

	"github.com/herdlab/herd/image/manifest"
)

// Set is a rendered list of system overlay files in the shape the image
// builder wants (image/build.OverlaySet): a manifest record and an Apply.
type Set []File

// Files describes every entry for the build's stage key and the manifest.
func (s Set) Files() []manifest.OverlayFile {
	out := make([]manifest.OverlayFile, 0, len(s))
	for _, f := range s {
		of := manifest.OverlayFile{Overlay: f.Overlay, Path: "/" + f.Path, Mode: OctalMode(f), UID: f.UID, GID: f.GID, Link: f.Link}
		if !f.Dir && f.Link == "" {
			sum := sha256.Sum256(f.Data)
			of.SHA256 = hex.EncodeToString(sum[:])
		}
		out = append(out, of)
	}
	return out
}

// Apply writes the set into an image tree.
func (s Set) Apply(root string) error { return Apply(s, root) }

// OctalMode renders a file's permission bits (with setuid/setgid/sticky)
// as "0644"-style octal, the form manifests and listings use.
func OctalMode(f File) string {
	m := uint32(f.Mode.Perm())
	if f.Mode&fs.ModeSetuid != 0 {
		m |= 0o4000
	}
	if f.Mode&fs.ModeSetgid != 0 {
		m |= 0o2000
	}
	if f.Mode&fs.ModeSticky != 0 {
		m |= 0o1000
	}
	return fmt.Sprintf("%04o", m)
}
