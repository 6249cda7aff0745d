package driver

import (
	"context"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/cephfs"
	"github.com/pelagic-csi/pelagic/pkg/mapper"
	"github.com/pelagic-csi/pelagic/pkg/mount"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
)

// Node operations timed by Options.ObserveNodeOp.
const (
	OpMap   = "map"
	OpUnmap = "unmap"
	OpMkfs  = "mkfs"
	OpMount = "mount"
)

// timedMounter times the mounter's Format and FormatBlank (mkfs) and Mount.
type timedMounter struct {
	mount.Mounter
	observe func(op string, d time.Duration)
}

func (m timedMounter) Format(ctx context.Context, device, fstype string, options []string) error {
	defer m.since(OpMkfs, time.Now())
	return m.Mounter.Format(ctx, device, fstype, options)
}

func (m timedMounter) FormatBlank(ctx context.Context, device, fstype string, options []string) error {
	defer m.since(OpMkfs, time.Now())
	return m.Mounter.FormatBlank(ctx, device, fstype, options)
}

func (m timedMounter) Mount(ctx context.Context, source, target, fstype string, options []string) error {
	defer m.since(OpMount, time.Now())
	return m.Mounter.Mount(ctx, source, target, fstype, options)
}

func (m timedMounter) since(op string, start time.Time) { m.observe(op, time.Since(start)) }

// timedMappers hands out mappers whose Map and Unmap are timed.
type timedMappers struct {
	rbd.Mappers
	observe func(op string, d time.Duration)
}

func (r timedMappers) Get(name string) (mapper.Mapper, error) {
	m, err := r.Mappers.Get(name)
	if err != nil {
		return nil, err
	}
	timed := timedMapper{Mapper: m, observe: r.observe}
	if resizer, ok := m.(mapper.Resizer); ok { // what the node looks for must stay visible
		return timedResizer{timedMapper: timed, Resizer: resizer}, nil
	}
	return timed, nil
}

type timedMapper struct {
	mapper.Mapper
	observe func(op string, d time.Duration)
}

func (m timedMapper) Map(ctx context.Context, img mapper.Image, opts mapper.MapOptions) (mapper.Mapping, error) {
	defer m.since(OpMap, time.Now())
	return m.Mapper.Map(ctx, img, opts)
}

func (m timedMapper) Unmap(ctx context.Context, mapping mapper.Mapping, opts mapper.UnmapOptions) error {
	defer m.since(OpUnmap, time.Now())
	return m.Mapper.Unmap(ctx, mapping, opts)
}

func (m timedMapper) since(op string, start time.Time) { m.observe(op, time.Since(start)) }

type timedResizer struct {
	timedMapper
	mapper.Resizer
}

// timedFSMounter times a CephFS client's Mount (ceph-fuse or the kernel's)
// as OpMount.
type timedFSMounter struct {
	cephfs.Mounter
	observe func(op string, d time.Duration)
}

func (m timedFSMounter) Mount(ctx context.Context, req cephfs.MountRequest) (cephfs.Mount, error) {
	defer func(start time.Time) { m.observe(OpMount, time.Since(start)) }(time.Now())
	return m.Mounter.Mount(ctx, req)
}
