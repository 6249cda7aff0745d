package volume

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/journal"
)

// Connector opens a cluster with a cephx user; C is the driver's cluster.
type Connector[C any] interface {
	Connect(ctx context.Context, clusterID string, creds ceph.Credentials) (C, error)
}

// Connect opens a cluster with a controller call's secrets (the secret's
// own user): InvalidArgument when they hold no valid credentials.
func Connect[C any](ctx context.Context, conn Connector[C], clusterID string, secrets map[string]string) (C, error) {
	creds, err := ceph.CredentialsFrom(secrets, nil)
	if err != nil {
		var none C
		return none, status.Error(codes.InvalidArgument, err.Error())
	}
	cl, err := conn.Connect(ctx, clusterID, creds)
	return cl, Status(err)
}

// Resolved is a driver's volume or snapshot ID resolved to its record.
type Resolved interface{ Record() *journal.Record }

// Resolver is a driver's way from an ID to R: NotFound when the ID names
// nothing (see Resolve). Calls carrying secrets may open the cluster.
type Resolver[R Resolved] func(ctx context.Context, kind journal.Kind, id string, secrets map[string]string) (R, error)

// Calls is the CSI side of the controller calls both drivers answer
// alike: it checks a request, takes its locks and resolves its IDs, and
// leaves what touches Ceph to the driver's callback.
type Calls[R Resolved] struct {
	Locks   *Locks
	Resolve Resolver[R]
}

// LockResolved takes the lock of an ID, then resolves it; on success the
// caller must call unlock.
func (c Calls[R]) LockResolved(ctx context.Context, kind journal.Kind, id string, secrets map[string]string) (R, func(), error) {
	return LockThen(c.Locks, string(kind)+"/"+id, func() (R, error) { return c.Resolve(ctx, kind, id, secrets) })
}

// DeleteVolume answers DeleteVolume under the locks of the volume's ID and
// of its name, CreateVolume's, so that no retry of its creation runs
// meanwhile. An ID that resolves to nothing is unknown's to answer.
func (c Calls[R]) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest,
	unknown func(context.Context, *csi.DeleteVolumeRequest, error) (*csi.DeleteVolumeResponse, error),
	remove func(context.Context, R, *csi.DeleteVolumeRequest) error) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is missing")
	}
	r, unlock, err := c.LockResolved(ctx, journal.Volume, req.GetVolumeId(), req.GetSecrets())
	if status.Code(err) == codes.NotFound {
		return unknown(ctx, req, err)
	}
	if err != nil {
		return nil, err
	}
	defer unlock()
	unlockName, err := c.Locks.Lock(NameKey(r.Record().Name))
	if err != nil {
		return nil, err
	}
	defer unlockName()
	if err := remove(ctx, r, req); err != nil {
		return nil, err
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// NameKey is the lock key of a volume's CSI name.
func NameKey(name string) string { return "volname/" + name }

// ExpandVolume answers ControllerExpandVolume: grow takes the volume to
// size (whole MiB) under the lock of its ID.
func (c Calls[R]) ExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest,
	grow func(context.Context, R, int64, *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error)) (*csi.ControllerExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is missing")
	}
	if req.GetCapacityRange() == nil {
		return nil, status.Error(codes.InvalidArgument, "capacity range is missing")
	}
	size, err := RequestSize(req.GetCapacityRange(), 0)
	if err != nil {
		return nil, err
	}
	r, unlock, err := c.LockResolved(ctx, journal.Volume, req.GetVolumeId(), req.GetSecrets())
	if err != nil {
		return nil, err
	}
	defer unlock()
	return grow(ctx, r, size, req)
}

// ValidateVolumeCapabilities answers ValidateVolumeCapabilities of an
// existing volume: mismatch says why the request does not describe it
// ("" when it does), or fails when the volume is gone.
func (c Calls[R]) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest,
	mismatch func(context.Context, R, *csi.ValidateVolumeCapabilitiesRequest) (string, error)) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is missing")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume capabilities are missing")
	}
	r, err := c.Resolve(ctx, journal.Volume, req.GetVolumeId(), req.GetSecrets())
	if err != nil {
		return nil, err
	}
	why, err := mismatch(ctx, r, req)
	if err != nil {
		return nil, err
	}
	if why != "" {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: why}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// GetVolume answers ControllerGetVolume with the size of a volume whose
// backing exists (size fails when it is gone).
func (c Calls[R]) GetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest,
	size func(context.Context, R) (int64, error)) (*csi.ControllerGetVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is missing")
	}
	r, err := c.Resolve(ctx, journal.Volume, req.GetVolumeId(), nil)
	if err != nil {
		return nil, err
	}
	bytes, err := size(ctx, r)
	if err != nil {
		return nil, err
	}
	return &csi.ControllerGetVolumeResponse{
		Volume: &csi.Volume{VolumeId: req.GetVolumeId(), CapacityBytes: bytes},
		Status: &csi.ControllerGetVolumeResponse_VolumeStatus{},
	}, nil
}

// StageCluster is the cluster a node call's volume context names and the
// cephx user of its secrets (see ceph.CredentialsFrom): InvalidArgument
// when either is missing.
func StageCluster(cfg *ceph.Config, clusterID string, secrets, vctx map[string]string) (*ceph.ClusterConfig, ceph.Credentials, error) {
	cc, err := cfg.Cluster(clusterID)
	if err != nil {
		return nil, ceph.Credentials{}, status.Error(codes.InvalidArgument, err.Error())
	}
	creds, err := ceph.CredentialsFrom(secrets, vctx)
	if err != nil {
		return nil, ceph.Credentials{}, status.Error(codes.InvalidArgument, err.Error())
	}
	return cc, creds, nil
}
