package inspect_test

import (
	"bytes"
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/herdlab/herd/image/inspect"
	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/testlab"
)

// The signers of a real built image: shim by Microsoft, GRUB and the kernel
// by Canonical, the kernel's built-in keys, and an in-tree module signed by
// one of them; the same module is untrusted once its key is taken out of
// the list, and has no signer once its signature is cut off.
func TestSignersOfBuiltImage(t *testing.T) {
	dir := testlab.MinimalImage(t)
	r, err := inspect.File(filepath.Join(dir, manifest.Rootfs))
	if err != nil {
		t.Fatal(err)
	}
	efi := map[string]string{}
	for _, e := range r.EFI {
		if e.Error != "" || len(e.Signers) == 0 {
			t.Errorf("%s: %s", e.Name, e.Error)
			continue
		}
		efi[e.Name] = e.Signers[0].String()
	}
	if !strings.Contains(efi[manifest.Shim], "O=Microsoft Corporation") {
		t.Errorf("shim signer %q, want Microsoft", efi[manifest.Shim])
	}
	if !strings.Contains(efi[manifest.Grub], "Canonical Ltd. Secure Boot Signing") {
		t.Errorf("GRUB signer %q, want Canonical", efi[manifest.Grub])
	}
	if len(r.Kernels) != 1 {
		t.Fatalf("kernels: %+v", r.Kernels)
	}
	k := r.Kernels[0]
	if k.KernelError != "" || len(k.Signers) == 0 || !strings.Contains(k.Signers[0].String(), "Canonical Ltd. Secure Boot Signing") {
		t.Errorf("kernel signers %v (%s)", k.Signers, k.KernelError)
	}
	if !strings.Contains(strings.Join(k.Keys, "\n"), "Canonical Ltd. Kernel Module Signing") {
		t.Errorf("kernel keys lack Canonical's module signing key: %v", k.Keys)
	}

	im, err := inspect.Open(filepath.Join(dir, manifest.Rootfs))
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	vmlinuz, err := im.ReadFile("/boot/vmlinuz-" + k.ABI)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := inspect.KernelKeys(vmlinuz)
	if err != nil {
		t.Fatal(err)
	}
	// Any module of the tree: the first one depmod lists.
	dep, err := im.ReadFile(k.Dir + "/modules.dep")
	if err != nil {
		t.Fatal(err)
	}
	first, _, _ := strings.Cut(string(dep), ":")
	zst, err := im.ReadFile(k.Dir + "/" + first)
	if err != nil || !strings.HasSuffix(first, ".ko.zst") {
		t.Fatalf("module %s: %v", first, err)
	}
	d, _ := zstd.NewReader(nil)
	mod, err := d.DecodeAll(zst, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, ok, err := inspect.ModuleSigner(keys, bytes.NewReader(mod), int64(len(mod)))
	if err != nil || !ok {
		t.Fatalf("%s: signer %v trusted %v err %v", first, s, ok, err)
	}
	var others []*x509.Certificate
	for _, c := range keys {
		if c.Issuer.String() != s.Issuer {
			others = append(others, c)
		}
	}
	if _, ok, _ := inspect.ModuleSigner(others, bytes.NewReader(mod), int64(len(mod))); ok {
		t.Errorf("module trusted without the key that signed it (%s)", s)
	}
	cut := mod[:bytes.LastIndex(mod, []byte{0x7f, 'E', 'L', 'F'})+1000]
	if _, _, err := inspect.ModuleSigner(keys, bytes.NewReader(cut), int64(len(cut))); err == nil {
		t.Error("a module with its signature cut off has a signer")
	}
}
