package diff

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/herdlab/herd/image/manifest"
)

func TestDiffDriverBump(t *testing.T) {
	a := &manifest.Manifest{ID: "aaaa", Recipe: "gpu", Distribution: "ubuntu", Suite: "noble", KernelABI: "6.8.0-149-generic", NVIDIA: "580.95.05-0ubuntu0.24.04.1",
		Packages: map[string]string{"autofs": "5.1.9-1", "nvidia-utils-580-server": "580.95.05-0ubuntu0.24.04.1", "old-tool": "1.0"},
		Overlays: []manifest.OverlayFile{
			{Overlay: "base", Path: "/etc/motd", Mode: "0644", SHA256: "11"},
			{Overlay: "sssd", Path: "/etc/sssd/sssd.conf", Mode: "0600", SHA256: "22"},
			{Overlay: "base", Path: "/etc/gone", Mode: "0644", SHA256: "33"},
			{Overlay: "base", Path: "/etc/link", Mode: "0777", Link: "a"},
		}}
	b := &manifest.Manifest{ID: "bbbb", Recipe: "gpu", Distribution: "ubuntu", Suite: "noble", KernelABI: "6.8.0-149-generic", NVIDIA: "580.178.04-0ubuntu0.24.04.1",
		Packages: map[string]string{"autofs": "5.1.9-1", "nvidia-utils-580-server": "580.178.04-0ubuntu0.24.04.1", "new-tool": "2.0"},
		Overlays: []manifest.OverlayFile{
			{Overlay: "base", Path: "/etc/motd", Mode: "0644", SHA256: "11"},
			{Overlay: "sssd", Path: "/etc/sssd/sssd.conf", Mode: "0640", UID: 0, GID: 5, SHA256: "23"},
			{Overlay: "base", Path: "/etc/new", Mode: "0644", SHA256: "44"},
			{Overlay: "base", Path: "/etc/link", Mode: "0777", Link: "b"},
		}}
	a.Artifacts = map[string]manifest.Artifact{"rootfs.squashfs": {Size: 700 << 20}, "vmlinuz": {Size: 15 << 20}}
	b.Artifacts = map[string]manifest.Artifact{"rootfs.squashfs": {Size: 770 << 20}, "vmlinuz": {Size: 15 << 20}}
	r := Diff(a, b)
	if r.Size != (SizeChange{Old: 715 << 20, New: 785 << 20, Delta: 70 << 20}) {
		t.Errorf("size %+v", r.Size)
	}
	if r.Kernel != nil || r.Recipe != nil || r.Suite != nil {
		t.Errorf("unexpected changes: kernel %v recipe %v suite %v", r.Kernel, r.Recipe, r.Suite)
	}
	if r.NVIDIA == nil || r.NVIDIA.Old != a.NVIDIA || r.NVIDIA.New != b.NVIDIA {
		t.Errorf("nvidia change %+v", r.NVIDIA)
	}
	if !reflect.DeepEqual(r.Added, []Package{{"new-tool", "2.0"}}) || !reflect.DeepEqual(r.Removed, []Package{{"old-tool", "1.0"}}) {
		t.Errorf("added %v removed %v", r.Added, r.Removed)
	}
	if !reflect.DeepEqual(r.Changed, []Change{{Name: "nvidia-utils-580-server", Old: "580.95.05-0ubuntu0.24.04.1", New: "580.178.04-0ubuntu0.24.04.1"}}) {
		t.Errorf("changed %v", r.Changed)
	}
	if len(r.OverlaysAdded) != 1 || r.OverlaysAdded[0].Path != "/etc/new" || len(r.OverlaysRemoved) != 1 || r.OverlaysRemoved[0].Path != "/etc/gone" {
		t.Errorf("overlays added %v removed %v", r.OverlaysAdded, r.OverlaysRemoved)
	}
	if len(r.OverlaysChanged) != 2 || r.OverlaysChanged[0].Path != "/etc/link" || !reflect.DeepEqual(r.OverlaysChanged[0].What, []string{"link"}) ||
		r.OverlaysChanged[1].Path != "/etc/sssd/sssd.conf" || !reflect.DeepEqual(r.OverlaysChanged[1].What, []string{"content", "mode", "owner"}) {
		t.Errorf("overlays changed %+v", r.OverlaysChanged)
	}
	var buf bytes.Buffer
	if err := r.WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"image aaaa -> bbbb", "nvidia:  580.95.05-0ubuntu0.24.04.1 -> 580.178.04-0ubuntu0.24.04.1",
		"  + new-tool 2.0", "  - old-tool 1.0", "  ~ nvidia-utils-580-server 580.95.05-0ubuntu0.24.04.1 -> 580.178.04-0ubuntu0.24.04.1",
		"  ~ /etc/sssd/sssd.conf: content, mode, owner", "  + /etc/new (base)", "  - /etc/gone (base)",
		"size:    715.0 MiB -> 785.0 MiB (+70.0 MiB, +9.8%)"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, buf.String())
		}
	}
	js, _ := json.Marshal(r)
	var back Result
	if err := json.Unmarshal(js, &back); err != nil || !reflect.DeepEqual(&back, r) {
		t.Errorf("JSON round trip: %v\n%s", err, js)
	}
}

func TestDiffSame(t *testing.T) {
	a := &manifest.Manifest{ID: "x", KernelABI: "k", Packages: map[string]string{"a": "1"}}
	r := Diff(a, a)
	if !r.Empty() {
		t.Errorf("diff of an image with itself: %+v", r)
	}
	var buf bytes.Buffer
	r.WriteText(&buf)
	if !strings.Contains(buf.String(), "no differences") {
		t.Errorf("text: %s", buf.String())
	}
	// Kernel and driver appearing/disappearing are changes too.
	b := &manifest.Manifest{ID: "y", KernelABI: "k2", NVIDIA: "580.1", Packages: map[string]string{"a": "1"}}
	r = Diff(a, b)
	if r.Kernel == nil || r.Kernel.New != "k2" || r.NVIDIA == nil || r.NVIDIA.Old != "" {
		t.Errorf("kernel %+v nvidia %+v", r.Kernel, r.NVIDIA)
	}
	buf.Reset()
	r.WriteText(&buf)
	if !strings.Contains(buf.String(), "nvidia:  (none) -> 580.1") {
		t.Errorf("text: %s", buf.String())
	}
}
