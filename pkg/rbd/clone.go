package rbd

// Copy-on-write content sources: clones from snapshots and volumes, and
// the flatten policy that keeps clone chains short.

import (
	"context"
	"errors"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/volume"
)

// cloneSnapName names the temporary snapshot a volume-to-volume clone
// is made from; clone v2 keeps it in the trash namespace while the child needs it.
func cloneSnapName(childUUID string) string { return "csi-clone-" + childUUID }

// contentSource is a resolved snapshot or volume to copy from.
type contentSource struct {
	kind  journal.Kind
	csiID string
	pool  Pool
	rec   *journal.Record
	// head is the header of the source image (for a snapshot, of the image
	// it was taken of): its ID, and the parents that make its clone depth.
	head ImageHead
	size int64 // of the snapshot, or of the volume
}

func (s *contentSource) id() string {
	if s == nil {
		return ""
	}
	return string(s.kind) + ":" + s.csiID
}

// resolveSource finds a content source and its image from their records
// and the image's header, without opening the image.
func (c *Controller) resolveSource(ctx context.Context, src *csi.VolumeContentSource, secrets map[string]string) (*contentSource, error) {
	var kind journal.Kind
	var id string
	switch {
	case src == nil:
		return nil, nil
	case src.GetSnapshot() != nil:
		kind, id = journal.Snapshot, src.GetSnapshot().GetSnapshotId()
	case src.GetVolume() != nil:
		kind, id = journal.Volume, src.GetVolume().GetVolumeId()
	default:
		return nil, status.Error(codes.InvalidArgument, "unsupported volume content source")
	}
	r, err := c.resolve(ctx, kind, id, secrets)
	if err != nil {
		return nil, err
	}
	s := &contentSource{kind: kind, csiID: id, pool: r.pool, rec: r.rec}
	if kind == journal.Snapshot {
		// The record holds the snapshot's size; a snapshot that is gone
		// fails the clone with NotFound.
		if s.head, err = r.pool.HeadByID(ctx, r.rec.BackingID); err != nil {
			if errors.Is(err, ErrImageNotFound) {
				return nil, status.Errorf(codes.NotFound, "snapshot %q is gone: %v", id, err)
			}
			return nil, volume.Status(err)
		}
		s.size = r.rec.SizeBytes
		return s, nil
	}
	if s.head, err = r.pool.Head(ctx, r.rec.Backing); err != nil {
		if errors.Is(err, ErrImageNotFound) {
			return nil, status.Errorf(codes.NotFound, "source volume %q has no image: %v", id, err)
		}
		return nil, volume.Status(err)
	}
	s.size = s.head.Size
	return s, nil
}

// cloneImage makes the new image a clone v2 child of the source snapshot
// (for a volume source, of a temporary snapshot that clone v2 keeps in the
// trash namespace while the child needs it), grows it to the requested
// size and bounds the clone chain by flattening.
func (c *Controller) cloneImage(ctx context.Context, pool Pool, rec *journal.Record, spec ImageSpec, src *contentSource) error {
	parent, snap, size := src.rec.Backing, src.rec.SnapName, src.size
	if src.pool.Name() != pool.Name() {
		return status.Errorf(codes.InvalidArgument, "source is in pool %q, the new volume in %q: clones stay in one pool",
			src.pool.Name(), pool.Name())
	}
	if src.kind == journal.Volume {
		unlock, err := c.lockAgainstFlatten(ctx, pool, parent)
		if err != nil {
			return err
		}
		defer unlock()
		snap = cloneSnapName(rec.UUID)
		info, err := pool.CreateSnap(ctx, parent, SnapOf(src.head.ID, snap))
		if err != nil {
			return err
		}
		size = info.Size
		c.createStep(CreateStepCloneSnap)
	}
	if err := pool.Clone(ctx, parent, snap, spec); err != nil {
		// On EEXIST another request is cloning from the same snapshot.
		if src.kind == journal.Volume && ceph.Errno(err) != syscall.EEXIST {
			if rerr := pool.RemoveSnap(context.WithoutCancel(ctx), src.head.ID, snap); rerr != nil {
				klog.FromContext(ctx).Error(rerr, "removing temporary clone snapshot", "image", parent, "snap", snap)
			}
		}
		return err
	}
	// A clone starts at the size of its parent snapshot.
	if size < spec.Size {
		if err := pool.Resize(ctx, spec.Name, spec.Size); err != nil {
			return err
		}
	}
	depth, err := cloneDepth(ctx, pool, src.head, c.opts.HardCloneDepth)
	if err != nil {
		return err
	}
	return c.applyFlattenPolicy(ctx, pool, spec.Name, src.head.ID, depth+1)
}

