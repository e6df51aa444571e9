package nodeboot

import (
	"strings"
	"testing"
)

const sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestParseCmdline(t *testing.T) {
	line := `BOOT_IMAGE=x initrd=initrd.img boot=herd ip=dhcp herd.image=http://10.0.0.1:8080/images/abc/rootfs.squashfs herd.sha256=` +
		strings.ToUpper(sha) + ` herd.id=abc herd.node=gpu1 herd.server=http://10.0.0.1:8080/ herd.cache=/dev/disk/by-id/nvme-X herd.keep=3 console=ttyS0 quiet herd.future=1 x="a b"`
	p, err := ParseCmdline(line)
	if err != nil {
		t.Fatal(err)
	}
	want := Params{Image: "http://10.0.0.1:8080/images/abc/rootfs.squashfs", SHA256: sha, ID: "abc", Node: "gpu1",
		Server: "http://10.0.0.1:8080", Cache: "/dev/disk/by-id/nvme-X", Keep: 3}
	if *p != want {
		t.Errorf("got %+v\nwant %+v", *p, want)
	}
	p, err = ParseCmdline("herd.image=http://h/i herd.sha256=" + sha)
	if err != nil {
		t.Fatal(err)
	}
	if p.Cache != "auto" || p.Keep != DefaultKeep || p.Server != "" || p.Verity != nil {
		t.Errorf("defaults: %+v", *p)
	}
	p, err = ParseCmdline("herd.image=http://h/i herd.sha256=" + sha + " herd.verity=" + strings.ToUpper(sha) + ":733")
	if err != nil {
		t.Fatal(err)
	}
	if p.Verity == nil || p.Verity.RootHash != sha || p.Verity.DataBlocks != 733 {
		t.Errorf("herd.verity: %+v", p.Verity)
	}
	p, err = ParseCmdline("herd.image=http://h/i herd.sha256=" + sha + " herd.index=http://h/x herd.index_sha256=" + strings.ToUpper(sha))
	if err != nil {
		t.Fatal(err)
	}
	if p.Index != "http://h/x" || p.IndexSHA256 != sha {
		t.Errorf("herd.index, herd.index_sha256: %q %q", p.Index, p.IndexSHA256)
	}
}

func TestParseCmdlineErrors(t *testing.T) {
	base := "herd.image=http://h/i herd.sha256=" + sha
	for _, c := range []struct{ line, want string }{
		{"herd.sha256=" + sha, "herd.image is missing"},
		{"herd.image=http://h/i", "herd.sha256 is missing"},
		{"herd.image=ftp://h/i herd.sha256=" + sha, "herd.image=\"ftp://h/i\""},
		{"herd.image=http://h/i herd.sha256=abc", "64 hex digits"},
		{"herd.image=http://h/i herd.sha256=" + strings.Repeat("g", 64), "64 hex digits"},
		{base + " herd.keep=0", "herd.keep"},
		{base + " herd.keep=two", "herd.keep"},
		{base + " herd.cache=sda", "herd.cache"},
		{base + " herd.server=nowhere", "herd.server"},
		{base + " herd.node", "herd.node has no value"},
		{base + " herd.verity=" + sha, "herd.verity"},
		{base + " herd.verity=" + sha + ":0", "herd.verity"},
		{base + " herd.verity=abc:12", "herd.verity"},
		{base + " herd.index_sha256=abc", "herd.index_sha256"},
	} {
		_, err := ParseCmdline(c.line)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: err = %v, want it to mention %q", c.line, err, c.want)
		}
	}
}

func FuzzParseCmdline(f *testing.F) {
	f.Add("herd.image=http://h/i herd.sha256=" + sha + " herd.keep=2")
	f.Add(`a="b c" herd.cache=none`)
	f.Fuzz(func(t *testing.T, line string) {
		p, err := ParseCmdline(line)
		if err == nil && (len(p.SHA256) != 64 || p.Keep < 1) {
			t.Fatalf("accepted invalid params %+v", p)
		}
	})
}
