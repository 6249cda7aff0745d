package util

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func TestDo(t *testing.T) {
	boom := errors.New("boom")
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name    string
		ctx     func() (context.Context, context.CancelFunc)
		fn      func() (int, error)
		want    int
		wantErr error
	}{
		{"result", bg, func() (int, error) { return 7, nil }, 7, nil},
		{"error", bg, func() (int, error) { return 0, boom }, 0, boom},
		{"blocks past the deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 50*time.Millisecond)
		}, func() (int, error) { time.Sleep(5 * time.Second); return 7, nil }, 0, context.DeadlineExceeded},
		{"already cancelled", func() (context.Context, context.CancelFunc) { return cancelled, func() {} },
			func() (int, error) { t.Error("fn ran on a cancelled context"); return 7, nil }, 0, context.Canceled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := tc.ctx()
			defer cancel()
			start := time.Now()
			got, err := Do(ctx, "rbd open", tc.fn)
			if d := time.Since(start); d > time.Second {
				t.Errorf("Do took %v", d)
			}
			if got != tc.want || !errors.Is(err, tc.wantErr) {
				t.Errorf("got %d, %v; want %d, %v", got, err, tc.want, tc.wantErr)
			}
			if errors.Is(tc.wantErr, context.DeadlineExceeded) && err.Error() != "rbd open: context deadline exceeded" {
				t.Errorf("error %q does not name the call", err)
			}
			var abandoned *AbandonedError
			if errors.As(err, &abandoned) != (tc.name == "blocks past the deadline") {
				t.Errorf("error %v: abandoned = %v", err, errors.As(err, &abandoned))
			}
		})
	}
}

func bg() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) }

func TestRun(t *testing.T) {
	boom := errors.New("boom")
	if err := Run(context.Background(), "x", func() error { return boom }); !errors.Is(err, boom) {
		t.Errorf("Run = %v, want boom", err)
	}
	if err := Run(context.Background(), "x", func() error { return nil }); err != nil {
		t.Errorf("Run = %v", err)
	}
}

// endingContext is done already, but says so only from its second Err:
// its end falls between Do's first look and the call's start.
type endingContext struct {
	context.Context
	looks atomic.Int32
}

func (c *endingContext) Done() <-chan struct{} {
	done := make(chan struct{})
	close(done)
	return done
}

func (c *endingContext) Err() error {
	if c.looks.Add(1) == 1 {
		return nil
	}
	return context.Canceled
}

// TestDoDropsACallNotStarted: a call whose goroutine has not started when
// the context ends never runs, and is not reported as one that may land.
func TestDoDropsACallNotStarted(t *testing.T) {
	var start func()
	ran := false
	_, err := do(&endingContext{Context: context.Background()}, "rbd create", func() (struct{}, error) {
		ran = true
		return struct{}{}, nil
	}, func(call func()) { start = call }) // the goroutine starts only after Do has answered
	var abandoned *AbandonedError
	if !errors.Is(err, context.Canceled) || errors.As(err, &abandoned) {
		t.Fatalf("Do = %v, want a plain cancellation", err)
	}
	start()
	if ran {
		t.Error("the dropped call ran")
	}
}
