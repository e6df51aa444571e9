package sdnotify

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// listen is systemd's side: a unixgram socket; it returns what arrives.
func listen(t *testing.T, name string) <-chan string {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ch := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			ch <- string(buf[:n])
		}
	}()
	return ch
}

func recv(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no datagram reached the notify socket")
		return ""
	}
}

func TestNotifyPathAndAbstract(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	ch := listen(t, path)
	t.Setenv("NOTIFY_SOCKET", path)
	if ok, err := Notify("READY=1\nSTATUS=serving"); !ok || err != nil {
		t.Fatalf("Notify = %v, %v", ok, err)
	}
	if got := recv(t, ch); got != "READY=1\nSTATUS=serving" {
		t.Fatalf("got %q", got)
	}
	abstract := "herd-test-" + strconv.Itoa(os.Getpid())
	ch2 := listen(t, "\x00"+abstract)
	t.Setenv("NOTIFY_SOCKET", "@"+abstract)
	if ok, err := Notify("STOPPING=1"); !ok || err != nil {
		t.Fatalf("abstract: %v, %v", ok, err)
	}
	if got := recv(t, ch2); got != "STOPPING=1" {
		t.Fatalf("abstract got %q", got)
	}
	t.Setenv("NOTIFY_SOCKET", "")
	if ok, err := Notify("READY=1"); ok || err != nil {
		t.Fatalf("without systemd: %v, %v", ok, err)
	}
}

// The watchdog is petted only while the health check passes.
func TestWatchdogFollowsHealth(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	ch := listen(t, path)
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", "40000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	iv := WatchdogInterval()
	if iv != 20*time.Millisecond {
		t.Fatalf("interval %v, want half of WATCHDOG_USEC", iv)
	}
	var healthy atomic.Bool
	var sick atomic.Int32 // health checks that failed
	healthy.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Watchdog(ctx, iv, func(context.Context) error {
		if healthy.Load() {
			return nil
		}
		sick.Add(1)
		return errors.New("http not answering")
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if got := recv(t, ch); got != "WATCHDOG=1" {
		t.Fatalf("got %q", got)
	}
	healthy.Store(false)
	waitSick := func(n int32) {
		for sick.Load() < n {
			time.Sleep(iv)
		}
	}
	// The loop is sequential: once a check failed, every ping of an
	// earlier passing check has been sent. Drain those, then watch.
	waitSick(1)
	for quiet := false; !quiet; { // drain, including datagrams still in the socket
		select {
		case <-ch:
		case <-time.After(200 * time.Millisecond):
			quiet = true
		}
	}
	waitSick(sick.Load() + 5)
	select {
	case s := <-ch:
		t.Fatalf("petted the watchdog while unhealthy: %q", s)
	case <-time.After(200 * time.Millisecond):
	}
	t.Setenv("WATCHDOG_PID", "1")
	if WatchdogInterval() != 0 {
		t.Fatal("a watchdog meant for another PID must be ignored")
	}
}
