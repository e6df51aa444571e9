// Package sdnotify speaks systemd's notify protocol for a Type=notify
// service: READY=1 once serving, WATCHDOG=1 while a health check passes,
// STOPPING=1 on the way out. It is the protocol by hand (one datagram to the
// unix socket in $NOTIFY_SOCKET, see sd_notify(3)): a few lines instead of a
// dependency, and nothing happens when herd does not run under systemd.
package sdnotify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"
)

// Notify sends state (e.g. "READY=1\nSTATUS=serving") to systemd. It reports
// false, nil when $NOTIFY_SOCKET is unset (not under systemd).
func Notify(state string) (bool, error) {
	sock := os.Getenv("NOTIFY_SOCKET")
	if sock == "" {
		return false, nil
	}
	addr := &net.UnixAddr{Name: sock, Net: "unixgram"}
	if sock[0] == '@' { // abstract namespace
		addr.Name = "\x00" + sock[1:]
	} else if sock[0] != '/' {
		return false, fmt.Errorf("sd_notify: NOTIFY_SOCKET %q is neither a path nor an abstract name", sock)
	}
	conn, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return false, fmt.Errorf("sd_notify: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return false, fmt.Errorf("sd_notify: %w", err)
	}
	return true, nil
}

// WatchdogInterval is how often systemd wants WATCHDOG=1 (half of
// WatchdogSec, from $WATCHDOG_USEC), or 0 when no watchdog is set for this
// process ($WATCHDOG_PID names another).
func WatchdogInterval() time.Duration {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return 0
	}
	if p := os.Getenv("WATCHDOG_PID"); p != "" && p != strconv.Itoa(os.Getpid()) {
		return 0
	}
	return time.Duration(usec) * time.Microsecond / 2
}

// Watchdog sends WATCHDOG=1 every interval while check passes, until ctx
// ends. A failing check sends nothing, so systemd's WatchdogSec restarts a
// herd that is alive but no longer serving.
func Watchdog(ctx context.Context, interval time.Duration, check func(context.Context) error, log *slog.Logger) {
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, interval)
		err := check(cctx)
		cancel()
		if err != nil {
			if !errors.Is(ctx.Err(), context.Canceled) {
				log.Error("health check failed: not petting the systemd watchdog", "err", err)
			}
			continue
		}
		if _, err := Notify("WATCHDOG=1"); err != nil {
			log.Warn("systemd watchdog", "err", err)
		}
	}
}
