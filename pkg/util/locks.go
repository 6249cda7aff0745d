package util

import "sync"

// KeyLocks hands out non-blocking per-key locks. CSI sidecars retry, so a
// call that finds its volume busy returns Aborted at once instead of queueing.
type KeyLocks struct {
	mu   sync.Mutex
	held map[string]struct{}
}

// NewKeyLocks returns an empty lock set.
func NewKeyLocks() *KeyLocks { return &KeyLocks{held: make(map[string]struct{})} }

// TryLock takes every key or none; it reports whether it took them.
func (l *KeyLocks) TryLock(keys ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range keys {
		if _, busy := l.held[k]; busy {
			return false
		}
	}
	for _, k := range keys {
		l.held[k] = struct{}{}
	}
	return true
}

// Unlock releases keys taken by TryLock.
func (l *KeyLocks) Unlock(keys ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range keys {
		delete(l.held, k)
	}
}
