// Package overlays turns the template trees under overlays/<name>/ into the
// files a node gets: system overlays baked into the image at build time
// (Render) and the per-node runtime overlay the server hands out at boot
// (RenderRuntime). Apply writes either into a directory tree.
//
// A tree mirrors target paths: overlays/base/etc/ssh/sshd_config.d/herd.conf
// becomes /etc/ssh/sshd_config.d/herd.conf. Files ending in .tmpl are
// rendered with text/template (the suffix is dropped); other files are copied.
// Everything is root:root 0644 (directories 0755) unless the tree's
// _meta.yaml says otherwise. _meta.yaml is itself a template, so links and
// directories can depend on the site; it lists
//
//	files: {PATH: {mode: "0600", uid: 0, gid: 0}}   # owner/mode of a tree file
//	dirs:  {PATH: {mode: "0700", uid: 990, gid: 990}} # directories to create
//	links: {PATH: TARGET}                            # symlinks (systemd enable/mask)
//
// Symlinks and empty directories live in _meta.yaml because go:embed keeps
// neither. A template calls {{skip}} to leave its file out for this site.
package overlays

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"text/template"

	"github.com/herdlab/herd/internal/strictyaml"
	"github.com/herdlab/herd/site"
)

// The trees are embedded so the herd binary is self-contained. The "all:"
// prefix keeps _meta.yaml, which go:embed would otherwise drop.
//
//go:embed all:base all:tuning all:ssd-cache all:cachefilesd all:autofs all:ldap all:nvidia all:runtime
var trees embed.FS

// source is where trees are read from; tests swap in broken trees.
var source fs.FS = trees

// RuntimeName is the name of the per-node overlay served at boot.
const RuntimeName = "runtime"

// metaName is the per-tree metadata file (owners, modes, links, dirs).
const metaName = "_meta.yaml"

// File is one entry an overlay puts on a node: a regular file (Data), a
// symlink (Link) or a directory (Dir). Path is relative to the root, without
// a leading slash, e.g. "etc/hostname".
type File struct {
	Overlay string      `json:"overlay"`
	Path    string      `json:"path"`
	Mode    fs.FileMode `json:"mode"`
	UID     int         `json:"uid"`
	GID     int         `json:"gid"`
	Data    []byte      `json:"data,omitempty"`
	Link    string      `json:"link,omitempty"`
	Dir     bool        `json:"dir,omitempty"`
}

// Kind is "dir", "link" or "file", for listings.
func (f File) Kind() string {
	switch {
	case f.Dir:
		return "dir"
	case f.Link != "":
		return "link"
	}
	return "file"
}

// HostKey is one SSH host key pair of a node, in OpenSSH format.
type HostKey struct {
	Type    string // ed25519, ecdsa or rsa
	Private []byte
	Public  []byte
}

// RuntimeSecrets is what the server keeps per node and hands to
// RenderRuntime: they never enter an image.
type RuntimeSecrets struct {
	MachineID        string // 32 lower-case hex digits
	SSHHostKeys      []HostKey
	LDAPBindPassword string // "" for anonymous bind
}

// Names lists the system overlays that exist, in the default render order.
func Names() []string {
	return append([]string(nil), site.AllOverlays...)
}

// data is what templates see.
type data struct {
	Site     *site.Config
	Node     *site.Node      // nil in system overlays
	Secrets  *RuntimeSecrets // nil in system overlays
	Overlays []string        // the overlays rendered together (for cross-overlay choices)
	CACert   string          // the LDAP CA certificate (PEM) when ldap.ca_file is set
}

// Enabled reports whether overlay o is rendered together with this one
// ({{if .Enabled "ldap"}} in a template).
func (d *data) Enabled(o string) bool { return contains(d.Overlays, o) }

var errSkip = errors.New("skip this file")

// parsedTemplates caches the embedded trees' parsed templates: the runtime
// overlay is rendered on every node boot.
var parsedTemplates sync.Map // tree path -> *template.Template

