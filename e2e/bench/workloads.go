package main

import (
	"context"
	"fmt"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/pelagic-csi/pelagic/pkg/journal"
)

// sides holds what each side made, by item; nil where the making failed.
type sides struct {
	vols []*csi.Volume
	recs []*journal.Record
}

func newSides(n int) *sides {
	return &sides{vols: make([]*csi.Volume, n), recs: make([]*journal.Record, n)}
}

// createVolumes makes n volumes on each side as one measured (or, when
// op is "", unmeasured) operation.
func (b *bench) createVolumes(ctx context.Context, op, prefix string, conc, n int) *sides {
	s := newSides(n)
	driver := func(ctx context.Context, i int) (err error) {
		s.vols[i], err = b.drv.createVolume(ctx, b.name("%s-%d", prefix, i), b.opts.size, nil)
		return err
	}
	floor := func(ctx context.Context, i int) (err error) {
		s.recs[i], err = b.floor.createImage(ctx, b.name("%s-%d", prefix, i), b.opts.size)
		return err
	}
	if op == "" {
		b.setup(ctx, "creating "+prefix+" volumes", conc, n, both(driver, floor))
		return s
	}
	b.interleaved(ctx, op, conc, n, driver, floor)
	return s
}

// deleteVolumes deletes what createVolumes made, measured under op unless it is "".
func (b *bench) deleteVolumes(ctx context.Context, op string, conc int, s *sides) {
	driver := func(ctx context.Context, i int) error {
		if s.vols[i] == nil {
			return errSkip
		}
		return b.drv.deleteVolume(ctx, s.vols[i])
	}
	step := untimed
	if op != "" {
		step = b.stepper(op, conc)
	}
	floor := func(ctx context.Context, i int) error {
		if s.recs[i] == nil {
			return errSkip
		}
		return b.floor.deleteImage(ctx, s.recs[i], step)
	}
	if op == "" {
		b.setup(ctx, "deleting volumes", conc, len(s.vols), both(driver, floor))
		return
	}
	b.interleaved(ctx, op, conc, len(s.vols), driver, floor)
}

// both runs the driver's and then the floor's call of one item.
func both(driver, floor call) call {
	return func(ctx context.Context, i int) error {
		derr, ferr := driver(ctx, i), floor(ctx, i)
		if derr != nil {
			return derr
		}
		return ferr
	}
}

// createDelete is the first controller workload: CreateVolume, then
// DeleteVolume, of many volumes.
func (b *bench) createDelete(ctx context.Context, conc int) {
	s := b.createVolumes(ctx, "CreateVolume", fmt.Sprintf("vol-c%d", conc), conc, b.opts.volumes)
	b.deleteVolumes(ctx, "DeleteVolume", conc, s)
}

// copies is the second controller workload, on fewer volumes: snapshots,
// volumes restored from them, clones of volumes, expansion, and the
// deletion of each; round tells the names of one run of it from another's.
func (b *bench) copies(ctx context.Context, conc, round int) {
	n := b.opts.snapshots
	tag := fmt.Sprintf("c%d-r%d", conc, round)
	src := b.createVolumes(ctx, "", "src-"+tag, conc, n)
	driverSnaps, floorSnaps := make([]*csi.Snapshot, n), make([]*journal.Record, n)
	b.interleaved(ctx, "CreateSnapshot", conc, n,
		func(ctx context.Context, i int) (err error) {
			if src.vols[i] == nil {
				return errSkip
			}
			driverSnaps[i], err = b.drv.createSnapshot(ctx, b.name("snap-%s-%d", tag, i), src.vols[i])
			return err
		},
		func(ctx context.Context, i int) (err error) {
			if src.recs[i] == nil {
				return errSkip
			}
			floorSnaps[i], err = b.floor.snapshot(ctx, src.recs[i], b.name("snap-%s-%d", tag, i))
			return err
		})
	restored := b.copiesOf(ctx, "CreateVolume from snapshot", "restored-"+tag, conc, n,
		func(i int) *csi.VolumeContentSource { return snapSource(driverSnaps[i]) },
		func(ctx context.Context, i int, name string) (*journal.Record, error) {
			if floorSnaps[i] == nil {
				return nil, errSkip
			}
			return b.floor.fromSnapshot(ctx, floorSnaps[i], name)
		})
	clones := b.copiesOf(ctx, "CreateVolume clone of a volume", "clone-"+tag, conc, n,
		func(i int) *csi.VolumeContentSource { return volSource(src.vols[i]) },
		func(ctx context.Context, i int, name string) (*journal.Record, error) {
			if src.recs[i] == nil {
				return nil, errSkip
			}
			return b.floor.cloneVolume(ctx, src.recs[i], name)
		})
	b.expand(ctx, conc, src)
	b.interleaved(ctx, "DeleteSnapshot", conc, n,
		func(ctx context.Context, i int) error {
			if driverSnaps[i] == nil {
				return errSkip
			}
			return b.drv.deleteSnapshot(ctx, driverSnaps[i])
		},
		func(ctx context.Context, i int) error {
			if floorSnaps[i] == nil {
				return errSkip
			}
			return b.floor.deleteSnapshot(ctx, floorSnaps[i])
		})
	b.deleteVolumes(ctx, "DeleteVolume restored from snapshot", conc, restored)
	b.deleteVolumes(ctx, "DeleteVolume clone of a volume", conc, clones)
	b.deleteVolumes(ctx, "", conc, src)
}

