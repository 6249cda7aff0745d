package nodefs

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/pkg/mount"
	"github.com/pelagic-csi/pelagic/pkg/volume"
)

// Volumes is what a node service keeps of its volumes (a lock each, the
// index of those staged here, the secrets of their stages); it answers the
// parts of the node calls that are the same for both drivers, and leaves
// what lies under a staging path to the driver's callbacks.
type Volumes struct {
	Options
	Locks   volume.Locks
	Staged  StagedIndex
	Secrets StageSecrets
}

// Options are what both node services are told of their node.
type Options struct {
	NodeID string
	// Mounter makes and checks the bind mounts of staging and publishing.
	Mounter    mount.Mounter
	KubeletDir string // when set, paths must lie inside it
	// StateDir keeps what must outlive a restart of the plugin: the index
	// of staged volumes, and what each driver keeps there.
	StateDir string
	// Topology is whether the plugin advertises VOLUME_ACCESSIBILITY_
	// CONSTRAINTS; only then does NodeGetInfo report Labels.
	Topology   bool
	Labels     map[string]string
	MaxVolumes int64
}

// NodeInfo answers NodeGetInfo: the node, its volume limit and its topology.
func (o Options) NodeInfo() *csi.NodeGetInfoResponse {
	return volume.NodeInfo(o.NodeID, o.MaxVolumes, o.Topology, o.Labels)
}

// Begin starts a node call: it checks the volume ID and the paths the call
// names (what, path pairs; see CheckPath), then takes the volume's lock.
// Nothing is touched on bad input.
func (v *Volumes) Begin(volumeID string, whatPath ...string) (unlock func(), err error) {
	if volumeID == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is missing")
	}
	for i := 0; i+1 < len(whatPath); i += 2 {
		if err := CheckPath(whatPath[i], whatPath[i+1], v.KubeletDir); err != nil {
			return nil, err
		}
	}
	return v.Locks.Lock(volumeID)
}

// UnstageVolume answers NodeUnstageVolume: under the volume's lock,
// unstage undoes what the driver made at the staging path (nothing staged
// there is success).
func (v *Volumes) UnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest,
	unstage func(ctx context.Context, volumeID, staging string) error) (*csi.NodeUnstageVolumeResponse, error) {
	unlock, err := v.Begin(req.GetVolumeId(), "staging target path", req.GetStagingTargetPath())
	if err != nil {
		return nil, err
	}
	defer unlock()
	return &csi.NodeUnstageVolumeResponse{}, unstage(ctx, req.GetVolumeId(), req.GetStagingTargetPath())
}

// Unstaged forgets what the node kept of a volume while it was staged.
func (v *Volumes) Unstaged(volumeID string) error {
	v.Secrets.Forget(volumeID)
	if err := v.Staged.Remove(volumeID); err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	return nil
}

// PublishVolume answers NodePublishVolume: it checks the request (the
// capability with checkCapability), then, under the volume's lock, binds
// the volume staged reads the record of at the target (see Publish).
func (v *Volumes) PublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest, checkCapability func(*csi.VolumeCapability) error,
	staged func(context.Context, *csi.NodePublishVolumeRequest) (Staged, error)) (*csi.NodePublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is missing")
	}
	if err := CheckPath("target path", req.GetTargetPath(), v.KubeletDir); err != nil {
		return nil, err
	}
	if err := checkCapability(req.GetVolumeCapability()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if req.GetStagingTargetPath() == "" {
		return nil, status.Errorf(codes.FailedPrecondition,
			"volume %s: no staging path; this plugin stages volumes (STAGE_UNSTAGE_VOLUME), so NodeStageVolume comes first", req.GetVolumeId())
	}
	unlock, err := v.Begin(req.GetVolumeId(), "staging target path", req.GetStagingTargetPath())
	if err != nil {
		return nil, err
	}
	defer unlock()
	rec, err := staged(ctx, req)
	if err != nil {
		return nil, err
	}
	return &csi.NodePublishVolumeResponse{}, Publish(ctx, v.Mounter, rec.Target(req), req.GetStagingTargetPath(), rec)
}

