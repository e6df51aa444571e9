package overlays

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"sort"
)

// Apply writes files into the tree at root (an image chroot, or a staging
// directory the server packs into a cpio). Each file is written to a temp
// name, given its owner and mode, fsynced and renamed into place, so a reader
// never sees half a file. Existing files and symlinks at the same path are
// replaced; a directory is never replaced by a file. All paths resolve
// inside root: a symlink in the tree (e.g. an absolute one in an image)
// cannot make Apply write outside it. Missing parents are created 0755 root.
func Apply(files []File, root string) error {
	r, err := os.OpenRoot(root)
	if err != nil {
		return fmt.Errorf("apply overlays: %w", err)
	}
	defer r.Close()
	// Directories first (shallow to deep), so their modes hold before files
	// land in them; then files and links.
	ordered := append([]File(nil), files...)
	sort.SliceStable(ordered, func(i, j int) bool {
		if ordered[i].Dir != ordered[j].Dir {
			return ordered[i].Dir
		}
		return ordered[i].Path < ordered[j].Path
	})
	for _, f := range ordered {
		if err := checkPath(f.Path); err != nil {
			return fmt.Errorf("apply %s: %w", f.Overlay, err)
		}
		if err := applyOne(r, f); err != nil {
			return fmt.Errorf("apply %s /%s into %s: %w", f.Overlay, f.Path, root, err)
		}
	}
	return nil
}

func applyOne(r *os.Root, f File) error {
	if dir := path.Dir(f.Path); dir != "." {
		if err := r.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	switch {
	case f.Dir:
		if err := r.Mkdir(f.Path, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		fi, err := r.Lstat(f.Path)
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			return fmt.Errorf("exists and is not a directory")
		}
		if err := r.Lchown(f.Path, f.UID, f.GID); err != nil {
			return err
		}
		return r.Chmod(f.Path, f.Mode)
	case f.Link != "":
		if err := refuseDir(r, f.Path); err != nil {
			return err
		}
		tmp := tempName(f.Path)
		if err := r.Symlink(f.Link, tmp); err != nil {
			return err
		}
		if err := r.Lchown(tmp, f.UID, f.GID); err != nil {
			r.Remove(tmp)
			return err
		}
		if err := r.Rename(tmp, f.Path); err != nil {
			r.Remove(tmp)
			return err
		}
		return syncDir(r, path.Dir(f.Path))
	default:
		if err := refuseDir(r, f.Path); err != nil {
			return err
		}
		return writeFile(r, f)
	}
}

// refuseDir keeps Apply from replacing a directory with a file or link.
func refuseDir(r *os.Root, p string) error {
	fi, err := r.Lstat(p)
	if err == nil && fi.IsDir() {
		return fmt.Errorf("exists as a directory")
	}
	return nil
}

func writeFile(r *os.Root, f File) (err error) {
	tmp := tempName(f.Path)
	w, err := r.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			w.Close()
			r.Remove(tmp)
		}
	}()
	if _, err = w.Write(f.Data); err != nil {
		return err
	}
	// chown before chmod: chown clears setuid/setgid bits.
	if err = w.Chown(f.UID, f.GID); err != nil {
		return err
	}
	if err = w.Chmod(f.Mode); err != nil {
		return err
	}
	if err = w.Sync(); err != nil {
		return err
	}
	if err = w.Close(); err != nil {
		return err
	}
	if err = r.Rename(tmp, f.Path); err != nil {
		return err
	}
	return syncDir(r, path.Dir(f.Path))
}

func syncDir(r *os.Root, dir string) error {
	d, err := r.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func tempName(p string) string {
	var b [6]byte
	rand.Read(b[:])
	return path.Join(path.Dir(p), "."+path.Base(p)+".herd-"+hex.EncodeToString(b[:]))
}
