package recipe

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herdlab/herd/internal/strictyaml"
)

const good = `name: t
distribution: ubuntu
suite: noble
components: [main, restricted]
keyring:
  package: ubuntu-keyring
  fingerprint: F6ECB3762474EDA9D21B7022871920D1991BC93C
kernel:
  abi: 6.8.0-149
nvidia:
  branch: "580"
  version: 580.178.04-0ubuntu0.24.04.1
base: [autofs, sudo=1.9.15p5-3ubuntu5]
packages: [htop]
initramfs:
  modules: [virtio_net]
`

func TestShippedRecipesParse(t *testing.T) {
	for _, f := range []string{"ubuntu-noble-gpu.yaml", "test-noble-minimal.yaml"} {
		r, err := Load(filepath.Join("..", "..", "recipes", f), nil)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if r.KernelRelease() != "6.8.0-149-generic" {
			t.Errorf("%s: kernel %s", f, r.KernelRelease())
		}
	}
	r, _ := Load("../../recipes/ubuntu-noble-gpu.yaml", nil)
	want := []string{"linux-modules-nvidia-580-server-6.8.0-149-generic",
		"nvidia-headless-no-dkms-580-server=580.178.04-0ubuntu0.24.04.1",
		"nvidia-utils-580-server=580.178.04-0ubuntu0.24.04.1"}
	var got []string
	for _, p := range r.DriverPackages() {
		got = append(got, p.Spec())
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("driver packages %v, want %v", got, want)
	}
}

func TestGoodRecipeAndOverrides(t *testing.T) {
	r, err := Parse("t.yaml", []byte(good), []string{"nvidia.version=580.999-1", "kernel.abi=6.8.0-150"})
	if err != nil {
		t.Fatal(err)
	}
	if r.NVIDIA.Version != "580.999-1" || r.NVIDIA.Flavour != "server" || r.KernelRelease() != "6.8.0-150-generic" {
		t.Fatalf("overrides not applied: %+v %+v", r.NVIDIA, r.Kernel)
	}
	base := r.BasePackages()
	if base[0].Name != "linux-image-6.8.0-150-generic" || base[len(base)-1].Spec() != "sudo=1.9.15p5-3ubuntu5" {
		t.Fatalf("base packages %v", base)
	}
	if ex := r.ExtraPackages(); len(ex) != 1 || ex[0].Name != "htop" {
		t.Fatalf("extra packages %v", ex)
	}
	var all []string
	for _, p := range r.AllPinned() {
		all = append(all, p.Name)
	}
	if !strings.Contains(strings.Join(all, " "), "autofs htop linux-image") {
		t.Fatalf("all pinned %v", all)
	}
	r2, _ := Parse("t.yaml", []byte(good), nil)
	if r.SHA256 == r2.SHA256 {
		t.Fatal("overrides must change the recipe hash")
	}
}

// Each bad recipe must fail with file:line:col and the field named.
func TestRecipeErrors(t *testing.T) {
	cases := []struct {
		name, yaml string
		set        []string
		want       string // substring of the error
	}{
		{"unknown field", strings.Replace(good, "suite: noble", "suite: noble\nsuit: noble", 1), nil, "t.yaml:4:1: field suit: unknown field"},
		{"wrong type", strings.Replace(good, "components: [main, restricted]", "components: main", 1), nil, "t.yaml:4:13: field components: expected a list"},
		{"missing required", strings.Replace(good, "suite: noble\n", "", 1), nil, "field suite: required field \"suite\" is missing"},
		{"missing nested", strings.Replace(good, "  abi: 6.8.0-149\n", "  flavour: generic\n", 1), nil, "field kernel.abi: required field \"abi\" is missing"},
		{"bad abi", good, []string{"kernel.abi=6.8"}, "--set: field kernel.abi: \"6.8\" is not an exact kernel ABI"},
		{"bad fingerprint", strings.Replace(good, "F6ECB3762474EDA9D21B7022871920D1991BC93C", "F6EC", 1), nil, "t.yaml:7:16: field keyring.fingerprint"},
		{"version off branch", good, []string{"nvidia.version=570.1-1"}, "field nvidia.version: version \"570.1-1\" is not on branch 580"},
		{"bad package", strings.Replace(good, "autofs,", "Auto FS,", 1), nil, "t.yaml:13:8: field base[0]"},
		{"package in both lists", strings.Replace(good, "[htop]", "[htop, autofs]", 1), nil, "t.yaml:14:18: field packages[1]: package \"autofs\" is listed twice (also in base)"},
		{"apt in packages", good, []string{"packages=[apt]"}, "field packages[0]: apt is installed by the bootstrap stage"},
		{"driver in packages", strings.Replace(good, "[htop]", "[htop, nvidia-utils-580-server]", 1), nil, "t.yaml:14:18: field packages[1]: nvidia-utils-580-server belongs to the NVIDIA driver"},
		{"bad --set syntax", good, []string{"nvidia.version"}, "--set: field nvidia.version: expected key=value"},
		{"bad --set path", good, []string{"packages.7=x"}, "--set: field packages.7: \"7\" is not an index"},
		{"bad --set type", good, []string{"kernel=1"}, "--set: field kernel: expected a mapping"},
		{"bad mirror", good, []string{"mirror=ftp.example"}, "field mirror: \"ftp.example\" is not an http://"},
		{"bad module", good, []string{"initramfs.modules.0=a b"}, "field initramfs.modules[0]"},
		{"syntax", good + "  bad: [\n", nil, "t.yaml:17:1: syntax error"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("t.yaml", []byte(c.yaml), c.set)
			if err == nil {
				t.Fatalf("no error; want %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not contain %q", err, c.want)
			}
			var fe *strictyaml.FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("error %T is not a FieldError", err)
			}
		})
	}
}

func TestLockRoundTripAndErrors(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.lock")
	if l, err := ReadLock(p); err != nil || l != nil {
		t.Fatalf("missing lock: %v %v", l, err)
	}
	l := Lock{"bb": "1.0-1", "aa": "2:3.4"}
	if err := l.Write(p, "x"); err != nil {
		t.Fatal(err)
	}
	got, err := ReadLock(p)
	if err != nil || len(got) != 2 || got["aa"] != "2:3.4" {
		t.Fatalf("round trip: %v %v", got, err)
	}
	data, _ := os.ReadFile(p)
	if !strings.Contains(string(data), "aa 2:3.4\nbb 1.0-1\n") {
		t.Fatalf("not sorted: %s", data)
	}
	_, err = ParseLock("x.lock", []byte("aa 1\nbb\n"))
	if err == nil || !strings.Contains(err.Error(), "x.lock:2:1") {
		t.Fatalf("bad line error: %v", err)
	}
	_, err = ParseLock("x.lock", []byte("aa 1\naa 2\n"))
	if err == nil || !strings.Contains(err.Error(), "x.lock:2:1: field aa: package listed twice") {
		t.Fatalf("dup error: %v", err)
	}
}
