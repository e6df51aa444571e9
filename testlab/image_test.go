package testlab

import (
	"os"
	"path/filepath"
	"testing"
)

// A failed lab keeps its logs and loses only its big files.
func TestDropBulky(t *testing.T) {
	d := t.TempDir()
	write := func(rel string, size int) string {
		p := filepath.Join(d, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	disk := write("vms/gpu01/ssd.qcow2", 4096)
	img := write("state/images/abc/rootfs.squashfs", 1000)
	log := write("vms/gpu01/console.log", 999)
	srv := write("server.log", 10)
	if err := os.Symlink(disk, filepath.Join(d, "link")); err != nil {
		t.Fatal(err)
	}
	n, freed, err := dropBulky(d, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 || freed != 5096 {
		t.Errorf("dropBulky = %d files, %d bytes; want 2, 5096", n, freed)
	}
	for _, p := range []string{disk, img} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s still there (%v)", p, err)
		}
	}
	for _, p := range []string{log, srv} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}
