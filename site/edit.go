package site

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/herdlab/herd/internal/atomicfile"
)

// AddNode appends n to the nodes list of the site file at path, keeping the
// file's comments. The node is checked first (errors name the field, and
// for clashes the file and line of the node it clashes with); the edited
// file is validated as a whole before it atomically replaces the old one.
func AddNode(path string, n Node) error {
	cfg, err := Load(path, nil)
	if err != nil {
		return err
	}
	if !nodeNameRe.MatchString(n.Name) {
		return fmt.Errorf("node name %q is not a valid host name (lowercase letters, digits, '-')", n.Name)
	}
	hw, err := net.ParseMAC(n.MAC)
	if err != nil || len(hw) != 6 {
		return fmt.Errorf("node %s: mac %q is not an Ethernet MAC address such as 52:54:00:12:34:56", n.Name, n.MAC)
	}
	n.MAC = hw.String()
	for i, o := range cfg.Nodes {
		f := fmt.Sprintf("nodes[%d]", i)
		switch {
		case o.Name == n.Name:
			return cfg.Doc.Errorf(f+".name", "node %s already exists", n.Name)
		case o.MAC == n.MAC:
			return cfg.Doc.Errorf(f+".mac", "%s already belongs to node %s", n.MAC, o.Name)
		case n.IP != "" && o.IP == n.IP:
			return cfg.Doc.Errorf(f+".ip", "%s is already reserved for node %s", n.IP, o.Name)
		}
	}
	return edit(path, func(doc *yaml.Node) error {
		seq, err := nodesSeq(doc, true)
		if err != nil {
			return err
		}
		m := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
		add := func(k, v string) {
			if v != "" {
				m.Content = append(m.Content,
					&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: k},
					&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: v})
			}
		}
		add("name", n.Name)
		add("mac", n.MAC)
		add("ip", n.IP)
		add("image", n.Image)
		add("kernel_args", n.KernelArgs)
		add("cache_disk", n.CacheDisk)
		seq.Content = append(seq.Content, m)
		return nil
	})
}

// RemoveNode deletes the node named (or with the MAC) ref from the site
// file, keeping comments; it returns the removed node.
func RemoveNode(path, ref string) (Node, error) {
	cfg, err := Load(path, nil)
	if err != nil {
		return Node{}, err
	}
	n, ok := cfg.NodeByName(ref)
	if !ok {
		n, ok = cfg.NodeByMAC(ref)
	}
	if !ok {
		return Node{}, fmt.Errorf("%s: no node named %q or with that MAC", path, ref)
	}
	removed := *n
	err = edit(path, func(doc *yaml.Node) error {
		seq, err := nodesSeq(doc, false)
		if err != nil {
			return err
		}
		for i, item := range seq.Content {
			var probe Node
			if item.Decode(&probe) == nil && probe.Name == removed.Name {
				seq.Content = append(seq.Content[:i], seq.Content[i+1:]...)
				return nil
			}
		}
		return fmt.Errorf("%s: node %s not found in the nodes list", path, removed.Name)
	})
	return removed, err
}

// edit applies fn to the file's YAML tree, re-validates, and writes atomically.
func edit(path string, fn func(doc *yaml.Node) error) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return fmt.Errorf("%s: the file is not a YAML mapping", path)
	}
	if err := fn(&doc); err != nil {
		return err
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	enc.Close()
	out := keepBlankLines(data, b.Bytes())
	if _, err := Parse(path+" (edited)", out); err != nil {
		return fmt.Errorf("refusing the edit, the result would be invalid: %w", err)
	}
	mode := os.FileMode(0o644)
	if st, err := os.Stat(path); err == nil {
		mode = st.Mode().Perm()
	}
	return atomicfile.WriteFile(path, out, mode)
}

// keepBlankLines puts back the blank lines that separated top-level
// sections in the original (yaml.v3 keeps comments but drops blank lines).
func keepBlankLines(orig, out []byte) []byte {
	blankBefore := map[string]bool{}
	prevBlank := false
	for _, l := range strings.Split(string(orig), "\n") {
		if strings.TrimSpace(l) == "" {
			prevBlank = true
			continue
		}
		if prevBlank && l[0] != ' ' && l[0] != '\t' && l[0] != '-' {
			blankBefore[l[:strings.IndexAny(l+":", ":#")]] = true
		}
		prevBlank = false
	}
	var b strings.Builder
	lines := strings.Split(string(out), "\n")
	for i, l := range lines {
		if i > 0 && l != "" && l[0] != ' ' && l[0] != '-' && blankBefore[l[:strings.IndexAny(l+":", ":#")]] {
			b.WriteString("\n")
		}
		b.WriteString(l)
		if i < len(lines)-1 {
			b.WriteString("\n")
		}
	}
	return []byte(b.String())
}

// nodesSeq finds the top-level nodes sequence, creating it if asked.
func nodesSeq(doc *yaml.Node, create bool) (*yaml.Node, error) {
	top := doc.Content[0]
	for i := 0; i+1 < len(top.Content); i += 2 {
		if top.Content[i].Value == "nodes" {
			v := top.Content[i+1]
			if v.Kind == yaml.ScalarNode && (v.Tag == "!!null" || strings.TrimSpace(v.Value) == "") {
				v.Kind, v.Tag, v.Value, v.Style = yaml.SequenceNode, "!!seq", "", 0
			}
			if v.Kind != yaml.SequenceNode {
				return nil, fmt.Errorf("line %d: nodes is not a list", v.Line)
			}
			v.Style = 0 // block style, one node per entry
			return v, nil
		}
	}
	if !create {
		return nil, errors.New("the file has no nodes list")
	}
	seq := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
	top.Content = append(top.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: "nodes"}, seq)
	return seq, nil
}
