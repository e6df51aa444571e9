package qemutests

// Per-read verification on TestLab's lab, last of all (HACKING.md
// "Verification per read"): gpu01 runs generation N+1, which the rollout
// (rollout_test.go) brought it as a delta of N (the figure is measured
// there); one byte of the cached N+1 changes on the SSD, a read of the file
// there fails with EIO, the node reports it and drops the cached copy.
//
// The boot after that, which fetches the image again, is image/nodeboot's
// TestQEMUCacheLifecycle (the same agent on the small image): one TCG boot
// of the GPU image fewer on the suite's longest test. RAM mode (a node with
// no disk) is covered there too, by TestQEMUNoDiskBootsFromRAM.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/verity"
	"github.com/herdlab/herd/testlab"
)

// deltaPackage is the one package generation N+1 adds to the lab's recipe.
const deltaPackage = "tree"

// nextGeneration builds the lab's recipe with deltaPackage added (same
// site, so the same overlays) into the test store and returns its image
// directory.
func nextGeneration(herd string) (string, error) {
	src, err := os.ReadFile(defaultRecipe)
	if err != nil {
		return "", err
	}
	r := strings.Replace(string(src), "\npackages:\n", "\npackages:\n  - "+deltaPackage+"\n", 1)
	r = strings.Replace(r, "\nname: ubuntu-noble-gpu\n", "\nname: ubuntu-noble-gpu-delta\n", 1)
	if r == string(src) || !strings.Contains(r, "name: ubuntu-noble-gpu-delta\n") || strings.Count(r, "  - "+deltaPackage+"\n") != 1 {
		return "", fmt.Errorf("cannot derive generation N+1 from %s (is %s already in it?)", defaultRecipe, deltaPackage)
	}
	tmp, err := os.MkdirTemp("", "herd-next-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	recipe := filepath.Join(tmp, "ubuntu-noble-gpu-delta.yaml")
	site := filepath.Join(tmp, "herd.yaml")
	if err := os.WriteFile(recipe, []byte(r), 0o644); err != nil {
		return "", err
	}
	if err := testlab.WriteLabSite(site); err != nil {
		return "", err
	}
	return testlab.BuildImage(context.Background(), herd, testlab.TestStore, recipe, site, filepath.Join(tmp, "build.log"))
}

// accessRE matches herd serve's access log line (-v) of one request.
var accessRE = regexp.MustCompile(`msg="http request" .*\bremote=(\S+) method=GET path=(\S+) .*\bstatus=(\d+) bytes=(\d+)`)

// fetched sums what the server sent ip for an image: chunk requests, the
// image's rootfs.squashfs and its rootfs.index; rootfs counts its requests.
func fetched(log, ip, id string) (chunkBytes, rootfsBytes, indexBytes int64, chunkReqs, rootfsReqs int) {
	for _, l := range strings.Split(log, "\n") {
		m := accessRE.FindStringSubmatch(l)
		if m == nil || m[1] != ip {
			continue
		}
		n, _ := strconv.ParseInt(m[4], 10, 64)
		switch {
		case strings.HasPrefix(m[2], "/chunks/"):
			chunkBytes += n
			chunkReqs++
		case m[2] == "/images/"+id+"/"+manifest.Rootfs:
			rootfsBytes += n
			rootfsReqs++
		case m[2] == "/images/"+id+"/rootfs.index":
			indexBytes += n
		}
	}
	return
}

func verityChecks(t *testing.T, ctx context.Context, lab *testlab.Lab, nodes map[string]*testlab.Booted) {
	g := nodes["gpu01"]
	if rolledOut == nil {
		t.Fatal("generation N+1 was not rolled out (see rollout)")
	}
	m, next := rolledOut.Manifest, rolledOut.ID
	rootfs := filepath.Join(rolledOut.Dir, manifest.Rootfs)
	out, err := g.User.Run(ctx, "cat /proc/cmdline; command -v "+deltaPackage)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(out, "herd.id="+next+" ") || !strings.Contains(out, "/"+deltaPackage+"\n") {
		t.Fatalf("gpu01 does not run generation N+1 (%s with %s):\n%s", next, deltaPackage, out)
	}

	t.Run("flipped-byte-is-EIO-and-reported", func(t *testing.T) {
		v := verity.FromManifest(m)
		if v == nil {
			t.Fatal("generation N+1 has no dm-verity tree")
		}
		path, off := storedBytes(t, rootfs, int64(v.DataBlocks)*verity.BlockSize)
		cached := "/var/cache/herd/images/" + m.Artifacts[manifest.Rootfs].SHA256 + ".squashfs"
		orig, err := g.User.Sudo(ctx, fmt.Sprintf("od -An -tu1 -j %d -N1 %s", off, cached))
		if err != nil {
			t.Fatalf("%v\n%s", err, orig)
		}
		b, err := strconv.Atoi(strings.TrimSpace(orig))
		if err != nil {
			t.Fatalf("byte at %d of %s: %q", off, cached, orig)
		}
		// One byte, through the SSD's file system, then no cached copy of
		// the block anywhere above it: the next read comes from the SSD.
		if out, err := g.User.Sudo(ctx, fmt.Sprintf(`printf '\%03o' | dd of=%s bs=1 seek=%d count=1 conv=notrunc status=none && sync && echo 3 > /proc/sys/vm/drop_caches`, b^0x5a, cached, off)); err != nil {
			t.Fatalf("flip a byte: %v\n%s", err, out)
		}
		before := len(lab.ServerLogText())
		out, err := g.User.Run(ctx, "cat /"+path+" > /dev/null")
		if err == nil || !strings.Contains(err.Error(), "Input/output error") {
			t.Fatalf("reading /%s after a byte of its data changed on the SSD: err %v, want an I/O error (dm-verity)\n%s", path, err, out)
		}
		// herd-verity.service reports it (signed) and drops the file.
		deadline := time.Now().Add(2 * time.Minute)
		var since string
		for {
			since = lab.ServerLogText()[before:]
			if regexp.MustCompile(`msg="boot event" .*\bnode=gpu01 .*\bstage=error .*dm-verity`).MatchString(since) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no dm-verity error event from gpu01 at the server within 2 minutes:\n%s", testlab.TailLines([]byte(since), 20))
			}
			time.Sleep(2 * time.Second)
		}
		if out, err := g.User.Sudo(ctx, "test ! -e "+cached+" && echo gone"); err != nil || out != "gone\n" {
			t.Errorf("the corrupt cached image was not removed: %v %q", err, out)
		}
	})
}

