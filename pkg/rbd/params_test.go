package rbd

import (
	"context"
	"maps"
	"os"
	"strings"
	"testing"

	librbd "github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/pelagic-csi/pelagic/pkg/mapper"
)

// TestParseVolumeParams covers what ParseVolumeParams makes of ceph-csi's
// RBD parameters, one rule a case; the example classes themselves go
// through a real cluster in e2e.
func TestParseVolumeParams(t *testing.T) {
	rookCephBlock := map[string]string{ // rook's deploy/examples/csi/rbd/storageclass.yaml
		"clusterID":     "rook-ceph",
		"pool":          "replicapool",
		"imageFormat":   "2",
		"imageFeatures": "layering",
		"csi.storage.k8s.io/provisioner-secret-name":            "rook-csi-rbd-provisioner",
		"csi.storage.k8s.io/provisioner-secret-namespace":       "rook-ceph",
		"csi.storage.k8s.io/controller-expand-secret-name":      "rook-csi-rbd-provisioner",
		"csi.storage.k8s.io/controller-expand-secret-namespace": "rook-ceph",
		"csi.storage.k8s.io/node-stage-secret-name":             "rook-csi-rbd-node",
		"csi.storage.k8s.io/node-stage-secret-namespace":        "rook-ceph",
		"csi.storage.k8s.io/fstype":                             "ext4",
	}
	with := func(kv ...string) map[string]string {
		m := map[string]string{ParamClusterID: "c", ParamPool: "p"}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	const journaled = "layering,exclusive-lock,journaling"
	tests := []struct {
		name    string
		in      map[string]string
		check   func(*VolumeParams) bool
		wantErr string // names the parameter
	}{
		{"rook-ceph-block", rookCephBlock, func(p *VolumeParams) bool {
			return p.ClusterID == "rook-ceph" && p.Pool == "replicapool" && p.FSType == "ext4" &&
				p.Features == librbd.FeatureLayering && p.FeatureNames == "layering" && p.NamePrefix == DefaultNamePrefix
		}, ""},
		{"defaults", with(), func(p *VolumeParams) bool {
			return p.FeatureNames == "layering" && p.FSType == "" && p.DataPool == ""
		}, ""},
		{"legacy fsType", with("fsType", "xfs"), func(p *VolumeParams) bool { return p.FSType == "xfs" }, ""},
		{"CSI fstype wins over legacy", with("fsType", "xfs", "csi.storage.k8s.io/fstype", "ext4"),
			func(p *VolumeParams) bool { return p.FSType == "ext4" }, ""},
		{"feature set sorted", with("imageFeatures", "fast-diff, object-map,exclusive-lock,layering"), func(p *VolumeParams) bool {
			return p.FeatureNames == "exclusive-lock,fast-diff,layering,object-map" &&
				p.Features == librbd.FeatureLayering|librbd.FeatureExclusiveLock|librbd.FeatureObjectMap|librbd.FeatureFastDiff
		}, ""},
		{"encrypted false", with("encrypted", "false"), nil, ""},
		{"name prefix and pvc", with("volumeNamePrefix", "k8s-", ParamPVCName, "data", ParamPVCNamespace, "db", "dataPool", "ec"),
			func(p *VolumeParams) bool {
				return p.NamePrefix == "k8s-" && p.PVCName == "data" && p.PVCNamespace == "db" && p.DataPool == "ec"
			}, ""},
		{"missing clusterID", map[string]string{"pool": "p"}, nil, "clusterID"},
		{"missing pool", map[string]string{"clusterID": "c"}, nil, `"pool"`},
		{"image format 1", with("imageFormat", "1"), nil, "format 2"},
		{"unknown feature", with("imageFeatures", "layering,bogus"), nil, `"bogus"`},
		{"object-map needs exclusive-lock", with("imageFeatures", "layering,object-map"), nil, "exclusive-lock"},
		{"fast-diff needs object-map", with("imageFeatures", "exclusive-lock,fast-diff"), nil, "object-map"},
		{"journaling needs exclusive-lock", with("imageFeatures", "journaling"), nil, "exclusive-lock"},
		{"encrypted", with("encrypted", "true"), nil, "encryption"},
		{"thick", with("thickProvision", "true"), nil, "thick"},
		{"monitors", with("monitors", "10.0.0.1:6789"), nil, "clusterID"},
		{"bad fsType", with("csi.storage.k8s.io/fstype", "btrfs"), nil, "btrfs"},
		{"bad legacy fsType", with("fsType", "zfs"), nil, "zfs"},
		{"prefix with slash", with("volumeNamePrefix", "a/b"), nil, "volumeNamePrefix"},
		{"empty prefix", with("volumeNamePrefix", ""), nil, "volumeNamePrefix"},
		{"mounter rbd is ceph-csi's krbd", with(ParamMounter, "rbd"), mounterIs(mapper.KRBD), ""},
		{"mounter krbd", with(ParamMounter, "krbd"), mounterIs(mapper.KRBD), ""},
		{"mounter rbd-nbd", with(ParamMounter, "rbd-nbd"), mounterIs(mapper.NBD), ""},
		{"mounter nbd", with(ParamMounter, "nbd"), mounterIs(mapper.NBD), ""},
		{"mounter fuse", with(ParamMounter, "fuse"), mounterIs(mapper.Fuse), ""},
		{"mounter rbd-fuse", with(ParamMounter, "rbd-fuse"), mounterIs(mapper.Fuse), ""},
		{"no mounter: the node decides", with(), mounterIs(""), ""},
		{"unknown mounter", with(ParamMounter, "iscsi"), nil, `"mounter"`},

		{"journaling with rbd-nbd", with(ParamMounter, "rbd-nbd", ParamImageFeatures, journaled), mounterIs(mapper.NBD), ""},
		{"journaling with fuse", with(ParamMounter, "fuse", ParamImageFeatures, journaled), mounterIs(mapper.Fuse), ""},
		{"journaling with krbd", with(ParamMounter, "rbd", ParamImageFeatures, journaled), nil, `"imageFeatures"`},
		{"journaling with no mounter", with(ParamImageFeatures, journaled), nil, "names no mounter"},
		{"journaling, tryOtherMounters falls back to rbd-nbd", with(ParamImageFeatures, journaled, ParamTryOtherMounters, "true"),
			mounterIs(mapper.NBD), ""},
		{"tryOtherMounters with features krbd maps", with(ParamMounter, "rbd", ParamTryOtherMounters, "true"), mounterIs(mapper.KRBD), ""},
		{"tryOtherMounters false", with(ParamTryOtherMounters, "false"), mounterIs(""), ""},
		{"tryOtherMounters not a bool", with(ParamTryOtherMounters, "sometimes"), nil, `"tryOtherMounters"`},
		{"every feature krbd maps", with(ParamMounter, "krbd",
			ParamImageFeatures, "layering,exclusive-lock,object-map,fast-diff,deep-flatten"), mounterIs(mapper.KRBD), ""},

		{"per-mapper options", with(ParamMapOptions, "krbd:lock_on_read,queue_depth=1024;nbd:try-netlink",
			ParamUnmapOptions, "krbd:force"), func(p *VolumeParams) bool {
			return p.MapOptions == "krbd:lock_on_read,queue_depth=1024;nbd:try-netlink" && p.UnmapOptions == "krbd:force"
		}, ""},
		{"plain options are krbd's", with(ParamMapOptions, "lock_on_read,queue_depth=1024", ParamUnmapOptions, "force"), nil, ""},
		{"plain options with krbd named", with(ParamMounter, "rbd", ParamMapOptions, "lock_on_read"), nil, ""},
		{"plain options with rbd-nbd named", with(ParamMounter, "rbd-nbd", ParamMapOptions, "try-netlink"), nil, "nbd:OPTIONS"},
		{"rbd-nbd has no unmap options", with(ParamUnmapOptions, "krbd:force;nbd:force"), nil, `"unmapOptions"`},
		{"fuse takes no options", with(ParamMounter, "fuse", ParamMapOptions, "fuse:ro"), nil, "fuse takes no map options"},
		{"fuse beside another mapper's options", with(ParamMounter, "fuse", ParamMapOptions, "krbd:lock_on_read"), mounterIs(mapper.Fuse), ""},
		{"krbd option krbd lacks", with(ParamMapOptions, "krbd:try-netlink"), nil, `"mapOptions"`},
		{"options for an unknown mapper", with(ParamMapOptions, "iscsi:x"), nil, `"mapOptions"`},

		{"striping", with(ParamObjectSize, "1048576", ParamStripeUnit, "65536", ParamStripeCount, "16"), func(p *VolumeParams) bool {
			return p.ObjectSize == 1<<20 && p.StripeUnit == 64<<10 && p.StripeCount == 16
		}, ""},
		{"object size not a power of two", with(ParamObjectSize, "3000000"), nil, `"objectSize"`},
		{"object size too large", with(ParamObjectSize, "67108864"), nil, `"objectSize"`},
		{"stripe unit alone", with(ParamStripeUnit, "65536"), nil, `"stripeCount"`},
		{"stripe unit not dividing the object", with(ParamStripeUnit, "3000", ParamStripeCount, "2"), nil, `"stripeUnit"`},
		{"stripe count not a number", with(ParamStripeUnit, "65536", ParamStripeCount, "many"), nil, `"stripeCount"`},

		{"encrypted false with encryption details", with("encrypted", "false", "encryptionKMSID", "vault", "encryptionType", "block"), nil, ""},
		{"encrypted", with("encrypted", "true"), nil, `"encrypted"`},
		{"thickProvision false", with("thickProvision", "false"), nil, ""},
		{"ceph log settings", with("cephLogDir", "/var/log/ceph", "cephLogStrategy", "remove"), nil, ""},
		{"ceph log kept", with("cephLogStrategy", "preserve"), nil, `"cephLogStrategy"`},
		{"journal pool is the pool", with(ParamJournalPool, "p"), nil, ""},
		{"journal pool elsewhere, which ceph-csi ignored too", with(ParamJournalPool, "meta"), nil, ""},
		{"radosNamespace", with(ParamRadosNamespace, "ns"), nil, `"radosNamespace"`},
		{"in-tree secret name", with("adminSecretName", "ceph-secret"), nil, `"adminSecretName"`},
		{"unknown parameter", with("imageFeature", "layering"), nil, `"imageFeature"`},
		{"sidecar parameters", with("csi.storage.k8s.io/controller-modify-secret-name", "s",
			"csi.storage.k8s.io/node-publish-secret-name", "s"), nil, ""},
		{"in-tree users", with(ParamAdminID, "kube-admin", ParamUserID, "kube"), func(p *VolumeParams) bool {
			return p.AdminID == "kube-admin" && p.volumeContext("img")[ParamUserID] == "kube"
		}, ""},
		{"in-tree userId defaults to adminId", with(ParamAdminID, "kube"), func(p *VolumeParams) bool {
			return p.volumeContext("img")[ParamUserID] == "kube"
		}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := ParseVolumeParams(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.check != nil && !tc.check(p) {
				t.Errorf("parsed %+v", p)
			}
		})
	}
}

func mounterIs(name string) func(*VolumeParams) bool {
	return func(p *VolumeParams) bool { return p.Mounter == name && p.volumeContext("i")[ParamMounter] == name }
}

func TestJournalParamsStriping(t *testing.T) {
	plain, _ := ParseVolumeParams(map[string]string{ParamClusterID: "c", ParamPool: "p"})
	if _, ok := plain.journalParams()[ParamObjectSize]; ok {
		t.Errorf("journal params of an unstriped volume name striping: %v", plain.journalParams())
	}
	striped, _ := ParseVolumeParams(map[string]string{ParamClusterID: "c", ParamPool: "p", ParamObjectSize: "1048576"})
	if striped.journalParams()[ParamObjectSize] != "1048576" {
		t.Errorf("journal params = %v, want the object size", striped.journalParams())
	}
}

// TestREADMEListsEveryParameter keeps the README's table of StorageClass
// parameters honest: every parameter Pelagic reads, refuses or accepts
// without effect has a row.
func TestREADMEListsEveryParameter(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	var names []string
	for _, m := range []map[string]bool{readParams, inertParams} {
		names = append(names, sortedKeys(m)...)
	}
	names = append(names, sortedKeys(refusedParams)...)
	names = append(names, sortedKeys(legacyParams)...)
	for _, n := range names {
		if !strings.Contains(readme, "`"+n+"`") {
			t.Errorf("README does not list parameter %s", n)
		}
	}
}

// TestInTreeSecretEveryCall: the in-tree form (a bare key, its user named
// by adminId/userId) works for every call that carries secrets, or the
// class is refused at CreateVolume.
func TestInTreeSecretEveryCall(t *testing.T) {
	tests := []struct {
		name         string
		secrets      map[string]string // provisioner, expand, publish and snapshot secret
		params       map[string]string
		wantAdmin    string // "" means refused at CreateVolume
		nodeSecrets  map[string]string
		wantNodeUser string
	}{
		{"bare key, adminId admin, userId for the node", map[string]string{"key": testKey},
			map[string]string{ParamAdminID: "admin", ParamUserID: "kube"}, "admin",
			map[string]string{"key": testKey}, "kube"},
		{"bare key and no user named anywhere: client.admin", map[string]string{"key": testKey}, nil, "admin",
			map[string]string{"key": testKey}, "admin"},
		{"key naming its user (ceph-csi's migration form)", map[string]string{"key": testKey, "adminId": "kube"},
			map[string]string{ParamAdminID: "kube"}, "kube", map[string]string{"key": testKey}, "kube"},
		{"node secret naming its own user", map[string]string{"key": testKey},
			map[string]string{ParamUserID: "kube"}, "admin", map[string]string{"key": testKey, "adminId": "node"}, "node"},
		{"CSI secrets beside in-tree names", testSecrets, map[string]string{ParamUserID: "kube"}, "csi-rbd-provisioner",
			map[string]string{"userID": "csi-rbd-node", "userKey": testKey}, "csi-rbd-node"},
		{"adminId only the class names", map[string]string{"key": testKey}, map[string]string{ParamAdminID: "kube"}, "", nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			req := createReq("pvc-1", gib)
			req.Secrets = tc.secrets
			maps.Copy(req.Parameters, tc.params)
			resp, err := e.c.CreateVolume(context.Background(), req)
			if tc.wantAdmin == "" {
				wantCode(t, err, codes.InvalidArgument)
				if !strings.Contains(err.Error(), `"adminId"`) || e.pool.Calls("CreateImage") != 0 {
					t.Fatalf("refusal %v does not name adminId, or an image was created", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			vol := resp.GetVolume()
			ctx := context.Background()
			calls := []func() error{
				func() error {
					_, err := e.c.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: vol.GetVolumeId(),
						NodeId: "node-a", VolumeCapability: mountCap(rwo), VolumeContext: vol.GetVolumeContext(), Secrets: tc.secrets})
					return err
				},
				func() error {
					_, err := e.c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: vol.GetVolumeId(),
						CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * gib}, Secrets: tc.secrets})
					return err
				},
				func() error {
					snap, err := e.c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-1", SourceVolumeId: vol.GetVolumeId(),
						Secrets: tc.secrets})
					if err != nil {
						return err
					}
					_, err = e.c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshot().GetSnapshotId(),
						Secrets: tc.secrets})
					return err
				},
				func() error {
					_, err := e.c.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: vol.GetVolumeId(),
						NodeId: "node-a", Secrets: tc.secrets})
					return err
				},
				func() error {
					_, err := e.c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId(), Secrets: tc.secrets})
					return err
				},
			}
			for i, call := range calls {
				if err := call(); err != nil {
					t.Fatalf("call %d: %v", i, err)
				}
			}
			for _, c := range e.conn.Creds() {
				if c.ID != tc.wantAdmin || c.Key != testKey {
					t.Errorf("a controller call connected as %v, want client.%s", c, tc.wantAdmin)
				}
			}

			n := newNodeEnv(t)
			stage := n.stageReq(mountCap(rwo))
			stage.Secrets = tc.nodeSecrets
			maps.Copy(stage.VolumeContext, vol.GetVolumeContext())
			stage.VolumeContext[CtxImageName], stage.VolumeContext[ParamPool] = nodeTestImage, testPool
			n.stage(t, stage)
			mapped := n.krbd.MapCalls()
			if len(mapped) != 1 || mapped[0].Image.Creds.ID != tc.wantNodeUser || mapped[0].Image.Creds.Key != testKey {
				t.Errorf("NodeStage mapped with %v, want client.%s", mapped, tc.wantNodeUser)
			}
			for _, c := range n.n.opts.Connector.(*FakeConnector).Creds() {
				if c.ID != tc.wantNodeUser {
					t.Errorf("NodeStage connected as %v, want client.%s", c, tc.wantNodeUser)
				}
			}
		})
	}
}

