package httpboot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/herdlab/herd/image/manifest"
)

// StateImages reads published images straight from the state directory
// layout of HACKING.md (<state>/current, <state>/images/<id>/manifest.json),
// read-only. An image counts as published only when its directory is named
// by the ID its manifest computes (Publish renames it there last).
type StateImages struct{ StateDir string }

// Current returns the ID in <state>/current ("" if none).
func (si StateImages) Current() (string, error) {
	b, err := os.ReadFile(filepath.Join(si.StateDir, "current"))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("current image: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Resolve finds a published image by ID or unique prefix.
func (si StateImages) Resolve(id string) (string, string, *manifest.Manifest, error) {
	if !idRe.MatchString(id) {
		return "", "", nil, fmt.Errorf("image %q: not an image ID (hex digits)", id)
	}
	root := filepath.Join(si.StateDir, "images")
	ents, err := os.ReadDir(root)
	if err != nil {
		return "", "", nil, fmt.Errorf("image store %s: %w", root, err)
	}
	var match []string
	for _, e := range ents {
		if e.IsDir() && strings.HasPrefix(e.Name(), id) {
			if e.Name() == id {
				match = []string{id}
				break
			}
			match = append(match, e.Name())
		}
	}
	switch len(match) {
	case 0:
		return "", "", nil, fmt.Errorf("image %s: not in the store", id)
	case 1:
	default:
		return "", "", nil, fmt.Errorf("image %s: prefix matches %d images", id, len(match))
	}
	dir := filepath.Join(root, match[0])
	m, err := manifest.Read(dir)
	if err != nil {
		return "", "", nil, fmt.Errorf("image %s: %w", match[0], err)
	}
	if m.ID != match[0] || m.ComputeID() != m.ID {
		return "", "", nil, fmt.Errorf("image %s: manifest ID %q does not match its directory", match[0], m.ID)
	}
	return match[0], dir, m, nil
}
