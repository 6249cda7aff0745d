package nodefs

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/pkg/mount"
)

// Stats answers NodeGetVolumeStats for the volume mounted at path: bytes
// and inodes of a filesystem, the size of a block device bound there.
// NotFound when nothing is mounted at path.
func Stats(ctx context.Context, m mount.Mounter, path string) (*csi.NodeGetVolumeStatsResponse, error) {
	mounted, err := m.IsMountPoint(ctx, path)
	if err != nil || !mounted {
		return nil, status.Errorf(codes.NotFound, "volume path %s is not a mounted volume", path)
	}
	fi, err := StatBounded(ctx, path)
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "volume path %s: %v", path, err)
	}
	if !fi.IsDir() { // a block volume: the device file bind-mounted here
		size, err := m.DeviceSize(ctx, path)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "sizing %s: %v", path, err)
		}
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: size}}}, nil
	}
	st, err := m.Stats(ctx, path)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "statfs %s: %v", path, err)
	}
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: st.TotalBytes, Used: st.UsedBytes, Available: st.AvailableBytes},
		{Unit: csi.VolumeUsage_INODES, Total: st.TotalInodes, Used: st.UsedInodes, Available: st.FreeInodes},
	}}, nil
}
