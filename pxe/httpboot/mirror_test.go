package httpboot_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/image/manifest"
	"github.com/herdlab/herd/image/nodeboot"
	"github.com/herdlab/herd/internal/testenv"
	"github.com/herdlab/herd/pxe/httpboot"
	"github.com/herdlab/herd/pxe/inventory"
	"github.com/herdlab/herd/site"
	"github.com/herdlab/herd/testlab"
)

// TestImageThroughCachingProxy: with server.image_mirror pointing at an nginx
// proxy_cache in front of herd (both in a test namespace), a node's boot
// script sends it to the proxy for the image; the first node's image bytes
// come through the proxy from herd (MISS), the second node's from nginx's
// cache (HIT in nginx's log), herd serves the image once. The proxy needs no
// caching rules of its own: herd's strong ETag and Cache-Control immutable
// are what make it cache. The "nodes" are the node agent's own downloader
// (nodeboot.Downloader, what herd-boot runs in the initramfs) fed with the
// URL and sha256 from the boot script; no QEMU boot, to keep it short.
//
// Attacker: whoever controls the mirror (a rack cache that was broken into,
// or a poisoned cache). The test rewrites the cached image in nginx's cache
// and checks that the next node refuses it: the sha256 it trusts comes from
// herd's script, not from the mirror.
func TestImageThroughCachingProxy(t *testing.T) {
	testenv.RequireNetns(t)
	testenv.RequireCommands(t, "nginx")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ns, err := testlab.NewNetns("mirror")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()

	state := t.TempDir()
	id, rootfs := publish(t, state, 4<<20)
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp4", "127.0.0.1:0"); return err }); err != nil {
		t.Fatal(err)
	}
	herdPort := ln.Addr().(*net.TCPAddr).Port
	const proxyPort = 18090 // the namespace is ours: nothing else listens in it
	cfg, err := site.Parse("herd.yaml", []byte(fmt.Sprintf(`server:
  address: 127.0.0.1
  http_port: %d
  image_mirror: http://127.0.0.1:%d/
dhcp: {mode: "off"}
overlays: []
nodes:
  - {name: gpu1, mac: "52:54:00:aa:cc:01"}
  - {name: gpu2, mac: "52:54:00:aa:cc:02"}
  - {name: gpu3, mac: "52:54:00:aa:cc:03"}
`, herdPort, proxyPort)))
	if err != nil {
		t.Fatal(err)
	}
	inv, err := inventory.Load(state)
	if err != nil {
		t.Fatal(err)
	}
	var herdLog testenv.Buffer
	srv, err := httpboot.New(cfg, httpboot.Options{StateDir: state, Images: httpboot.StateImages{StateDir: state}, Inventory: inv,
		Render: func(*site.Config, *site.Node, httpboot.Secrets, string) ([]httpboot.RuntimeFile, error) {
			return nil, nil
		},
		Log: slog.New(slog.NewJSONHandler(&herdLog, nil))})
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv}
	go hs.Serve(ln)
	defer hs.Shutdown(context.Background())

	// nginx as a rack's caching proxy: proxy_cache and nothing that would
	// make it cache on its own (no proxy_cache_valid, no ignore_headers).
	dir := t.TempDir()
	conf := filepath.Join(dir, "nginx.conf")
	accessLog := filepath.Join(dir, "access.log")
	cacheDir := filepath.Join(dir, "cache")
	os.WriteFile(conf, []byte(fmt.Sprintf(`daemon off;
worker_processes 1;
user root; # t.TempDir's parents are 0700: the default worker user could not write the cache
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 64; }
http {
  log_format cache '$request_uri $upstream_cache_status $status $body_bytes_sent';
  access_log %[2]s cache;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  proxy_cache_path %[3]s keys_zone=images:1m max_size=1g;
  server {
    listen 127.0.0.1:%[4]d;
    location /images/ {
      proxy_pass http://127.0.0.1:%[5]d;
      proxy_cache images;
    }
  }
}
`, dir, accessLog, cacheDir, proxyPort, herdPort)), 0o644)
	nginx := ns.Command(ctx, "nginx", "-p", dir, "-c", conf)
	nginxOut, _ := os.Create(filepath.Join(dir, "nginx.out"))
	nginx.Stdout, nginx.Stderr = nginxOut, nginxOut
	if err := nginx.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { nginx.Process.Kill(); nginx.Wait() }()
	client := ns.HTTPClient()
	waitUp(t, client, fmt.Sprintf("http://127.0.0.1:%d/", proxyPort), dir)

	// Each node asks herd for its script and downloads what it names.
	boot := func(mac string) (url string, err error) {
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/boot/%s.ipxe", herdPort, mac))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		m := regexp.MustCompile(`herd\.image=(\S+) herd\.sha256=([0-9a-f]{64})`).FindStringSubmatch(string(b))
		if m == nil {
			t.Fatalf("script for %s names no image:\n%s", mac, b)
		}
		if !strings.HasPrefix(m[1], fmt.Sprintf("http://127.0.0.1:%d/images/%s/", proxyPort, id)) {
			t.Fatalf("script sends the node to %s, not to the mirror", m[1])
		}
		if !strings.Contains(string(b), fmt.Sprintf("herd.server=http://127.0.0.1:%d ", herdPort)) ||
			!strings.Contains(string(b), fmt.Sprintf("http://127.0.0.1:%d/images/%s/initrd.img", herdPort, id)) {
			t.Fatalf("overlay, events, kernel and initrd must stay with herd:\n%s", b)
		}
		cache := nodeboot.ImageDir{Dir: t.TempDir()}
		d := &nodeboot.Downloader{Client: client, Attempts: 2, Backoff: 10 * time.Millisecond}
		if err := d.Fetch(ctx, m[1], m[2], cache); err != nil {
			return m[1], err
		}
		got, err := os.ReadFile(cache.Path(m[2]))
		if err != nil || string(got) != string(rootfs) {
			t.Fatalf("node %s: image bytes differ from the published image (%v)", mac, err)
		}
		return m[1], nil
	}
	if _, err := boot("52:54:00:aa:cc:01"); err != nil {
		t.Fatal(err)
	}
	if _, err := boot("52:54:00:aa:cc:02"); err != nil {
		t.Fatal(err)
	}
	path := "/images/" + id + "/" + manifest.Rootfs
	logText := func() string { b, _ := os.ReadFile(accessLog); return string(b) }
	for _, want := range []string{path + " MISS 200 ", path + " HIT 200 "} {
		if !strings.Contains(logText(), want) {
			t.Fatalf("nginx log lacks %q:\n%s", want, logText())
		}
	}
	if n := strings.Count(herdLog.String(), `"path":"`+path+`"`); n != 1 {
		t.Errorf("herd served the image %d times, want once (the second node from the cache):\n%s", n, herdLog.String())
	}

	// Herd's headers: strong ETag (the sha256), immutable, 304 on a match.
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d%s", herdPort, path), nil)
	m, _ := manifest.Read(filepath.Join(state, "images", id))
	req.Header.Set("If-None-Match", `"`+m.Artifacts[manifest.Rootfs].SHA256+`"`)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotModified || !strings.Contains(resp.Header.Get("Cache-Control"), "immutable") ||
		resp.Header.Get("ETag") != `"`+m.Artifacts[manifest.Rootfs].SHA256+`"` {
		t.Errorf("conditional GET: %d, ETag %q, Cache-Control %q", resp.StatusCode, resp.Header.Get("ETag"), resp.Header.Get("Cache-Control"))
	}

	// The attack: the mirror's cached copy is rewritten (same length).
	poisoned := 0
	filepath.Walk(cacheDir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return nil
		}
		b, _ := os.ReadFile(p)
		if i := strings.Index(string(b), string(rootfs[:64])); i >= 0 {
			b[i+len(rootfs)/2] ^= 0xff
			os.WriteFile(p, b, 0o600)
			poisoned++
		}
		return nil
	})
	if poisoned != 1 {
		t.Fatalf("found %d cached copies of the image in nginx's cache, want 1", poisoned)
	}
	if _, err := boot("52:54:00:aa:cc:03"); !errors.Is(err, nodeboot.ErrChecksum) {
		t.Fatalf("a node took the poisoned image from the mirror: err = %v", err)
	}
	if !strings.Contains(logText(), path+" HIT 200 ") {
		t.Fatal("the poisoned copy did not come from the cache")
	}
}

