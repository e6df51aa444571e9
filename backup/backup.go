// Package backup writes one archive of everything in herd's state directory
// that cannot be rebuilt (node secrets and SSH host keys, enrolled node keys,
// inventory, leases, current and history, test records, and whatever else
// herd keeps there), and restores it onto an empty state directory.
//
// Left out are the entries listed in Rebuildable (image builds and their
// caches, staging, logs, archive keyrings re-fetched by fingerprint); image
// generations are left out too unless named, since they are large and a
// recipe rebuilds them. Anything else that appears in the state directory is
// included: a new kind of secret is backed up without changes here.
//
// Format: a gzip-compressed tar. The first entry is herd-backup.json
// (format, time, file count); every file carries its sha256 in a PAX record
// (HERD.sha256), which Restore checks before anything is put in place.
package backup

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/herdlab/herd/image/store"
)

// Rebuildable are the top-level state entries a backup leaves out.
var Rebuildable = []string{"images", "stages", "debs", "apt-lists", "keyrings", "tmp", "logs", "lock"}

// HeaderName is the archive's first entry.
const HeaderName = "herd-backup.json"

const (
	format    = 1
	shaRecord = "HERD.sha256"
)

// Header describes a backup archive.
type Header struct {
	Format  int       `json:"format"`
	Created time.Time `json:"created"`
	// Version is the herd that wrote it.
	Version string `json:"version"`
	// Images are the image generations included (images/<id>/).
	Images []string `json:"images,omitempty"`
}

// Options choose what goes beyond the secrets and records.
type Options struct {
	// Images are full image IDs whose generation directory is included.
	Images []string
	// Version is recorded in the header.
	Version string
}

// Summary says what an archive held.
type Summary struct {
	Files  int
	Bytes  int64
	Images []string
}

