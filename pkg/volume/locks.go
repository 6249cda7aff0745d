package volume

import (
	"strings"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Locks hands out non-blocking locks on keys (volume IDs, request names).
// CSI sidecars retry, so a call that finds its volume busy returns Aborted
// at once instead of queueing. The zero value is ready to use.
type Locks struct {
	mu   sync.Mutex
	held map[string]struct{}
}

// TryLock takes every key or none; it reports whether it took them.
func (l *Locks) TryLock(keys ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range keys {
		if _, busy := l.held[k]; busy {
			return false
		}
	}
	if l.held == nil {
		l.held = map[string]struct{}{}
	}
	for _, k := range keys {
		l.held[k] = struct{}{}
	}
	return true
}

// Unlock releases keys taken by TryLock.
func (l *Locks) Unlock(keys ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range keys {
		delete(l.held, k)
	}
}

// Lock takes every key, or fails with Aborted naming them. On success the
// caller must call unlock.
func (l *Locks) Lock(keys ...string) (unlock func(), err error) {
	if !l.TryLock(keys...) {
		return nil, status.Errorf(codes.Aborted, "an operation on %s is already in progress", strings.Join(keys, ", "))
	}
	return func() { l.Unlock(keys...) }, nil
}
