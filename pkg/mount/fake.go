package mount

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
)

// FakeMounter is an in-memory Mounter for other packages' tests. Set the
// exported maps to describe the host, read Calls to see what was done, and
// put an error in Errors under a method name ("Mount", "ResizeFS", ...) to
// make that method fail. It is safe for concurrent use; lock nothing
// yourself, but set fields before the code under test runs.
type FakeMounter struct {
	mu sync.Mutex

	Formats     map[string]string      // device -> filesystem type
	Mounts      map[string]FakeMount   // mount point -> what is mounted there
	Sizes       map[string]int64       // device -> size in bytes
	FSSizes     map[string]int64       // device -> size its filesystem believes it has (default: the device's)
	StatsByPath map[string]VolumeStats // path -> Stats result
	Errors      map[string]error       // method name -> error it returns
	Calls       []string               // one line per call: method and arguments
}

// FakeMount is one mount of a FakeMounter.
type FakeMount struct {
	Device   string // the device behind the mount, also for bind mounts
	FSType   string
	Options  []string
	BindOf   string // bind source, "" for a plain mount
	ReadOnly bool
}

var _ Mounter = (*FakeMounter)(nil)

// NewFakeMounter returns a FakeMounter with empty maps.
func NewFakeMounter() *FakeMounter {
	return &FakeMounter{
		Formats:     map[string]string{},
		Mounts:      map[string]FakeMount{},
		Sizes:       map[string]int64{},
		FSSizes:     map[string]int64{},
		StatsByPath: map[string]VolumeStats{},
		Errors:      map[string]error{},
	}
}

// call records a call and returns the injected error for method, if any.
func (f *FakeMounter) call(method string, args ...any) error {
	parts := []string{method}
	for _, a := range args {
		parts = append(parts, fmt.Sprint(a))
	}
	f.Calls = append(f.Calls, strings.Join(parts, " "))
	return f.Errors[method]
}

// CallLog returns a copy of Calls, safe to read while the fake is in use.
func (f *FakeMounter) CallLog() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.Calls...)
}

// GetFormat implements Mounter.
func (f *FakeMounter) GetFormat(_ context.Context, device string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("GetFormat", device); err != nil {
		return "", err
	}
	return f.Formats[device], nil
}

// Format implements Mounter.
func (f *FakeMounter) Format(_ context.Context, device, fstype string, options []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("Format", device, fstype, strings.Join(options, " ")); err != nil {
		return err
	}
	if existing := f.Formats[device]; existing != "" {
		// Logged as what it was: a probe that formatted nothing.
		f.Calls[len(f.Calls)-1] = "RefusedFormat " + device + " " + existing
		return &NotEmptyError{Device: device, FSType: existing}
	}
	f.Formats[device] = fstype
	return nil
}

// FormatBlank implements Mounter: like the real one, it formats over
// whatever the device holds.
func (f *FakeMounter) FormatBlank(_ context.Context, device, fstype string, options []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("FormatBlank", device, fstype, strings.Join(options, " ")); err != nil {
		return err
	}
	f.Formats[device] = fstype
	return nil
}

// Mount implements Mounter.
func (f *FakeMounter) Mount(_ context.Context, source, target, fstype string, options []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("Mount", source, target, fstype, strings.Join(options, ",")); err != nil {
		return err
	}
	ro := false
	for _, o := range options {
		ro = ro || o == "ro"
	}
	f.Mounts[target] = FakeMount{Device: source, FSType: fstype, Options: options, ReadOnly: ro}
	return nil
}

// BindMount implements Mounter.
func (f *FakeMounter) BindMount(_ context.Context, source, target string, readOnly bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("BindMount", source, target, readOnly); err != nil {
		return err
	}
	device := source
	fstype := ""
	if under, ok := f.Mounts[source]; ok {
		device, fstype = under.Device, under.FSType
	}
	f.Mounts[target] = FakeMount{Device: device, FSType: fstype, BindOf: source, ReadOnly: readOnly}
	return nil
}

// Unmount implements Mounter.
func (f *FakeMounter) Unmount(_ context.Context, target string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("Unmount", target); err != nil {
		return err
	}
	delete(f.Mounts, target)
	return nil
}

// Detach implements Mounter.
func (f *FakeMounter) Detach(_ context.Context, target string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("Detach", target); err != nil {
		return err
	}
	delete(f.Mounts, target)
	return nil
}

// IsMountPoint implements Mounter.
func (f *FakeMounter) IsMountPoint(_ context.Context, path string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("IsMountPoint", path); err != nil {
		return false, err
	}
	_, ok := f.Mounts[path]
	return ok, nil
}

// MountSource implements Mounter.
func (f *FakeMounter) MountSource(_ context.Context, path string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("MountSource", path); err != nil {
		return "", err
	}
	return f.Mounts[path].Device, nil
}

// ResizeFS implements Mounter.
func (f *FakeMounter) ResizeFS(_ context.Context, device, mountPath string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("ResizeFS", device, mountPath); err != nil {
		return err
	}
	delete(f.FSSizes, device)
	return nil
}

// DeviceSize implements Mounter.
func (f *FakeMounter) DeviceSize(_ context.Context, device string) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("DeviceSize", device); err != nil {
		return 0, err
	}
	size, ok := f.Sizes[device]
	if !ok {
		return 0, fmt.Errorf("fake device %s: %w", device, os.ErrNotExist)
	}
	return size, nil
}

// FilesystemSize implements Mounter. ResizeFS grows the filesystem to the
// device's size.
func (f *FakeMounter) FilesystemSize(_ context.Context, device, _ string) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("FilesystemSize", device); err != nil {
		return 0, err
	}
	if size, ok := f.FSSizes[device]; ok {
		return size, nil
	}
	return f.Sizes[device], nil
}

// Stats implements Mounter.
func (f *FakeMounter) Stats(_ context.Context, path string) (VolumeStats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("Stats", path); err != nil {
		return VolumeStats{}, err
	}
	st, ok := f.StatsByPath[path]
	if !ok {
		return VolumeStats{}, fmt.Errorf("fake statfs %s: %w", path, os.ErrNotExist)
	}
	return st, nil
}

// Holders implements Mounter: every mount point of device.
func (f *FakeMounter) Holders(_ context.Context, device string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("Holders", device); err != nil {
		return nil, err
	}
	var holders []string
	for target, m := range f.Mounts {
		if m.Device == device {
			holders = append(holders, target)
		}
	}
	sort.Strings(holders)
	return holders, nil
}
