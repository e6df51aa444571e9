// Package recipe reads image recipes (recipes/*.yaml): what distribution and
// suite to bootstrap, which kernel ABI and NVIDIA driver to pin together,
// which extra packages, overlays and post commands go into the image. Errors
// name the file, line, column and field.
package recipe

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/herdlab/herd/internal/strictyaml"
)

// Recipe is one image recipe.
type Recipe struct {
	Name         string   `yaml:"name" herd:"required"`
	Distribution string   `yaml:"distribution" herd:"required"`
	Suite        string   `yaml:"suite" herd:"required"`
	Components   []string `yaml:"components"`
	Mirror       string   `yaml:"mirror"`
	Keyring      Keyring  `yaml:"keyring" herd:"required"`
	Kernel       Kernel   `yaml:"kernel" herd:"required"`
	NVIDIA       *NVIDIA  `yaml:"nvidia"`
	// Base are installed by the bootstrap stage with the kernel and apt: the
	// system itself. Changing them reruns every stage.
	Base []string `yaml:"base"`
	// Packages (the lab users' tools) are installed by the packages stage
	// on the bootstrap, beside the driver stage: adding one reruns that
	// stage, the join and the pack, never the bootstrap, the driver or the
	// initramfs.
	Packages []string `yaml:"packages"`
	Overlays []string `yaml:"overlays"`
	// Post are shell commands run in the image after the packages and the
	// driver, before the overlays: they belong to the site-independent join
	// stage, so a site change never reruns them (and they cannot see
	// overlay files).
	Post      []string  `yaml:"post"`
	Initramfs Initramfs `yaml:"initramfs"`

	// Path is the file the recipe was read from.
	Path string `yaml:"-"`
	// SHA256 is the hash of the recipe file plus its overrides, in order.
	SHA256 string `yaml:"-"`
	// Doc remembers where each field was written.
	Doc *strictyaml.Doc `yaml:"-"`
}

// Keyring names the package holding the archive signing key and the key's
// fingerprint; the key is trusted only when its fingerprint matches.
type Keyring struct {
	Package     string `yaml:"package" herd:"required"`
	Fingerprint string `yaml:"fingerprint" herd:"required"`
}

// Kernel pins the exact kernel ABI, e.g. "6.8.0-149".
type Kernel struct {
	ABI    string `yaml:"abi" herd:"required"`
	Flavor string `yaml:"flavour"`
	// Extra installs linux-modules-extra (more NIC drivers) for the ABI.
	Extra bool `yaml:"extra"`
}

// NVIDIA pins the driver branch, flavour and exact package version.
type NVIDIA struct {
	Branch  string `yaml:"branch" herd:"required"`
	Flavour string `yaml:"flavour"`
	Version string `yaml:"version" herd:"required"`
}

// Initramfs lists kernel modules forced into the initramfs.
type Initramfs struct {
	Modules []string `yaml:"modules"`
}

// Package is one package to install, with an optional exact version.
type Package struct {
	Name    string
	Version string // "" means whatever the archive (or the lock) says
}

// Spec is the apt-get argument for p (name or name=version).
func (p Package) Spec() string {
	if p.Version == "" {
		return p.Name
	}
	return p.Name + "=" + p.Version
}

var (
	nameRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)
	versionRE = regexp.MustCompile(`^[0-9A-Za-z.+~:-]+$`)
	abiRE     = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+-[0-9]+$`)
	fprRE     = regexp.MustCompile(`^[0-9A-F]{40}$`)
	wordRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)
	moduleRE  = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	mirrorRE  = regexp.MustCompile(`^(https?|file)://\S+$`)
)

// Load reads a recipe file, applies "dotted.key=value" overrides (--set) and
// validates it.
func Load(path string, overrides []string) (*Recipe, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read recipe: %w", err)
	}
	return Parse(path, data, overrides)
}

