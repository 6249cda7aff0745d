package cephfs

import (
	"context"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/volume"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

// cephCSIJournal is the fake cluster's stand-in for ceph-csi's journal.
func (e *ctrlEnv) cephCSIJournal(t *testing.T) journal.Journal {
	t.Helper()
	j, err := e.cluster.CephCSIJournal(context.Background(), svcFS.MetadataPool, "csi", journal.DefaultCephCSIInstance)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// cephCSIVolume provisions a 1 GiB volume as ceph-csi does: a subvolume
// csi-vol-<uuid> in group csi and an entry in its journal.
func (e *ctrlEnv) cephCSIVolume(t *testing.T, name string) (id string, sv Subvolume) {
	t.Helper()
	ctx := context.Background()
	uuid := volume.NewUUID()
	sv = Subvolume{FS: svcFS.Name, Group: "csi", Name: "csi-vol-" + uuid}
	if err := e.vols.EnsureGroup(ctx, sv.FS, sv.Group); err != nil {
		t.Fatal(err)
	}
	if err := e.vols.CreateSubvolume(ctx, sv, SubvolumeSpec{Size: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	rec := &journal.Record{Kind: journal.Volume, Name: name, UUID: uuid, Backing: sv.Name, Owner: "shop"}
	if err := e.cephCSIJournal(t).Reserve(ctx, rec); err != nil {
		t.Fatal(err)
	}
	return volumeid.ID{ClusterID: "c1", PoolID: svcFS.ID, UUID: uuid}.String(), sv
}

// cephCSISnapshot takes a snapshot of sv as ceph-csi does: a subvolume
// snapshot csi-snap-<uuid> and an entry naming it and its source.
func (e *ctrlEnv) cephCSISnapshot(t *testing.T, name string, sv Subvolume) string {
	t.Helper()
	ctx := context.Background()
	uuid := volume.NewUUID()
	if err := e.vols.CreateSnapshot(ctx, Snapshot{Subvolume: sv, Name: "csi-snap-" + uuid}); err != nil {
		t.Fatal(err)
	}
	rec := &journal.Record{Kind: journal.Snapshot, Name: name, UUID: uuid, Backing: "csi-snap-" + uuid,
		SnapName: "csi-snap-" + uuid, SourceBacking: sv.Name, Owner: "shop"}
	if err := e.cephCSIJournal(t).Reserve(ctx, rec); err != nil {
		t.Fatal(err)
	}
	return volumeid.ID{ClusterID: "c1", PoolID: svcFS.ID, UUID: uuid}.String()
}

func (e *ctrlEnv) inCephCSIJournal(t *testing.T, kind journal.Kind, id string) bool {
	t.Helper()
	vid, _ := volumeid.Parse(id)
	_, err := e.cephCSIJournal(t).Lookup(context.Background(), kind, vid.UUID)
	return err == nil
}

// Every controller call serves ceph-csi's volumes and snapshots as
// Pelagic's own; what Pelagic makes from them goes to its own journal.
func TestCephCSIVolumesServed(t *testing.T) {
	e := newCtrlEnv(t)
	ctx := context.Background()
	volID, sv := e.cephCSIVolume(t, "pvc-old")
	snapID := e.cephCSISnapshot(t, "snap-old", sv)
	creations := e.vols.Calls("CreateSubvolume")

	v := e.create(t, e.req("pvc-old", 1<<30, nil, ParamMounter, "fuse"))
	if v.GetVolumeId() != volID || v.GetCapacityBytes() != 1<<30 || e.vols.Calls("CreateSubvolume") != creations ||
		v.GetVolumeContext()[CtxSubvolumeName] != sv.Name || v.GetVolumeContext()[ParamMounter] != "fuse" {
		t.Errorf("CreateVolume of ceph-csi's name: %+v; want %s, its subvolume, nothing created", v, volID)
	}
	if _, err := e.ctrl.CreateVolume(ctx, e.req("pvc-old", 2<<30, nil)); status.Code(err) != codes.AlreadyExists {
		t.Errorf("CreateVolume of ceph-csi's name, larger: %v; want AlreadyExists", err)
	}
	if g, err := e.ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: volID}); err != nil ||
		g.GetVolume().GetCapacityBytes() != 1<<30 {
		t.Errorf("ControllerGetVolume = %v, %v", g, err)
	}
	val, err := e.ctrl.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: volID,
		VolumeCapabilities: []*csi.VolumeCapability{testRWX}, Secrets: e.secrets,
		Parameters:    map[string]string{ParamClusterID: "c1", ParamFSName: "cephfs", ParamMounter: "fuse"},
		VolumeContext: map[string]string{CtxSubvolumeName: sv.Name, ParamFSName: "cephfs"}})
	if err != nil || val.GetConfirmed() == nil {
		t.Errorf("ValidateVolumeCapabilities = %v, %v", val, err)
	}
	if _, err := e.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: volID,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 2 << 30}, Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}
	if _, info := e.subvolume(t, v); info.BytesQuota != 2<<30 {
		t.Errorf("quota after expansion: %d", info.BytesQuota)
	}

	s, err := e.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-old", SourceVolumeId: volID, Secrets: e.secrets})
	if err != nil || s.GetSnapshot().GetSnapshotId() != snapID || s.GetSnapshot().GetSourceVolumeId() != volID ||
		s.GetSnapshot().GetCreationTime() == nil || s.GetSnapshot().GetSizeBytes() == 0 {
		t.Errorf("CreateSnapshot of ceph-csi's name = %v, %v; want %s of %s", s, err, snapID, volID)
	}
	newSnap := e.snapshot(t, "snap-new", v)
	restore := e.create(t, e.req("pvc-restore", 1<<30, fromSnapshot(&csi.Snapshot{SnapshotId: snapID})))
	clone := e.create(t, e.req("pvc-clone", 1<<30, fromVolume(v)))
	for _, c := range []*csi.Volume{restore, clone} {
		if _, info := e.subvolume(t, c); info.BytesQuota < 1<<30 || e.inCephCSIJournal(t, journal.Volume, c.GetVolumeId()) {
			t.Errorf("copy %s: quota %d, or in ceph-csi's journal", c.GetVolumeId(), info.BytesQuota)
		}
	}

	vols, err := e.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil || len(vols.GetEntries()) != 3 {
		t.Errorf("ListVolumes = %v, %v; want ceph-csi's volume and the two copies", vols, err)
	}
	snaps, err := e.ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SourceVolumeId: volID})
	if err != nil || len(snaps.GetEntries()) != 2 {
		t.Errorf("ListSnapshots of %s = %v, %v; want ceph-csi's and Pelagic's", volID, snaps, err)
	}

	for _, id := range []string{snapID, newSnap.GetSnapshotId()} {
		if _, err := e.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id, Secrets: e.secrets}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: volID, Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.vols.Subvolume(ctx, sv); err == nil {
		t.Errorf("subvolume %s survives DeleteVolume", sv)
	}
	if e.inCephCSIJournal(t, journal.Volume, volID) || e.inCephCSIJournal(t, journal.Snapshot, snapID) {
		t.Error("ceph-csi's journal entries survive their deletion")
	}
	if _, err := e.cephCSIJournal(t).LookupName(ctx, journal.Volume, "pvc-old"); err == nil {
		t.Error("ceph-csi's name survives DeleteVolume")
	}
}

