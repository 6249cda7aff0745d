package volume

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestLocks(t *testing.T) {
	tests := []struct {
		name string
		held []string
		try  []string
		want bool
	}{
		{"free", nil, []string{"a"}, true},
		{"held", []string{"a"}, []string{"a"}, false},
		{"other key", []string{"a"}, []string{"b"}, true},
		{"one of several held", []string{"b"}, []string{"a", "b", "c"}, false},
		{"no keys", []string{"a"}, nil, true},
		{"same key twice", nil, []string{"a", "a"}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var l Locks
			if !l.TryLock(tc.held...) {
				t.Fatal("setup lock failed")
			}
			if got := l.TryLock(tc.try...); got != tc.want {
				t.Fatalf("TryLock(%v) with %v held = %v, want %v", tc.try, tc.held, got, tc.want)
			}
			if !tc.want {
				// All or nothing: the free keys were not taken either.
				for _, k := range tc.try {
					if !contains(tc.held, k) && !l.TryLock(k) {
						t.Errorf("failed TryLock kept %q", k)
					}
				}
			}
			l.Unlock(tc.held...)
			l.Unlock(tc.try...)
			if !l.TryLock(append(tc.held, tc.try...)...) {
				t.Error("keys still held after Unlock")
			}
		})
	}
}

func contains(s []string, k string) bool {
	for _, v := range s {
		if v == k {
			return true
		}
	}
	return false
}

func TestLocksExclusive(t *testing.T) {
	var l Locks
	var inside, max atomic.Int32
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				if !l.TryLock("vol") {
					continue
				}
				n := inside.Add(1)
				if n > max.Load() {
					max.Store(n)
				}
				inside.Add(-1)
				l.Unlock("vol")
			}
		}()
	}
	wg.Wait()
	if max.Load() != 1 {
		t.Errorf("%d holders at once", max.Load())
	}
}

func TestLockIsAborted(t *testing.T) {
	var l Locks
	unlock, err := l.Lock("volume/a", "volname/b")
	if err != nil {
		t.Fatal(err)
	}
	_, err = l.Lock("volname/b")
	if status.Code(err) != codes.Aborted || !strings.Contains(err.Error(), "volname/b") {
		t.Errorf("second Lock = %v; want Aborted naming the key", err)
	}
	unlock()
	if _, err := l.Lock("volname/b"); err != nil {
		t.Errorf("Lock after unlock = %v", err)
	}
}
