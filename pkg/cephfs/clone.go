package cephfs

// Content sources: clones of snapshots and volumes, which the mgr makes
// asynchronously and CreateVolume waits for.

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/pelagic-csi/pelagic/pkg/journal"
)

// contentSource is a resolved snapshot or volume to copy from.
type contentSource struct {
	kind     journal.Kind
	csiID    string
	snapshot Snapshot  // a snapshot source's snapshot
	sv       Subvolume // a volume source's subvolume
	size     int64     // the quota a copy gets
}

func (s *contentSource) id() string {
	if s == nil {
		return ""
	}
	return string(s.kind) + ":" + s.csiID
}

// parseSource reads a journal record's Source back.
func parseSource(s string) (journal.Kind, string, bool) {
	kind, id, ok := strings.Cut(s, ":")
	return journal.Kind(kind), id, ok
}

// resolveSource resolves a CreateVolume's content source, which must be
// in the volume's filesystem. The source of a view is locked against its
// deletion until the caller unlocks.
func (c *Controller) resolveSource(ctx context.Context, req *csi.CreateVolumeRequest, fs FSInfo, view bool) (*contentSource, func(), error) {
	noop := func() {}
	s := &contentSource{}
	switch src := req.GetVolumeContentSource(); {
	case src == nil:
		return nil, noop, nil
	case src.GetSnapshot() != nil:
		s.kind, s.csiID = journal.Snapshot, src.GetSnapshot().GetSnapshotId()
	case src.GetVolume() != nil:
		s.kind, s.csiID = journal.Volume, src.GetVolume().GetVolumeId()
	default:
		return nil, noop, status.Error(codes.InvalidArgument, "unsupported volume content source")
	}
	unlock := noop
	if view {
		var err error
		if unlock, err = c.locks.Lock(string(journal.Snapshot) + "/" + s.csiID); err != nil {
			return nil, noop, err
		}
	}
	if err := c.readSource(ctx, s, req, fs); err != nil {
		unlock()
		return nil, noop, err
	}
	return s, unlock, nil
}

func (c *Controller) readSource(ctx context.Context, s *contentSource, req *csi.CreateVolumeRequest, fs FSInfo) error {
	r, err := c.resolve(ctx, s.kind, s.csiID, req.GetSecrets())
	if err != nil {
		return err
	}
	if r.id.ClusterID != req.GetParameters()[ParamClusterID] || r.fs.ID != fs.ID {
		return status.Errorf(codes.InvalidArgument, "source %s %s is in filesystem %s of cluster %s: copies stay in their source's filesystem",
			s.kind, s.csiID, r.fs.Name, r.id.ClusterID)
	}
	if s.kind == journal.Snapshot {
		s.snapshot, s.size = Snapshot{Subvolume: r.subvolume(), Name: r.rec.SnapName}, r.rec.SizeBytes
		return nil
	}
	if r.backedBySnapshot() {
		return status.Errorf(codes.InvalidArgument, "volume %s is a view of a snapshot: clone the snapshot instead", s.csiID)
	}
	s.sv = r.subvolume()
	info, err := r.cluster.Volumes().Subvolume(ctx, s.sv)
	if errors.Is(err, ErrNotFound) {
		return status.Errorf(codes.NotFound, "source volume %s has no subvolume: %v", s.csiID, err)
	}
	s.size = max(info.BytesQuota, r.rec.SizeBytes)
	return toStatus(err)
}

// sourceSize is the size of a copy: at least its source's.
func sourceSize(size int64, src *contentSource, r *csi.CapacityRange) (int64, error) {
	if src == nil || src.size <= size {
		return size, nil
	}
	if lim := r.GetLimitBytes(); lim > 0 && src.size > lim {
		return 0, status.Errorf(codes.OutOfRange, "source is %d bytes, more than the limit %d", src.size, lim)
	}
	return src.size, nil
}

// cloneInto starts the clone of a source into sv and waits for it. A
// volume is cloned through a snapshot named after the clone (as ceph-csi
// names it), removed once the clone is done.
func (c *Controller) cloneInto(ctx context.Context, v Volumes, sv Subvolume, rec *journal.Record, pool string, src *contentSource) error {
	snap := src.snapshot
	if src.kind == journal.Volume {
		snap = Snapshot{Subvolume: src.sv, Name: sv.Name}
		if err := v.CreateSnapshot(ctx, snap); err != nil {
			return err
		}
	}
	err := v.EnsureGroup(ctx, sv.FS, sv.Group)
	if err == nil {
		err = v.Clone(ctx, snap, sv, pool)
	}
	if err != nil && !errors.Is(err, ErrExists) { // one that exists is the clone a crashed call started
		c.dropCloneSnapshot(ctx, v, src, sv)
		return err
	}
	return c.awaitClone(ctx, v, sv, rec, src)
}

