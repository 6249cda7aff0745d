package util

import (
	"context"
	"fmt"
	"sync/atomic"
)

// Do runs fn, a blocking call that takes no context (a librados or librbd
// call, or a stat of a FUSE mount whose daemon may hang), and returns when
// it finishes or ctx is done, whichever is first. A call abandoned this way
// still runs to its own end in the background (one not yet started does
// not run); the rados timeouts bound how long that can be, and nothing
// bounds a system call on a hung FUSE mount: only the caller is released.
func Do[T any](ctx context.Context, what string, fn func() (T, error)) (T, error) {
	return do(ctx, what, fn, func(call func()) { go call() })
}

// do is Do with the start of the call's goroutine left to spawn, so that
// a test can hold it back.
func do[T any](ctx context.Context, what string, fn func() (T, error), spawn func(func())) (T, error) {
	type result struct {
		v   T
		err error
	}
	if err := ctx.Err(); err != nil {
		var zero T
		return zero, fmt.Errorf("%s: %w", what, err)
	}
	done := make(chan result, 1)
	// A call whose goroutine had not started by ctx's end is dropped, not
	// abandoned: on a starved CPU it could otherwise reach Ceph long after
	// its caller answered (a reservation landing after the volume's delete).
	var started atomic.Int32 // callPending, callRunning or callDropped
	spawn(func() {
		if !started.CompareAndSwap(callPending, callRunning) {
			return
		}
		v, err := fn()
		done <- result{v, err}
	})
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		if started.CompareAndSwap(callPending, callDropped) {
			return zero, fmt.Errorf("%s: %w", what, ctx.Err())
		}
		return zero, &AbandonedError{What: what, Err: ctx.Err()}
	}
}

const (
	callPending int32 = iota
	callRunning
	callDropped
)

// AbandonedError is the error of a call Do stopped waiting for: unlike one
// that failed, the call may yet take effect.
type AbandonedError struct {
	What string
	Err  error // the context's
}

func (e *AbandonedError) Error() string { return e.What + ": " + e.Err.Error() }
func (e *AbandonedError) Unwrap() error { return e.Err }

// Run is Do for calls that return only an error.
func Run(ctx context.Context, what string, fn func() error) error {
	_, err := Do(ctx, what, func() (struct{}, error) { return struct{}{}, fn() })
	return err
}
