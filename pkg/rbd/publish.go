package rbd

import (
	"context"
	"errors"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/volume"
)

// ControllerPublishVolume records that the volume is attached to a node,
// after making sure no other node can still write a single-node volume: a
// current holder is refused by name, a stale one is fenced. The attachment
// is written only if the records are unchanged since they were judged, so
// two controllers publishing at once cannot both succeed.
func (c *Controller) ControllerPublishVolume(ctx context.Context, req *csi.ControllerPublishVolumeRequest) (*csi.ControllerPublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is missing")
	}
	if req.GetNodeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "node ID is missing")
	}
	if err := validateCapability(req.GetVolumeCapability()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := c.checkNode(ctx, req.GetNodeId()); err != nil {
		return nil, err
	}
	r, unlock, err := c.calls().LockResolved(ctx, journal.Volume, req.GetVolumeId(), req.GetSecrets())
	if err != nil {
		return nil, err
	}
	defer unlock()
	mode := req.GetVolumeCapability().GetAccessMode().GetMode()
	want := Attachment{Node: req.GetNodeId(), Mode: mode.String(), ReadOnly: req.GetReadonly()}
	for attempt := 1; ; attempt++ {
		usage, err := c.usage(ctx, r)
		if err != nil {
			return nil, err
		}
		if a, ok := usage.Attachments[want.Node]; ok {
			if a.Mode != want.Mode || a.ReadOnly != want.ReadOnly {
				return nil, status.Errorf(codes.AlreadyExists, "volume %s is already published to node %s as %s (read-only %t)",
					req.GetVolumeId(), want.Node, a.Mode, a.ReadOnly)
			}
			return &csi.ControllerPublishVolumeResponse{}, nil
		}
		fenced, err := c.clearHolders(ctx, r, usage, want.Node, singleNode(mode))
		if err != nil {
			return nil, err
		}
		if !fenced {
			want.Since = time.Now().UTC()
			err = r.pool.UpdateRecords(ctx, r.rec.Backing, usage.Version,
				(&recordChange{}).put(metaAttachPrefix+want.Node, want).set, nil)
			if err == nil {
				return &csi.ControllerPublishVolumeResponse{}, nil
			}
			if !errors.Is(err, ErrConflict) {
				return nil, volume.Status(err)
			}
		}
		// The records changed (a fence was completed, or another process
		// wrote first): judge them again.
		if attempt == maxRecordAttempts {
			return nil, status.Errorf(codes.Aborted, "the records of volume %s kept changing; retry", r.id)
		}
	}
}

// checkNode answers NotFound for a node ID that no node of this driver
// registered, when the controller sees the cluster's CSINodes.
func (c *Controller) checkNode(ctx context.Context, nodeID string) error {
	if c.opts.Nodes == nil {
		return nil
	}
	ok, err := c.opts.Nodes.HasNode(ctx, nodeID)
	if err != nil {
		return status.Errorf(codes.Unavailable, "cannot tell whether node %q exists: %v", nodeID, err)
	}
	if !ok {
		return status.Errorf(codes.NotFound, "node %q does not exist: no CSINode lists it for this driver", nodeID)
	}
	return nil
}

// ControllerUnpublishVolume forgets the attachment. The node's mapping
// record stays until the node unmaps: if it never does, the next publish
// elsewhere fences it.
func (c *Controller) ControllerUnpublishVolume(ctx context.Context, req *csi.ControllerUnpublishVolumeRequest) (*csi.ControllerUnpublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is missing")
	}
	r, unlock, err := c.calls().LockResolved(ctx, journal.Volume, req.GetVolumeId(), req.GetSecrets())
	if status.Code(err) == codes.NotFound {
		return &csi.ControllerUnpublishVolumeResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer unlock()
	_, err = updateRecords(ctx, r.pool, r.rec.Backing, func(recs *Records) (*recordChange, error) {
		change := &recordChange{}
		for n := range recs.Attachments {
			if req.GetNodeId() == "" || n == req.GetNodeId() { // "": unpublish from every node
				change.drop(metaAttachPrefix + n)
			}
		}
		return change, nil
	})
	if err != nil && !errors.Is(err, ErrImageNotFound) {
		return nil, volume.Status(err)
	}
	return &csi.ControllerUnpublishVolumeResponse{}, nil
}

// usage reads who uses the volume; the watches of Pelagic controllers
// (this one and its peers) are recognised as their own.
func (c *Controller) usage(ctx context.Context, r *resolved) (*Usage, error) {
	u, err := readUsageOf(ctx, r.pool, r.rec.Backing)
	if errors.Is(err, ErrImageNotFound) {
		return nil, status.Errorf(codes.NotFound, "volume %s has no image: %v", r.id, err)
	}
	if err != nil {
		return nil, volume.Status(err)
	}
	return u, nil
}

// clearHolders applies Decide to every holder: it refuses with a message
// naming them, or fences the stale ones. A fence a controller left half
// done is finished first. changed reports that it wrote the records, which
// the caller must then read again.
func (c *Controller) clearHolders(ctx context.Context, r *resolved, usage *Usage, node string, requestSingle bool) (changed bool, err error) {
	if pending := pendingFences(usage.Records); len(pending) > 0 {
		for _, f := range pending {
			if err := c.completeFence(ctx, r, f); err != nil {
				return false, err
			}
		}
		return true, nil
	}
	var refuse, fence []Holder
	for _, h := range usage.Holders(node) {
		switch Decide(requestSingle, h) {
		case Refuse:
			refuse = append(refuse, h)
		case FenceIt:
			fence = append(fence, h)
		}
	}
	if len(refuse) > 0 {
		observeRefused(c.opts.Holders, "publish", refuse)
		return false, status.Errorf(codes.FailedPrecondition, "volume %s (image %s/%s) is already in use: %s%s",
			r.id, r.pool.Name(), r.rec.Backing, describeAll(refuse), cephCSIHolderHint(r.rec, refuse))
	}
	for _, h := range fence {
		reason := "node " + h.Node + " still maps the volume after it was unpublished; published to " + node
		if err := c.fence(ctx, r, h, reason); err != nil {
			return false, err
		}
		if c.opts.Holders != nil {
			c.opts.Holders.Fenced(h.State.String())
		}
	}
	return len(fence) > 0, nil
}
