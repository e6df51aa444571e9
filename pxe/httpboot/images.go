package httpboot

import (
	"fmt"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/store"
)

// StateImages is the image store of a state directory seen read-only
// (image/store's ReadOnly view: nothing is created or cleaned).
type StateImages struct{ StateDir string }

// Current returns the current image ID ("" if none).
func (si StateImages) Current() (string, error) {
	return store.ReadOnly(si.StateDir).Current()
}

// Resolve finds a published image by ID or unique prefix. An image whose
// manifest does not carry its own ID is refused: its URL would not name
// its content.
func (si StateImages) Resolve(id string) (string, string, *manifest.Manifest, error) {
	if !idRe.MatchString(id) {
		return "", "", nil, fmt.Errorf("image %q: not an image ID (hex digits)", id)
	}
	im, err := store.ReadOnly(si.StateDir).Get(id)
	if err != nil {
		return "", "", nil, err
	}
	if im.Manifest.ID != im.ID || im.Manifest.ComputeID() != im.ID {
		return "", "", nil, fmt.Errorf("image %s: manifest ID %q does not match its directory", im.ID, im.Manifest.ID)
	}
	return im.ID, im.Dir, im.Manifest, nil
}
