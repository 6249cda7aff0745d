package rbd

// Copy-on-write content sources: clones from snapshots and volumes, and
// the flatten policy that keeps clone chains short.

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/volume"
)

// cloneSnapName names the temporary snapshot a volume-to-volume clone
// is made from; clone v2 keeps it in the trash namespace while the child needs it.
func cloneSnapName(childUUID string) string { return "csi-clone-" + childUUID }

// contentSource is a resolved snapshot or volume to copy from.
type contentSource struct {
	kind    journal.Kind
	csiID   string
	pool    Pool
	rec     *journal.Record
	imageID string
	size    int64
}

func (s *contentSource) id() string {
	if s == nil {
		return ""
	}
	return string(s.kind) + ":" + s.csiID
}

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
		snap, err := r.pool.Snap(ctx, r.rec.BackingID, r.rec.SnapName)
		if err != nil {
			if errors.Is(err, ErrSnapNotFound) || errors.Is(err, ErrImageNotFound) {
				return nil, status.Errorf(codes.NotFound, "snapshot %q is gone: %v", id, err)
			}
			return nil, volume.Status(err)
		}
		s.imageID, s.size = r.rec.BackingID, snap.Size
		return s, nil
	}
	info, err := r.pool.Stat(ctx, r.rec.Backing)
	if err != nil {
		if errors.Is(err, ErrImageNotFound) {
			return nil, status.Errorf(codes.NotFound, "source volume %q has no image: %v", id, err)
		}
		return nil, volume.Status(err)
	}
	s.imageID, s.size = info.ID, info.Size
	return s, nil
}

// cloneImage makes the new image a clone v2 child of the source snapshot
// (for a volume source, of a temporary snapshot that clone v2 keeps in the
// trash namespace while the child needs it), grows it to the requested
// size and bounds the clone chain by flattening.
func (c *Controller) cloneImage(ctx context.Context, pool Pool, rec *journal.Record, spec ImageSpec, src *contentSource) error {
	parent, snap := src.rec.Backing, src.rec.SnapName
	if src.pool.Name() != pool.Name() {
		return status.Errorf(codes.InvalidArgument, "source is in pool %q, the new volume in %q: clones stay in one pool",
			src.pool.Name(), pool.Name())
	}
	if src.kind == journal.Volume {
		snap = cloneSnapName(rec.UUID)
		if err := c.flattening.wait(ctx, pool, parent); err != nil {
			return err
		}
		if _, err := pool.CreateSnap(ctx, src.imageID, snap); err != nil {
			return err
		}
	}
	if err := pool.Clone(ctx, parent, snap, spec); err != nil {
		if src.kind == journal.Volume {
			if rerr := pool.RemoveSnap(context.WithoutCancel(ctx), src.imageID, snap); rerr != nil {
				klog.FromContext(ctx).Error(rerr, "removing temporary clone snapshot", "image", parent, "snap", snap)
			}
		}
		return err
	}
	if info, err := pool.Stat(ctx, spec.Name); err == nil && info.Size < spec.Size {
		if err := pool.Resize(ctx, spec.Name, spec.Size); err != nil {
			return err
		}
	}
	return c.applyFlattenPolicy(ctx, pool, spec.Name)
}

// cloneDepth counts the ancestors of image, up to limit+1.
func cloneDepth(ctx context.Context, pool Pool, image string, limit int) (int, error) {
	depth := 0
	info, err := pool.Stat(ctx, image)
	for err == nil && info.Parent != nil && depth <= limit {
		depth++
		if info.Parent.ImageID != "" {
			info, err = pool.StatByID(ctx, info.Parent.ImageID)
		} else {
			info, err = pool.Stat(ctx, info.Parent.Image)
		}
	}
	return depth, err
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

func (c *Controller) applyFlattenPolicy(ctx context.Context, pool Pool, image string) error {
	depth, err := cloneDepth(ctx, pool, image, c.opts.HardCloneDepth)
	if err != nil {
		return err
	}
	switch decideFlatten(depth, c.opts.SoftCloneDepth, c.opts.HardCloneDepth) {
	case flattenNow:
		return pool.Flatten(ctx, image)
	case flattenInBackground:
		done := c.flattening.start(pool, image)
		go func() {
			defer done()
			bctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
			defer cancel()
			if err := pool.Flatten(bctx, image); err != nil {
				klog.ErrorS(err, "background flatten failed", "image", image)
			}
		}()
	}
	return nil
}

// flattens are the background flattens this controller runs, by pool and
// image. librbd races a snapshot taken while its image is being flattened:
// the flatten detaches the image from its parent and frees the parent's
// trashed snapshot, yet the new snapshot still names it as its parent, so
// every clone or restore from it fails with ENOENT. Snapshots of an image
// therefore wait for its flatten.
type flattens struct {
	mu      sync.Mutex
	running map[string]chan struct{}
}

func flattenKey(pool Pool, image string) string { return pool.Name() + "/" + image }

// start records a flatten of image; done ends it.
func (f *flattens) start(pool Pool, image string) (done func()) {
	key, ch := flattenKey(pool, image), make(chan struct{})
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.running == nil {
		f.running = map[string]chan struct{}{}
	}
	f.running[key] = ch
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.running[key] == ch {
			delete(f.running, key)
		}
		close(ch)
	}
}

// wait returns once no flatten of image runs, or Unavailable when ctx ends first.
func (f *flattens) wait(ctx context.Context, pool Pool, image string) error {
	f.mu.Lock()
	ch := f.running[flattenKey(pool, image)]
	f.mu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return status.Errorf(codes.Unavailable, "image %s is being flattened, which a snapshot must wait for; try again: %v",
			flattenKey(pool, image), ctx.Err())
	}
}