// Parse decodes and validates a recipe held in memory; file names it in errors.
func Parse(file string, data []byte, overrides []string) (*Recipe, error) {
	var r Recipe
	doc, err := strictyaml.Decode(file, data, &r, overrides)
	if err != nil {
		return nil, err
	}
	r.Doc, r.Path = doc, file
	h := sha256.New()
	h.Write(data)
	for _, o := range overrides {
		fmt.Fprintf(h, "\x00--set %s", o)
	}
	r.SHA256 = hex.EncodeToString(h.Sum(nil))
	r.applyDefaults()
	if err := r.validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

func (r *Recipe) applyDefaults() {
	if len(r.Components) == 0 {
		r.Components = []string{"main"}
	}
	if r.Kernel.Flavor == "" {
		r.Kernel.Flavor = "generic"
	}
	if r.NVIDIA != nil && r.NVIDIA.Flavour == "" {
		r.NVIDIA.Flavour = "server"
	}
	r.Keyring.Fingerprint = strings.ToUpper(strings.ReplaceAll(r.Keyring.Fingerprint, " ", ""))
}

func (r *Recipe) validate() error {
	var errs strictyaml.Errors
	bad := func(field, format string, args ...any) {
		errs = append(errs, r.Doc.Errorf(field, format, args...))
	}
	if !wordRE.MatchString(r.Name) {
		bad("name", "%q is not a valid name (lower-case letters, digits and dashes)", r.Name)
	}
	if !wordRE.MatchString(r.Distribution) {
		bad("distribution", "%q is not a distribution name such as ubuntu", r.Distribution)
	}
	if !wordRE.MatchString(r.Suite) {
		bad("suite", "%q is not a suite name such as noble", r.Suite)
	}
	for i, c := range r.Components {
		if !wordRE.MatchString(c) {
			bad(fmt.Sprintf("components[%d]", i), "%q is not a component name such as main or restricted", c)
		}
	}
	if r.Mirror != "" && !mirrorRE.MatchString(r.Mirror) {
		bad("mirror", "%q is not an http://, https:// or file:// URL (leave it out to use mmdebstrap's default)", r.Mirror)
	}
	if !nameRE.MatchString(r.Keyring.Package) {
		bad("keyring.package", "%q is not a package name", r.Keyring.Package)
	}
	if !fprRE.MatchString(r.Keyring.Fingerprint) {
		bad("keyring.fingerprint", "%q is not a 40-hex-digit OpenPGP fingerprint", r.Keyring.Fingerprint)
	}
	if !abiRE.MatchString(r.Kernel.ABI) {
		bad("kernel.abi", "%q is not an exact kernel ABI such as 6.8.0-149", r.Kernel.ABI)
	}
	if !wordRE.MatchString(r.Kernel.Flavor) {
		bad("kernel.flavour", "%q is not a kernel flavour such as generic", r.Kernel.Flavor)
	}
	if n := r.NVIDIA; n != nil {
		if !regexp.MustCompile(`^[0-9]+$`).MatchString(n.Branch) {
			bad("nvidia.branch", "%q is not a driver branch number such as 580", n.Branch)
		}
		if n.Flavour != "server" && n.Flavour != "desktop" {
			bad("nvidia.flavour", "%q is not server or desktop", n.Flavour)
		}
		if !versionRE.MatchString(n.Version) {
			bad("nvidia.version", "%q is not an exact package version such as 580.178.04-0ubuntu0.24.04.1", n.Version)
		} else if !strings.HasPrefix(n.Version, n.Branch+".") {
			bad("nvidia.version", "version %q is not on branch %s", n.Version, n.Branch)
		}
	}
	seen := map[string]string{}
	for _, list := range []struct {
		field string
		pkgs  []string
	}{{"base", r.Base}, {"packages", r.Packages}} {
		for i, p := range list.pkgs {
			field := fmt.Sprintf("%s[%d]", list.field, i)
			name, ver, hasVer := strings.Cut(p, "=")
			switch {
			case !nameRE.MatchString(name):
				bad(field, "%q is not a package name (name or name=version)", p)
			case hasVer && !versionRE.MatchString(ver):
				bad(field, "%q has an invalid version %q", p, ver)
			case seen[name] != "":
				bad(field, "package %q is listed twice (also in %s)", name, seen[name])
			case name == "apt" && list.field == "packages":
				bad(field, "apt is installed by the bootstrap stage: list it under base to pin it")
			case r.NVIDIA != nil && (strings.HasPrefix(name, "nvidia-") || strings.HasPrefix(name, "linux-modules-nvidia-") || strings.HasPrefix(name, "libnvidia-")):
				bad(field, "%s belongs to the NVIDIA driver, which nvidia: pins and the driver stage installs: remove it here", name)
			}
			seen[name] = list.field
		}
	}
	for i, o := range r.Overlays {
		if !wordRE.MatchString(o) {
			bad(fmt.Sprintf("overlays[%d]", i), "%q is not an overlay name", o)
		}
	}
	for i, c := range r.Post {
		if strings.TrimSpace(c) == "" {
			bad(fmt.Sprintf("post[%d]", i), "empty command")
		}
	}
	for i, m := range r.Initramfs.Modules {
		if !moduleRE.MatchString(m) {
			bad(fmt.Sprintf("initramfs.modules[%d]", i), "%q is not a kernel module name", m)
		}
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// KernelRelease is the kernel release string, e.g. 6.8.0-149-generic.
func (r *Recipe) KernelRelease() string { return r.Kernel.ABI + "-" + r.Kernel.Flavor }

// BasePackages are installed by the bootstrap stage: the pinned kernel, apt
// (the build installs the driver and the packages with the image's own apt;
// Ubuntu's minbase lacks it) and the recipe's base. They alone key the
// bootstrap, so neither the driver nor the recipe's packages touch it.
func (r *Recipe) BasePackages() []Package {
	rel := r.KernelRelease()
	out := []Package{{Name: "linux-image-" + rel}, {Name: "linux-modules-" + rel}}
	if !slices.ContainsFunc(r.Base, func(p string) bool { return p == "apt" || strings.HasPrefix(p, "apt=") }) {
		out = append(out, Package{Name: "apt"})
	}
	if r.Kernel.Extra {
		out = append(out, Package{Name: "linux-modules-extra-" + rel})
	}
	return append(out, split(r.Base)...)
}

// ExtraPackages are the recipe's packages, installed by the packages stage.
func (r *Recipe) ExtraPackages() []Package { return split(r.Packages) }

// split turns "name" / "name=version" entries into Packages.
func split(list []string) []Package {
	var out []Package
	for _, p := range list {
		name, ver, _ := strings.Cut(p, "=")
		out = append(out, Package{Name: name, Version: ver})
	}
	return out
}

// DriverPackages are the NVIDIA packages (precompiled signed modules for the
// pinned kernel ABI, no DKMS), installed by the driver stage.
func (r *Recipe) DriverPackages() []Package {
	n := r.NVIDIA
	if n == nil {
		return nil
	}
	suffix := n.Branch
	if n.Flavour == "server" {
		suffix += "-server"
	}
	return []Package{
		{Name: "linux-modules-nvidia-" + suffix + "-" + r.KernelRelease()},
		{Name: "nvidia-headless-no-dkms-" + suffix, Version: n.Version},
		{Name: "nvidia-utils-" + suffix, Version: n.Version},
	}
}

// NVIDIAVersion is the pinned driver version, "" without NVIDIA.
func (r *Recipe) NVIDIAVersion() string {
	if r.NVIDIA == nil {
		return ""
	}
	return r.NVIDIA.Version
}

// LockPath is where the recipe's lock file lives: recipes/<name>.lock next
// to the recipe file.
func (r *Recipe) LockPath() string {
	return filepath.Join(filepath.Dir(r.Path), r.Name+".lock")
}

// AllPinned returns every package the lock covers, sorted by name.
func (r *Recipe) AllPinned() []Package {
	out := append(append(r.BasePackages(), r.ExtraPackages()...), r.DriverPackages()...)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
