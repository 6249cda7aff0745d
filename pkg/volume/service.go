package volume

import (
	"slices"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// controllerRPCs and nodeRPCs are what both drivers implement.
var (
	controllerRPCs = []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_GET_VOLUME,
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	}
	nodeRPCs = []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
	}
)

// ControllerCapabilities answers ControllerGetCapabilities with what both
// controllers implement and a driver's extra RPCs.
func ControllerCapabilities(extra ...csi.ControllerServiceCapability_RPC_Type) *csi.ControllerGetCapabilitiesResponse {
	rpc := func(t csi.ControllerServiceCapability_RPC_Type) *csi.ControllerServiceCapability {
		return &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}}
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: capabilities(controllerRPCs, extra, rpc)}
}

// NodeCapabilities answers NodeGetCapabilities with what both node
// services implement and a driver's extra RPCs.
func NodeCapabilities(extra ...csi.NodeServiceCapability_RPC_Type) *csi.NodeGetCapabilitiesResponse {
	rpc := func(t csi.NodeServiceCapability_RPC_Type) *csi.NodeServiceCapability {
		return &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: t}}}
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: capabilities(nodeRPCs, extra, rpc)}
}

// capabilities lists the capability of each RPC of shared, then of extra.
func capabilities[T, C any](shared, extra []T, capability func(T) C) []C {
	caps := make([]C, 0, len(shared)+len(extra))
	for _, t := range slices.Concat(shared, extra) {
		caps = append(caps, capability(t))
	}
	return caps
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
