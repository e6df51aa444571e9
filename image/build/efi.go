package build

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/herdlab/herd/image/inspect"
	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/recipe"
	"github.com/herdlab/herd/internal/atomicfile"
)

// efiFile is one binary of the Secure Boot chain (secure_boot: distro): the
// package that ships it, its path inside the package, and the artifact name.
// An optional one is taken only when the recipe's components have its
// package (systemd-boot-efi is in universe).
type efiFile struct {
	pkg, path, artifact string
	optional            bool
}

// EFIFiles are taken from the image's own archive, never installed into the
// image: Microsoft-signed shim (the "latest" build, the alternative
// shim-signed's postinst makes /usr/lib/shim/shimx64.efi.signed) and
// Canonical-signed network GRUB, whose embedded prefix is /grub (it reads
// (tftp,<server>)/grub/grub.cfg).
var efiFiles = []efiFile{
	{"shim-signed", "usr/lib/shim/shimx64.efi.signed.latest", manifest.Shim, false},
	{"grub-efi-amd64-signed", "usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed", manifest.Grub, false},
	// secure_boot: herd: the stub of herd's signed UKI (secureboot package).
	{"systemd-boot-efi", "usr/lib/systemd/boot/efi/linuxx64.efi.stub", manifest.Stub, true},
}

// EFIPackages are the packages the efi stage takes its binaries from; they
// are pinned in the recipe's lock file like the image's packages.
func EFIPackages() []string {
	out := make([]string, len(efiFiles))
	for i, f := range efiFiles {
		out[i] = f.pkg
	}
	return out
}

// wantsEFI says whether the recipe's archive has the Secure Boot packages
// (Ubuntu on x86-64).
func (b *builder) wantsEFI() bool { return b.recipe.Distribution == "ubuntu" }

// resolveEFI asks apt (against the same verified indices as the image) which
// versions of the EFI packages to take: the lock's when it has them, else
// the archive's candidate. The answer is cached per index fetch like the
// image's resolution.
func (b *builder) resolveEFI(ctx context.Context, keyring, stamp string, lock recipe.Lock) (map[string]string, error) {
	if !b.wantsEFI() {
		return nil, nil
	}
	// The answer depends only on the indices and the lock: cached per fetch
	// of the indices, so a no-change rebuild runs no apt at all.
	var all []string
	for _, f := range efiFiles {
		all = append(all, f.pkg+"="+lock[f.pkg])
	}
	cache := filepath.Join(b.resolvedDir(), "efi-"+hashKey(stamp, strings.Join(all, " "))+".json")
	if !b.refresh() {
		if data, err := os.ReadFile(cache); err == nil {
			var m map[string]string
			if json.Unmarshal(data, &m) == nil && len(m) > 0 {
				return m, nil
			}
		}
	}
	var specs []string
	for _, f := range efiFiles {
		p := f.pkg
		if f.optional && !b.hasPackage(ctx, keyring, p) {
			fmt.Fprintf(b.log, "efi: %s is not in the recipe's components (%s): the image gets no %s (secure_boot: herd needs it)\n",
				p, strings.Join(b.recipe.Components, ", "), f.artifact)
			continue
		}
		if v := lock[p]; v != "" {
			specs = append(specs, p+"="+v)
		} else {
			specs = append(specs, p)
		}
	}
	out, err := b.aptTree(ctx, keyring, append([]string{"apt-get", "install", "-s", "-q", "--no-install-recommends"}, specs...)...)
	if err != nil {
		if m := versionNotFoundRE.FindStringSubmatch(string(out)); m != nil {
			return nil, &PinDriftError{Package: m[2], Wanted: m[1], Source: "lock file " + b.recipe.LockPath()}
		}
		return nil, fmt.Errorf("resolve the Secure Boot packages %s: %w: %s", strings.Join(specs, " "), err, lastLines(string(out), 5))
	}
	inst := parseInst(out)
	got := map[string]string{}
	for _, spec := range specs {
		p, _, _ := strings.Cut(spec, "=")
		v, ok := inst[p]
		if !ok {
			return nil, fmt.Errorf("resolve the Secure Boot packages: apt would not take %s", p)
		}
		if w := lock[p]; w != "" && w != v {
			return nil, &PinDriftError{Package: p, Wanted: w, Source: "lock file " + b.recipe.LockPath(), Archive: v}
		}
		got[p] = v
	}
	if data, err := json.Marshal(got); err == nil && os.MkdirAll(b.resolvedDir(), 0o755) == nil {
		if err := atomicfile.WriteFile(cache, data, 0o644); err != nil {
			fmt.Fprintf(b.log, "warning: EFI resolution not cached: %v\n", err)
		}
	}
	return got, nil
}

// hasPackage says whether the build's apt indices know package p.
func (b *builder) hasPackage(ctx context.Context, keyring, p string) bool {
	out, err := b.aptTree(ctx, keyring, "apt-cache", "show", "--no-all-versions", p)
	return err == nil && bytes.Contains(out, []byte("Package: "+p))
}

