package rbd

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestFlattensWait(t *testing.T) {
	pool := NewFakePool("rbd", 1)
	var f flattens
	if err := f.wait(context.Background(), pool, "idle"); err != nil {
		t.Fatalf("no flatten running: %v", err)
	}
	done := f.start(pool, "img")
	short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := f.wait(short, pool, "img"); status.Code(err) != codes.Unavailable {
		t.Fatalf("wait during a flatten that outlasts the call = %v, want Unavailable", err)
	}
	waited := make(chan error, 1)
	go func() { waited <- f.wait(context.Background(), pool, "img") }()
	done()
	if err := <-waited; err != nil {
		t.Fatalf("wait after the flatten ended: %v", err)
	}
	if err := f.wait(context.Background(), NewFakePool("other", 2), "img"); err != nil {
		t.Fatalf("an image of another pool waited: %v", err)
	}
}
