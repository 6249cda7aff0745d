package rbd

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

// fuzzParams decodes "key=value" lines into class parameters.
func fuzzParams(s string) map[string]string {
	params := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			params[k] = v
		}
	}
	return params
}

// fuzzCapability builds a capability from fuzzed parts; mode 0 leaves the
// access mode out, and so does a nil capability (mode < 0).
func fuzzCapability(mode int32, block bool, fstype, flags string) *csi.VolumeCapability {
	if mode < 0 {
		return nil
	}
	c := &csi.VolumeCapability{}
	if mode > 0 {
		c.AccessMode = accessMode(csi.VolumeCapability_AccessMode_Mode(mode))
	}
	if block {
		c.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	} else {
		var mountFlags []string
		if flags != "" {
			mountFlags = strings.Split(flags, ",")
		}
		c.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fstype, MountFlags: mountFlags}}
	}
	return c
}

// wantClientCode fails unless err is nil or a status a caller can act on:
// never Unknown (a bare error) nor Internal, for a request decoded from
// anything a caller may send.
func wantClientCode(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	s, ok := status.FromError(err)
	if !ok || s.Code() == codes.Unknown || s.Code() == codes.Internal {
		t.Fatalf("%s = %v; want a gRPC status that names the caller's mistake", what, err)
	}
}