// aptTree runs an apt command against the build's apt tree (apt-tree/).
func (b *builder) aptTree(ctx context.Context, keyring string, args ...string) ([]byte, error) {
	return b.aptTreeIn(ctx, "", keyring, args...)
}

// efi fetches the pinned EFI packages into <state>/debs (apt checks them
// against the signed indices) and extracts shim and GRUB into out.
func (b *builder) efi(ctx context.Context, out, keyring string, versions map[string]string) error {
	debs := filepath.Join(b.state, "debs")
	for _, f := range efiFiles {
		v, ok := versions[f.pkg]
		if !ok && f.optional {
			continue
		}
		deb := filepath.Join(debs, fmt.Sprintf("%s_%s_amd64.deb", f.pkg, strings.ReplaceAll(v, ":", "%3a")))
		if _, err := os.Stat(deb); err != nil {
			// apt-get download writes into the working directory; a
			// partial file never gets the final name.
			dl := filepath.Join(out, "..", "download")
			if err := os.MkdirAll(dl, 0o755); err != nil {
				return err
			}
			cmdOut, err := b.aptTreeIn(ctx, dl, keyring, "apt-get", "download", "-q", f.pkg+"="+v)
			if err != nil {
				return fmt.Errorf("download %s=%s: %w: %s", f.pkg, v, err, lastLines(string(cmdOut), 5))
			}
			got, _ := filepath.Glob(filepath.Join(dl, f.pkg+"_*.deb"))
			if len(got) != 1 {
				return fmt.Errorf("download %s=%s: apt left %d files", f.pkg, v, len(got))
			}
			if err := os.Rename(got[0], deb); err != nil {
				if err := atomicfile.Copy(got[0], deb, 0o644); err != nil {
					return fmt.Errorf("keep %s in the .deb cache: %w", f.pkg, err)
				}
			}
		}
		x := filepath.Join(out, "..", "x-"+f.pkg)
		if o, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, x).CombinedOutput(); err != nil {
			return fmt.Errorf("extract %s: %v: %s", deb, err, o)
		}
		if err := atomicfile.Copy(filepath.Join(x, f.path), filepath.Join(out, f.artifact), 0o644); err != nil {
			return fmt.Errorf("%s: %s has no %s: %w", f.artifact, f.pkg, f.path, err)
		}
	}
	var rec strings.Builder
	for _, p := range sortedKeys(versions) {
		fmt.Fprintf(&rec, "%s\t%s\n", p, versions[p])
	}
	return os.WriteFile(filepath.Join(out, "efi-packages.tsv"), []byte(rec.String()), 0o644)
}

// aptTreeIn runs an apt command against the build's apt tree (apt-tree/)
// in dir ("": the current directory).
func (b *builder) aptTreeIn(ctx context.Context, dir, keyring string, args ...string) ([]byte, error) {
	tree := b.treeDir()
	a := []string{"-o", "Dir=" + tree, "-o", "Dir::State::status=" + filepath.Join(tree, "var/lib/dpkg/status"),
		"-o", "Dir::Etc::Trusted=" + keyring, "-o", "Debug::NoLocking=true",
		"-o", "Dir::State::Lists=" + filepath.Join(tree, "var/lib/apt/lists"),
		// The download runs as root into a directory _apt cannot write.
		"-o", "APT::Sandbox::User=root"}
	cmd := exec.CommandContext(ctx, args[0], append(a, args[1:]...)...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	err := cmd.Run()
	fmt.Fprintf(b.log, "+ %s\n%s", strings.Join(cmd.Args, " "), out.String())
	return out.Bytes(), err
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// checkModuleSigners fails the build when the image's NVIDIA modules are not
// signed by a key built into the image's kernel (inspect.KernelKeys): with
// Secure Boot the kernel would refuse them and GPU nodes would come up
// without a driver (the mismatch a kernel bump without its matching
// linux-modules-nvidia package causes). Only for recipes with a driver.
func checkModuleSigners(rootfs, abi string, driver bool) error {
	if !driver {
		return nil
	}
	rep, err := inspect.File(rootfs)
	if err != nil {
		return fmt.Errorf("check the NVIDIA modules' signatures: %w", err)
	}
	found := false
	for _, k := range rep.Kernels {
		if k.ABI != abi {
			continue
		}
		if k.KernelError != "" {
			return fmt.Errorf("kernel %s: %s", abi, k.KernelError)
		}
		for _, m := range k.NVIDIA {
			found = true
			switch {
			case m.Error != "":
				return fmt.Errorf("NVIDIA module %s: %s", m.Path, m.Error)
			case !m.Signed:
				return fmt.Errorf("NVIDIA module %s is not signed: kernel %s would refuse it with Secure Boot on", m.Path, abi)
			case !m.Trusted:
				return fmt.Errorf("NVIDIA module %s is signed by %s, which is not among kernel %s's built-in keys (%s): it would not load with Secure Boot on; pin linux-modules-nvidia for this kernel",
					m.Path, m.Signer, abi, strings.Join(k.Keys, "; "))
			}
		}
	}
	if !found {
		return fmt.Errorf("the recipe has a driver but kernel %s has no nvidia module", abi)
	}
	return nil
}
