// Package strictyaml decodes YAML configuration files strictly: unknown
// fields, wrong types and missing required fields become errors that name the
// file, line, column and dotted field path, so an admin can fix the exact spot.
//
// Struct fields are matched by their `yaml` tag. A field tagged
// `herd:"required"` must be present (and non-empty for strings).
package strictyaml

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// FieldError is one problem in a configuration file, with its position.
type FieldError struct {
	File   string // path of the file, or "--set" for command-line overrides
	Line   int    // 1-based; 0 when unknown
	Column int    // 1-based; 0 when unknown
	Field  string // dotted path, e.g. "nodes[2].mac"
	Msg    string
}

func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", e.Line, e.Column)
	}
	if e.Field != "" {
		fmt.Fprintf(&b, ": field %s", e.Field)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is a list of FieldErrors reported together.
type Errors []*FieldError

func (es Errors) Error() string {
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "\n")
}

// Unwrap exposes each FieldError to errors.As.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// Pos is a line and column in a file.
type Pos struct {
	Line, Column int
	File         string
}

// Doc is a decoded file: it remembers where each field came from so that
// later semantic validation can still point at the right line.
type Doc struct {
	File string
	pos  map[string]Pos
}

// Errorf builds a FieldError for field, placed where that field (or its
// nearest present parent) was written.
func (d *Doc) Errorf(field, format string, args ...any) *FieldError {
	p := d.Where(field)
	file := p.File
	if file == "" {
		file = d.File
	}
	return &FieldError{File: file, Line: p.Line, Column: p.Column, Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Where returns the position of field, falling back to its parents.
func (d *Doc) Where(field string) Pos {
	if d == nil || d.pos == nil {
		return Pos{}
	}
	for f := field; ; {
		if p, ok := d.pos[f]; ok {
			return p
		}
		i := strings.LastIndexAny(f, ".[")
		if i <= 0 {
			return d.pos[""]
		}
		f = f[:i]
	}
}

// Has reports whether field was written in the file or set by an override.
func (d *Doc) Has(field string) bool {
	_, ok := d.pos[field]
	return ok
}

// LoadFile reads path and decodes it strictly into out (a pointer to struct),
// applying overrides ("dotted.key=value") first.
func LoadFile(path string, out any, overrides []string) (*Doc, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return Decode(path, data, out, overrides)
}

// Decode decodes data (named file in errors) strictly into out, after
// applying overrides of the form "dotted.key=value" (value parsed as YAML).
func Decode(file string, data []byte, out any, overrides []string) (*Doc, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, syntaxError(file, err)
	}
	// An empty file, or one that is only `~`, `---` or `null`, has no fields:
	// it decodes as an empty mapping so the required-field checks still run.
	empty := root.Kind == 0 || len(root.Content) == 0
	if !empty {
		if b := root.Content[0]; b.Kind == yaml.ScalarNode && b.ShortTag() == "!!null" {
			empty = true
		}
	}
	if empty {
		root = yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{{Kind: yaml.MappingNode, Tag: "!!map", Line: 1, Column: 1}}}
	}
	doc := &Doc{File: file, pos: map[string]Pos{}}
	body := root.Content[0]
	var errs Errors
	for _, o := range overrides {
		if err := applyOverride(body, o); err != nil {
			errs = append(errs, &FieldError{File: "--set", Field: strings.SplitN(o, "=", 2)[0], Msg: err.Error()})
		}
	}
	if len(errs) > 0 {
		return doc, errs
	}
	rv := reflect.ValueOf(out)
	if rv.Kind() != reflect.Pointer || rv.Elem().Kind() != reflect.Struct {
		return nil, fmt.Errorf("strictyaml: out must be a pointer to struct, got %T", out)
	}
	w := walker{doc: doc, empty: empty}
	w.walk(body, rv.Elem().Type(), "")
	if len(w.errs) > 0 {
		return doc, w.errs
	}
	if err := body.Decode(out); err != nil {
		return doc, &FieldError{File: file, Msg: err.Error()}
	}
	return doc, nil
}

func syntaxError(file string, err error) error {
	// yaml.v3 syntax errors read "yaml: line N: message".
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	fe := &FieldError{File: file, Msg: msg}
	if strings.HasPrefix(msg, "line ") {
		rest := msg[len("line "):]
		if i := strings.Index(rest, ":"); i > 0 {
			if n, convErr := strconv.Atoi(rest[:i]); convErr == nil {
				fe.Line, fe.Column, fe.Msg = n, 1, "syntax error:"+rest[i+1:]
			}
		}
	}
	return fe
}

type walker struct {
	doc   *Doc
	errs  Errors
	empty bool // the file held no document (empty, `~`, `---`)
}

func (w *walker) fail(n *yaml.Node, field, format string, args ...any) {
	file := w.doc.File
	if n.Style&overrideStyle != 0 || n.Line == 0 {
		file = "--set"
	}
	w.errs = append(w.errs, &FieldError{File: file, Line: n.Line, Column: n.Column, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// overrideStyle marks nodes created from --set so errors point at the flag.
const overrideStyle yaml.Style = 1 << 7

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

func (w *walker) record(n *yaml.Node, field string) {
	p := Pos{Line: n.Line, Column: n.Column}
	if n.Style&overrideStyle != 0 {
		p = Pos{File: "--set"}
	}
	w.doc.pos[field] = p
}

func (w *walker) walk(n *yaml.Node, t reflect.Type, field string) {
	w.record(n, field)
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return // null leaves the zero value
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		w.decodeLeaf(n, t, field)
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			w.fail(n, field, "expected a mapping of fields, got %s", describe(n))
			return
		}
		w.walkStruct(n, t, field)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			w.fail(n, field, "expected a list, got %s", describe(n))
			return
		}
		for i, item := range n.Content {
			w.walk(item, t.Elem(), fmt.Sprintf("%s[%d]", field, i))
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			w.fail(n, field, "expected a mapping, got %s", describe(n))
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			w.decodeLeaf(k, t.Key(), join(field, k.Value))
			w.walk(n.Content[i+1], t.Elem(), join(field, k.Value))
		}
	case reflect.Interface:
		// any value is accepted
	default:
		w.decodeLeaf(n, t, field)
	}
}

