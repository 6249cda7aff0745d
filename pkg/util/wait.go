package util

import (
	"context"
	"fmt"
	"time"
)

// MaxPollInterval is how often WaitFor looks again, at most: what the
// node waits for (a device's detach, a daemon's exit after its unmount)
// mostly comes within a few milliseconds, so it looks again after 1 ms at
// first, doubling the delay up to this.
const MaxPollInterval = 50 * time.Millisecond

// WaitFor polls cond until it returns true, an error, or timeout or ctx
// ends; what names the awaited thing in the timeout error.
func WaitFor(ctx context.Context, timeout time.Duration, what string, cond func() (bool, error)) error {
	return WaitEvery(ctx, timeout, MaxPollInterval, what, cond)
}

// WaitEvery is WaitFor with the delay between looks capped at most, not
// MaxPollInterval: for what comes after tens of milliseconds, where a
// long last delay would be most of the wait.
func WaitEvery(ctx context.Context, timeout, most time.Duration, what string, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	delay := min(time.Millisecond, most)
	timer := time.NewTimer(delay)
	defer timer.Stop()
	for {
		done, err := cond()
		if err != nil || done {
			return err
		}
		timer.Reset(delay)
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-timer.C:
		}
		delay = min(2*delay, most)
	}
}
