package kube

import (
	"context"
	"sync"
)

// FakeNodes is a NodeChecker over a fixed set of node IDs, for tests.
type FakeNodes struct {
	Err error // returned by HasNode when set

	mu  sync.Mutex
	ids map[string]bool
}

var _ NodeChecker = (*FakeNodes)(nil)

// NewFakeNodes holds the given node IDs.
func NewFakeNodes(ids ...string) *FakeNodes {
	f := &FakeNodes{ids: map[string]bool{}}
	for _, id := range ids {
		f.ids[id] = true
	}
	return f
}

// Add registers a node ID.
func (f *FakeNodes) Add(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ids[id] = true
}

// HasNode implements NodeChecker.
func (f *FakeNodes) HasNode(_ context.Context, id string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return false, f.Err
	}
	return f.ids[id], nil
}
