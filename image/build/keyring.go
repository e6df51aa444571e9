package build

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/herdlab/herd/image/recipe"
	"github.com/herdlab/herd/internal/atomicfile"
)

// ensureKeyring returns a keyring holding only the archive key with the
// recipe's pinned fingerprint, cached under <state>/keyrings/.
//
// The build host (Debian) has no keyring for the target distribution, so the
// first build fetches the keyring package from the archive itself without
// signature checks (mmdebstrap's extract variant with apt told to allow
// unauthenticated downloads, for that one package only) and then trusts
// nothing in it except the key gpg shows with the pinned fingerprint.
func (b *builder) ensureKeyring(ctx context.Context) (string, error) {
	r := b.recipe
	out := filepath.Join(b.state, "keyrings", r.Keyring.Fingerprint+".gpg")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return "", fmt.Errorf("keyring cache: %w", err)
	}
	dir, err := os.MkdirTemp(b.tmp, "keyring-")
	if err != nil {
		return "", fmt.Errorf("keyring: %w", err)
	}
	defer os.RemoveAll(dir)
	tree := filepath.Join(dir, "tree")
	args := []string{"--variant=extract", "--include=" + r.Keyring.Package,
		"--aptopt=Acquire::AllowInsecureRepositories \"true\"",
		"--aptopt=APT::Get::AllowUnauthenticated \"true\"",
		"--components=" + strings.Join(r.Components, ","), r.Suite, tree}
	args = append(args, b.mirrorArgs()...)
	if err := inMountNS(func() error { return run(command(ctx, b.log, "mmdebstrap", args...)) }); err != nil {
		return "", fmt.Errorf("fetch keyring package %s: %w", r.Keyring.Package, err)
	}
	key, err := exportKey(ctx, tree, r.Keyring.Fingerprint, dir)
	if err != nil {
		return "", fmt.Errorf("keyring package %s: %w", r.Keyring.Package, err)
	}
	if err := atomicfile.WriteFile(out, key, 0o644); err != nil {
		return "", err
	}
	fmt.Fprintf(b.log, "trusted key %s from package %s\n", r.Keyring.Fingerprint, r.Keyring.Package)
	return out, nil
}

// exportKey looks through every *.gpg keyring under tree and exports the key
// with fingerprint fpr alone, after gpg confirms the exported key carries it.
func exportKey(ctx context.Context, tree, fpr, scratch string) ([]byte, error) {
	home := filepath.Join(scratch, "gnupg")
	if err := os.Mkdir(home, 0o700); err != nil {
		return nil, err
	}
	var found []byte
	err := filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil || found != nil || d.IsDir() || !strings.HasSuffix(p, ".gpg") {
			return err
		}
		cmd := exec.CommandContext(ctx, "gpg", "--homedir", home, "--batch", "--no-default-keyring",
			"--keyring", p, "--export", fpr)
		cmd.Stderr = io.Discard
		key, err := cmd.Output()
		if err == nil && len(key) > 0 && hasFingerprint(ctx, home, key, fpr) {
			found = key
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if found == nil {
		return nil, fmt.Errorf("no key with the pinned fingerprint %s in it (check keyring.fingerprint)", fpr)
	}
	return found, nil
}

// hasFingerprint asks gpg which keys an exported blob holds.
func hasFingerprint(ctx context.Context, home string, key []byte, fpr string) bool {
	cmd := exec.CommandContext(ctx, "gpg", "--homedir", home, "--batch", "--with-colons", "--show-keys")
	cmd.Stdin = bytes.NewReader(key)
	out, err := cmd.Output()
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Split(line, ":")
		if len(f) > 9 && f[0] == "fpr" && strings.EqualFold(f[9], fpr) {
			return true
		}
	}
	return false
}

// mirrorArgs are mmdebstrap's trailing mirror arguments. With no mirror set
// mmdebstrap picks its own default for the suite and already adds the
// -updates and -security suites; a site mirror gets all three written out.
func (b *builder) mirrorArgs() []string {
	r := b.recipe
	if r.Mirror == "" {
		return nil
	}
	comps := strings.Join(r.Components, " ")
	var out []string
	for _, s := range []string{r.Suite, r.Suite + "-updates", r.Suite + "-security"} {
		out = append(out, fmt.Sprintf("deb %s %s %s", r.Mirror, s, comps))
	}
	return out
}

// ArchiveKeyring returns a keyring file holding only r's pinned archive key,
// fetched and checked as a build does and cached under state/keyrings/, for
// callers (tests) that run mmdebstrap for r's distribution themselves.
func ArchiveKeyring(ctx context.Context, r *recipe.Recipe, state string, log io.Writer) (string, error) {
	tmp := filepath.Join(state, "tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", fmt.Errorf("keyring: %w", err)
	}
	b := &builder{recipe: r, state: state, tmp: tmp, log: log}
	return b.ensureKeyring(ctx)
}
