package inspect

import (
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"path"
	"strings"
	"sync"

	"github.com/diskfs/go-diskfs/filesystem/squashfs"
)

// go-diskfs looks paths up component by component without following
// symbolic links (and reads link targets only as written), so every path is
// resolved here first: absolute links restart at the image's root,
// relative ones continue from the link's directory. Paths are absolute
// inside the image ("/etc/os-release"); go-diskfs wants them without the
// leading slash and "." for the root.

func fsPath(p string) string {
	p = strings.TrimPrefix(path.Clean("/"+p), "/")
	if p == "" {
		return "."
	}
	return p
}

// lstat finds the entry p without following a link in its last component.
func (im *Image) lstat(p string) (iofs.FileInfo, error) {
	p = path.Clean("/" + p)
	if p == "/" {
		return im.fs.Stat(".")
	}
	ents, err := im.fs.ReadDir(fsPath(path.Dir(p)))
	if err != nil {
		return nil, &iofs.PathError{Op: "lstat", Path: p, Err: iofs.ErrNotExist}
	}
	for _, e := range ents {
		if e.Name() == path.Base(p) {
			return e.Info()
		}
	}
	return nil, &iofs.PathError{Op: "lstat", Path: p, Err: iofs.ErrNotExist}
}

// Resolve follows every symbolic link in p and returns the real path.
func (im *Image) Resolve(p string) (string, error) {
	todo := splitPath(p)
	done := "/"
	hops := 0
	for len(todo) > 0 {
		name := todo[0]
		todo = todo[1:]
		switch name {
		case ".":
			continue
		case "..":
			done = path.Dir(done)
			continue
		}
		cand := path.Join(done, name)
		fi, err := im.lstat(cand)
		if err != nil {
			return "", &iofs.PathError{Op: "resolve", Path: p, Err: iofs.ErrNotExist}
		}
		if fi.Mode()&iofs.ModeSymlink == 0 {
			if len(todo) > 0 && !fi.IsDir() {
				return "", &iofs.PathError{Op: "resolve", Path: p, Err: fmt.Errorf("%s is not a directory", cand)}
			}
			done = cand
			continue
		}
		hops++
		if hops > maxLinks {
			return "", &iofs.PathError{Op: "resolve", Path: p, Err: errors.New("too many levels of symbolic links")}
		}
		st, ok := fi.Sys().(*squashfs.StatT)
		if !ok || st.LinkTarget == "" {
			return "", &iofs.PathError{Op: "resolve", Path: p, Err: fmt.Errorf("cannot read link %s", cand)}
		}
		if strings.HasPrefix(st.LinkTarget, "/") {
			done = "/"
		}
		todo = append(splitPath(st.LinkTarget), todo...)
	}
	return done, nil
}

func splitPath(p string) []string {
	var out []string
	for _, s := range strings.Split(p, "/") {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

// ReadFile reads a file of the image, following links.
func (im *Image) ReadFile(p string) ([]byte, error) {
	real, err := im.Resolve(p)
	if err != nil {
		return nil, err
	}
	f, size, err := im.open(real)
	if err != nil {
		return nil, err
	}
	// One read of the whole file: go-diskfs walks the file's block list
	// from the start on every Read, so few large reads are much cheaper.
	buf := make([]byte, size)
	n, err := f.ReadAt(buf, 0)
	if err != nil && !(errors.Is(err, io.EOF) && int64(n) == size) {
		return nil, fmt.Errorf("read %s: %w", real, err)
	}
	return buf[:n], nil
}

func (im *Image) readDir(p string) ([]iofs.DirEntry, error) {
	ents, err := im.fs.ReadDir(fsPath(p))
	if err != nil {
		return nil, fmt.Errorf("read directory %s: %w", p, err)
	}
	return ents, nil
}

// squashFile is a go-diskfs file with ReadAt. go-diskfs' File has Read
// and Seek only (and Seek(…, io.SeekEnd) counts backwards from the end with
// the offset's sign flipped), so ReadAt seeks from the start every time.
type squashFile struct {
	mu   sync.Mutex
	f    *squashfs.File
	size int64
}

func (im *Image) open(real string) (*squashFile, int64, error) {
	fi, err := im.lstat(real)
	if err != nil {
		return nil, 0, err
	}
	if !fi.Mode().IsRegular() {
		return nil, 0, fmt.Errorf("%s is not a regular file", real)
	}
	f, err := im.fs.OpenFile(fsPath(real), 0)
	if err != nil {
		return nil, 0, fmt.Errorf("open %s: %w", real, err)
	}
	sf, ok := f.(*squashfs.File)
	if !ok {
		return nil, 0, fmt.Errorf("open %s: unexpected file type %T", real, f)
	}
	return &squashFile{f: sf, size: fi.Size()}, fi.Size(), nil
}

// ReadAt implements io.ReaderAt.
func (s *squashFile) ReadAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if off >= s.size {
		return 0, io.EOF
	}
	if _, err := s.f.Seek(off, io.SeekStart); err != nil {
		return 0, err
	}
	n := 0
	for n < len(p) {
		m, err := s.f.Read(p[n:])
		n += m
		if err == io.EOF {
			if n < len(p) {
				return n, io.EOF
			}
			break
		}
		if err != nil {
			return n, err
		}
		if m == 0 {
			return n, io.ErrNoProgress
		}
	}
	return n, nil
}

// sequential reads a squashFile from the start in large chunks.
type sequential struct {
	f    *squashFile
	off  int64
	size int64
}

func (s *sequential) Read(p []byte) (int, error) {
	n, err := s.f.ReadAt(p, s.off)
	s.off += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}
