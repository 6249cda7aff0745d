package main

import "context"

// measureCephFS is the CephFS workload's place. The driver does not yet
// serve the CephFS Controller service (--type=cephfs serves Identity only),
// so there is nothing to measure. Once it does, this measures, against a
// driver started with --type=cephfs, CreateVolume and DeleteVolume of 50
// subvolumes at concurrency 8 and a clone from a snapshot until it is
// ready; the floor is pkg/cephfs's Volumes over the same connection
// (cephfs.NewMgrVolumes: CreateSubvolume, RemoveSubvolume, CreateSnapshot,
// and a clone polled with Subvolume until complete).
func (b *bench) measureCephFS(context.Context) {
	b.notMeasured = append(b.notMeasured,
		"CephFS CreateVolume, DeleteVolume and clone: the driver has no CephFS Controller service yet")
}
