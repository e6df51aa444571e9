package build

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"go/ast"
	"go/parser"
	"go/printer"
	"go/token"
	"io/fs"
	"sort"
	"strings"
	"sync"
)

// The stage cache must never hand out an output made by other code: each
// stage's key covers the source of the code that makes it. The package's own
// Go files are embedded at build time; a stage's code is the function named
// like the stage (bootstrap, packages, initramfs, pack) plus the shared
// stage machinery (stageRoots), and everything in this package they reach by
// name, transitively. Comments and blank lines do not count, so editing a
// comment keeps the cache; any other change to that code gives new keys for
// that stage and every stage after it. Code outside this package is covered
// by what the keys already hash (the initramfs files, the rendered overlays).
//
//go:embed *.go
var sources embed.FS

// stageRoots are the functions every stage's output depends on.
var stageRoots = []string{"Run", "Verify", "onOverlay"}

// code is the parsed source the keys are computed from (tests swap it).
var code struct {
	sync.Mutex
	fsys  fs.FS
	fset  *token.FileSet
	decls map[string][]ast.Decl // top-level name → declarations
	err   error
}

// setCodeFS makes the keys use the sources in fsys (nil: this binary's own).
func setCodeFS(fsys fs.FS) {
	code.Lock()
	defer code.Unlock()
	code.fsys, code.fset, code.decls, code.err = fsys, nil, nil, nil
}

// stageCode returns the digest of the code stage name runs, from the
// sources embedded in this binary.
func stageCode(name string) (string, error) {
	code.Lock()
	defer code.Unlock()
	if code.decls == nil && code.err == nil {
		fsys := code.fsys
		if fsys == nil {
			fsys = sources
		}
		code.fset, code.decls, code.err = parseSources(fsys)
	}
	if code.err != nil {
		return "", code.err
	}
	return codeDigest(code.fset, code.decls, name)
}

// parseSources parses the non-test Go files of fsys into declarations by name.
func parseSources(fsys fs.FS) (*token.FileSet, map[string][]ast.Decl, error) {
	fset := token.NewFileSet()
	decls := map[string][]ast.Decl{}
	names, err := fs.Glob(fsys, "*.go")
	if err != nil {
		return nil, nil, err
	}
	for _, n := range names {
		if strings.HasSuffix(n, "_test.go") {
			continue
		}
		src, err := fs.ReadFile(fsys, n)
		if err != nil {
			return nil, nil, err
		}
		f, err := parser.ParseFile(fset, n, src, parser.SkipObjectResolution)
		if err != nil {
			return nil, nil, fmt.Errorf("stage code: %w", err)
		}
		for _, d := range f.Decls {
			for _, name := range declNames(d) {
				decls[name] = append(decls[name], d)
			}
		}
	}
	return fset, decls, nil
}

// declNames lists the top-level names a declaration defines (methods by
// their bare name: a call b.pack reaches every method called pack).
func declNames(d ast.Decl) []string {
	switch d := d.(type) {
	case *ast.FuncDecl:
		return []string{d.Name.Name}
	case *ast.GenDecl:
		var out []string
		for _, s := range d.Specs {
			switch s := s.(type) {
			case *ast.ValueSpec:
				for _, n := range s.Names {
					out = append(out, n.Name)
				}
			case *ast.TypeSpec:
				out = append(out, s.Name.Name)
			}
		}
		return out
	}
	return nil
}

// codeDigest hashes the declarations reachable by name from the stage's
// roots, printed without comments or blank lines, in a fixed order.
func codeDigest(fset *token.FileSet, decls map[string][]ast.Decl, stage string) (string, error) {
	if _, ok := decls[stage]; !ok && stage != "overlays" {
		return "", fmt.Errorf("stage code: no function named for stage %q in image/build", stage)
	}
	seen := map[ast.Decl]bool{}
	var order []ast.Decl
	queue := append([]string{stage}, stageRoots...)
	for len(queue) > 0 {
		name := queue[0]
		queue = queue[1:]
		for _, d := range decls[name] {
			if seen[d] {
				continue
			}
			seen[d] = true
			order = append(order, d)
			ast.Inspect(d, func(n ast.Node) bool {
				if id, ok := n.(*ast.Ident); ok {
					if _, ok := decls[id.Name]; ok {
						queue = append(queue, id.Name)
					}
				}
				return true
			})
		}
	}
	texts := make([]string, 0, len(order))
	for _, d := range order {
		texts = append(texts, printDecl(fset, d))
	}
	sort.Strings(texts)
	h := sha256.New()
	for _, t := range texts {
		fmt.Fprintf(h, "%d:%s\n", len(t), t)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// printDecl prints d without its comments and without blank lines.
func printDecl(fset *token.FileSet, d ast.Decl) string {
	switch d := d.(type) {
	case *ast.FuncDecl:
		c := *d
		c.Doc = nil
		d = &c
		return printNode(fset, d)
	case *ast.GenDecl:
		c := *d
		c.Doc = nil
		return printNode(fset, &c)
	}
	return printNode(fset, d)
}

func printNode(fset *token.FileSet, n ast.Node) string {
	var b bytes.Buffer
	if err := (&printer.Config{Mode: printer.RawFormat}).Fprint(&b, fset, n); err != nil {
		return fmt.Sprintf("unprintable %T: %v", n, err)
	}
	var out []string
	for _, l := range strings.Split(b.String(), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
