package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/ceph/go-ceph/rados"
	librbd "github.com/ceph/go-ceph/rbd"

	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
)

// The floor's journal is written by pkg/journal itself, so it makes the
// driver's omap writes exactly, into the same objects of a RADOS namespace
// of its own; its images carry a prefix the driver's trash purge ("csi-vol-")
// never matches.
const (
	floorNamespace = "pelagic-bench-floor"
	floorPrefix    = "floor-vol-"
)

// floor does the Ceph work of each controller call directly with go-ceph,
// over the connection the driver would use (same user, same settings):
// no gRPC, no driver, nothing but what the call must do.
type floor struct {
	images  *rados.IOContext
	jctx    *rados.IOContext
	journal *journal.Rados
	params  map[string]string // recorded like the driver's creation parameters
}

func newFloor(conn *rados.Conn, pool string, params map[string]string) (*floor, error) {
	images, err := conn.OpenIOContext(pool)
	if err != nil {
		return nil, fmt.Errorf("opening pool %q: %w", pool, err)
	}
	jctx, err := conn.OpenIOContext(pool)
	if err != nil {
		images.Destroy()
		return nil, fmt.Errorf("opening pool %q: %w", pool, err)
	}
	jctx.SetNamespace(floorNamespace)
	return &floor{images: images, jctx: jctx, journal: journal.NewRados(jctx, rbd.JournalPrefix), params: params}, nil
}

func (f *floor) record(kind journal.Kind, name string, size int64) *journal.Record {
	uuid := rand.Text()
	return &journal.Record{Kind: kind, Name: name, UUID: uuid, Backing: floorPrefix + uuid, SizeBytes: size,
		Params: f.params, Created: time.Now().UTC()}
}

// imageOptions are the driver's: format 2 with layering, and clone v2 for a clone.
func imageOptions(clone bool) (*librbd.ImageOptions, error) {
	opts := librbd.NewRbdImageOptions()
	err := errors.Join(opts.SetUint64(librbd.ImageOptionFormat, 2),
		opts.SetUint64(librbd.ImageOptionFeatures, librbd.FeatureLayering))
	if clone {
		err = errors.Join(err, opts.SetUint64(librbd.ImageOptionCloneFormat, 2))
	}
	if err != nil {
		opts.Destroy()
		return nil, err
	}
	return opts, nil
}

// createImage is CreateVolume's floor: the journal's reservation and an
// image with layering.
func (f *floor) createImage(ctx context.Context, name string, size int64) (*journal.Record, error) {
	rec := f.record(journal.Volume, name, size)
	if err := f.journal.Reserve(ctx, rec); err != nil {
		return nil, err
	}
	opts, err := imageOptions(false)
	if err != nil {
		return nil, err
	}
	defer opts.Destroy()
	return rec, librbd.CreateImage(f.images, rec.Backing, uint64(size), opts)
}

// deleteImage is DeleteVolume's floor: the image moved to the trash and
// purged from it, and the journal's removals. Each step is timed by step.
func (f *floor) deleteImage(ctx context.Context, rec *journal.Record, step stepFunc) error {
	var id string
	err := step("trash move", func() (err error) {
		if id, err = f.imageID(rec.Backing); err != nil {
			return err
		}
		return librbd.GetImage(f.images, rec.Backing).Trash(0)
	})
	if err != nil {
		return err
	}
	if err := step("purge", func() error { return librbd.TrashRemove(f.images, id, false) }); err != nil {
		return err
	}
	return step("journal", func() error { return f.journal.Remove(ctx, rec) })
}

// imageID reads the image's ID object: one small read, which the purge
// needs and the trash move does not return.
func (f *floor) imageID(image string) (string, error) {
	buf := make([]byte, 256)
	n, err := f.images.Read("rbd_id."+image, buf, 0)
	if err != nil {
		return "", fmt.Errorf("reading the ID of %s: %w", image, err)
	}
	// An encoded string: a little-endian length, then the ID.
	if n < 4 || int(binary.LittleEndian.Uint32(buf))+4 != n {
		return "", fmt.Errorf("malformed ID object of %s", image)
	}
	return string(buf[4:n]), nil
}

func (f *floor) withImage(image string, fn func(*librbd.Image) error) error {
	img, err := librbd.OpenImage(f.images, image, librbd.NoSnapshot)
	if err != nil {
		return fmt.Errorf("opening %s: %w", image, err)
	}
	defer img.Close()
	return fn(img)
}

func (f *floor) createSnap(image, snap string) error {
	return f.withImage(image, func(img *librbd.Image) error {
		_, err := img.CreateSnapshot(snap)
		return err
	})
}

// removeSnap removes a snapshot; one with clone v2 children goes to the
// trash namespace, as the driver's does.
func (f *floor) removeSnap(image, snap string) error {
	return f.withImage(image, func(img *librbd.Image) error { return img.GetSnapshot(snap).Remove() })
}

// snapshot is CreateSnapshot's floor: the journal's reservation and an RBD snapshot.
func (f *floor) snapshot(ctx context.Context, src *journal.Record, name string) (*journal.Record, error) {
	rec := f.record(journal.Snapshot, name, src.SizeBytes)
	rec.Backing, rec.SnapName = src.Backing, "csi-snap-"+rec.UUID
	if err := f.journal.Reserve(ctx, rec); err != nil {
		return nil, err
	}
	return rec, f.createSnap(rec.Backing, rec.SnapName)
}

// deleteSnapshot is DeleteSnapshot's floor: the snapshot removed, and the journal's removals.
func (f *floor) deleteSnapshot(ctx context.Context, rec *journal.Record) error {
	if err := f.removeSnap(rec.Backing, rec.SnapName); err != nil {
		return err
	}
	return f.journal.Remove(ctx, rec)
}

// clone makes image a clone v2 child of parent@snap.
func (f *floor) clone(parent, snap, image string) error {
	opts, err := imageOptions(true)
	if err != nil {
		return err
	}
	defer opts.Destroy()
	return librbd.CloneImage(f.images, parent, snap, f.images, image, opts)
}

// fromSnapshot is the floor of CreateVolume from a snapshot: the
// journal's reservation and a clone v2 of the snapshot.
func (f *floor) fromSnapshot(ctx context.Context, snap *journal.Record, name string) (*journal.Record, error) {
	rec := f.record(journal.Volume, name, snap.SizeBytes)
	if err := f.journal.Reserve(ctx, rec); err != nil {
		return nil, err
	}
	return rec, f.clone(snap.Backing, snap.SnapName, rec.Backing)
}

// cloneVolume is the floor of CreateVolume from a volume, the driver's
// way: the reservation, a temporary snapshot of the source, a clone v2
// of it, and the snapshot removed (to the trash namespace, while the clone needs it).
func (f *floor) cloneVolume(ctx context.Context, src *journal.Record, name string) (*journal.Record, error) {
	rec := f.record(journal.Volume, name, src.SizeBytes)
	if err := f.journal.Reserve(ctx, rec); err != nil {
		return nil, err
	}
	snap := "csi-clone-" + rec.UUID
	if err := f.createSnap(src.Backing, snap); err != nil {
		return nil, err
	}
	if err := f.clone(src.Backing, snap, rec.Backing); err != nil {
		return nil, err
	}
	return rec, f.removeSnap(src.Backing, snap)
}

// resize is ControllerExpandVolume's floor.
func (f *floor) resize(rec *journal.Record, size int64) error {
	return f.withImage(rec.Backing, func(img *librbd.Image) error { return img.Resize(uint64(size)) })
}

func (f *floor) close() {
	f.images.Destroy()
	f.jctx.Destroy()
}
