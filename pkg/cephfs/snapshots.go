package cephfs

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/volume"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

// CreateSnapshot takes a subvolume snapshot of the source volume, named
// csi-snap-<uuid> as ceph-csi names it. Its size is the source's quota.
func (c *Controller) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	return c.calls().CreateSnapshot(ctx, req, c.snapshotSubvolume)
}

// snapshotSubvolume snapshots the subvolume of src, the resolved source.
func (c *Controller) snapshotSubvolume(ctx context.Context, src *resolved, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if src.backedBySnapshot() {
		return nil, status.Errorf(codes.InvalidArgument, "volume %s is a view of a snapshot: snapshot its source instead", req.GetSourceVolumeId())
	}
	if err := takeBackHalfCephCSI(ctx, src.journal, src.cluster.Volumes(), journal.Snapshot, req.GetName()); err != nil {
		return nil, toStatus(err)
	}
	rec, err := src.journal.LookupName(ctx, journal.Snapshot, req.GetName())
	switch {
	case err == nil && rec.Source != req.GetSourceVolumeId():
		return nil, status.Errorf(codes.AlreadyExists, "snapshot %q already exists for another volume", req.GetName())
	case errors.Is(err, journal.ErrNotFound):
		if rec, err = c.reserveSnapshot(ctx, src, req.GetName()); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, toStatus(err)
	}
	// The mgr answers success, changing nothing, for a snapshot that exists.
	if err := src.cluster.Volumes().CreateSnapshot(ctx, Snapshot{Subvolume: src.subvolume(), Name: rec.SnapName}); err != nil {
		return nil, toStatus(err)
	}
	id := volumeid.ID{ClusterID: src.id.ClusterID, PoolID: src.id.PoolID, UUID: rec.UUID}
	return &csi.CreateSnapshotResponse{Snapshot: snapshotOf(id.String(), rec)}, nil
}

// reserveSnapshot records a new snapshot of src under name.
func (c *Controller) reserveSnapshot(ctx context.Context, src *resolved, name string) (*journal.Record, error) {
	info, err := src.cluster.Volumes().Subvolume(ctx, src.subvolume())
	if err != nil {
		return nil, toStatus(err)
	}
	uuid := volume.NewUUID()
	rec := &journal.Record{Kind: journal.Snapshot, Name: name, UUID: uuid, Backing: src.rec.Backing,
		SnapName: "csi-snap-" + uuid, Source: src.id.String(), SizeBytes: max(info.BytesQuota, src.rec.SizeBytes),
		Params: map[string]string{ParamSubvolumeGroup: src.rec.Params[ParamSubvolumeGroup]}, Created: time.Now().UTC()}
	if err := src.journal.Reserve(ctx, rec); err != nil {
		return nil, toStatus(err)
	}
	return rec, nil
}

// snapshotOf describes a snapshot; a subvolume snapshot is complete when made.
func snapshotOf(id string, rec *journal.Record) *csi.Snapshot {
	return &csi.Snapshot{SnapshotId: id, SourceVolumeId: rec.Source, SizeBytes: rec.SizeBytes,
		CreationTime: timestamppb.New(rec.Created), ReadyToUse: true}
}

// GetSnapshot reports a snapshot whose subvolume snapshot exists.
func (c *Controller) GetSnapshot(ctx context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	return c.calls().GetSnapshot(ctx, req, func(ctx context.Context, r *resolved, id string) (*csi.GetSnapshotResponse, error) {
		if _, err := r.cluster.Volumes().Snapshot(ctx, Snapshot{Subvolume: r.subvolume(), Name: r.rec.SnapName}); err != nil {
			return nil, toStatus(err)
		}
		return &csi.GetSnapshotResponse{Snapshot: snapshotOf(id, r.rec)}, nil
	})
}

// DeleteSnapshot removes the subvolume snapshot and its journal entry.
// It refuses while volumes are views of it, or clones of it are running.
func (c *Controller) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	return c.calls().DeleteSnapshot(ctx, req, c.removeSnapshot)
}

// removeSnapshot removes the subvolume snapshot of the snapshot id, then its record.
func (c *Controller) removeSnapshot(ctx context.Context, r *resolved, id string) error {
	if err := viewsOf(ctx, r.journal, id); err != nil {
		return err
	}
	err := r.cluster.Volumes().RemoveSnapshot(ctx, Snapshot{Subvolume: r.subvolume(), Name: r.rec.SnapName})
	if errors.Is(err, ErrInProgress) {
		return status.Errorf(codes.FailedPrecondition, "snapshot %s is being cloned: %v", id, err)
	}
	if err := ignoreNotFound(err); err != nil {
		return toStatus(err)
	}
	return toStatus(r.journal.Remove(ctx, r.rec))
}

// viewsOf refuses, naming them, while volumes are views of the snapshot.
func viewsOf(ctx context.Context, j journal.Journal, snapshotID string) error {
	var views []string
	err := journal.ForEach(ctx, j, journal.Volume, 1000, func(r *journal.Record) {
		if r.Params[ParamBackingSnapshot] == "true" && r.Source == string(journal.Snapshot)+":"+snapshotID {
			views = append(views, r.Name)
		}
	})
	if err != nil {
		return toStatus(err)
	}
	if len(views) > 0 {
		return status.Errorf(codes.FailedPrecondition, "snapshot %s backs volumes %s: delete them first",
			snapshotID, strings.Join(views, ", "))
	}
	return nil
}

// ListSnapshots lists snapshots, filtered by snapshot or source volume ID.
func (c *Controller) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	return volume.SnapshotList[*resolved, listedRecord]{Calls: c.calls(),
		Listed:   func(r *resolved, id string) listedRecord { return listedRecord{rec: r.rec, id: id} },
		All:      func() ([]listedRecord, error) { return c.listRecords(ctx, journal.Snapshot) },
		Describe: func(l listedRecord) (*csi.Snapshot, error) { return snapshotOf(l.id, l.rec), nil },
	}.ListSnapshots(ctx, req)
}
