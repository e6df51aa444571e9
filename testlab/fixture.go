package testlab

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/herdlab/herd/internal/testenv"
)

var minimalOnce struct {
	sync.Once
	dir string
	err error
}

// MinimalImage builds (or, through the stage cache, finds) the small test
// recipe recipes/test-noble-minimal.yaml in the shared TestStore with
// `herd image build` and returns its image directory, so a test that reads a
// real image never depends on another package's tests having built one
// first. It needs what a build needs (root, mmdebstrap, squashfs-tools,
// HERD_BIN) and is skipped under -short.
func MinimalImage(t testing.TB) string {
	t.Helper()
	testenv.Long(t)
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "mmdebstrap", "mksquashfs", "unsquashfs", "gpg", "unshare")
	herd := testenv.Bin(t, "HERD_BIN")
	testenv.Bin(t, "HERD_BOOT_BIN")
	minimalOnce.Do(func() {
		_, self, _, _ := runtime.Caller(0)
		recipe := filepath.Join(filepath.Dir(self), "..", "recipes", "test-noble-minimal.yaml")
		tmp, err := os.MkdirTemp("", "herd-minimal-")
		if err != nil {
			minimalOnce.err = err
			return
		}
		defer func() {
			if minimalOnce.err == nil { // a failed build's log stays for the error message
				os.RemoveAll(tmp)
			}
		}()
		// No site file: the built-in defaults (the autofs and LDAP overlays
		// are left out), as a fresh `herd image build` does.
		minimalOnce.dir, minimalOnce.err = BuildImage(context.Background(), herd, TestStore, recipe,
			filepath.Join(tmp, "no-site.yaml"), filepath.Join(tmp, "build.log"))
	})
	if minimalOnce.err != nil {
		t.Fatal(minimalOnce.err)
	}
	return minimalOnce.dir
}
