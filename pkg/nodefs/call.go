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

// Begin starts a node call: it checks the volume ID and the paths the call
// names (what, path pairs; see CheckPath), then takes the volume's lock.
// Nothing is touched on bad input.
func Begin(locks *volume.Locks, kubeletDir, volumeID string, whatPath ...string) (unlock func(), err error) {
	if volumeID == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is missing")
	}
	for i := 0; i+1 < len(whatPath); i += 2 {
		if err := CheckPath(whatPath[i], whatPath[i+1], kubeletDir); err != nil {
			return nil, err
		}
	}
	return locks.Lock(volumeID)
}

// UnpublishVolume answers NodeUnpublishVolume: the target is unmounted and
// removed under the volume's lock.
func UnpublishVolume(ctx context.Context, locks *volume.Locks, kubeletDir string, m mount.Mounter, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	unlock, err := Begin(locks, kubeletDir, req.GetVolumeId(), "target path", req.GetTargetPath())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := Unpublish(ctx, m, req.GetTargetPath()); err != nil {
		return nil, err
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
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

// NewHealth starts the report of a volume.
func NewHealth(volumeID string) Health { return Health{&csi.VolumeHealth{VolumeId: volumeID}} }

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

// Response answers NodeGetVolumeHealth.
func (h Health) Response() *csi.NodeGetVolumeHealthResponse {
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: h.h}
}

// Locate starts a NodeGetVolumeHealth: it checks the volume ID and paths,
// and reads the volume's stage record into rec, from the staging path the
// call names or, when it names none, the one the index knows; idOf reads
// the record's volume ID. NotFound when the volume is not staged here.
func (x StagedIndex) Locate(req *csi.NodeGetVolumeHealthRequest, kubeletDir, nodeID string, rec any, idOf func() string) (staging string, err error) {
	if req.GetVolumeId() == "" {
		return "", status.Error(codes.InvalidArgument, "volume ID is missing")
	}
	for what, p := range map[string]string{"staging target path": req.GetStagingTargetPath(), "volume publish path": req.GetVolumePublishPath()} {
		if err := CheckPath(what, p, kubeletDir); p != "" && err != nil {
			return "", err
		}
	}
	staging = req.GetStagingTargetPath()
	if staging == "" {
		staging = x.StagingPath(req.GetVolumeId())
	}
	notStaged := status.Errorf(codes.NotFound, "volume %s is not staged on node %s", req.GetVolumeId(), nodeID)
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
