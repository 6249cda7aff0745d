package e2e

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	librbd "github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/pkg/rbd"
)

// storageClass is a StorageClass as its YAML spells it: parameters and
// mountOptions.
type storageClass struct {
	name   string
	params map[string]string
	mount  []string
	// refusedBy is the parameter CreateVolume must refuse the class by;
	// "" means the class works.
	refusedBy string
}

// Secret parameters as Rook's rook-ceph-block class names them.
var rookSecretParams = map[string]string{
	"csi.storage.k8s.io/provisioner-secret-name":             "rook-csi-rbd-provisioner",
	"csi.storage.k8s.io/provisioner-secret-namespace":        "rook-ceph",
	"csi.storage.k8s.io/controller-expand-secret-name":       "rook-csi-rbd-provisioner",
	"csi.storage.k8s.io/controller-expand-secret-namespace":  "rook-ceph",
	"csi.storage.k8s.io/controller-publish-secret-name":      "rook-csi-rbd-provisioner",
	"csi.storage.k8s.io/controller-publish-secret-namespace": "rook-ceph",
	"csi.storage.k8s.io/node-stage-secret-name":              "rook-csi-rbd-node",
	"csi.storage.k8s.io/node-stage-secret-namespace":         "rook-ceph",
	"csi.storage.k8s.io/fstype":                              "ext4",
}

// Secret parameters as ceph-csi's csi-rbd-sc example names them.
var cephCSISecretParams = map[string]string{
	"csi.storage.k8s.io/provisioner-secret-name":             "csi-rbd-secret",
	"csi.storage.k8s.io/provisioner-secret-namespace":        "default",
	"csi.storage.k8s.io/controller-expand-secret-name":       "csi-rbd-secret",
	"csi.storage.k8s.io/controller-expand-secret-namespace":  "default",
	"csi.storage.k8s.io/controller-publish-secret-name":      "csi-rbd-secret",
	"csi.storage.k8s.io/controller-publish-secret-namespace": "default",
	"csi.storage.k8s.io/node-stage-secret-name":              "csi-rbd-secret",
	"csi.storage.k8s.io/node-stage-secret-namespace":         "default",
	"csi.storage.k8s.io/controller-modify-secret-name":       "csi-rbd-secret",
	"csi.storage.k8s.io/controller-modify-secret-namespace":  "default",
	"csi.storage.k8s.io/node-publish-secret-name":            "csi-rbd-secret",
	"csi.storage.k8s.io/node-publish-secret-namespace":       "default",
	"csi.storage.k8s.io/fstype":                              "ext4",
}

// class joins parameter maps; later ones win.
func class(parts ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, p := range parts {
		maps.Copy(out, p)
	}
	return out
}

// Rook's deploy/examples/csi/rbd classes, and what their comments offer.
var rookClasses = []storageClass{
	{name: "rook storageclass.yaml", params: class(rookSecretParams, map[string]string{
		"clusterID": "rook-ceph", "pool": "replicapool", "imageFormat": "2", "imageFeatures": "layering"})},
	{name: "rook storageclass.yaml, features for 5.4 and later kernels", params: class(rookSecretParams, map[string]string{
		"clusterID": "rook-ceph", "pool": "replicapool", "imageFormat": "2",
		"imageFeatures": "layering,fast-diff,object-map,deep-flatten,exclusive-lock"})},
	{name: "rook storageclass.yaml, its commented map options", params: class(rookSecretParams, map[string]string{
		"clusterID": "rook-ceph", "pool": "replicapool", "imageFormat": "2", "imageFeatures": "layering",
		"mapOptions": "lock_on_read,queue_depth=1024", "unmapOptions": "force"})},
	{name: "rook storageclass.yaml, mounter rbd-nbd", params: class(rookSecretParams, map[string]string{
		"clusterID": "rook-ceph", "pool": "replicapool", "imageFormat": "2", "imageFeatures": "layering",
		"mounter": "rbd-nbd"})},
	{name: "rook storageclass.yaml, encrypted", refusedBy: "encrypted", params: class(rookSecretParams, map[string]string{
		"clusterID": "rook-ceph", "pool": "replicapool", "imageFormat": "2", "imageFeatures": "layering",
		"encrypted": "true", "encryptionKMSID": "<kms-config-id>"})},
	{name: "rook storageclass-ec.yaml", params: class(rookSecretParams, map[string]string{
		"clusterID": "rook-ceph", "dataPool": "ec-data-pool", "pool": "replicated-metadata-pool", "imageFormat": "2",
		"imageFeatures": "layering",
		"csi.storage.k8s.io/controller-modify-secret-name":      "rook-csi-rbd-provisioner",
		"csi.storage.k8s.io/controller-modify-secret-namespace": "rook-ceph",
		"csi.storage.k8s.io/node-publish-secret-name":           "rook-csi-rbd-node",
		"csi.storage.k8s.io/node-publish-secret-namespace":      "rook-ceph"})},
}