// cloneDepth counts the ancestors of the image whose header is head, up to
// limit+1, from header to header. A parent in another pool or namespace
// (no clone Pelagic makes) ends the count.
func cloneDepth(ctx context.Context, pool Pool, head ImageHead, limit int) (int, error) {
	depth := 0
	for p := head.Parent; p != nil && depth <= limit; p = head.Parent {
		depth++
		if p.PoolID != pool.ID() || p.Namespace != pool.Namespace() {
			break
		}
		var err error
		if head, err = pool.HeadByID(ctx, p.ImageID); err != nil {
			return depth, err
		}
	}
	return depth, nil
}

// flattenDecision says what a clone at depth needs.
type flattenDecision int

const (
	keepClone flattenDecision = iota
	flattenInBackground
	flattenNow
)

func decideFlatten(depth, soft, hard int) flattenDecision {
	switch {
	case depth > hard:
		return flattenNow
	case depth > soft:
		return flattenInBackground
	default:
		return keepClone
	}
}

// applyFlattenPolicy flattens image, a clone of parentID at depth, as the
// depth limits ask. A flattened clone no longer needs its parent, which,
// when trashed, may then be purged.
func (c *Controller) applyFlattenPolicy(ctx context.Context, pool Pool, image, parentID string, depth int) error {
	flatten := func(ctx context.Context) error {
		if err := pool.Flatten(ctx, image); err != nil {
			return err
		}
		purgeFreed(ctx, pool, parentID)
		return nil
	}
	switch decideFlatten(depth, c.opts.SoftCloneDepth, c.opts.HardCloneDepth) {
	case flattenNow:
		return flatten(ctx)
	case flattenInBackground:
		key := flattenKey(pool, image)
		held := c.locks.TryLock(key) // a new clone's is free: taken before CreateVolume returns
		go func() {
			bctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
			defer cancel()
			if !held && !waitLock(bctx, &c.locks, key) {
				klog.ErrorS(bctx.Err(), "background flatten never started", "image", image)
				return
			}
			defer c.locks.Unlock(key)
			if err := flatten(bctx); err != nil {
				klog.ErrorS(err, "background flatten failed", "image", image)
			}
		}()
	}
	return nil
}

// flattenKey is the lock a background flatten of image holds. A snapshot
// taken during the flatten can still name the parent snapshot that the
// flatten's end removes, and then never opens again (nor can a clone of it
// be made), so snapshots and clones of the image wait for it.
func flattenKey(pool Pool, image string) string {
	return "flatten/" + pool.Name() + "/" + pool.Namespace() + "/" + image
}

// lockAgainstFlatten takes image's flatten lock for a snapshot of it,
// waiting while the image is being flattened; Unavailable when the flatten
// outlasts ctx, and the caller retries.
func (c *Controller) lockAgainstFlatten(ctx context.Context, pool Pool, image string) (func(), error) {
	key := flattenKey(pool, image)
	if !waitLock(ctx, &c.locks, key) {
		return nil, status.Errorf(codes.Unavailable, "image %s/%s is being flattened, which a snapshot must wait for; try again: %v",
			pool.Name(), image, ctx.Err())
	}
	return func() { c.locks.Unlock(key) }, nil
}

// waitLock takes key once it is free, or gives up when ctx ends.
func waitLock(ctx context.Context, locks *volume.Locks, key string) bool {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !locks.TryLock(key) {
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
	return true
}