// copiesOf measures CreateVolume with a content source against its floor.
func (b *bench) copiesOf(ctx context.Context, op, prefix string, conc, n int, source func(i int) *csi.VolumeContentSource,
	floor func(ctx context.Context, i int, name string) (*journal.Record, error)) *sides {
	s := newSides(n)
	name := func(i int) string { return b.name("%s-%d", prefix, i) }
	b.interleaved(ctx, op, conc, n,
		func(ctx context.Context, i int) (err error) {
			src := source(i)
			if src == nil {
				return errSkip
			}
			s.vols[i], err = b.drv.createVolume(ctx, name(i), b.opts.size, src)
			return err
		},
		func(ctx context.Context, i int) (err error) {
			s.recs[i], err = floor(ctx, i, name(i))
			return err
		})
	return s
}

func snapSource(s *csi.Snapshot) *csi.VolumeContentSource {
	if s == nil {
		return nil
	}
	return fromSnapshot(s)
}

func volSource(v *csi.Volume) *csi.VolumeContentSource {
	if v == nil {
		return nil
	}
	return fromVolume(v)
}

// expand grows each source volume once per round, by a quarter of its
// first size each time, each round a batch of each side. An expansion can be
// repeated where the other copy workloads cannot, so it is measured in
// rounds even when one batch holds every volume: one burst of 16 calls
// at once is too few for a p50 that means anything.
func (b *bench) expand(ctx context.Context, conc int, src *sides) {
	start := time.Now()
	items := seq(len(src.vols))
	rounds := max(1, b.opts.expandRounds)
	for k := range rounds {
		size := b.opts.size + int64(k+1)*b.opts.size/4
		b.compare(ctx, "ControllerExpandVolume", conc, items,
			func(ctx context.Context, i int) error {
				if src.vols[i] == nil {
					return errSkip
				}
				return b.drv.expand(ctx, src.vols[i], size)
			},
			func(ctx context.Context, i int) error {
				if src.recs[i] == nil {
					return errSkip
				}
				return b.floor.resize(src.recs[i], size)
			})
	}
	fmt.Fprintf(b.log, "%-40s concurrency %-3d %4d items  %v (%d rounds)\n", "ControllerExpandVolume", conc, len(items),
		time.Since(start).Round(time.Millisecond), rounds)
}

// keepInTrash leaves n of the driver's images in the trash, each kept
// there by a snapshot of it, as snapshots of deleted volumes keep them in
// a real pool. It returns what releases them.
func (b *bench) keepInTrash(ctx context.Context, n int) func() {
	snaps := make([]*csi.Snapshot, n)
	b.setup(ctx, "making volumes kept in the trash by a snapshot", 16, n, func(ctx context.Context, i int) error {
		v, err := b.drv.createVolume(ctx, b.name("kept-%d", i), b.opts.size, nil)
		if err != nil {
			return err
		}
		if snaps[i], err = b.drv.createSnapshot(ctx, b.name("kept-snap-%d", i), v); err != nil {
			return err
		}
		return b.drv.deleteVolume(ctx, v)
	})
	return func() {
		b.setup(ctx, "deleting the snapshots that kept images in the trash", 16, n, func(ctx context.Context, i int) error {
			if snaps[i] == nil {
				return errSkip
			}
			return b.drv.deleteSnapshot(ctx, snaps[i])
		})
	}
}
