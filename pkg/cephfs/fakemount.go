package cephfs

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
)

// FakeMounter is a Mounter in memory for the node's unit tests: it
// records mounts instead of making them. Kill makes one dead, as a
// ceph-fuse that died leaves it.
type FakeMounter struct {
	Kind string // "fuse" or "kernel"
	// Unavailable, when set, is what Check says.
	Unavailable error

	mu     sync.Mutex
	mounts map[string]MountRequest // by mount point
	dead   map[string]bool
	pids   int
}

var _ Mounter = (*FakeMounter)(nil)

// NewFakeMounter returns a mounter named kind with nothing mounted.
func NewFakeMounter(kind string) *FakeMounter {
	return &FakeMounter{Kind: kind, mounts: map[string]MountRequest{}, dead: map[string]bool{}}
}

func (f *FakeMounter) Name() string { return f.Kind }

func (f *FakeMounter) Check(context.Context) error { return f.Unavailable }

func (f *FakeMounter) Mount(_ context.Context, req MountRequest) (Mount, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.mounts[req.Dir]; ok {
		return Mount{}, fmt.Errorf("%s is mounted already", req.Dir)
	}
	f.mounts[req.Dir] = req
	f.pids++
	return Mount{Mounter: f.Kind, FS: req.FS, Root: req.Root, Dir: req.Dir, PID: f.pids}, nil
}

func (f *FakeMounter) Alive(_ context.Context, m Mount) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.mounts[m.Dir]; !ok || f.dead[m.Dir] {
		return fmt.Errorf("%w: %s", ErrMountDead, m.Dir)
	}
	return nil
}

func (f *FakeMounter) Unmount(_ context.Context, m Mount, _ bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.mounts, m.Dir)
	delete(f.dead, m.Dir)
	return nil
}

// Kill makes the mount at dir dead.
func (f *FakeMounter) Kill(dir string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dead[dir] = true
}

// Mounted returns the requests of the mounts in place, by mount point.
func (f *FakeMounter) Mounted() map[string]MountRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.mounts)
}

// Dirs returns the mount points in use, sorted.
func (f *FakeMounter) Dirs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.mounts))
}
