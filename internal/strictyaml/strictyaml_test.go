package strictyaml

import (
	"errors"
	"strings"
	"testing"
	"time"
)

type inner struct {
	Name  string        `yaml:"name" herd:"required"`
	Count int           `yaml:"count"`
	Wait  time.Duration `yaml:"wait"`
}

type outer struct {
	Title string   `yaml:"title" herd:"required"`
	Inner inner    `yaml:"inner"`
	List  []inner  `yaml:"list"`
	Tags  []string `yaml:"tags"`
	On    bool     `yaml:"on"`
}

func TestDecodeErrorsNamePosition(t *testing.T) {
	cases := []struct {
		name, src, want string
	}{
		{"unknown field", "title: x\nbogus: 1\n", "f.yaml:2:1: field bogus: unknown field \"bogus\""},
		{"nested unknown", "title: x\ninner:\n  name: a\n  colour: red\n", "f.yaml:4:3: field inner.colour: unknown field"},
		{"wrong type", "title: x\ninner:\n  name: a\n  count: many\n", "f.yaml:4:10: field inner.count: expected a whole number, got \"many\""},
		{"wrong duration", "title: x\ninner: {name: a, wait: soon}\n", "f.yaml:2:24: field inner.wait:"},
		{"missing required", "inner:\n  name: a\n", "f.yaml:1:1: field title: required field \"title\" is missing"},
		{"empty required", "title: \"\"\n", "f.yaml:1:8: field title: required field \"title\" is empty"},
		{"list item", "title: x\nlist:\n  - name: a\n  - count: 2\n", "f.yaml:4:5: field list[1].name: required field"},
		{"mapping for scalar", "title: x\ntags: {a: b}\n", "f.yaml:2:7: field tags: expected a list, got a mapping"},
		{"syntax", "title: x\n  bad: [\n", "f.yaml:"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var o outer
			_, err := Decode("f.yaml", []byte(c.src), &o, nil)
			if err == nil {
				t.Fatalf("no error for %q", c.src)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not contain %q", err, c.want)
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("error %T is not a FieldError", err)
			}
		})
	}
}

func TestOverrides(t *testing.T) {
	var o outer
	doc, err := Decode("f.yaml", []byte("title: x\ninner:\n  name: a\nlist:\n  - name: b\n"), &o,
		[]string{"inner.count=7", "title=y", "list.0.name=c", "tags=[p, q]", "on=true"})
	if err != nil {
		t.Fatal(err)
	}
	if o.Inner.Count != 7 || o.Title != "y" || o.List[0].Name != "c" || len(o.Tags) != 2 || !o.On {
		t.Fatalf("overrides not applied: %+v", o)
	}
	if p := doc.Where("inner.count"); p.File != "--set" {
		t.Fatalf("override position = %+v, want --set", p)
	}
	if p := doc.Where("inner.name"); p.Line != 3 || p.Column != 9 {
		t.Fatalf("inner.name at %+v, want 3:9", p)
	}
	_, err = Decode("f.yaml", []byte("title: x\n"), &o, []string{"inner.count=lots"})
	if err == nil || !strings.Contains(err.Error(), "--set: field inner.count: expected a whole number") {
		t.Fatalf("bad override error = %v", err)
	}
	_, err = Decode("f.yaml", []byte("title: x\nlist: []\n"), &o, []string{"list.3.name=z"})
	if err == nil || !strings.Contains(err.Error(), "not an index") {
		t.Fatalf("bad index error = %v", err)
	}
}

func TestDocErrorf(t *testing.T) {
	var o outer
	doc, err := Decode("f.yaml", []byte("title: x\nlist:\n  - name: b\n"), &o, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := doc.Errorf("list[0].name", "bad name %q", "b")
	if got := e.Error(); got != `f.yaml:3:11: field list[0].name: bad name "b"` {
		t.Fatalf("got %q", got)
	}
	// A field that was never written falls back to its parent.
	e = doc.Errorf("list[0].count", "must be positive")
	if e.Line != 3 {
		t.Fatalf("fallback position = %d", e.Line)
	}
}

// A document that is empty, only `~` or only `---` is a file with no fields:
// the required-field checks must still run and name the file.
func TestEmptyDocumentsFailRequired(t *testing.T) {
	for _, src := range []string{"", "~\n", "---\n", "--- ~\n", "null\n", "# only a comment\n", "---\n...\n"} {
		t.Run(strings.TrimSpace(src), func(t *testing.T) {
			var o outer
			_, err := Decode("site.yaml", []byte(src), &o, nil)
			if err == nil {
				t.Fatalf("document %q decoded with no error; want the missing required field", src)
			}
			if !strings.Contains(err.Error(), "site.yaml") || !strings.Contains(err.Error(), `required field "title" is missing`) {
				t.Fatalf("error %q does not name the file and the missing field", err)
			}
		})
	}
	// Overrides still apply to an empty document, and satisfy the requirement.
	var o outer
	if _, err := Decode("site.yaml", []byte("~\n"), &o, []string{"title=x"}); err != nil || o.Title != "x" {
		t.Fatalf("override on an empty document: title %q, err %v", o.Title, err)
	}
}
