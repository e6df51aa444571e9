// Package atomicfile writes files so that readers see either the old content
// or the new, never a half-written file: temp file in the same directory,
// fsync, rename, fsync of the directory.
package atomicfile

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// WriteFile atomically replaces path with data, created with perm.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	return Write(path, perm, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// Write atomically replaces path with whatever fill writes.
func Write(path string, perm os.FileMode, fill func(io.Writer) error) (err error) {
	return write(path, perm, fill, false)
}

// WriteNew is WriteFile that never replaces: if path exists (even when it
// appears after the check, from another writer) it fails with an error
// matching fs.ErrExist and leaves path as it was. The file appears whole
// (a hard link of the synced temp file), never half-written.
func WriteNew(path string, data []byte, perm os.FileMode) error {
	return write(path, perm, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	}, true)
}

func write(path string, perm os.FileMode, fill func(io.Writer) error, noClobber bool) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create temp file for %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err = fill(f); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if noClobber {
		// link(2) fails with EEXIST instead of replacing: no window between
		// a check and the rename.
		if err = os.Link(tmp, path); err != nil {
			return fmt.Errorf("create %s: %w", path, err)
		}
		os.Remove(tmp)
		return SyncDir(dir)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s into place: %w", path, err)
	}
	return SyncDir(dir)
}

// SyncDir fsyncs a directory so a rename inside it survives a crash.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}

// Copy atomically replaces dst with a copy of src, created with perm. A
// symlink at dst is replaced, never written through.
func Copy(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer in.Close()
	return Write(dst, perm, func(w io.Writer) error {
		_, err := io.Copy(w, in)
		return err
	})
}