// storedBytes finds a file of the image whose data the squashfs holds
// verbatim (a zstd-compressed kernel module: squashfs stores such blocks
// uncompressed), returns its path and the offset in the image file of one
// byte of its data, inside the dm-verity data area (below limit). The 64
// bytes around it occur nowhere else in the image, so changing that byte
// changes this file's data and nothing else.
func storedBytes(t *testing.T, rootfs string, limit int64) (string, int64) {
	t.Helper()
	out, err := exec.Command("unsquashfs", "-ll", rootfs, "usr/lib/modules").Output()
	if err != nil {
		t.Fatalf("unsquashfs -ll: %v", err)
	}
	type cand struct {
		path string
		size int64
	}
	var cands []cand
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) < 6 || !strings.HasPrefix(f[0], "-") || !strings.HasSuffix(f[len(f)-1], ".ko.zst") {
			continue
		}
		n, _ := strconv.ParseInt(f[2], 10, 64)
		if n >= 1<<20 && !strings.Contains(f[len(f)-1], "nvidia") {
			cands = append(cands, cand{strings.TrimPrefix(f[len(f)-1], "squashfs-root/"), n})
		}
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].size > cands[j].size })
	for i, c := range cands {
		if i == 8 {
			break
		}
		data, err := exec.Command("unsquashfs", "-cat", rootfs, c.path).Output()
		if err != nil || len(data) < 1<<20 {
			continue
		}
		window := data[300000 : 300000+64]
		offs := findAll(t, rootfs, window)
		if len(offs) == 1 && offs[0]+32 < limit {
			return c.path, offs[0] + 32
		}
	}
	t.Fatalf("no kernel module of %s is stored verbatim (tried %d)", rootfs, min(len(cands), 8))
	return "", 0
}

// findAll returns the offsets of pat in the file (at most two).
func findAll(t *testing.T, path string, pat []byte) []int64 {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 16<<20)
	var offs []int64
	var base int64 // file offset of buf[0]
	keep := 0
	for {
		n, err := io.ReadFull(f, buf[keep:])
		n += keep
		for i := 0; ; {
			j := bytes.Index(buf[i:n], pat)
			if j < 0 {
				break
			}
			offs = append(offs, base+int64(i+j))
			if len(offs) > 1 {
				return offs
			}
			i += j + 1
		}
		if err != nil {
			return offs
		}
		keep = len(pat) - 1
		copy(buf, buf[n-keep:n])
		base += int64(n - keep)
	}
}
