package mapper

import (
	"context"
	"fmt"
	"sync"
)

// FakeMapper is an in-memory Mapper for other packages' tests. Set the
// error fields to make calls fail and BusyDevices to make Unmap report
// ErrBusy; read MapCalls and UnmapCalls through their accessors. It is safe
// for concurrent use.
//
// Like every real mapper it gives each mapping a Ceph client instance of
// its own (krbd maps with noshare; rbd-nbd and rbd-fuse run one process
// per mapping), spelled as the mappers return it: "IP:0/NONCE" and
// "client.N". Mapping an image already mapped returns that mapping.
type FakeMapper struct {
	MapperName string

	CheckErr, MapErr, UnmapErr, ListErr error
	BusyDevices                         map[string]bool

	mu         sync.Mutex
	mappings   []Mapping
	dead       map[string]bool // by device: its daemon is gone
	next       int
	mapCalls   []FakeMapCall
	unmapCalls []FakeUnmapCall
	checks     int
}

// FakeMapCall records one Map call.
type FakeMapCall struct {
	Image Image
	Opts  MapOptions
}

// FakeUnmapCall records one Unmap call.
type FakeUnmapCall struct {
	Mapping Mapping
	Opts    UnmapOptions
}

var _ Mapper = (*FakeMapper)(nil)

// NewFakeMapper returns an empty FakeMapper called name.
func NewFakeMapper(name string) *FakeMapper {
	return &FakeMapper{MapperName: name, BusyDevices: map[string]bool{}}
}

func (f *FakeMapper) Name() string { return f.MapperName }

func (f *FakeMapper) Check(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checks++
	return f.CheckErr
}

// CheckCalls counts the Check calls so far.
func (f *FakeMapper) CheckCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.checks
}

// Map returns the existing mapping of img, or a new one on /dev/fakeN
// once opts.Admit lets it. A dead mapping of img is replaced, as the real
// mappers clear one.
func (f *FakeMapper) Map(ctx context.Context, img Image, opts MapOptions) (Mapping, error) {
	if m, found, err := f.existing(img, opts); found || err != nil {
		return m, err
	}
	if err := opts.admit(ctx); err != nil {
		return Mapping{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range f.mappings {
		if m.same(img) && !f.dead[m.Device] { // mapped while Admit ran
			return m, nil
		}
	}
	n := f.next
	f.next++
	m := Mapping{
		Mapper: f.MapperName, Pool: img.Pool, RadosNamespace: img.RadosNamespace, Image: img.Name,
		Device:     fmt.Sprintf("/dev/fake%d", n),
		ClientAddr: fmt.Sprintf("192.0.2.1:0/%d", 1000+n),
		ClientID:   fmt.Sprintf("client.%d", 4000+n),
	}
	f.mappings = append(f.mappings, m)
	return m, nil
}

// NewMappings counts the mappings Map has made so far (a Map call that
// returned an existing mapping, or failed, made none).
func (f *FakeMapper) NewMappings() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.next
}

// existing records a Map call and returns img's live mapping, if any,
// after dropping a dead one.
func (f *FakeMapper) existing(img Image, opts MapOptions) (Mapping, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mapCalls = append(f.mapCalls, FakeMapCall{img, opts})
	if f.MapErr != nil {
		return Mapping{}, false, f.MapErr
	}
	for i, m := range f.mappings {
		if m.same(img) && !f.dead[m.Device] {
			return m, true, nil
		}
		if m.same(img) {
			f.mappings = append(f.mappings[:i], f.mappings[i+1:]...)
			break
		}
	}
	return Mapping{}, false, nil
}

// Unmap removes the mapping with m's device, or m's image if m has none.
func (f *FakeMapper) Unmap(_ context.Context, m Mapping, opts UnmapOptions) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.unmapCalls = append(f.unmapCalls, FakeUnmapCall{m, opts})
	if f.UnmapErr != nil {
		return f.UnmapErr
	}
	for i, c := range f.mappings {
		byDevice := m.Device != "" && c.Device == m.Device
		byImage := m.Device == "" && c.Pool == m.Pool && c.RadosNamespace == m.RadosNamespace && c.Image == m.Image
		if !byDevice && !byImage {
			continue
		}
		if f.BusyDevices[c.Device] && !opts.Force && !f.dead[c.Device] {
			return fmt.Errorf("%w: %s is in use", ErrBusy, c.Device)
		}
		f.mappings = append(f.mappings[:i], f.mappings[i+1:]...)
		return nil
	}
	return nil
}

func (f *FakeMapper) List(context.Context) ([]Mapping, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ListErr != nil {
		return nil, f.ListErr
	}
	out := append([]Mapping(nil), f.mappings...)
	sortMappings(out)
	return out, nil
}

// Alive implements Mapper: a mapping is alive from Map until Kill or Unmap.
func (f *FakeMapper) Alive(_ context.Context, m Mapping) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.mappings {
		if c.Device == m.Device && !f.dead[c.Device] {
			return nil
		}
	}
	return fmt.Errorf("%w: fake mapping %s is gone", ErrMappingDead, m.Device)
}

// Kill makes the mapping on device dead, as if its daemon had exited.
func (f *FakeMapper) Kill(device string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dead == nil {
		f.dead = map[string]bool{}
	}
	f.dead[device] = true
}

// MapCalls returns every Map call so far.
func (f *FakeMapper) MapCalls() []FakeMapCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]FakeMapCall(nil), f.mapCalls...)
}

// UnmapCalls returns every Unmap call so far.
func (f *FakeMapper) UnmapCalls() []FakeUnmapCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]FakeUnmapCall(nil), f.unmapCalls...)
}