// Create writes the archive of state to w. It holds the image store's lock
// so no build, promote or gc changes current/history meanwhile; node and
// lease files are replaced atomically by their writers, so each is read whole.
func Create(ctx context.Context, state string, w io.Writer, opt Options) (*Summary, error) {
	if st, err := os.Stat(state); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("backup: state directory %s: %w", state, errOr(err, errors.New("not a directory")))
	}
	st, err := store.Open(state)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	unlock, err := st.Lock(ctx)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	defer unlock()

	skip := map[string]bool{}
	for _, r := range Rebuildable {
		skip[r] = true
	}
	var files []string
	err = filepath.WalkDir(state, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(state, p)
		if rel == "." {
			return nil
		}
		if top, _, _ := strings.Cut(filepath.ToSlash(rel), "/"); skip[top] {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		files = append(files, rel)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("backup: walk %s: %w", state, err)
	}
	if len(opt.Images) > 0 {
		files = append(files, "images")
	}
	for _, id := range opt.Images {
		dir := filepath.Join("images", id)
		if _, err := os.Stat(filepath.Join(state, dir, "manifest.json")); err != nil {
			return nil, fmt.Errorf("backup: image %s: %w", id, err)
		}
		files = append(files, dir)
		ents, err := os.ReadDir(filepath.Join(state, dir))
		if err != nil {
			return nil, fmt.Errorf("backup: image %s: %w", id, err)
		}
		for _, e := range ents {
			files = append(files, filepath.Join(dir, e.Name()))
		}
	}
	sort.Strings(files)

	gz := gzip.NewWriter(w)
	tw := tar.NewWriter(gz)
	hdr, _ := json.MarshalIndent(Header{Format: format, Created: time.Now().UTC(), Version: opt.Version, Images: opt.Images}, "", "  ")
	if err := tw.WriteHeader(&tar.Header{Name: HeaderName, Mode: 0o600, Size: int64(len(hdr)), ModTime: time.Now(), Format: tar.FormatPAX}); err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	if _, err := tw.Write(hdr); err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	sum := &Summary{Images: opt.Images}
	for _, rel := range files {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n, err := addFile(tw, state, rel)
		if err != nil {
			return nil, fmt.Errorf("backup: %s: %w", rel, err)
		}
		if n >= 0 {
			sum.Files++
			sum.Bytes += n
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	if err := gz.Close(); err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	return sum, nil
}

// addFile writes one directory (returns -1) or regular file (its size).
// Sockets, devices and symlinks have no place in a state directory: refused.
func addFile(tw *tar.Writer, state, rel string) (int64, error) {
	p := filepath.Join(state, rel)
	fi, err := os.Lstat(p)
	if err != nil {
		return 0, err
	}
	h, err := tar.FileInfoHeader(fi, "")
	if err != nil {
		return 0, err
	}
	h.Name = filepath.ToSlash(rel)
	h.Uname, h.Gname = "", ""
	h.Format = tar.FormatPAX
	switch {
	case fi.IsDir():
		h.Name += "/"
		return -1, tw.WriteHeader(h)
	case fi.Mode().IsRegular():
	default:
		return 0, fmt.Errorf("%s is not a regular file or directory (%s)", p, fi.Mode().Type())
	}
	f, err := os.Open(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	// Hash first (the PAX record precedes the data), then copy exactly
	// the hashed bytes.
	hs := sha256.New()
	n, err := io.Copy(hs, f)
	if err != nil {
		return 0, err
	}
	h.Size = n
	h.PAXRecords = map[string]string{shaRecord: hex.EncodeToString(hs.Sum(nil))}
	if err := tw.WriteHeader(h); err != nil {
		return 0, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}
	if _, err := io.CopyN(tw, f, n); err != nil {
		return 0, fmt.Errorf("%s changed while it was read: %w", p, err)
	}
	return n, nil
}

// Restore unpacks an archive made by Create into state, which must not exist
// or be empty. It unpacks into a sibling directory, checks every file's
// sha256 and refuses anything that is not a plain file or directory inside
// the tree, and only then renames the result into place: a bad archive
// leaves state as it was.
func Restore(r io.Reader, state string) (*Summary, error) {
	state = filepath.Clean(state)
	if ents, err := os.ReadDir(state); err == nil && len(ents) > 0 {
		return nil, fmt.Errorf("restore: %s is not empty (restore only onto an empty or missing state directory)", state)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("restore: %w", err)
	}
	parent := filepath.Dir(state)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(state)+".restore-")
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	defer os.RemoveAll(tmp)
	sum, err := unpack(r, tmp)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if err := syncDir(tmp); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	// rename(2) replaces an empty directory.
	if err := os.Rename(tmp, state); err != nil {
		return nil, fmt.Errorf("restore: put %s in place: %w", state, err)
	}
	if err := fsync(parent); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	return sum, nil
}

func unpack(r io.Reader, dst string) (*Summary, error) {
	gz, err := gzip.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("not a herd backup (gzip): %w", err)
	}
	tr := tar.NewReader(gz)
	h, err := tr.Next()
	if err != nil || h.Name != HeaderName {
		return nil, fmt.Errorf("not a herd backup: first entry is not %s", HeaderName)
	}
	var head Header
	if err := json.NewDecoder(io.LimitReader(tr, 1<<20)).Decode(&head); err != nil {
		return nil, fmt.Errorf("%s: %w", HeaderName, err)
	}
	if head.Format != format {
		return nil, fmt.Errorf("backup format %d, this herd reads format %d", head.Format, format)
	}
	sum := &Summary{Images: head.Images}
	seen := map[string]bool{}
	dirPerm := map[string]os.FileMode{} // applied last, so a read-only directory still gets its files
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("archive: %w", err)
		}
		name := strings.TrimSuffix(h.Name, "/")
		if !filepath.IsLocal(name) || name != path.Clean(name) || name == HeaderName || seen[name] {
			return nil, fmt.Errorf("archive entry %q: not a plain relative path, or repeated", h.Name)
		}
		seen[name] = true
		p := filepath.Join(dst, filepath.FromSlash(name))
		perm := os.FileMode(h.Mode) & 0o777
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o700); err != nil {
				return nil, err
			}
			dirPerm[p] = perm
		case tar.TypeReg:
			if err := writeFile(tr, h, p, perm); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			sum.Files++
			sum.Bytes += h.Size
		default:
			return nil, fmt.Errorf("archive entry %q: type %q is not a file or directory", h.Name, h.Typeflag)
		}
		if os.Geteuid() == 0 {
			if err := os.Lchown(p, h.Uid, h.Gid); err != nil {
				return nil, err
			}
		}
	}
	for p, perm := range dirPerm {
		if err := os.Chmod(p, perm); err != nil {
			return nil, err
		}
	}
	return sum, nil
}

// writeFile writes one entry and checks it against its recorded sha256.
func writeFile(tr *tar.Reader, h *tar.Header, p string, perm os.FileMode) error {
	want := h.PAXRecords[shaRecord]
	if want == "" {
		return errors.New("no sha256 recorded")
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	hs := sha256.New()
	if _, err := io.Copy(io.MultiWriter(f, hs), tr); err != nil {
		return err
	}
	if got := hex.EncodeToString(hs.Sum(nil)); got != want {
		return fmt.Errorf("sha256 %s, archive says %s (damaged backup)", got, want)
	}
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return os.Chtimes(p, h.ModTime, h.ModTime)
}

// syncDir fsyncs every directory under root (file data was synced as written).
func syncDir(root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		return fsync(p)
	})
}

// fsync syncs one file or directory.
func fsync(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func errOr(err, alt error) error {
	if err != nil {
		return err
	}
	return alt
}