// awaitClone waits for the clone into sv, then finishes the copy; a clone
// that failed is removed, so that a retry starts afresh.
func (c *Controller) awaitClone(ctx context.Context, v Volumes, sv Subvolume, rec *journal.Record, src *contentSource) error {
	st, err := c.pollClone(ctx, v, sv, rec.Name)
	if err != nil {
		return err
	}
	if st.State == CloneComplete {
		return c.finishCopy(ctx, v, sv, rec, src, src.size)
	}
	cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if err := v.RemoveSubvolume(cleanup, sv, RemoveOptions{Force: true}); err != nil {
		klog.FromContext(ctx).Error(err, "removing a failed clone", "subvolume", sv.String())
	}
	c.dropCloneSnapshot(cleanup, v, src, sv)
	return status.Errorf(codes.Internal, "the clone of %s into %s %s: %s (errno %d); it is removed, a retry clones again",
		src.id(), sv, st.State, st.Failure, st.FailureErrno)
}

// pollClone reads the clone's state until it is done, at an interval that
// starts short (a small clone is done in seconds) and grows tenfold. When
// the call's deadline nears, it answers Aborted: the clone goes on, and
// the retry waits for it.
func (c *Controller) pollClone(ctx context.Context, v Volumes, sv Subvolume, name string) (CloneStatus, error) {
	stop := time.Now().Add(24 * time.Hour)
	if deadline, ok := ctx.Deadline(); ok {
		stop = deadline.Add(-min(2*time.Second, time.Until(deadline)/4))
	}
	interval := c.opts.ClonePoll
	for {
		sctx, cancel := context.WithDeadline(ctx, stop)
		st, err := v.CloneStatus(sctx, sv)
		cancel()
		switch {
		case err == nil && st.State.Done():
			return st, nil
		case err != nil && (ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded)):
			return st, err
		case time.Now().Add(interval).After(stop):
			return st, status.Errorf(codes.Aborted, "volume %q: the clone into %s is %s; it goes on, and a retry waits for it",
				name, sv, stateName(st.State))
		}
		time.Sleep(interval)
		interval = min(interval*3/2, 10*c.opts.ClonePoll)
	}
}

func stateName(s CloneState) CloneState {
	if s == "" {
		return "not answering"
	}
	return s
}

// finishCopy grows a copy to its size (a clone has its source's quota) and
// removes the snapshot a clone of a volume was made from.
func (c *Controller) finishCopy(ctx context.Context, v Volumes, sv Subvolume, rec *journal.Record, src *contentSource, quota int64) error {
	if src == nil {
		return nil
	}
	if quota == 0 || quota < rec.SizeBytes {
		if err := v.ResizeSubvolume(ctx, sv, rec.SizeBytes); err != nil {
			return err
		}
	}
	if src.kind == journal.Volume {
		return ignoreNotFound(v.RemoveSnapshot(ctx, Snapshot{Subvolume: src.sv, Name: sv.Name}))
	}
	return nil
}

// dropCloneSnapshot removes the snapshot a clone of a volume was made
// from, when the clone is given up.
func (c *Controller) dropCloneSnapshot(ctx context.Context, v Volumes, src *contentSource, sv Subvolume) {
	if src.kind != journal.Volume {
		return
	}
	if err := ignoreNotFound(v.RemoveSnapshot(context.WithoutCancel(ctx), Snapshot{Subvolume: src.sv, Name: sv.Name})); err != nil {
		klog.FromContext(ctx).Error(err, "removing the snapshot of a clone given up", "subvolume", src.sv.String(), "snapshot", sv.Name)
	}
}

// removeClone removes a subvolume a clone is still copying (or failed to
// copy) into: the mgr removes such a subvolume only once the clone is
// canceled, and only by force. The snapshot of a clone of a volume goes too.
func (c *Controller) removeClone(ctx context.Context, v Volumes, sv Subvolume) error {
	st, err := v.CloneStatus(ctx, sv)
	if err != nil {
		return err
	}
	if !st.State.Done() {
		if err := v.CancelClone(ctx, sv); err != nil && !errors.Is(err, ErrInvalid) { // EINVAL: done meanwhile
			return err
		}
	}
	if err := v.RemoveSubvolume(ctx, sv, RemoveOptions{Force: true, RetainSnapshots: true}); err != nil {
		return err
	}
	if st.Source != nil && st.Source.Name == sv.Name {
		return ignoreNotFound(v.RemoveSnapshot(ctx, *st.Source))
	}
	return nil
}
