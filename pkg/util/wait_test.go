package util

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestWaitFor(t *testing.T) {
	calls := 0
	if err := WaitFor(context.Background(), time.Second, "the third look", func() (bool, error) {
		calls++
		return calls == 3, nil
	}); err != nil || calls != 3 {
		t.Fatalf("WaitFor = %v after %d looks, want nil after 3", err, calls)
	}
	boom := errors.New("boom")
	if err := WaitFor(context.Background(), time.Second, "x", func() (bool, error) { return false, boom }); !errors.Is(err, boom) {
		t.Fatalf("WaitFor = %v, want cond's error", err)
	}
	start := time.Now()
	err := WaitFor(context.Background(), 100*time.Millisecond, "nothing", func() (bool, error) { return false, nil })
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "waiting for nothing") {
		t.Fatalf("WaitFor past its timeout = %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("WaitFor returned %v after a 100 ms timeout", took)
	}
}

func TestWaitEveryCapsTheDelay(t *testing.T) {
	var looks []time.Time
	err := WaitEvery(context.Background(), time.Second, 2*time.Millisecond, "the eighth look", func() (bool, error) {
		looks = append(looks, time.Now())
		return len(looks) == 8, nil
	})
	if err != nil {
		t.Fatalf("WaitEvery = %v", err)
	}
	// Uncapped, the eighth look comes 113 ms after the first.
	if took := looks[7].Sub(looks[0]); took > 60*time.Millisecond {
		t.Fatalf("8 looks took %v with delays capped at 2 ms", took)
	}
}