// ceph-csi's examples/rbd/storageclass.yaml as shipped, then with each of
// its commented parameters set to the value its comment gives.
var cephCSIClasses = []storageClass{
	{name: "csi-rbd-sc as shipped", mount: []string{"discard"}, params: class(cephCSISecretParams, map[string]string{
		"clusterID": "<cluster-id>", "pool": "<rbd-pool-name>", "imageFeatures": "layering"})},
	{name: "csi-rbd-sc with dataPool", params: csiRBDSC("dataPool", "<ec-data-pool>")},
	{name: "csi-rbd-sc with its full feature line", refusedBy: "imageFeatures",
		params: csiRBDSC("imageFeatures", "layering,journaling,exclusive-lock,object-map,fast-diff")},
	{name: "csi-rbd-sc with its full feature line and rbd-nbd",
		params: csiRBDSC("imageFeatures", "layering,journaling,exclusive-lock,object-map,fast-diff", "mounter", "rbd-nbd")},
	{name: "csi-rbd-sc with its full feature line and tryOtherMounters",
		params: csiRBDSC("imageFeatures", "layering,journaling,exclusive-lock,object-map,fast-diff", "tryOtherMounters", "true")},
	{name: "csi-rbd-sc with mkfsOptions", params: csiRBDSC("mkfsOptions", "-m0 -Ediscard -i1024")},
	{name: "csi-rbd-sc with tryOtherMounters false", params: csiRBDSC("tryOtherMounters", "false")},
	{name: "csi-rbd-sc with its mapOptions", params: csiRBDSC("mapOptions", "krbd:lock_on_read,queue_depth=1024;nbd:try-netlink")},
	{name: "csi-rbd-sc with its unmapOptions", refusedBy: "unmapOptions", params: csiRBDSC("unmapOptions", "krbd:force;nbd:force")},
	{name: "csi-rbd-sc with krbd unmapOptions", params: csiRBDSC("unmapOptions", "krbd:force")},
	{name: "csi-rbd-sc with mounter rbd-nbd", params: csiRBDSC("mounter", "rbd-nbd")},
	{name: "csi-rbd-sc with mounter rbd (its default, krbd)", params: csiRBDSC("mounter", "rbd")},
	{name: "csi-rbd-sc with cephLogDir and cephLogStrategy", params: csiRBDSC("cephLogDir", "/var/log/ceph", "cephLogStrategy", "remove")},
	{name: "csi-rbd-sc with cephLogStrategy compress", refusedBy: "cephLogStrategy", params: csiRBDSC("cephLogStrategy", "compress")},
	{name: "csi-rbd-sc with volumeNamePrefix", params: csiRBDSC("volumeNamePrefix", "foo-bar-")},
	{name: "csi-rbd-sc encrypted", refusedBy: "encrypted", params: csiRBDSC("encrypted", "true", "encryptionSectorSize", "4096",
		"encryptionCipher", "aes-xts-plain64", "encryptionKeySize", "256", "integrityMode", "hmac-sha512",
		"encryptionType", "block", "encryptionKMSID", "<kms-config-id>")},
	{name: "csi-rbd-sc with encryption settings, not encrypted", params: csiRBDSC("encrypted", "false", "encryptionType", "block")},
	{name: "csi-rbd-sc with topologyConstrainedPools", refusedBy: "topologyConstrainedPools", params: csiRBDSC("topologyConstrainedPools",
		`[{"poolName":"pool0","domainSegments":[{"domainLabel":"region","value":"east"},{"domainLabel":"zone","value":"zone1"}]}]`)},
	{name: "csi-rbd-sc with striping", params: csiRBDSC("stripeUnit", "65536", "stripeCount", "16", "objectSize", "4194304")},
}

// csiRBDSC is ceph-csi's example class with some parameters set.
func csiRBDSC(kv ...string) map[string]string {
	p := class(cephCSISecretParams, map[string]string{"clusterID": "<cluster-id>", "pool": "<rbd-pool-name>", "imageFeatures": "layering"})
	for i := 0; i < len(kv); i += 2 {
		p[kv[i]] = kv[i+1]
	}
	return p
}

