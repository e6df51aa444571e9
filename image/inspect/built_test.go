package inspect_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/herdlab/herd/image/inspect"
	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/testlab"
)

// TestInspectBuiltImages inspects the real images of the shared test store
// and checks them against their manifests. It builds the small test recipe
// itself (a stage-cache hit when image/build's tests already did), so it
// never depends on the order packages are tested in.
func TestInspectBuiltImages(t *testing.T) {
	testlab.MinimalImage(t)
	imgs, err := store.ReadOnly(testlab.TestStore).List()
	if err != nil {
		t.Fatal(err)
	}
	for _, im := range imgs {
		sq := filepath.Join(im.Dir, manifest.Rootfs)
		m := im.Manifest
		r, err := inspect.File(sq)
		if err != nil {
			t.Error(err)
			continue
		}
		t.Logf("%s: %s, kernels %d, nvidia %q", m.ID, r.OS, len(r.Kernels), r.NVIDIAVersion())
		if r.OSRelease["ID"] != "ubuntu" || r.OSRelease["VERSION_ID"] != "24.04" {
			t.Errorf("%s: os-release %v", m.ID, r.OSRelease)
		}
		found := false
		for _, k := range r.Kernels {
			if k.ABI == m.KernelABI {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: no module tree for the manifest's kernel %s: %+v", m.ID, m.KernelABI, r.Kernels)
		}
		// The module's version= is the upstream driver version (580.178.04),
		// the manifest has the package version (580.178.04-0ubuntu0.24.04.1).
		if m.NVIDIA != "" {
			v := r.NVIDIAVersion()
			if v == "" || !strings.HasPrefix(m.NVIDIA, v) {
				t.Errorf("%s: nvidia module %q, manifest says %q", m.ID, v, m.NVIDIA)
			}
		}
	}
}
