// Package diff compares two image manifests so an admin sees exactly what
// a new image changes before nodes take it: packages added, removed and
// changed, kernel and NVIDIA driver, and the overlay files that differ.
package diff

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/herdlab/herd/image/chunks"
	"github.com/herdlab/herd/image/manifest"
)

// Package is one package and its version.
type Package struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// Change is a value that differs between the two images.
type Change struct {
	Name string `json:"name,omitempty"`
	Old  string `json:"old"`
	New  string `json:"new"`
}

// OverlayChange is an overlay file present in both images that differs.
type OverlayChange struct {
	Path string               `json:"path"`
	Old  manifest.OverlayFile `json:"old"`
	New  manifest.OverlayFile `json:"new"`
	// What names the differing attributes: content, mode, owner, link, overlay.
	What []string `json:"what"`
}

// Result is the difference from image A to image B.
type Result struct {
	A       string    `json:"a"`
	B       string    `json:"b"`
	Kernel  *Change   `json:"kernel,omitempty"`
	NVIDIA  *Change   `json:"nvidia,omitempty"`
	Recipe  *Change   `json:"recipe,omitempty"`
	Suite   *Change   `json:"suite,omitempty"`
	Added   []Package `json:"packages_added"`
	Removed []Package `json:"packages_removed"`
	Changed []Change  `json:"packages_changed"`

	OverlaysAdded   []manifest.OverlayFile `json:"overlays_added"`
	OverlaysRemoved []manifest.OverlayFile `json:"overlays_removed"`
	OverlaysChanged []OverlayChange        `json:"overlays_changed"`

	// Size is what a node downloads: the artifacts' total bytes, old and
	// new, so a recipe change's growth is seen before nodes take it.
	Size SizeChange `json:"size"`

	// Download is what a node caching A fetches to boot B (nil when an
	// image has no chunk index); set by the caller, which reads the files.
	Download *chunks.Transfer `json:"download,omitempty"`

	// Nodes is, per node that reported its image cache, what its next
	// boot of B downloads of the root image (set by the caller: fleet).
	Nodes []NodeDownload `json:"nodes,omitempty"`
}

// NodeDownload is what one node downloads of B's root image, given the
// images its last up event said it caches.
type NodeDownload struct {
	Node     string  `json:"node"`
	How      string  `json:"how"` // cached, delta or whole
	Bytes    int64   `json:"bytes"`
	Fraction float64 `json:"fraction"`
}

// SizeChange is the images' artifact bytes (kernel, initrd, root image).
type SizeChange struct {
	Old   int64 `json:"old"`
	New   int64 `json:"new"`
	Delta int64 `json:"delta"`
}

// Empty reports whether the two images differ in nothing Diff compares.
func (r *Result) Empty() bool {
	return r.Kernel == nil && r.NVIDIA == nil && r.Recipe == nil && r.Suite == nil &&
		len(r.Added)+len(r.Removed)+len(r.Changed)+len(r.OverlaysAdded)+len(r.OverlaysRemoved)+len(r.OverlaysChanged) == 0
}

func change(name, a, b string) *Change {
	if a == b {
		return nil
	}
	return &Change{Name: name, Old: a, New: b}
}