// TestRookAndCephCSIClasses feeds Rook's and ceph-csi's example RBD classes
// through CreateVolume and NodeStage on the local cluster: each either
// stages, or is refused at CreateVolume by the parameter that cannot work.
//
// This host has neither the rbd nor the nbd kernel module, so the node
// maps with fuse. A class that names no mounter gets the node's default
// (fuse here). A class that names krbd or rbd-nbd is first staged as
// created, which must reach that mapper and fail only because the module
// is missing; then its volume context's mounter is replaced by fuse and
// nothing else (the map options keep the class's spelling, and fuse must
// get only its own, empty, part of them).
func TestRookAndCephCSIClasses(t *testing.T) {
	e := newNodeEnv(t)
	dataPool := createPool(t, e.cluster, uniqueName("data"))
	names := map[string]string{"rook-ceph": testClusterID, "<cluster-id>": testClusterID,
		"replicapool": e.pool, "replicated-metadata-pool": e.pool, "<rbd-pool-name>": e.pool,
		"ec-data-pool": dataPool, "<ec-data-pool>": dataPool}
	for i, sc := range append(append([]storageClass{}, rookClasses...), cephCSIClasses...) {
		t.Run(sc.name, func(t *testing.T) {
			params := maps.Clone(sc.params)
			for _, k := range []string{"clusterID", "pool", "dataPool"} {
				if v, ok := names[params[k]]; ok {
					params[k] = v
				}
			}
			ctx := testContext(t, 3*time.Minute)
			capability := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
			capability.GetMount().FsType = params["csi.storage.k8s.io/fstype"]
			capability.GetMount().MountFlags = sc.mount
			req := e.createReq(uniqueName("pvc-class"), 64<<20)
			req.Parameters, req.VolumeCapabilities = params, []*csi.VolumeCapability{capability}
			before := len(e.images(t))
			resp, err := e.ctrl.CreateVolume(ctx, req)
			if sc.refusedBy != "" {
				if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `"`+sc.refusedBy+`"`) {
					t.Fatalf("CreateVolume = %v; want InvalidArgument naming %s", err, sc.refusedBy)
				}
				if after := len(e.images(t)); after != before {
					t.Fatalf("a refused class left %d images behind", after-before)
				}
				t.Logf("refused: %v", status.Convert(err).Message())
				return
			}
			if err != nil {
				t.Fatalf("CreateVolume: %v", err)
			}
			vol := resp.GetVolume()
			t.Cleanup(func() {
				_, _ = e.ctrl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId(), Secrets: e.secrets})
			})
			checkClassImage(t, e, sc, params, vol)
			stageClassVolume(t, e, ctx, vol, capability, i)
		})
	}
}

// checkClassImage checks what a class asked of the image itself.
func checkClassImage(t *testing.T, e *nodeEnv, sc storageClass, params map[string]string, vol *csi.Volume) {
	t.Helper()
	name := vol.GetVolumeContext()[rbd.CtxImageName]
	if prefix := params["volumeNamePrefix"]; prefix != "" && !strings.HasPrefix(name, prefix) {
		t.Errorf("image %s does not carry the prefix %s", name, prefix)
	}
	img, err := librbd.OpenImageReadOnly(e.adminIOContext(t), name, librbd.NoSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if dp := params["dataPool"]; dp != "" {
		if id, err := img.GetDataPoolID(); err != nil || id < 0 {
			t.Errorf("image %s has no data pool (%d, %v); the class names %s", name, id, err, dp)
		}
	}
	if params["stripeUnit"] != "" {
		unit, _ := img.GetStripeUnit()
		count, _ := img.GetStripeCount()
		info, _ := img.Stat()
		if unit != 65536 || count != 16 || info.Obj_size != 4194304 {
			t.Errorf("striping = unit %d, count %d, object %d; want 65536, 16, 4194304", unit, count, info.Obj_size)
		}
	}
}

// stageClassVolume stages vol as the class made it, with the mounter
// override described at TestRookAndCephCSIClasses, then unstages it.
func stageClassVolume(t *testing.T, e *nodeEnv, ctx context.Context, vol *csi.Volume, c *csi.VolumeCapability, i int) {
	t.Helper()
	staging := filepath.Join(e.work, "class", fmt.Sprint(i))
	if err := os.MkdirAll(staging, 0o750); err != nil {
		t.Fatal(err)
	}
	stage := func(vctx map[string]string) error {
		_, err := e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolumeId(),
			StagingTargetPath: staging, VolumeCapability: c, VolumeContext: vctx, Secrets: e.secrets})
		return err
	}
	vctx := maps.Clone(vol.GetVolumeContext())
	if m := vctx[rbd.ParamMounter]; m != "" && m != "fuse" {
		err := stage(vctx)
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "mapper "+m+" cannot work") {
			t.Fatalf("NodeStage with mounter %s = %v; want it to reach %s and find no kernel module", m, err, m)
		}
		vctx[rbd.ParamMounter] = "fuse"
	}
	if err := stage(vctx); err != nil {
		t.Fatalf("NodeStage: %v", err)
	}
	// The class's mountOptions travel in the capability; ext4 drops
	// discard by itself on this loop device, which has no discard.
	out, err := exec.Command("findmnt", "-n", "-o", "FSTYPE", staging).Output()
	if err != nil || strings.TrimSpace(string(out)) != "ext4" {
		t.Errorf("staging path holds %q (%v), want ext4", strings.TrimSpace(string(out)), err)
	}
	if _, err := e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol.GetVolumeId(),
		StagingTargetPath: staging}); err != nil {
		t.Fatalf("NodeUnstage: %v", err)
	}
}

