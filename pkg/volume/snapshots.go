package volume

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/pkg/journal"
)

// CreateSnapshot answers CreateSnapshot: under the lock of the snapshot's
// name, create snapshots src, the resolved source volume.
func (c Calls[R]) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest,
	create func(context.Context, R, *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error)) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot name is missing")
	}
	if req.GetSourceVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "source volume ID is missing")
	}
	unlock, err := c.Locks.Lock("snapname/" + req.GetName())
	if err != nil {
		return nil, err
	}
	defer unlock()
	src, err := c.Resolve(ctx, journal.Volume, req.GetSourceVolumeId(), req.GetSecrets())
	if err != nil {
		return nil, err
	}
	return create(ctx, src, req)
}

// GetSnapshot answers GetSnapshot: describe reports the snapshot of the
// ID, or fails when its backing is gone.
func (c Calls[R]) GetSnapshot(ctx context.Context, req *csi.GetSnapshotRequest,
	describe func(ctx context.Context, r R, id string) (*csi.GetSnapshotResponse, error)) (*csi.GetSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot ID is missing")
	}
	r, err := c.Resolve(ctx, journal.Snapshot, req.GetSnapshotId(), req.GetSecrets())
	if err != nil {
		return nil, err
	}
	return describe(ctx, r, req.GetSnapshotId())
}

// DeleteSnapshot answers DeleteSnapshot: remove deletes the snapshot of the
// ID under its lock; an ID that names nothing is deleted already.
func (c Calls[R]) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest,
	remove func(ctx context.Context, r R, id string) error) (*csi.DeleteSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot ID is missing")
	}
	r, unlock, err := c.LockResolved(ctx, journal.Snapshot, req.GetSnapshotId(), req.GetSecrets())
	if status.Code(err) == codes.NotFound {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer unlock()
	return &csi.DeleteSnapshotResponse{}, remove(ctx, r, req.GetSnapshotId())
}

// SnapshotList is how a driver lists its snapshots for ListSnapshots: R is
// its resolved ID, L its listed snapshot.
type SnapshotList[R Resolved, L Resolved] struct {
	Calls[R]
	Listed   func(r R, id string) L         // the listed snapshot of a resolved ID
	All      func() ([]L, error)            // every snapshot, in a stable order
	Describe func(L) (*csi.Snapshot, error) // an entry; asked only of the page's
}

// ListSnapshots answers a page of ListSnapshots: the snapshot the request
// names (none when it names nothing) or all, of its source volume when it
// names one.
func (l SnapshotList[R, L]) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	found, err := l.found(ctx, req)
	if err != nil {
		return nil, err
	}
	if found == nil && req.GetSnapshotId() != "" {
		return &csi.ListSnapshotsResponse{}, nil // names nothing: not even a page
	}
	var listed []L
	for _, s := range found {
		if src := req.GetSourceVolumeId(); src == "" || s.Record().Source == src {
			listed = append(listed, s)
		}
	}
	start, end, next, err := Page(req.GetStartingToken(), req.GetMaxEntries(), len(listed))
	if err != nil {
		return nil, err
	}
	resp := &csi.ListSnapshotsResponse{NextToken: next}
	for _, s := range listed[start:end] {
		snap, err := l.Describe(s)
		if err != nil {
			return nil, err
		}
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: snap})
	}
	return resp, nil
}

// found is the snapshot the request names, or every one when it names none.
func (l SnapshotList[R, L]) found(ctx context.Context, req *csi.ListSnapshotsRequest) ([]L, error) {
	if req.GetSnapshotId() == "" {
		return l.All()
	}
	r, err := l.Resolve(ctx, journal.Snapshot, req.GetSnapshotId(), req.GetSecrets())
	if status.Code(err) == codes.NotFound {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return []L{l.Listed(r, req.GetSnapshotId())}, nil
}
