package rbd

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/journal"
)

// This file exports what pelagicctl needs to read and undo the records the
// controller and nodes keep in image metadata. It reuses their own helpers,
// so the tool and the driver cannot disagree about what a record means.

// OwnerMetadataKey is the image metadata key CreateVolume writes the Owner to.
const OwnerMetadataKey = metaOwnerKey

// Owner is who a volume was created for, as CreateVolume records it.
type Owner struct {
	Name      string `json:"name"` // the CSI request name
	PVC       string `json:"pvc"`
	Namespace string `json:"namespace"` // of the PVC
	PV        string `json:"pv"`
	// Params are the creation parameters that define the volume (no secrets).
	Params map[string]string `json:"params,omitempty"`
}

// ReadUsage loads the records and watchers of image, as the controller does
// before it publishes, recognising the watches of Pelagic controllers.
func ReadUsage(ctx context.Context, pool Pool, image string) (*Usage, error) {
	return readUsageOf(ctx, pool, image)
}

// RemoveFenceRecord removes the fence record of the client instance addr
// (spelled as in the record) through a conditional update, as the
// controller's fence keeper does when it lifts a fence.
func RemoveFenceRecord(ctx context.Context, pool Pool, image, addr string) error {
	_, err := updateRecords(ctx, pool, image, func(recs *Records) (*recordChange, error) {
		if _, ok := recs.Fences[addr]; !ok {
			return nil, nil
		}
		return (&recordChange{}).drop(metaFencePrefix + addr), nil
	})
	return err
}

// ReadOwner returns the owner record of image: Pelagic's, else the PVC and
// PV ceph-csi recorded when it ran with --setmetadata; nil when neither is
// there (another tool's image, or one whose creation has not finished).
func ReadOwner(ctx context.Context, pool Pool, image string) (*Owner, error) {
	meta, err := pool.Metadata(ctx, image)
	if err != nil {
		return nil, err
	}
	raw, ok := meta[metaOwnerKey]
	if !ok {
		if pvc := meta[ParamPVCName]; pvc != "" {
			return &Owner{PVC: pvc, Namespace: meta[ParamPVCNamespace], PV: meta[ParamPVName]}, nil
		}
		return nil, nil
	}
	var o Owner
	if err := json.Unmarshal([]byte(raw), &o); err != nil {
		return nil, fmt.Errorf("image %s/%s: malformed %s record: %w", pool.Name(), image, metaOwnerKey, err)
	}
	return &o, nil
}

// FenceMetadataKey is the image metadata key of the fence of the client
// instance addr; addr must be spelled as in the Fence record.
func FenceMetadataKey(addr string) string { return metaFencePrefix + addr }

// MappingOf returns the node mapping record that names the client instance addr.
func (u *Usage) MappingOf(addr string) (NodeMapping, bool) { return u.mappingOf(addr) }

// FenceHolder fences one holder of image for an operator (pelagicctl),
// through the controller's own fence: the intent recorded as pending with
// reason, the blocklist call, the record completed, and the wait for the
// holder's watch to go. Without force it fences only a holder that is
// still stale when the records are read again (mapped, not attached);
// force also fences one whose attachment is current or that no node
// recorded. It returns the fence record as it stands afterwards; an error
// says the holder changed since it was judged, or why the fence failed.
func (c *Controller) FenceHolder(ctx context.Context, cl Cluster, pool Pool, image string, h Holder, reason string,
	force bool) (Fence, error) {
	r := &resolved{cluster: cl, pool: pool, rec: &journal.Record{Backing: image}}
	if err := c.fenceHolder(ctx, r, h, reason, force); err != nil {
		return Fence{}, err
	}
	recs, err := readRecords(ctx, pool, image)
	if err != nil {
		return Fence{}, err
	}
	f, ok := recs.fenceOf(h.ClientAddr())
	if !ok || !f.InForce(time.Now()) {
		return Fence{}, fmt.Errorf("%s changed while it was being fenced (attached, unmapped or fenced by another): "+
			"nothing was fenced; look again", h.Describe())
	}
	return f, nil
}

// CompletePendingFence finishes a fence a controller left pending (its
// blocklist call may not have been made), as the next publish would.
func (c *Controller) CompletePendingFence(ctx context.Context, cl Cluster, pool Pool, image string, f Fence) error {
	if f.Done() {
		return nil
	}
	return c.completeFence(ctx, &resolved{cluster: cl, pool: pool, rec: &journal.Record{Backing: image}}, f)
}

// RemoveAttachmentRecord removes node's attachment record of image, as
// ControllerUnpublishVolume does, but only while that node holds no
// mapping record: an attachment the CO has forgotten (its VolumeAttachment
// is gone) whose node never mapped the volume.
func RemoveAttachmentRecord(ctx context.Context, pool Pool, image, node string) (bool, error) {
	removed := false
	_, err := updateRecords(ctx, pool, image, func(recs *Records) (*recordChange, error) {
		removed = false
		if _, ok := recs.Attachments[node]; !ok {
			return nil, nil
		}
		if _, mapped := recs.Mappings[node]; mapped {
			return nil, fmt.Errorf("node %s holds a mapping record of %s/%s: its attachment stays", node, pool.Name(), image)
		}
		removed = true
		return (&recordChange{}).drop(metaAttachPrefix + node), nil
	})
	return removed && err == nil, err
}

// RemoveMappingRecord removes node's mapping record of image once its
// client instance addr is gone (unmapped), as NodeUnstage does; a record
// naming another instance (a newer mapping) stays. It reports whether it
// removed one.
func RemoveMappingRecord(ctx context.Context, pool Pool, image, node, addr string) (bool, error) {
	removed := false
	_, err := updateRecords(ctx, pool, image, func(recs *Records) (*recordChange, error) {
		removed = false
		m, ok := recs.Mappings[node]
		if !ok || (m.ClientAddr != addr && !ceph.SameClient(m.ClientAddr, addr)) {
			return nil, nil
		}
		removed = true
		return (&recordChange{}).drop(metaMapPrefix + node), nil
	})
	return removed && err == nil, err
}
