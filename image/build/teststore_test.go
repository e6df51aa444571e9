package build

import (
	"context"
	"os"
	"path/filepath"
	"syscall"

	"github.com/herdlab/herd/image/manifest"
)

// dirStore is a minimal store for tests until image/store lands: flock,
// staging under tmp, publish by rename.
type dirStore struct{ state string }

func (s dirStore) Lock(ctx context.Context) (func(), error) {
	os.MkdirAll(s.state, 0o755)
	f, err := os.OpenFile(filepath.Join(s.state, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return nil, err
	}
	return func() { f.Close() }, nil
}

func (s dirStore) StagingDir() (string, error) {
	os.MkdirAll(filepath.Join(s.state, "tmp"), 0o755)
	return os.MkdirTemp(filepath.Join(s.state, "tmp"), "staging-")
}

func (s dirStore) Publish(staging string, m *manifest.Manifest) (string, error) {
	m.Artifacts = map[string]manifest.Artifact{}
	for _, a := range []string{manifest.Kernel, manifest.Initrd, manifest.Rootfs} {
		h, err := manifest.HashFile(filepath.Join(staging, a))
		if err != nil {
			return "", err
		}
		m.Artifacts[a] = h
	}
	m.ID = m.ComputeID()
	if err := m.Write(staging); err != nil {
		return "", err
	}
	os.MkdirAll(filepath.Join(s.state, "images"), 0o755)
	dst := filepath.Join(s.state, "images", m.ID)
	if _, err := os.Stat(dst); err == nil {
		return m.ID, os.RemoveAll(staging)
	}
	return m.ID, os.Rename(staging, dst)
}