// Diff compares image a with image b (a is the old one).
func Diff(a, b *manifest.Manifest) *Result {
	r := &Result{A: a.ID, B: b.ID, Added: []Package{}, Removed: []Package{}, Changed: []Change{},
		OverlaysAdded: []manifest.OverlayFile{}, OverlaysRemoved: []manifest.OverlayFile{}, OverlaysChanged: []OverlayChange{}}
	r.Kernel = change("kernel", a.KernelABI, b.KernelABI)
	r.NVIDIA = change("nvidia", a.NVIDIA, b.NVIDIA)
	r.Recipe = change("recipe", a.Recipe, b.Recipe)
	r.Suite = change("suite", a.Distribution+" "+a.Suite, b.Distribution+" "+b.Suite)
	r.Size = SizeChange{Old: a.Size(), New: b.Size(), Delta: b.Size() - a.Size()}

	for _, n := range sortedKeys(a.Packages, b.Packages) {
		va, ina := a.Packages[n]
		vb, inb := b.Packages[n]
		switch {
		case !ina:
			r.Added = append(r.Added, Package{n, vb})
		case !inb:
			r.Removed = append(r.Removed, Package{n, va})
		case va != vb:
			r.Changed = append(r.Changed, Change{Name: n, Old: va, New: vb})
		}
	}

	// Two overlays may write the same path; the later one wins in the
	// image, so index by path keeping the last entry.
	oa, ob := byPath(a.Overlays), byPath(b.Overlays)
	paths := make([]string, 0, len(oa)+len(ob))
	for p := range oa {
		paths = append(paths, p)
	}
	for p := range ob {
		if _, ok := oa[p]; !ok {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	for _, p := range paths {
		fa, ina := oa[p]
		fb, inb := ob[p]
		switch {
		case !ina:
			r.OverlaysAdded = append(r.OverlaysAdded, fb)
		case !inb:
			r.OverlaysRemoved = append(r.OverlaysRemoved, fa)
		default:
			var what []string
			if fa.SHA256 != fb.SHA256 {
				what = append(what, "content")
			}
			if fa.Mode != fb.Mode {
				what = append(what, "mode")
			}
			if fa.UID != fb.UID || fa.GID != fb.GID {
				what = append(what, "owner")
			}
			if fa.Link != fb.Link {
				what = append(what, "link")
			}
			if fa.Overlay != fb.Overlay {
				what = append(what, "overlay")
			}
			if len(what) > 0 {
				r.OverlaysChanged = append(r.OverlaysChanged, OverlayChange{Path: p, Old: fa, New: fb, What: what})
			}
		}
	}
	return r
}

func byPath(fs []manifest.OverlayFile) map[string]manifest.OverlayFile {
	m := make(map[string]manifest.OverlayFile, len(fs))
	for _, f := range fs {
		m[f.Path] = f
	}
	return m
}

func sortedKeys(a, b map[string]string) []string {
	keys := make([]string, 0, len(a)+len(b))
	for k := range a {
		keys = append(keys, k)
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// WriteText prints the difference for a terminal, one line per change.
func (r *Result) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "image %s -> %s\n", r.A, r.B)
	if r.Empty() {
		b.WriteString("no differences in packages, kernel, driver or overlay files\n")
	}
	for _, c := range []*Change{r.Recipe, r.Suite, r.Kernel, r.NVIDIA} {
		if c != nil {
			fmt.Fprintf(&b, "%-8s %s -> %s\n", c.Name+":", dash(c.Old), dash(c.New))
		}
	}
	if s := r.Size; s.Delta != 0 {
		pct := ""
		if s.Old > 0 {
			pct = fmt.Sprintf(", %+.1f%%", 100*float64(s.Delta)/float64(s.Old))
		}
		fmt.Fprintf(&b, "size:    %s -> %s (%s%s)\n", mib(s.Old), mib(s.New), signedMiB(s.Delta), pct)
	}
	if n := len(r.Added) + len(r.Removed) + len(r.Changed); n > 0 {
		fmt.Fprintf(&b, "packages: %d added, %d removed, %d changed\n", len(r.Added), len(r.Removed), len(r.Changed))
	}
	for _, p := range r.Added {
		fmt.Fprintf(&b, "  + %s %s\n", p.Name, p.Version)
	}
	for _, p := range r.Removed {
		fmt.Fprintf(&b, "  - %s %s\n", p.Name, p.Version)
	}
	for _, c := range r.Changed {
		fmt.Fprintf(&b, "  ~ %s %s -> %s\n", c.Name, c.Old, c.New)
	}
	if n := len(r.OverlaysAdded) + len(r.OverlaysRemoved) + len(r.OverlaysChanged); n > 0 {
		fmt.Fprintf(&b, "overlay files: %d added, %d removed, %d changed\n", len(r.OverlaysAdded), len(r.OverlaysRemoved), len(r.OverlaysChanged))
	}
	for _, f := range r.OverlaysAdded {
		fmt.Fprintf(&b, "  + %s (%s)\n", f.Path, f.Overlay)
	}
	for _, f := range r.OverlaysRemoved {
		fmt.Fprintf(&b, "  - %s (%s)\n", f.Path, f.Overlay)
	}
	for _, c := range r.OverlaysChanged {
		fmt.Fprintf(&b, "  ~ %s: %s\n", c.Path, strings.Join(c.What, ", "))
	}
	if d := r.Download; d != nil {
		fmt.Fprintf(&b, "download: a node caching %s fetches %.1f MiB of %s's %.1f MiB (%.2f%%) in %d chunks\n",
			r.A, float64(d.Bytes)/(1<<20), r.B, float64(d.ImageSize)/(1<<20), 100*d.Fraction, d.Chunks)
	}
	if len(r.Nodes) > 0 {
		fmt.Fprintf(&b, "next boot of %s, per node (root image; kernel and initrd come every boot):\n", r.B)
		for _, n := range r.Nodes {
			fmt.Fprintf(&b, "  %s: %.1f MiB (%.2f%%, %s)\n", n.Node, float64(n.Bytes)/(1<<20), 100*n.Fraction, n.How)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func signedMiB(n int64) string { return fmt.Sprintf("%+.1f MiB", float64(n)/(1<<20)) }

func dash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "(none)"
	}
	return s
}
