package rbd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"

	"github.com/pelagic-csi/pelagic/pkg/mapper"
	"github.com/pelagic-csi/pelagic/pkg/nodefs"
)

// stageRecord is written beside the staging path once the image is mapped,
// so unstage, publish, expand and the replacement of a dead mapping work
// after a driver restart.
type stageRecord struct {
	VolumeID  string         `json:"volumeID"`
	ClusterID string         `json:"clusterID"`
	Mapping   mapper.Mapping `json:"mapping"`
	Block     bool           `json:"block"`
	FSType    string         `json:"fsType,omitempty"`
	// Mode and MountFlags are the staged access mode and mount flags; ""
	// and none in records of older versions.
	Mode       string               `json:"mode,omitempty"`
	MountFlags []string             `json:"mountFlags,omitempty"`
	Staged     time.Time            `json:"staged"`
	Targets    []nodefs.Publication `json:"targets,omitempty"` // where it is published
	// UnmapOptions are the mapper's part of the StorageClass's
	// unmapOptions, for the unstage.
	UnmapOptions string `json:"unmapOptions,omitempty"`
	// VolumeContext is the stage's volume context (no secrets), for
	// mapping the volume again when its mapping dies.
	VolumeContext map[string]string `json:"volumeContext,omitempty"`
	// MountPath is where the filesystem (or a block volume's device bind)
	// is mounted when not at the staging path: <staging>/<volume ID>, for
	// a volume ceph-csi's node plugin staged (see fsPath).
	MountPath string `json:"mountPath,omitempty"`
	// CephCSIStash: ceph-csi's image-meta.json is at the staging path, to
	// remove with its mount point at unstage.
	CephCSIStash bool `json:"cephCSIStash,omitempty"`
	// blank: when this call mapped the image, it was blank where
	// signatures are kept (Pool.StageView), so formatting it needs no
	// probe. Never stored: a retry, which may follow a format, probes.
	blank bool
}

// capabilityKey is nodefs.CapabilityKey with RBD's default filesystem.
func capabilityKey(c *csi.VolumeCapability) string { return nodefs.CapabilityKey(c, fsTypeOf(c)) }

// source is what a target binds: the staged filesystem, or the device of
// a block volume.
func (r *stageRecord) source(staging string) string {
	if r.Block {
		return r.Mapping.Device
	}
	return r.fsPath(staging)
}

// capability is the capability the volume was staged with, as far as the
// record tells: what mapping it again needs.
func (r *stageRecord) capability() *csi.VolumeCapability {
	mode := csi.VolumeCapability_AccessMode_Mode(csi.VolumeCapability_AccessMode_Mode_value[r.Mode])
	if mode == csi.VolumeCapability_AccessMode_UNKNOWN {
		mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	}
	c := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode}}
	if r.Block {
		c.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	} else {
		c.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: r.FSType,
			MountFlags: r.MountFlags}}
	}
	return c
}

// stageConflict says why a stage request does not match what is staged:
// another access type, or a read-only mode where the mapping is writable
// (or the other way round). "" when it matches.
func stageConflict(r *stageRecord, c *csi.VolumeCapability) string {
	if block := c.GetBlock() != nil; block != r.Block {
		return fmt.Sprintf("staged as a %s volume, asked for a %s volume", accessType(r.Block), accessType(block))
	}
	if r.Mode != "" && readOnlyMode(r.capability()) != readOnlyMode(c) {
		return fmt.Sprintf("staged with access mode %s, asked for %s", r.Mode, c.GetAccessMode().GetMode())
	}
	return ""
}

func accessType(block bool) string {
	if block {
		return "block"
	}
	return "filesystem"
}

// readStageRecord reads the stage record beside stagingPath.
func readStageRecord(stagingPath string) (*stageRecord, error) {
	var r stageRecord
	if err := nodefs.ReadRecord(stagingPath, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Adopt looks at the volumes this node had staged before it started: their
// mappings outlive the plugin (see package daemonhost), and their records
// say all the node needs. It logs each, and drops index entries whose
// stage record is gone. A dead mapping is re-established at the volume's
// next NodeStage or NodePublish; NodeGetVolumeHealth reports it until then.
func (n *Node) Adopt(ctx context.Context) {
	log := klog.FromContext(ctx)
	for _, e := range n.vols.Staged.All() {
		rec, err := readStageRecord(e.StagingPath)
		if errors.Is(err, os.ErrNotExist) || (err == nil && rec.VolumeID != e.VolumeID) {
			_ = n.vols.Staged.Remove(e.VolumeID)
			continue
		}
		if err != nil {
			log.Error(err, "staged volume", "volume", e.VolumeID)
			continue
		}
		if dead := n.mappingDead(ctx, rec); dead != nil {
			log.Info("staged volume's mapping is dead; the next NodeStage or NodePublish maps it again",
				"volume", e.VolumeID, "device", rec.Mapping.Device, "reason", dead.Error())
			continue
		}
		log.Info("adopted staged volume", "volume", e.VolumeID, "device", rec.Mapping.Device,
			"client", rec.Mapping.ClientAddr, "targets", len(rec.Targets))
	}
}

// Target is the publish req asks for of the volume staged here.
func (r *stageRecord) Target(req *csi.NodePublishVolumeRequest) nodefs.Target {
	c := req.GetVolumeCapability()
	return nodefs.Target{VolumeID: r.VolumeID, Source: r.source(req.GetStagingTargetPath()), Block: r.Block,
		SingleWriter: c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		Publication:  nodefs.Publication{Path: req.GetTargetPath(), ReadOnly: req.GetReadonly() || readOnlyMode(c), Capability: capabilityKey(c)}}
}

// Published is where the record keeps the volume's targets.
func (r *stageRecord) Published() *[]nodefs.Publication { return &r.Targets }