// A well-formed ID no journal knows is deleted (OK) only once no subvolume
// named after its UUID is left; the refusal names it.
func TestDeleteUnknownVolume(t *testing.T) {
	e := newCtrlEnv(t)
	ctx := context.Background()
	_ = e.create(t, e.req("pvc-1", 1<<30, nil)) // the cluster is known
	uuid := volume.NewUUID()
	id := volumeid.ID{ClusterID: "c1", PoolID: svcFS.ID, UUID: uuid}.String()
	if _, err := e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: e.secrets}); err != nil {
		t.Errorf("DeleteVolume of an ID nothing is left of: %v", err)
	}
	sv := Subvolume{FS: svcFS.Name, Group: "csi", Name: "csi-vol-" + uuid}
	if err := e.vols.CreateSubvolume(ctx, sv, SubvolumeSpec{Size: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	_, err := e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: e.secrets})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), sv.Name) {
		t.Errorf("DeleteVolume of an ID with a subvolume no journal knows: %v; want FailedPrecondition naming it", err)
	}
	if _, err := e.vols.Subvolume(ctx, sv); err != nil {
		t.Errorf("the unknown subvolume was touched: %v", err)
	}
	other := volumeid.ID{ClusterID: "c1", PoolID: 99, UUID: uuid}.String()
	if _, err := e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: other, Secrets: e.secrets}); err != nil {
		t.Errorf("DeleteVolume in a filesystem that does not exist: %v", err)
	}
}

// A volume deleted under its snapshots is deleted again (a retry) while
// its subvolume waits, snapshot-retained, for them.
func TestDeleteVolumeRetryUnderSnapshots(t *testing.T) {
	e := newCtrlEnv(t)
	ctx := context.Background()
	for _, cephCSI := range []bool{false, true} {
		var id string
		if cephCSI {
			var sv Subvolume
			id, sv = e.cephCSIVolume(t, "pvc-old")
			e.cephCSISnapshot(t, "snap-old", sv)
		} else {
			v := e.create(t, e.req("pvc-1", 1<<30, nil))
			id = v.GetVolumeId()
			e.snapshot(t, "snap-1", v)
		}
		for i := 0; i < 2; i++ {
			if _, err := e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: e.secrets}); err != nil {
				t.Errorf("DeleteVolume %d of a volume with a snapshot (ceph-csi's: %v): %v", i+1, cephCSI, err)
			}
		}
	}
}

// A name ceph-csi reserved without making its subvolume is taken back: the
// request makes a Pelagic volume, and ceph-csi's entry goes.
func TestCephCSIHalfReservation(t *testing.T) {
	e := newCtrlEnv(t)
	ctx := context.Background()
	uuid := volume.NewUUID()
	half := &journal.Record{Kind: journal.Volume, Name: "pvc-half", UUID: uuid, Backing: "csi-vol-" + uuid}
	if err := e.cephCSIJournal(t).Reserve(ctx, half); err != nil {
		t.Fatal(err)
	}
	v := e.create(t, e.req("pvc-half", 1<<30, nil))
	if strings.HasSuffix(v.GetVolumeId(), uuid) {
		t.Errorf("CreateVolume answered ceph-csi's reservation without its subvolume: %s", v.GetVolumeId())
	}
	if _, err := e.cephCSIJournal(t).LookupName(ctx, journal.Volume, "pvc-half"); err == nil {
		t.Error("ceph-csi's half reservation is left")
	}
	if _, info := e.subvolume(t, v); info.BytesQuota != 1<<30 {
		t.Errorf("quota %d", info.BytesQuota)
	}
}