// UnpublishVolume answers NodeUnpublishVolume: the target is unmounted and
// removed under the volume's lock.
func (v *Volumes) UnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	unlock, err := v.Begin(req.GetVolumeId(), "target path", req.GetTargetPath())
	if err != nil {
		return nil, err
	}
	defer unlock()
	return &csi.NodeUnpublishVolumeResponse{}, Unpublish(ctx, v.Mounter, req.GetTargetPath())
}

// VolumeStats answers NodeGetVolumeStats (see Stats).
func VolumeStats(ctx context.Context, m mount.Mounter, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is missing")
	}
	if req.GetVolumePath() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume path is missing")
	}
	return Stats(ctx, m, req.GetVolumePath())
}

// Health collects what NodeGetVolumeHealth reports of a volume: no entries
// means healthy.
type Health struct{ h *csi.VolumeHealth }

// Inaccessible adds a problem that keeps the volume from being used.
func (h Health) Inaccessible(reason, format string, args ...any) {
	h.h.HealthStatuses = append(h.h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{
		Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: reason, Message: fmt.Sprintf(format, args...)})
}

// CheckMounted adds reason when path is given and nothing is mounted there.
func (h Health) CheckMounted(ctx context.Context, m mount.Mounter, reason, path string) {
	if mounted, _ := m.IsMountPoint(ctx, path); path != "" && !mounted {
		h.Inaccessible(reason, "nothing is mounted at %s", path)
	}
}

// VolumeHealth answers NodeGetVolumeHealth of a volume staged here: it
// reads the stage record into rec (see locate; idOf reads its volume ID),
// check adds what the driver sees under the staging path, and a publish
// path the call names must still hold a mount.
func (v *Volumes) VolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest, rec any, idOf func() string,
	check func(h Health, staging string) error) (*csi.NodeGetVolumeHealthResponse, error) {
	staging, err := v.locate(req, rec, idOf)
	if err != nil {
		return nil, err
	}
	health := Health{&csi.VolumeHealth{VolumeId: req.GetVolumeId()}}
	if err := check(health, staging); err != nil {
		return nil, err
	}
	health.CheckMounted(ctx, v.Mounter, "NotPublished", req.GetVolumePublishPath())
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: health.h}, nil
}

// locate checks a NodeGetVolumeHealth's volume ID and paths, and reads the
// volume's stage record into rec, from the staging path the call names
// or, when it names none, the one the index knows. NotFound when the
// volume is not staged here.
func (v *Volumes) locate(req *csi.NodeGetVolumeHealthRequest, rec any, idOf func() string) (staging string, err error) {
	if req.GetVolumeId() == "" {
		return "", status.Error(codes.InvalidArgument, "volume ID is missing")
	}
	for what, p := range map[string]string{"staging target path": req.GetStagingTargetPath(), "volume publish path": req.GetVolumePublishPath()} {
		if err := CheckPath(what, p, v.KubeletDir); p != "" && err != nil {
			return "", err
		}
	}
	staging = req.GetStagingTargetPath()
	if staging == "" {
		staging = v.Staged.StagingPath(req.GetVolumeId())
	}
	notStaged := status.Errorf(codes.NotFound, "volume %s is not staged on node %s", req.GetVolumeId(), v.NodeID)
	if staging == "" {
		return "", notStaged
	}
	switch err := ReadRecord(staging, rec); {
	case errors.Is(err, os.ErrNotExist):
		return "", notStaged
	case err != nil:
		return "", status.Error(codes.Internal, err.Error())
	case idOf() != req.GetVolumeId():
		return "", notStaged
	}
	return staging, nil
}

// NewVolumes returns what a node service keeps of its volumes, with its
// index in the state directory.
func NewVolumes(o Options) *Volumes {
	return &Volumes{Options: o, Staged: StagedIndex{Dir: o.StateDir}}
}