// Render renders the named system overlays for cfg, in order. It fails if
// two overlays would write the same path, if a template fails (the error
// names the template file and line) or if a name is unknown.
func Render(cfg *site.Config, names []string) ([]File, error) {
	d := &data{Site: cfg, Overlays: names}
	if contains(names, "ldap") && cfg.LDAP.CAFile != "" && cfg.LDAP.TLS != "none" {
		ca := cfg.LDAP.CAFile
		if !filepath.IsAbs(ca) && cfg.Path != "" {
			// Relative to the site file, like every path an admin writes there.
			ca = filepath.Join(filepath.Dir(cfg.Path), ca)
		}
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("ldap.ca_file: %w", err)
		}
		if !bytes.Contains(pem, []byte("-----BEGIN CERTIFICATE-----")) {
			return nil, fmt.Errorf("ldap.ca_file %s: no PEM certificate in it", cfg.LDAP.CAFile)
		}
		d.CACert = string(pem)
	}
	var use []string
	for _, n := range names {
		if !contains(site.AllOverlays, n) {
			return nil, fmt.Errorf("unknown overlay %q (known: %s)", n, strings.Join(site.AllOverlays, ", "))
		}
		if err := needs(cfg, n); err != nil {
			if cfg.Path != "" {
				return nil, err
			}
			// No site file yet (built-in defaults): an image can still be
			// built, without the overlays that would be broken config.
			slog.Warn("skipping overlay: no site config", "overlay", n, "why", err.Error())
			continue
		}
		use = append(use, n)
	}
	d.Overlays = use
	var out []File
	for _, n := range use {
		files, err := renderTree(n, d)
		if err != nil {
			return nil, err
		}
		out = append(out, files...)
	}
	if err := checkConflicts(out); err != nil {
		return nil, err
	}
	return out, nil
}

// RenderRuntime renders the per-node runtime overlay: identity (hostname,
// /etc/hosts, machine-id), SSH host keys, the LDAP bind password and the
// node's networks (systemd-networkd files, etc/herd/networks.json).
func RenderRuntime(cfg *site.Config, node *site.Node, secrets RuntimeSecrets) ([]File, error) {
	if node == nil {
		return nil, errors.New("runtime overlay: no node given")
	}
	if !isMachineID(secrets.MachineID) {
		return nil, fmt.Errorf("runtime overlay for %s: machine-id %q is not 32 lower-case hex digits", node.Name, secrets.MachineID)
	}
	if p := secrets.LDAPBindPassword; p != "" {
		// sssd.conf is an INI file: a value ends at the newline and loses
		// surrounding blanks, so such a password cannot be written faithfully.
		if strings.ContainsAny(p, "\r\n\x00") || strings.TrimSpace(p) != p {
			return nil, fmt.Errorf("runtime overlay for %s: the LDAP bind password contains a newline, NUL or surrounding blanks, which sssd.conf cannot hold", node.Name)
		}
		if cfg.LDAP.BindDN == "" {
			return nil, fmt.Errorf("runtime overlay for %s: an LDAP bind password was given but ldap.bind_dn is empty", node.Name)
		}
	}
	d := &data{Site: cfg, Node: node, Secrets: &secrets, Overlays: cfg.Overlays}
	files, err := renderTree(RuntimeName, d)
	if err != nil {
		return nil, err
	}
	nets, err := networkFiles(cfg, node)
	if err != nil {
		return nil, err
	}
	files = append(files, nets...)
	nc, err := nodeConfigFile(cfg, node)
	if err != nil {
		return nil, err
	}
	files = append(files, nc)
	seen := map[string]bool{}
	for _, k := range secrets.SSHHostKeys {
		switch k.Type {
		case "ed25519", "ecdsa", "rsa":
		default:
			return nil, fmt.Errorf("runtime overlay for %s: SSH host key type %q is not ed25519, ecdsa or rsa", node.Name, k.Type)
		}
		if seen[k.Type] {
			return nil, fmt.Errorf("runtime overlay for %s: two SSH host keys of type %s", node.Name, k.Type)
		}
		seen[k.Type] = true
		if !bytes.Contains(k.Private, []byte("PRIVATE KEY-----")) || len(bytes.TrimSpace(k.Public)) == 0 {
			return nil, fmt.Errorf("runtime overlay for %s: SSH %s host key is not an OpenSSH key pair", node.Name, k.Type)
		}
		base := "etc/ssh/ssh_host_" + k.Type + "_key"
		files = append(files,
			File{Overlay: RuntimeName, Path: base, Mode: 0o600, Data: k.Private},
			File{Overlay: RuntimeName, Path: base + ".pub", Mode: 0o644, Data: k.Public})
	}
	if len(secrets.SSHHostKeys) > 0 {
		// Tells base's ssh-host-keys that these are the node's own keys.
		var types []string
		for _, k := range secrets.SSHHostKeys {
			types = append(types, k.Type)
		}
		files = append(files, File{Overlay: RuntimeName, Path: "etc/ssh/herd-node-keys", Mode: 0o644,
			Data: []byte(fmt.Sprintf("# herd: host keys of %s from the runtime overlay: %s\n", node.Name, strings.Join(types, " ")))})
	}
	sortFiles(files)
	return files, checkConflicts(files)
}

