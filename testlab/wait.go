package testlab

import (
	"context"
	"time"
)

// waitReady calls try every interval until it returns nil. It gives up with
// timedOut(try's last error) once timeout has passed, with died() when
// exited closes first (the process being waited for ended), or with ctx's
// error.
func waitReady(ctx context.Context, timeout, interval time.Duration, exited <-chan struct{},
	try func() error, timedOut func(last error) error, died func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := try()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return timedOut(err)
		}
		select {
		case <-exited:
			return died()
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}