func (w *walker) decodeLeaf(n *yaml.Node, t reflect.Type, field string) {
	if t.Kind() != reflect.Struct && t.Kind() != reflect.Slice && t.Kind() != reflect.Map && n.Kind != yaml.ScalarNode {
		w.fail(n, field, "expected a single %s value, got %s", kindName(t), describe(n))
		return
	}
	v := reflect.New(t)
	if err := n.Decode(v.Interface()); err != nil {
		msg := err.Error()
		if te, ok := errors.AsType[*yaml.TypeError](err); ok && len(te.Errors) > 0 {
			msg = te.Errors[0]
			if i := strings.Index(msg, ": "); i > 0 && strings.HasPrefix(msg, "line ") {
				msg = msg[i+2:]
			}
		}
		if t.Kind() != reflect.Struct && strings.Contains(msg, "cannot unmarshal") {
			msg = fmt.Sprintf("expected %s, got %s", kindName(t), describe(n))
		}
		w.fail(n, field, "%s", msg)
	}
}

func (w *walker) walkStruct(n *yaml.Node, t reflect.Type, field string) {
	fields := structFields(t)
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		name := k.Value
		sf, ok := fields[name]
		if !ok {
			w.fail(k, join(field, name), "unknown field %q (known fields: %s)", name, strings.Join(sortedKeys(fields), ", "))
			continue
		}
		if seen[name] {
			w.fail(k, join(field, name), "field %q given twice", name)
			continue
		}
		seen[name] = true
		w.walk(v, sf.Type, join(field, name))
	}
	for _, name := range sortedKeys(fields) {
		sf := fields[name]
		if !strings.Contains(sf.Tag.Get("herd"), "required") {
			continue
		}
		if !seen[name] {
			if w.empty && field == "" {
				w.fail(n, join(field, name), "required field %q is missing (the file has no settings at all)", name)
				continue
			}
			w.fail(n, join(field, name), "required field %q is missing", name)
			continue
		}
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		sf, ok := fields[k.Value]
		if ok && strings.Contains(sf.Tag.Get("herd"), "required") && v.Kind == yaml.ScalarNode && (v.Value == "" || v.ShortTag() == "!!null") {
			w.fail(v, join(field, k.Value), "required field %q is empty", k.Value)
		}
	}
}

func structFields(t reflect.Type) map[string]reflect.StructField {
	out := map[string]reflect.StructField{}
	for i := range t.NumField() {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		tag := sf.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if strings.Contains(opts, "inline") {
			ft := sf.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			for k, v := range structFields(ft) {
				out[k] = v
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(sf.Name)
		}
		out[name] = sf
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func join(parent, name string) string {
	if parent == "" {
		return name
	}
	return parent + "." + name
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	}
	return "an unsupported value"
}

func kindName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if t.String() == "time.Duration" {
			return "a duration such as 30s or 1h"
		}
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	}
	return t.String()
}

// applyOverride sets key=value inside the mapping body; the key is a dotted
// path and may index lists ("nodes.0.ip"); the value is parsed as YAML.
func applyOverride(body *yaml.Node, o string) error {
	key, val, ok := strings.Cut(o, "=")
	if !ok || key == "" {
		return fmt.Errorf("expected key=value, got %q", o)
	}
	var vn yaml.Node
	if err := yaml.Unmarshal([]byte(val), &vn); err != nil {
		return fmt.Errorf("value %q is not valid YAML: %w", val, err)
	}
	value := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: ""}
	if vn.Kind == yaml.DocumentNode && len(vn.Content) == 1 {
		value = vn.Content[0]
	}
	markOverride(value)
	cur := body
	parts := strings.Split(key, ".")
	for i, p := range parts {
		last := i == len(parts)-1
		switch cur.Kind {
		case yaml.MappingNode:
			var next *yaml.Node
			for j := 0; j+1 < len(cur.Content); j += 2 {
				if cur.Content[j].Value == p {
					next = cur.Content[j+1]
					if last {
						cur.Content[j+1] = value
					}
					break
				}
			}
			if next == nil {
				next = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Style: overrideStyle}
				if last {
					next = value
				}
				kn := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: p, Style: overrideStyle}
				cur.Content = append(cur.Content, kn, next)
			}
			cur = next
		case yaml.SequenceNode:
			idx, err := strconv.Atoi(p)
			if err != nil || idx < 0 || idx >= len(cur.Content) {
				return fmt.Errorf("%q is not an index of the list at %q (it has %d items)", p, strings.Join(parts[:i], "."), len(cur.Content))
			}
			if last {
				cur.Content[idx] = value
			}
			cur = cur.Content[idx]
		default:
			return fmt.Errorf("%q is not a mapping or list, cannot set %q inside it", strings.Join(parts[:i], "."), p)
		}
	}
	return nil
}

func markOverride(n *yaml.Node) {
	n.Style |= overrideStyle
	n.Line, n.Column = 0, 0
	for _, c := range n.Content {
		markOverride(c)
	}
}
