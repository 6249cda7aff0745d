package cephfs

import (
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/pelagic-csi/pelagic/pkg/nodefs"
)

// stageRecord is written beside the staging path once the volume is
// mounted and bound there, so that unstage, publish and a remount work
// after a restart of the plugin (the mounts outlive it).
type stageRecord struct {
	VolumeID  string `json:"volumeID"`
	ClusterID string `json:"clusterID"`
	Mount     Mount  `json:"mount"`
	// SubPath is what is bound at the staging path, below the mount: ""
	// for the whole mount, or a snapshot's directory.
	SubPath    string               `json:"subPath,omitempty"`
	Mode       string               `json:"mode"`
	MountFlags []string             `json:"mountFlags,omitempty"`
	Staged     time.Time            `json:"staged"`
	Targets    []nodefs.Publication `json:"targets,omitempty"`
	// VolumeContext is the stage's (no secrets), for mounting again.
	VolumeContext map[string]string `json:"volumeContext,omitempty"`
}

// capability is the capability the volume was staged with.
func (r *stageRecord) capability() *csi.VolumeCapability {
	mode := csi.VolumeCapability_AccessMode_Mode(csi.VolumeCapability_AccessMode_Mode_value[r.Mode])
	return &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: r.MountFlags}}}
}

// readStageRecord reads the stage record beside stagingPath; an error
// matching os.ErrNotExist means nothing is staged there.
func readStageRecord(stagingPath string) (*stageRecord, error) {
	var r stageRecord
	if err := nodefs.ReadRecord(stagingPath, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Target is the publish req asks for of the volume staged here: the
// staging path bound at the target.
func (r *stageRecord) Target(req *csi.NodePublishVolumeRequest) nodefs.Target {
	c := req.GetVolumeCapability()
	return nodefs.Target{VolumeID: r.VolumeID, Source: req.GetStagingTargetPath(),
		SingleWriter: c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		Publication:  nodefs.Publication{Path: req.GetTargetPath(), ReadOnly: req.GetReadonly() || readOnlyMode(c), Capability: nodefs.CapabilityKey(c, "")}}
}

// Published is where the record keeps the volume's targets.
func (r *stageRecord) Published() *[]nodefs.Publication { return &r.Targets }