// publish writes a published image with random artifacts into state and
// makes it current; it returns the ID and the rootfs bytes.
func publish(t *testing.T, state string, size int) (string, []byte) {
	t.Helper()
	tmp := filepath.Join(state, "tmp", "publish")
	os.MkdirAll(tmp, 0o755)
	m := &manifest.Manifest{Created: time.Now().UTC(), Recipe: "test", KernelABI: "6.8.0-149-generic", Artifacts: map[string]manifest.Artifact{}}
	var rootfs []byte
	for name, n := range map[string]int{manifest.Kernel: 1 << 16, manifest.Initrd: 1 << 16, manifest.Rootfs: size} {
		b := make([]byte, n)
		rand.Read(b)
		if name == manifest.Rootfs {
			rootfs = b
		}
		p := filepath.Join(tmp, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		a, err := manifest.HashFile(p)
		if err != nil {
			t.Fatal(err)
		}
		m.Artifacts[name] = a
	}
	m.ID = m.ComputeID()
	if err := m.Write(tmp); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(state, "images"), 0o755)
	if err := os.Rename(tmp, filepath.Join(state, "images", m.ID)); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(state, "current"), []byte(m.ID+"\n"), 0o644)
	return m.ID, rootfs
}

func waitUp(t *testing.T, c *http.Client, url, dir string) {
	t.Helper()
	for i := 0; i < 100; i++ {
		if resp, err := c.Get(url); err == nil {
			resp.Body.Close()
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "nginx.out"))
	e, _ := os.ReadFile(filepath.Join(dir, "error.log"))
	t.Fatalf("nginx did not come up:\n%s\n%s", b, e)
}
