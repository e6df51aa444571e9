package recipe

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"

	"github.com/herdlab/herd/internal/atomicfile"
	"github.com/herdlab/herd/internal/strictyaml"
)

// Lock maps each pinned package to the exact version a build resolved, so
// the next build installs the same versions or fails loudly.
type Lock map[string]string

// ReadLock loads a lock file; a missing file yields (nil, nil).
func ReadLock(path string) (Lock, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read lock file: %w", err)
	}
	return ParseLock(path, data)
}

// ParseLock parses "name version" lines; '#' starts a comment.
func ParseLock(file string, data []byte) (Lock, error) {
	l := Lock{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 || !nameRE.MatchString(f[0]) || !versionRE.MatchString(f[1]) {
			return nil, &strictyaml.FieldError{File: file, Line: n, Column: 1, Field: firstField(f), Msg: fmt.Sprintf("expected \"package version\", got %q", line)}
		}
		if _, dup := l[f[0]]; dup {
			return nil, &strictyaml.FieldError{File: file, Line: n, Column: 1, Field: f[0], Msg: "package listed twice"}
		}
		l[f[0]] = f[1]
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	return l, nil
}

func firstField(f []string) string {
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// Write stores the lock atomically, sorted by package name.
func (l Lock) Write(path, recipeName string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# herd lock for recipe %s: the exact versions the build resolved.\n", recipeName)
	b.WriteString("# A build fails if the archive would install anything else; delete this\n")
	b.WriteString("# file (or build with --update-lock) to accept new versions.\n")
	names := make([]string, 0, len(l))
	for n := range l {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&b, "%s %s\n", n, l[n])
	}
	return atomicfile.WriteFile(path, []byte(b.String()), 0o644)
}
