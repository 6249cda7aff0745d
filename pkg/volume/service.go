package volume

import (
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ControllerCapabilities answers ControllerGetCapabilities with rpcs.
func ControllerCapabilities(rpcs []csi.ControllerServiceCapability_RPC_Type) *csi.ControllerGetCapabilitiesResponse {
	caps := make([]*csi.ControllerServiceCapability, 0, len(rpcs))
	for _, t := range rpcs {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}
}

// NodeCapabilities answers NodeGetCapabilities with rpcs.
func NodeCapabilities(rpcs []csi.NodeServiceCapability_RPC_Type) *csi.NodeGetCapabilitiesResponse {
	caps := make([]*csi.NodeServiceCapability, 0, len(rpcs))
	for _, t := range rpcs {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{
			Rpc: &csi.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}
}

// NodeInfo answers NodeGetInfo: the node, its volume limit and, when the
// plugin advertises VOLUME_ACCESSIBILITY_CONSTRAINTS (topology), its labels.
func NodeInfo(nodeID string, maxVolumes int64, topology bool, labels map[string]string) *csi.NodeGetInfoResponse {
	resp := &csi.NodeGetInfoResponse{NodeId: nodeID, MaxVolumesPerNode: maxVolumes}
	if topology && len(labels) > 0 {
		resp.AccessibleTopology = &csi.Topology{Segments: labels}
	}
	return resp
}

// ListVolumes answers a page of ListVolumes over n volumes, asking entry
// only for those of the page (a driver may need a call to describe one).
func ListVolumes(n int, req *csi.ListVolumesRequest, entry func(i int) (*csi.Volume, error)) (*csi.ListVolumesResponse, error) {
	start, end, next, err := Page(req.GetStartingToken(), req.GetMaxEntries(), n)
	if err != nil {
		return nil, err
	}
	resp := &csi.ListVolumesResponse{NextToken: next}
	for i := start; i < end; i++ {
		v, err := entry(i)
		if err != nil {
			return nil, err
		}
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: v})
	}
	return resp, nil
}

// Opened returns the cluster an earlier call with secrets opened, for a
// call that carries none; FailedPrecondition when there was none.
func (k *Known[C]) Opened(clusterID string) (C, error) {
	if c, ok := k.Cluster(clusterID); ok {
		return c, nil
	}
	var none C
	return none, status.Errorf(codes.FailedPrecondition,
		"no credentials for cluster %q yet: this call carries no secrets and no earlier call opened the cluster", clusterID)
}

// LockThen takes the lock of key, then runs fn; on success the caller
// must call unlock.
func LockThen[R any](l *Locks, key string, fn func() (R, error)) (r R, unlock func(), err error) {
	if unlock, err = l.Lock(key); err != nil {
		return r, nil, err
	}
	if r, err = fn(); err != nil {
		unlock()
		return r, nil, err
	}
	return r, unlock, nil
}
