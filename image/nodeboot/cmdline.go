// Package nodeboot is the node side of herd's stateless boot path, run by the
// herd-boot agent inside the initramfs: it reads the herd.* kernel
// arguments, picks and prepares the cache SSD, fetches or finds the root
// image by its sha256, verifies it, mounts it read-only under a tmpfs
// overlay and reports each stage to the herd server.
package nodeboot

import (
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/herdlab/herd/image/verity"
)

// Params are the herd.* arguments of the boot contract (HACKING.md).
type Params struct {
	Image  string // herd.image: URL of rootfs.squashfs
	SHA256 string // herd.sha256: lower-case hex sha256 of the image
	ID     string // herd.id: image id (for events)
	Node   string // herd.node: node name
	Server string // herd.server: base URL, events go to <server>/events
	Cache  string // herd.cache: auto | none | /dev/...
	Keep   int    // herd.keep: cached images to keep (>= 1)
	// Verity (herd.verity) is the image's dm-verity root hash and data
	// block count; nil for images built without a hash tree.
	Verity *verity.Params
	// Index (herd.index) is the URL of the image's chunk index: with it a
	// node that caches an earlier image fetches only the chunks it lacks.
	Index string
	// IndexSHA256 (herd.index_sha256) is the sha256 of that index. With
	// it the index is trusted once it matches, and so is an image assembled
	// from chunks that each match it: no pass over the whole file follows.
	// Without it (an older server) the assembled file is hashed whole.
	IndexSHA256 string
}

// DefaultKeep is used when herd.keep is absent.
const DefaultKeep = 2

// ReadCmdline parses /proc/cmdline (or another file, for tests).
func ReadCmdline(path string) (*Params, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read kernel command line: %w", err)
	}
	p, err := ParseCmdline(string(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// ParseCmdline extracts and validates the herd.* arguments of a kernel
// command line; errors name the argument and what a valid value looks like.
func ParseCmdline(line string) (*Params, error) {
	p := &Params{Cache: "auto", Keep: DefaultKeep}
	seen := map[string]bool{}
	for _, f := range splitCmdline(line) {
		k, v, ok := strings.Cut(f, "=")
		if !strings.HasPrefix(k, "herd.") {
			continue
		}
		if !ok {
			return nil, fmt.Errorf("kernel argument %s has no value (want %s=VALUE)", k, k)
		}
		seen[k] = true
		switch k {
		case "herd.image":
			p.Image = v
		case "herd.sha256":
			p.SHA256 = strings.ToLower(v)
		case "herd.id":
			p.ID = v
		case "herd.node":
			p.Node = v
		case "herd.server":
			p.Server = strings.TrimRight(v, "/")
		case "herd.cache":
			p.Cache = v
		case "herd.verity":
			v, err := verity.Parse(v)
			if err != nil {
				return nil, fmt.Errorf("kernel argument herd.verity: %w", err)
			}
			p.Verity = v
		case "herd.index":
			if err := checkURL(k, v); err != nil {
				return nil, err
			}
			p.Index = v
		case "herd.index_sha256":
			p.IndexSHA256 = strings.ToLower(v)
		case "herd.keep":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return nil, fmt.Errorf("kernel argument herd.keep=%q: want a whole number >= 1", v)
			}
			p.Keep = n
		default:
			// Unknown herd.* arguments are ignored so that an older agent
			// boots with a newer server's command line.
		}
	}
	for _, req := range []string{"herd.image", "herd.sha256"} {
		if !seen[req] {
			return nil, fmt.Errorf("kernel argument %s is missing (the server's iPXE script sets it; see HACKING.md boot contract)", req)
		}
	}
	if err := checkURL("herd.image", p.Image); err != nil {
		return nil, err
	}
	if p.Server != "" {
		if err := checkURL("herd.server", p.Server); err != nil {
			return nil, err
		}
	}
	if err := checkSHA256("herd.sha256", p.SHA256); err != nil {
		return nil, err
	}
	if p.IndexSHA256 != "" {
		if err := checkSHA256("herd.index_sha256", p.IndexSHA256); err != nil {
			return nil, err
		}
	}
	switch {
	case p.Cache == "auto", p.Cache == "none":
	case strings.HasPrefix(p.Cache, "/dev/"):
	default:
		return nil, fmt.Errorf("kernel argument herd.cache=%q: want auto, none or a /dev/disk/by-id/... path", p.Cache)
	}
	return p, nil
}

// checkSHA256 errors unless v is a sha256 in hex (64 digits).
func checkSHA256(arg, v string) error {
	if b, err := hex.DecodeString(v); err != nil || len(b) != 32 {
		return fmt.Errorf("kernel argument %s=%q: want 64 hex digits", arg, v)
	}
	return nil
}

func checkURL(arg, v string) error {
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("kernel argument %s=%q: want an http:// URL", arg, v)
	}
	return nil
}

// splitCmdline splits on spaces, keeping double-quoted values together as
// the kernel does (param="a b").
func splitCmdline(line string) []string {
	var out []string
	var cur strings.Builder
	inQuote := false
	for _, r := range line {
		switch {
		case r == '"':
			inQuote = !inQuote
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}