// TestInTreeSecretForm: a class in the in-tree kubernetes.io/rbd form
// (adminId/userId, secrets holding only a key) works for every call that
// carries secrets, or is refused at CreateVolume when the calls that never
// see the class could not know its user.
func TestInTreeSecretForm(t *testing.T) {
	e := newNodeEnv(t)
	c := e.cluster
	adminKey := map[string]string{"key": c.AdminKey}
	userKey := map[string]string{"key": c.RBDUserKey}
	tests := []struct {
		name        string
		params      map[string]string
		ctrlSecrets map[string]string // provisioner, publish, expand, snapshot
		nodeSecrets map[string]string
		refusedBy   string
	}{
		{name: "adminId admin, userId for the node", params: map[string]string{"adminId": c.AdminID, "userId": c.RBDUserID},
			ctrlSecrets: adminKey, nodeSecrets: userKey},
		{name: "one user, named in the class and in its secret (ceph-csi's migration form)",
			params:      map[string]string{"adminId": c.RBDUserID},
			ctrlSecrets: map[string]string{"key": c.RBDUserKey, "adminId": c.RBDUserID}, nodeSecrets: userKey},
		{name: "adminId only the class names", params: map[string]string{"adminId": c.RBDUserID},
			ctrlSecrets: userKey, refusedBy: "adminId"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t, 3*time.Minute)
			req := e.createReq(uniqueName("pvc-intree"), 64<<20)
			req.Parameters = class(map[string]string{"clusterID": testClusterID, "pool": e.pool, "imageFormat": "2",
				"imageFeatures": "layering", "fsType": "ext4"}, tc.params)
			req.Secrets = tc.ctrlSecrets
			resp, err := e.ctrl.CreateVolume(ctx, req)
			if tc.refusedBy != "" {
				if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `"`+tc.refusedBy+`"`) {
					t.Fatalf("CreateVolume = %v; want InvalidArgument naming %s", err, tc.refusedBy)
				}
				t.Logf("refused: %v", status.Convert(err).Message())
				return
			}
			if err != nil {
				t.Fatalf("CreateVolume: %v", err)
			}
			vol := resp.GetVolume()
			id := vol.GetVolumeId()
			capability := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
			staging := filepath.Join(e.work, "intree", fmt.Sprint(i))
			if err := os.MkdirAll(staging, 0o750); err != nil {
				t.Fatal(err)
			}
			steps := []struct {
				what string
				call func() error
			}{
				{"ControllerPublishVolume", func() error {
					_, err := e.ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "node-1",
						VolumeCapability: capability, VolumeContext: vol.GetVolumeContext(), Secrets: tc.ctrlSecrets})
					return err
				}},
				{"NodeStageVolume", func() error {
					_, err := e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
						VolumeCapability: capability, VolumeContext: vol.GetVolumeContext(), Secrets: tc.nodeSecrets})
					return err
				}},
				{"NodeUnstageVolume", func() error {
					_, err := e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
					return err
				}},
				{"ControllerUnpublishVolume", func() error {
					_, err := e.ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: "node-1",
						Secrets: tc.ctrlSecrets})
					return err
				}},
				{"ControllerExpandVolume", func() error {
					_, err := e.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id,
						CapacityRange: &csi.CapacityRange{RequiredBytes: 128 << 20}, Secrets: tc.ctrlSecrets})
					return err
				}},
				{"CreateSnapshot and DeleteSnapshot", func() error {
					snap, err := e.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: uniqueName("snap-intree"),
						SourceVolumeId: id, Secrets: tc.ctrlSecrets})
					if err != nil {
						return err
					}
					_, err = e.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshot().GetSnapshotId(),
						Secrets: tc.ctrlSecrets})
					return err
				}},
				{"DeleteVolume", func() error {
					_, err := e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: tc.ctrlSecrets})
					return err
				}},
			}
			for _, s := range steps {
				if err := s.call(); err != nil {
					t.Fatalf("%s: %v", s.what, err)
				}
			}
			for _, img := range e.images(t) {
				if strings.HasSuffix(id, strings.TrimPrefix(img, "csi-vol-")) {
					t.Fatalf("image %s outlived DeleteVolume", img)
				}
			}
		})
	}
}