// needs checks the site fields an overlay cannot do without. site.Validate
// checks them for the site's own overlay list; a recipe may name overlays
// the site did not list (or the site may be the built-in defaults).
func needs(cfg *site.Config, overlay string) error {
	var missing []string
	switch overlay {
	case "autofs":
		if cfg.NAS.Address == "" {
			missing = append(missing, "nas.address")
		}
		if cfg.NAS.Homes == "" {
			missing = append(missing, "nas.homes")
		}
	case "ldap":
		if cfg.LDAP.URI == "" {
			missing = append(missing, "ldap.uri")
		}
		if cfg.LDAP.Base == "" {
			missing = append(missing, "ldap.base")
		}
	}
	if len(missing) == 0 {
		return nil
	}
	from := cfg.Path
	if from == "" && cfg.Doc != nil {
		from = cfg.Doc.File
	}
	return fmt.Errorf("overlay %s needs %s, which the site config %s does not set", overlay, strings.Join(missing, " and "), from)
}

func isMachineID(s string) bool {
	if len(s) != 32 || s == strings.Repeat("0", 32) {
		return false
	}
	for _, r := range s {
		if !strings.ContainsRune("0123456789abcdef", r) {
			return false
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// meta is a tree's _meta.yaml.
type meta struct {
	Files map[string]attr   `yaml:"files"`
	Dirs  map[string]attr   `yaml:"dirs"`
	Links map[string]string `yaml:"links"`
}

// attr is an owner and mode; Mode is an octal string such as "0600".
type attr struct {
	Mode string `yaml:"mode"`
	UID  int    `yaml:"uid"`
	GID  int    `yaml:"gid"`
}

func (a attr) mode(def fs.FileMode) (fs.FileMode, error) {
	if a.Mode == "" {
		return def, nil
	}
	m, err := strconv.ParseUint(a.Mode, 8, 32)
	if err != nil || m > 0o7777 {
		return 0, fmt.Errorf("mode %q is not an octal mode such as 0640", a.Mode)
	}
	// os.FileMode keeps setuid/setgid/sticky in its own bits.
	fm := fs.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		fm |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		fm |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		fm |= fs.ModeSticky
	}
	return fm, nil
}

// srcName is how errors name a tree file (the path in the source tree).
func srcName(p string) string { return "overlays/" + p }

func funcs() template.FuncMap {
	return template.FuncMap{
		"skip": func() (string, error) { return "", errSkip },
		"join": strings.Join,
		// sudoArg escapes the characters sudoers treats specially in a
		// command line (sudoers(5): , : = \ must be backslash-escaped).
		"sudoArg": func(s string) string {
			r := strings.NewReplacer(`\`, `\\`, `,`, `\,`, `:`, `\:`, `=`, `\=`)
			return r.Replace(s)
		},
		"trimSpace": strings.TrimSpace,
		"hasPrefix": strings.HasPrefix,
		"fields":    strings.Fields,
	}
}

// renderTree renders one embedded tree.
func renderTree(name string, d *data) ([]File, error) {
	if _, err := fs.Stat(source, name); err != nil {
		return nil, fmt.Errorf("overlay %q has no template tree", name)
	}
	fm := funcs()
	var m meta
	var files []File
	byPath := map[string]int{}
	err := fs.WalkDir(source, name, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if de.IsDir() {
			return nil
		}
		raw, err := fs.ReadFile(source, p)
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(p, name+"/")
		if rel == metaName {
			out, err := execute(p, raw, fm, d)
			if err != nil {
				return err
			}
			if _, err := strictyaml.Decode(srcName(p), out, &m, nil); err != nil {
				return err
			}
			return nil
		}
		content := raw
		if strings.HasSuffix(rel, ".tmpl") {
			rel = strings.TrimSuffix(rel, ".tmpl")
			content, err = execute(p, raw, fm, d)
			if errors.Is(err, errSkip) {
				return nil
			}
			if err != nil {
				return err
			}
		}
		byPath[rel] = len(files)
		files = append(files, File{Overlay: name, Path: rel, Mode: 0o644, Data: content})
		return nil
	})
	if err != nil {
		return nil, err
	}
	metaFile := srcName(name + "/" + metaName)
	for _, p := range sortedKeys(m.Files) {
		i, ok := byPath[p]
		if !ok {
			// A skipped template leaves its metadata behind; that is fine,
			// but a path no template produces at all is a typo.
			if !treeHas(name, p) {
				return nil, fmt.Errorf("%s: files.%s: no such file in the tree", metaFile, p)
			}
			continue
		}
		a := m.Files[p]
		mode, err := a.mode(0o644)
		if err != nil {
			return nil, fmt.Errorf("%s: files.%s: %w", metaFile, p, err)
		}
		files[i].Mode, files[i].UID, files[i].GID = mode, a.UID, a.GID
	}
	for _, p := range sortedKeys(m.Dirs) {
		if err := checkPath(p); err != nil {
			return nil, fmt.Errorf("%s: dirs.%s: %w", metaFile, p, err)
		}
		a := m.Dirs[p]
		mode, err := a.mode(0o755)
		if err != nil {
			return nil, fmt.Errorf("%s: dirs.%s: %w", metaFile, p, err)
		}
		files = append(files, File{Overlay: name, Path: p, Mode: mode, UID: a.UID, GID: a.GID, Dir: true})
	}
	for _, p := range sortedKeys(m.Links) {
		if err := checkPath(p); err != nil {
			return nil, fmt.Errorf("%s: links.%s: %w", metaFile, p, err)
		}
		if m.Links[p] == "" {
			return nil, fmt.Errorf("%s: links.%s: empty link target", metaFile, p)
		}
		files = append(files, File{Overlay: name, Path: p, Mode: 0o777, Link: m.Links[p]})
	}
	sortFiles(files)
	return files, nil
}

func treeHas(name, p string) bool {
	for _, c := range []string{p, p + ".tmpl"} {
		if _, err := fs.Stat(source, name+"/"+c); err == nil {
			return true
		}
	}
	return false
}

// checkPath rejects paths that are not clean and relative (they would write
// outside the target root).
func checkPath(p string) error {
	if p == "" || strings.HasPrefix(p, "/") || path.Clean(p) != p || p == "." || strings.HasPrefix(p, "../") || p == ".." {
		return fmt.Errorf("path %q must be clean and relative to the root (no leading /, no ..)", p)
	}
	return nil
}

// execute runs one template; errors carry the template's file name and line.
func execute(p string, src []byte, fm template.FuncMap, d *data) ([]byte, error) {
	var t *template.Template
	// Only the embedded trees are cached (tests swap in other trees).
	embedded := source == fs.FS(trees)
	if c, ok := parsedTemplates.Load(p); ok && embedded {
		t = c.(*template.Template)
	} else {
		var err error
		t, err = template.New(srcName(p)).Funcs(fm).Option("missingkey=error").Parse(string(src))
		if err != nil {
			return nil, err
		}
		if embedded {
			parsedTemplates.Store(p, t)
		}
	}
	var b bytes.Buffer
	if err := t.Execute(&b, d); err != nil {
		if errors.Is(err, errSkip) {
			return nil, errSkip
		}
		return nil, err
	}
	return b.Bytes(), nil
}

func sortFiles(files []File) {
	sort.SliceStable(files, func(i, j int) bool { return files[i].Path < files[j].Path })
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// checkConflicts fails when two entries claim the same path differently.
func checkConflicts(files []File) error {
	seen := map[string]File{}
	for _, f := range files {
		if prev, ok := seen[f.Path]; ok {
			if prev.Dir && f.Dir && prev.Mode == f.Mode && prev.UID == f.UID && prev.GID == f.GID {
				continue
			}
			return fmt.Errorf("overlays %s and %s both write /%s", prev.Overlay, f.Overlay, f.Path)
		}
		seen[f.Path] = f
	}
	return nil
}
