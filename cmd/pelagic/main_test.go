package main

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestServeAllStopsTheOthersWhenOneFails(t *testing.T) {
	boom := errors.New("healthz: address already in use")
	stopped := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- serveAll(context.Background(),
			func(ctx context.Context) error { <-ctx.Done(); close(stopped); return nil },
			func(context.Context) error { return boom },
		)
	}()
	select {
	case err := <-done:
		if !errors.Is(err, boom) {
			t.Errorf("serveAll = %v, want %v", err, boom)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serveAll did not return when a server failed")
	}
	select {
	case <-stopped:
	default:
		t.Error("the other server was not stopped")
	}
}

func TestServeAllReturnsWhenTheContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	wait := func(ctx context.Context) error { <-ctx.Done(); return nil }
	if err := serveAll(ctx, wait, wait); err != nil {
		t.Errorf("serveAll = %v", err)
	}
}