// TestNodeStagePicksItsMapperOptions: each mapper gets only its own part
// of the class's map and unmap options, and the unstage uses it.
func TestNodeStagePicksItsMapperOptions(t *testing.T) {
	tests := []struct {
		name, mounter     string
		mapOpts, unmapOpt string
		fake              func(*nodeEnv) *mapper.FakeMapper
		wantMap, wantUnmp string
	}{
		{"krbd from the per-mapper form", "rbd", "krbd:lock_on_read,queue_depth=1024;nbd:try-netlink", "krbd:force",
			func(e *nodeEnv) *mapper.FakeMapper { return e.krbd }, "lock_on_read,queue_depth=1024", "force"},
		{"rbd-nbd from the per-mapper form", "rbd-nbd", "krbd:lock_on_read;nbd:try-netlink,io-timeout=30", "krbd:force",
			func(e *nodeEnv) *mapper.FakeMapper { return e.nbd }, "try-netlink,io-timeout=30", ""},
		{"plain form is krbd's", "", "lock_on_read", "force",
			func(e *nodeEnv) *mapper.FakeMapper { return e.krbd }, "lock_on_read", "force"},
		{"plain form gives rbd-nbd nothing", "nbd", "lock_on_read", "force",
			func(e *nodeEnv) *mapper.FakeMapper { return e.nbd }, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newNodeEnv(t)
			req := e.stageReq(mountCap(rwo))
			for k, v := range map[string]string{ParamMounter: tc.mounter, ParamMapOptions: tc.mapOpts, ParamUnmapOptions: tc.unmapOpt} {
				if v != "" {
					req.VolumeContext[k] = v
				}
			}
			e.stage(t, req)
			m := tc.fake(e)
			if calls := m.MapCalls(); len(calls) != 1 || calls[0].Opts.Options != tc.wantMap {
				t.Fatalf("%s map calls = %+v, want options %q", m.Name(), calls, tc.wantMap)
			}
			if _, err := e.n.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{
				VolumeId: e.volID, StagingTargetPath: e.staging}); err != nil {
				t.Fatal(err)
			}
			if calls := m.UnmapCalls(); len(calls) != 1 || calls[0].Opts.Options != tc.wantUnmp {
				t.Fatalf("%s unmap calls = %+v, want options %q", m.Name(), calls, tc.wantUnmp)
			}
		})
	}
	e := newNodeEnv(t)
	req := e.stageReq(mountCap(rwo))
	req.VolumeContext[ParamMapOptions] = "crush_location=zone:z1"
	_, err := e.n.NodeStageVolume(context.Background(), req)
	wantCode(t, err, codes.InvalidArgument)
	if e.mapCalls() != 0 {
		t.Error("mapped despite options it cannot parse")
	}
}
