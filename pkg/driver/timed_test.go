package driver

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/cephfs"
	"github.com/pelagic-csi/pelagic/pkg/mapper"
	"github.com/pelagic-csi/pelagic/pkg/mount"
)

// resizingMapper is a fake mapper that can grow a mapping, as fuse can.
type resizingMapper struct{ *mapper.FakeMapper }

func (resizingMapper) Resize(context.Context, mapper.Mapping) error { return nil }

// TestTimedNodeOps: map, unmap, mkfs and mount, a CephFS client's
// included, are timed and nothing else; a mapper that can resize still can through the wrapper.
func TestTimedNodeOps(t *testing.T) {
	var ops []string
	observe := func(op string, d time.Duration) {
		if d < 0 {
			t.Errorf("%s took %v", op, d)
		}
		ops = append(ops, op)
	}
	ctx := context.Background()
	reg, err := mapper.RegistryOf("", mapper.NewFakeMapper(mapper.KRBD), resizingMapper{mapper.NewFakeMapper(mapper.Fuse)})
	if err != nil {
		t.Fatal(err)
	}
	mappers := timedMappers{Mappers: reg, observe: observe}
	for _, name := range []string{mapper.KRBD, mapper.Fuse} {
		m, err := mappers.Get(name)
		if err != nil {
			t.Fatal(err)
		}
		if _, resizes := m.(mapper.Resizer); resizes != (name == mapper.Fuse) {
			t.Errorf("timed %s mapper resizes = %v", name, resizes)
		}
		mapping, err := m.Map(ctx, mapper.Image{Pool: "p", Name: "img-" + name}, mapper.MapOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Unmap(ctx, mapping, mapper.UnmapOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mounter := timedMounter{Mounter: mount.NewFakeMounter(), observe: observe}
	_ = mounter.Format(ctx, "/dev/fake0", "ext4", nil)
	_ = mounter.Mount(ctx, "/dev/fake0", t.TempDir(), "ext4", nil)
	_ = mounter.BindMount(ctx, t.TempDir(), t.TempDir(), false)
	fs := timedFSMounter{Mounter: cephfs.NewFakeMounter(cephfs.MounterFuse), observe: observe}
	m, err := fs.Mount(ctx, cephfs.MountRequest{FS: "cephfs", Root: "/volumes/g/v", Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	_ = fs.Unmount(ctx, m, false)
	want := []string{OpMap, OpUnmap, OpMap, OpUnmap, OpMkfs, OpMount, OpMount}
	if !slices.Equal(ops, want) {
		t.Errorf("timed %v; want %v", ops, want)
	}
}