// FuzzCreateVolumeRequest decodes CreateVolume requests from fuzzed names,
// class parameters, capabilities and sizes, against the fake cluster:
// no panic, every refusal a status a caller can act on, and a request
// that succeeds succeeds again with the same volume.
func FuzzCreateVolumeRequest(f *testing.F) {
	f.Add("pvc-1", "clusterID=rook-ceph\npool=replicapool", int32(1), false, "ext4", "", int64(gib), int64(0))
	f.Add("pvc-2", "clusterID=rook-ceph\npool=replicapool\nimageFeatures=layering,exclusive-lock,object-map,fast-diff",
		int32(5), true, "", "", int64(0), int64(gib))
	f.Add("pvc-3", "clusterID=rook-ceph\npool=replicapool\nimageFeatures=layering,journaling\nmounter=rbd-nbd",
		int32(7), false, "xfs", "noatime,discard", int64(1), int64(1))
	f.Add("pvc-4", "clusterID=ghost\npool=replicapool\ndataPool=ec\nstripeUnit=4096\nstripeCount=3", int32(1), false, "", "",
		int64(-1), int64(0))
	f.Add("", "clusterID=rook-ceph\npool=replicapool\ncsi.storage.k8s.io/fstype=ext4\nobjectSize=0", int32(0), false, "", "",
		int64(gib), int64(gib-1))
	f.Add("pvc-\x00", "clusterID=rook-ceph\npool=\nnamePrefix=../", int32(-1), false, "", "", int64(0), int64(0))
	f.Fuzz(func(t *testing.T, name, params string, mode int32, block bool, fstype, flags string, required, limit int64) {
		e := newEnv(t)
		req := &csi.CreateVolumeRequest{Name: name, Parameters: fuzzParams(params), Secrets: testSecrets,
			CapacityRange: &csi.CapacityRange{RequiredBytes: required, LimitBytes: limit}}
		if c := fuzzCapability(mode, block, fstype, flags); c != nil {
			req.VolumeCapabilities = []*csi.VolumeCapability{c}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		first, err := e.c.CreateVolume(ctx, req)
		wantClientCode(t, "CreateVolume", err)
		if err != nil {
			return
		}
		again, err := e.c.CreateVolume(ctx, req)
		if err != nil || again.GetVolume().GetVolumeId() != first.GetVolume().GetVolumeId() {
			t.Fatalf("the same request again = %v, %v; want %s", again.GetVolume().GetVolumeId(), err,
				first.GetVolume().GetVolumeId())
		}
	})
}

// FuzzNodeStageRequest decodes NodeStage requests from fuzzed volume IDs,
// paths, volume contexts and capabilities, against fake mappers and
// mounter: no panic, and every refusal a status a caller can act on. A
// path that leaves the kubelet directory must be refused before anything
// is touched, so it is only checked, never staged.
func FuzzNodeStageRequest(f *testing.F) {
	const goodVolume = "0001-0009-rook-ceph-0000000000000002-0a1b2c3d-0000-4000-8000-000000000001"
	f.Add(goodVolume, "plugins/kubernetes.io/csi/rbd.csi.pelagic/abc/globalmount", "rook-ceph", "replicapool",
		nodeTestImage, int32(1), false, "ext4", "")
	f.Add(goodVolume, "plugins/x/globalmount", "rook-ceph", "replicapool", nodeTestImage, int32(5), true, "", "")
	f.Add("vol", "plugins/x", "rook-ceph", "replicapool", "missing-image", int32(7), false, "xfs", "noatime,ro")
	f.Add(goodVolume, "../etc", "rook-ceph", "replicapool", nodeTestImage, int32(1), false, "ext4", "")
	f.Add("", "", "", "", "", int32(-1), false, "", "")
	f.Add(goodVolume, "a/../../b", "ghost", "pool/../x", "img@snap", int32(3), false, "btrfs", "bind,remount")
	f.Fuzz(func(t *testing.T, volumeID, staging, clusterID, pool, image string, mode int32, block bool, fstype, flags string) {
		e := newNodeEnv(t)
		path := e.root + "/" + staging
		req := &csi.NodeStageVolumeRequest{VolumeId: volumeID, StagingTargetPath: path, Secrets: testSecrets,
			VolumeCapability: fuzzCapability(mode, block, fstype, flags),
			VolumeContext:    map[string]string{ParamClusterID: clusterID, ParamPool: pool, CtxImageName: image}}
		if rel, err := filepath.Rel(e.root, filepath.Clean(path)); err != nil || rel == "." || strings.HasPrefix(rel, "..") {
			if err := e.n.checkPath("staging target path", path); status.Code(err) != codes.InvalidArgument {
				t.Fatalf("staging path %q outside the kubelet directory: check = %v, want InvalidArgument", path, err)
			}
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := e.n.NodeStageVolume(ctx, req)
		wantClientCode(t, "NodeStageVolume", err)
	})
}

// FuzzVolumeAndSnapshotIDs sends fuzzed IDs to every controller call that
// resolves a volume or snapshot ID, as a volume, as a snapshot and as a
// clone's source: no panic, and each answer a status a caller can act on.
// Deleting what a malformed ID names succeeds: it cannot exist.
func FuzzVolumeAndSnapshotIDs(f *testing.F) {
	f.Add("0001-0009-rook-ceph-0000000000000002-0a1b2c3d-0000-4000-8000-000000000001")
	f.Add("0001-0009-rook-ceph-0000000000000063-0a1b2c3d-0000-4000-8000-000000000001")
	f.Add("0001-0005-ghost-0000000000000002-0a1b2c3d-0000-4000-8000-000000000001")
	f.Add("0001-0009-rook-ceph-ffffffffffffffff-0a1b2c3d-0000-4000-8000-000000000001")
	f.Add("0001-0000--0000000000000002-0a1b2c3d-0000-4000-8000-000000000001")
	f.Add("0001-ffff-rook-ceph")
	f.Add("csi-vol-0a1b2c3d-0000-4000-8000-000000000001")
	f.Add("")
	f.Fuzz(func(t *testing.T, id string) {
		e := newEnv(t)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, malformed := volumeid.Parse(id)
		_, err := e.c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: testSecrets})
		wantClientCode(t, "DeleteVolume", err)
		if id != "" && malformed != nil && err != nil {
			t.Fatalf("DeleteVolume(%q) = %v; want success: the ID cannot name a volume", id, err)
		}
		_, err = e.c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id, Secrets: testSecrets})
		wantClientCode(t, "DeleteSnapshot", err)
		if id != "" && malformed != nil && err != nil {
			t.Fatalf("DeleteSnapshot(%q) = %v; want success: the ID cannot name a snapshot", id, err)
		}
		_, err = e.c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id, Secrets: testSecrets,
			CapacityRange: &csi.CapacityRange{RequiredBytes: gib}})
		wantClientCode(t, "ControllerExpandVolume", err)
		_, err = e.c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-1", SourceVolumeId: id, Secrets: testSecrets})
		wantClientCode(t, "CreateSnapshot", err)
		for _, src := range []*csi.VolumeContentSource{
			{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}},
			{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}},
		} {
			req := createReq("pvc-from", gib)
			req.VolumeContentSource = src
			_, err = e.c.CreateVolume(ctx, req)
			wantClientCode(t, "CreateVolume from "+id, err)
		}
	})
}
