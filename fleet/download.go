package fleet

import (
	"errors"
	"path/filepath"
	"sort"

	"github.com/herdlab/herd/image/chunks"
	"github.com/herdlab/herd/image/diff"
	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/pxe/inventory"
)

// How a node gets an image's root file system at its next boot
// (Download.How).
const (
	FetchCached = "cached" // on its SSD already: nothing
	FetchDelta  = "delta"  // the chunks its cached images lack (image/chunks)
	FetchWhole  = "whole"  // all of it: no cache SSD, or no cached image to build from
)

// Download is what a node's next boot of an image downloads, from the
// cache its last "up" event reported and the chunk indexes of the images
// in the store. A cached image the store no longer holds cannot be
// counted as a seed, so Bytes is an upper bound. Kernel and initrd come
// on every boot (BootFiles), whatever the cache holds.
type Download struct {
	Image     string  `json:"image"`
	How       string  `json:"how"`
	Bytes     int64   `json:"bytes"`      // of the root image
	ImageSize int64   `json:"image_size"` // the root image's size
	Fraction  float64 `json:"fraction"`   // Bytes / ImageSize
	BootFiles int64   `json:"boot_files"` // kernel + initrd
}

// Planner answers Download questions against one store; it reads each
// image's chunk index at most once.
type Planner struct {
	st    *store.Store
	bySHA map[string]store.Image // rootfs sha256 → image
	idx   map[string]*chunks.Index
}

// NewPlanner lists st's images for Download.
func NewPlanner(st *store.Store) (*Planner, error) {
	p := &Planner{st: st, idx: map[string]*chunks.Index{}}
	if err := p.Refresh(); err != nil {
		return nil, err
	}
	return p, nil
}

// Refresh lists the store's images again (one published or removed since);
// chunk indexes already read are kept for the images still listed, as an
// image ID's files never change. A long-lived reader (the dashboard)
// refreshes before each answer instead of reading every index again.
func (p *Planner) Refresh() error {
	imgs, err := p.st.List()
	if err != nil {
		return err
	}
	bySHA, ids := map[string]store.Image{}, map[string]bool{}
	for _, im := range imgs {
		ids[im.ID] = true
		if a, ok := im.Manifest.Artifacts[manifest.Rootfs]; ok && a.SHA256 != "" {
			bySHA[a.SHA256] = im
		}
	}
	for id := range p.idx {
		if !ids[id] {
			delete(p.idx, id)
		}
	}
	p.bySHA = bySHA
	return nil
}

// index is image im's chunk index, nil when it has none.
func (p *Planner) index(im store.Image) *chunks.Index {
	if x, ok := p.idx[im.ID]; ok {
		return x
	}
	var x *chunks.Index
	if im.Manifest.Chunks != nil {
		x, _ = chunks.ReadIndexFile(filepath.Join(im.Dir, chunks.IndexName))
	}
	p.idx[im.ID] = x
	return x
}

// ErrNoCacheReport means the node never reported its cache (an older agent).
var ErrNoCacheReport = errors.New("the node has not reported its image cache")

// Download is what a node with cache c downloads to boot image id (a
// store ID or unique prefix).
func (p *Planner) Download(c *inventory.Cache, id string) (*Download, error) {
	im, err := p.st.Get(id)
	if err != nil {
		return nil, err
	}
	m := im.Manifest
	root := m.Artifacts[manifest.Rootfs]
	d := &Download{Image: im.ID, ImageSize: root.Size,
		BootFiles: m.Artifacts[manifest.Kernel].Size + m.Artifacts[manifest.Initrd].Size}
	if c == nil {
		return nil, ErrNoCacheReport
	}
	if !c.Disk {
		d.How, d.Bytes = FetchWhole, root.Size
	} else {
		var seeds []*chunks.Index
		for _, sha := range c.Images {
			if sha == root.SHA256 {
				d.How = FetchCached
				break
			}
			if s, ok := p.bySHA[sha]; ok {
				if x := p.index(s); x != nil {
					seeds = append(seeds, x)
				}
			}
		}
		want := p.index(*im)
		switch {
		case d.How == FetchCached:
		case want == nil || len(seeds) == 0:
			d.How, d.Bytes = FetchWhole, root.Size
		default:
			d.How = FetchDelta
			d.Bytes, _ = chunks.Missing(want, seeds...)
		}
	}
	if d.ImageSize > 0 {
		d.Fraction = float64(d.Bytes) / float64(d.ImageSize)
	}
	return d, nil
}

// AddNextDownload fills in each node's NextDownload: what its next boot
// downloads, for the image it would boot (its pin, else current; none
// when no image is current), from the cache its last up event reported.
func AddNextDownload(nodes []Node, p *Planner, current string) {
	for i := range nodes {
		v := &nodes[i]
		target := v.Image
		if target == "" {
			target = current
		}
		if target == "" || v.Seen == nil || v.Seen.Cache == nil {
			continue
		}
		if d, err := p.Download(v.Seen.Cache, target); err == nil {
			v.NextDownload = d
		}
	}
}

// NodeDownloads is, for each node that reported its cache (nodes as
// Nodes returns them), what its next boot of image id downloads, sorted by
// name.
func NodeDownloads(nodes []Node, p *Planner, id string) []diff.NodeDownload {
	var out []diff.NodeDownload
	for _, v := range nodes {
		if v.Seen == nil || v.Seen.Cache == nil {
			continue
		}
		d, err := p.Download(v.Seen.Cache, id)
		if err != nil {
			continue
		}
		name := v.Name
		if name == "" {
			name = v.MAC
		}
		out = append(out, diff.NodeDownload{Node: name, How: d.How, Bytes: d.Bytes, Fraction: d.Fraction})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}
