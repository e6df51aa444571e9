package nodeboot

import (
	"bytes"
	"context"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/herdlab/herd/internal/testenv"
)

// The server is down for longer than one round of attempts: the agent says
// what failed and where, keeps retrying, and boots once the server is back.
// A different cached image is never accepted instead.
func TestObtainKeepsRetryingAndExplains(t *testing.T) {
	blob, sum := newBlob(t, mib)
	srv := &imageServer{blob: blob, failFirst: 5}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	sink := &eventSink{}
	es := httptest.NewServer(sink)
	defer es.Close()

	dir := ImageDir{Dir: t.TempDir()}
	_, other := newBlob(t, 16)
	must(t, os.WriteFile(dir.Path(other), []byte("another image"), 0o644))

	console := &testenv.Buffer{}
	s := &System{Console: console, RoundWait: 5 * time.Millisecond,
		Download: Downloader{Attempts: 2, Backoff: time.Millisecond, MaxBackoff: time.Millisecond}}
	p := &Params{Image: hs.URL + "/rootfs.squashfs", SHA256: sum, Server: es.URL, Keep: 2}
	rep := &Reporter{Server: es.URL, Console: console}
	path, err := s.obtain(context.Background(), p, rep, dir, true)
	if err != nil {
		t.Fatal(err)
	}
	if path != dir.Path(sum) {
		t.Errorf("path %s", path)
	}
	out := console.String()
	for _, want := range []string{
		"is not in the cache: downloading",
		"cannot get the root image",
		hs.URL + "/rootfs.squashfs",
		"503",
		"only the requested sha256 " + sum + " is acceptable",
		"Retrying in",
		"round 2",
		"download verified",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("console lacks %q:\n%s", want, out)
		}
	}
	errEvents := 0
	for _, e := range sink.events {
		if e.Stage == StageError {
			errEvents++
		}
	}
	if errEvents < 2 {
		t.Errorf("%d error events, want one per failed round", errEvents)
	}
	// Cached and verified now: the next boot does not contact the server
	// for the image even if the server is gone.
	hs.Close()
	console2 := &testenv.Buffer{}
	s.Console = console2
	rep.Console = console2
	if _, err := s.obtain(context.Background(), p, rep, dir, true); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(console2.String(), "booting it without downloading") {
		t.Errorf("console:\n%s", console2.String())
	}
}

// Cancelling (the node is shut down) ends the retry loop.
func TestObtainStopsOnCancel(t *testing.T) {
	_, sum := newBlob(t, 16)
	hs := httptest.NewServer(&imageServer{failFirst: 1 << 30})
	defer hs.Close()
	s := &System{RoundWait: time.Millisecond, Download: Downloader{Attempts: 1}}
	ctx, cancel := context.WithCancel(context.Background())
	s.Console = writerFunc(func(p []byte) (int, error) {
		if bytes.Contains(p, []byte("round 3")) {
			cancel()
		}
		return len(p), nil
	})
	_, err := s.obtain(ctx, &Params{Image: hs.URL + "/i", SHA256: sum}, &Reporter{Console: s.Console}, ImageDir{Dir: t.TempDir()}, false)
	if err == nil {
		t.Fatal("obtain returned an image from a server that never answers")
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
