package rbd

import (
	"context"
	"encoding/json"
	"fmt"
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

// ReadOwner returns the owner record of image, or nil when it has none (an
// image Pelagic did not create, or one whose creation has not finished).
func ReadOwner(ctx context.Context, pool Pool, image string) (*Owner, error) {
	meta, err := pool.Metadata(ctx, image)
	if err != nil {
		return nil, err
	}
	raw, ok := meta[metaOwnerKey]
	if !ok {
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

// SameClient reports whether two client instance addresses name the same
// client, whether or not they carry a "v1:"/"v2:" prefix.
func SameClient(a, b string) bool { return sameClient(a, b) }
