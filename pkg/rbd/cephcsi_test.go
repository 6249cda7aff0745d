package rbd

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

// What ceph-csi left in the fake pool, laid out as the real one writes it
// (docs/ceph-csi-format.md).

const (
	ccVolUUID   = "11111111-1111-4111-8111-111111111111"
	ccSnapUUID  = "22222222-2222-4222-8222-222222222222"
	ccCloneUUID = "33333333-3333-4333-8333-333333333333"
)

func ccID(uuid string) string {
	return volumeid.ID{ClusterID: testClusterID, PoolID: testPoolID, UUID: uuid}.String()
}

func (e *env) cephCSI() journal.Journal { return e.pool.CephCSI(journal.DefaultCephCSIInstance) }

func (e *env) imageID(t *testing.T, name string) string {
	t.Helper()
	info, err := e.pool.Stat(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return info.ID
}

// ccVolume makes a ceph-csi volume: its image and its journal entry.
func (e *env) ccVolume(t *testing.T, name, uuid string, size int64) string {
	t.Helper()
	image := "csi-vol-" + uuid
	if err := e.pool.CreateImage(context.Background(), ImageSpec{Name: image, Size: size, Features: knownFeatures["layering"]}); err != nil {
		t.Fatal(err)
	}
	e.ccEntry(t, &journal.Record{Kind: journal.Volume, Name: name, UUID: uuid, Backing: image, BackingID: e.imageID(t, image)})
	return image
}

func (e *env) ccEntry(t *testing.T, rec *journal.Record) {
	t.Helper()
	rec.Owner = "shop"
	if err := e.cephCSI().Reserve(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
}

// ccClone makes an image a clone (v2) of another through a snapshot that
// then goes, as ceph-csi does.
func (e *env) ccClone(t *testing.T, parent, child string, features uint64) {
	t.Helper()
	ctx := context.Background()
	pid := e.imageID(t, parent)
	if _, err := e.pool.CreateSnap(ctx, parent, SnapOf(pid, child)); err != nil {
		t.Fatal(err)
	}
	info, _ := e.pool.Stat(ctx, parent)
	if err := e.pool.Clone(ctx, parent, child, ImageSpec{Name: child, Size: info.Size, Features: features}); err != nil {
		t.Fatal(err)
	}
	if err := e.pool.RemoveSnap(ctx, pid, child); err != nil {
		t.Fatal(err)
	}
}

// ccSnapshot makes a ceph-csi snapshot of image: a clone csi-snap-<uuid>
// holding one snapshot of its own name.
func (e *env) ccSnapshot(t *testing.T, name, uuid, source string) string {
	t.Helper()
	image := "csi-snap-" + uuid
	e.ccClone(t, source, image, 1)
	if _, err := e.pool.CreateSnap(context.Background(), image, SnapOf(e.imageID(t, image), image)); err != nil {
		t.Fatal(err)
	}
	e.ccEntry(t, &journal.Record{Kind: journal.Snapshot, Name: name, UUID: uuid, Backing: image,
		BackingID: e.imageID(t, image), SnapName: image, SourceBacking: source})
	return image
}

// ccCloneVolume makes a ceph-csi clone of a volume: source <- -temp <- clone.
func (e *env) ccCloneVolume(t *testing.T, name, uuid, source string) string {
	t.Helper()
	image := "csi-vol-" + uuid
	e.ccClone(t, source, image+"-temp", 1)
	e.ccClone(t, image+"-temp", image, 1)
	e.ccEntry(t, &journal.Record{Kind: journal.Volume, Name: name, UUID: uuid, Backing: image, BackingID: e.imageID(t, image)})
	return image
}

// wantStatus fails unless err has code and names every one of contains.
func wantStatus(t *testing.T, what string, err error, code codes.Code, contains ...string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: %v, want %s", what, err, code)
	}
	for _, s := range contains {
		if err != nil && !strings.Contains(err.Error(), s) {
			t.Errorf("%s: %v, want it to name %q", what, err, s)
		}
	}
}

// TestCephCSIVolumeServed: a volume ceph-csi provisioned answers every
// call as Pelagic's own, and nothing of it is rewritten.
func TestCephCSIVolumeServed(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	image := e.ccVolume(t, "pvc-a", ccVolUUID, 2*gib)
	id := ccID(ccVolUUID)

	again := e.create(t, createReq("pvc-a", gib))
	if again.GetVolumeId() != id || again.GetCapacityBytes() != 2*gib || again.GetVolumeContext()[CtxImageName] != image {
		t.Fatalf("CreateVolume with ceph-csi's name: %v", again)
	}
	_, err := e.c.CreateVolume(ctx, createReq("pvc-a", 3*gib))
	wantStatus(t, "CreateVolume asking for more", err, codes.AlreadyExists, "ceph-csi")
	if recs := e.records(t, journal.Volume); len(recs) != 0 {
		t.Errorf("Pelagic's journal got %v", recs)
	}

	got, err := e.c.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id})
	if err != nil || got.GetVolume().GetCapacityBytes() != 2*gib {
		t.Fatalf("ControllerGetVolume: %v, %v", got, err)
	}

	// ceph-csi's node plugin maps it: a watcher no node recorded.
	e.pool.SetWatchers(image, Watcher{Addr: "10.0.0.7:0/42", ID: 4242})
	_, err = e.c.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "node-b",
		VolumeCapability: mountCap(rwo), Secrets: maps.Clone(testSecrets)})
	wantStatus(t, "publishing over ceph-csi's mapping", err, codes.FailedPrecondition, "client.4242", "ceph-csi's node plugin")
	exp, err := e.c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 3 * gib}, Secrets: maps.Clone(testSecrets)})
	if err != nil || exp.GetCapacityBytes() != 3*gib {
		t.Fatalf("expanding in use by ceph-csi's node plugin: %v, %v", exp, err)
	}
	e.pool.SetWatchers(image)
	if _, err := e.c.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "node-b",
		VolumeCapability: mountCap(rwo), Secrets: maps.Clone(testSecrets)}); err != nil {
		t.Fatalf("ControllerPublishVolume: %v", err)
	}
	_, err = e.c.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "node-c",
		VolumeCapability: mountCap(rwo), Secrets: maps.Clone(testSecrets)})
	wantStatus(t, "publishing to a second node", err, codes.FailedPrecondition, "node node-b")
	if rec, err := e.cephCSI().Lookup(ctx, journal.Volume, ccVolUUID); err != nil || rec.Backing != image {
		t.Errorf("ceph-csi's entry after the calls: %+v, %v", rec, err)
	}
}

// TestCephCSIValidate: the volume context a ceph-csi PV carries (every
// class parameter, journalPool, imageName, radosNamespace) is confirmed
// when it describes the image, and the class too.
func TestCephCSIValidate(t *testing.T) {
	e := newEnv(t)
	e.ccVolume(t, "pvc-a", ccVolUUID, gib)
	vctx := map[string]string{"clusterID": testClusterID, "pool": testPool, "imageName": "csi-vol-" + ccVolUUID,
		"journalPool": testPool, "imageFeatures": "layering", "imageFormat": "2", "mounter": "rbd",
		"mapOptions": "krbd:lock_on_read", "unmapOptions": "force", "mkfsOptions": "-m0", "volumeNamePrefix": "csi-vol-",
		"encrypted": "false"}
	class := map[string]string{"clusterID": testClusterID, "pool": testPool, "imageFeatures": "layering",
		"journalPool": "elsewhere", "csi.storage.k8s.io/fstype": "ext4"}
	tests := []struct {
		name          string
		ctx, params   map[string]string
		wantConfirmed bool
		wantMessage   string
	}{
		{"ceph-csi's context and class", vctx, class, true, ""},
		{"another image", withKey(vctx, "imageName", "csi-vol-x"), nil, false, `"imageName"`},
		{"other features", withKey(vctx, "imageFeatures", "layering,exclusive-lock"), nil, false, `"imageFeatures"`},
		{"another prefix", withKey(vctx, "volumeNamePrefix", "k8s-"), nil, false, `"volumeNamePrefix"`},
		{"a parameter Pelagic refuses", withKey(vctx, "encrypted", "true"), nil, false, `"encrypted"`},
		{"a class with a data pool", nil, withKey(class, "dataPool", "ec"), false, `"dataPool"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := e.c.ValidateVolumeCapabilities(context.Background(), &csi.ValidateVolumeCapabilitiesRequest{
				VolumeId: ccID(ccVolUUID), VolumeCapabilities: []*csi.VolumeCapability{mountCap(rwo)},
				VolumeContext: tt.ctx, Parameters: tt.params, Secrets: maps.Clone(testSecrets)})
			if err != nil {
				t.Fatal(err)
			}
			if (resp.GetConfirmed() != nil) != tt.wantConfirmed || !strings.Contains(resp.GetMessage(), tt.wantMessage) {
				t.Fatalf("confirmed %v, message %q; want confirmed %v and %q", resp.GetConfirmed() != nil, resp.GetMessage(),
					tt.wantConfirmed, tt.wantMessage)
			}
		})
	}
}

func withKey(m map[string]string, k, v string) map[string]string {
	out := maps.Clone(m)
	out[k] = v
	return out
}

// TestCephCSISnapshots: ceph-csi's snapshot answers a repeated
// CreateSnapshot, restores, lists and deletes with its image; a Pelagic
// snapshot of a ceph-csi volume goes to Pelagic's journal.
func TestCephCSISnapshots(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	vol := e.ccVolume(t, "pvc-a", ccVolUUID, gib)
	snapImage := e.ccSnapshot(t, "snapshot-a", ccSnapUUID, vol)
	volID, snapID := ccID(ccVolUUID), ccID(ccSnapUUID)

	s := e.snapshot(t, "snapshot-a", volID)
	if s.GetSnapshotId() != snapID || s.GetSourceVolumeId() != volID || s.GetSizeBytes() != gib || !s.GetReadyToUse() {
		t.Fatalf("repeated CreateSnapshot of ceph-csi's: %v", s)
	}
	if s.GetCreationTime().AsTime() != e.pool.Image(snapImage).created.UTC() {
		t.Errorf("creation time %v, not its image's", s.GetCreationTime().AsTime())
	}
	other := e.ccVolume(t, "pvc-b", ccCloneUUID, gib)
	_, err := e.c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snapshot-a", SourceVolumeId: ccID(ccCloneUUID),
		Secrets: maps.Clone(testSecrets)})
	wantStatus(t, "the same name of another volume", err, codes.AlreadyExists, volID)
	_ = other

	own := e.snapshot(t, "snapshot-pelagic", volID)
	if recs := e.records(t, journal.Snapshot); len(recs) != 1 || recs[0].Backing != vol {
		t.Fatalf("Pelagic's snapshot of a ceph-csi volume: %v", recs)
	}

	list, err := e.c.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SourceVolumeId: volID})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, en := range list.GetEntries() {
		ids = append(ids, en.GetSnapshot().GetSnapshotId())
		if en.GetSnapshot().GetSizeBytes() != gib {
			t.Errorf("listed %v without its size", en.GetSnapshot())
		}
	}
	if !slices.Contains(ids, snapID) || !slices.Contains(ids, own.GetSnapshotId()) || len(ids) != 2 {
		t.Errorf("ListSnapshots of the ceph-csi volume: %v", ids)
	}

	restored := e.create(t, withSource(createReq("pvc-restore", gib), fromSnapshot(snapID)))
	rImage := restored.GetVolumeContext()[CtxImageName]
	if p := e.pool.Image(rImage).parent; p == nil || p.Image != snapImage || p.Snap != snapImage {
		t.Fatalf("restore's parent: %+v", p)
	}

	if _, err := e.c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snapID, Secrets: maps.Clone(testSecrets)}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cephCSI().Lookup(ctx, journal.Snapshot, ccSnapUUID); !errors.Is(err, journal.ErrNotFound) {
		t.Errorf("ceph-csi's snapshot entry after DeleteSnapshot: %v", err)
	}
	if slices.Contains(e.pool.ImageNames(), snapImage) || !slices.Contains(e.pool.TrashNames(), snapImage) {
		t.Errorf("the snapshot image, still needed by the restore, must be in the trash: images %v, trash %v",
			e.pool.ImageNames(), e.pool.TrashNames())
	}
	if _, err := e.c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: restored.GetVolumeId(), Secrets: maps.Clone(testSecrets)}); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(e.pool.TrashNames(), snapImage) {
		t.Errorf("the snapshot image outlived the last restore: trash %v", e.pool.TrashNames())
	}
}

func withSource(req *csi.CreateVolumeRequest, src *csi.VolumeContentSource) *csi.CreateVolumeRequest {
	req.VolumeContentSource = src
	return req
}

// TestCephCSIDeleteClone: deleting a ceph-csi clone deletes its -temp
// image and its entry; its source stays.
func TestCephCSIDeleteClone(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	vol := e.ccVolume(t, "pvc-a", ccVolUUID, gib)
	clone := e.ccCloneVolume(t, "pvc-c", ccCloneUUID, vol)

	// A Pelagic clone of the ceph-csi clone, restored and deleted, is a
	// Pelagic volume all along.
	pc := e.create(t, withSource(createReq("pvc-pelagic-clone", gib), fromVolume(ccID(ccCloneUUID))))
	if recs := e.records(t, journal.Volume); len(recs) != 1 || recs[0].UUID != pc.GetVolumeId()[len(pc.GetVolumeId())-36:] {
		t.Fatalf("Pelagic's journal: %v", recs)
	}
	for _, id := range []string{pc.GetVolumeId(), ccID(ccCloneUUID)} {
		if _, err := e.c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: maps.Clone(testSecrets)}); err != nil {
			t.Fatalf("DeleteVolume %s: %v", id, err)
		}
	}
	if got := e.pool.ImageNames(); !slices.Equal(got, []string{vol}) {
		t.Errorf("images left: %v, want only the source %s", got, vol)
	}
	if trash := e.pool.TrashNames(); len(trash) > 0 {
		t.Errorf("trash left: %v", trash)
	}
	for _, kind := range []journal.Kind{journal.Volume} {
		recs, _ := e.cephCSI().List(ctx, kind, "", 0)
		if len(recs) != 1 || recs[0].Backing != vol {
			t.Errorf("ceph-csi's entries left: %v (of %s)", recs, clone)
		}
	}
}

// TestDeleteVolumeNoJournal: a well-formed ID that no journal knows is
// deleted (OK) only once no image named after its UUID is left.
func TestDeleteVolumeNoJournal(t *testing.T) {
	const uuid = "44444444-4444-4444-8444-444444444444"
	tests := []struct {
		name     string
		seed     func(t *testing.T, e *env)
		wantCode codes.Code
		wantText string
	}{
		{"nothing at all", func(*testing.T, *env) {}, codes.OK, ""},
		{"an image under ceph-csi's prefix", func(_ *testing.T, e *env) { e.pool.AddImage("csi-vol-"+uuid, gib, nil) },
			codes.FailedPrecondition, "csi-vol-" + uuid},
		{"an image under another prefix", func(_ *testing.T, e *env) { e.pool.AddImage("k8s-"+uuid, gib, nil) },
			codes.FailedPrecondition, "k8s-" + uuid},
		{"an entry ceph-csi left without its image", func(t *testing.T, e *env) {
			e.ccEntry(t, &journal.Record{Kind: journal.Volume, Name: "pvc-half", UUID: uuid})
		}, codes.OK, ""},
		{"the ID of a ceph-csi snapshot", func(t *testing.T, e *env) {
			vol := e.ccVolume(t, "pvc-a", ccVolUUID, gib)
			e.ccSnapshot(t, "snapshot-x", uuid, vol)
		}, codes.OK, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			tt.seed(t, e)
			before := e.pool.ImageNames()
			_, err := e.c.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: ccID(uuid), Secrets: maps.Clone(testSecrets)})
			wantStatus(t, "DeleteVolume", err, tt.wantCode, tt.wantText)
			if got := e.pool.ImageNames(); !slices.Equal(got, before) {
				t.Errorf("images %v became %v", before, got)
			}
			if _, err := e.cephCSI().Lookup(context.Background(), journal.Volume, uuid); !errors.Is(err, journal.ErrNotFound) {
				t.Errorf("a ceph-csi volume entry of the ID is left: %v", err)
			}
		})
	}
}

// TestCephCSIHalfReservation: a name ceph-csi reserved without making its
// image is taken back, and the request makes a Pelagic volume.
func TestCephCSIHalfReservation(t *testing.T) {
	e := newEnv(t)
	e.ccEntry(t, &journal.Record{Kind: journal.Volume, Name: "pvc-a", UUID: ccVolUUID, Backing: "csi-vol-" + ccVolUUID})
	v := e.create(t, createReq("pvc-a", gib))
	if v.GetVolumeId() == ccID(ccVolUUID) {
		t.Fatal("CreateVolume answered the half-made ceph-csi volume")
	}
	if _, err := e.cephCSI().LookupName(context.Background(), journal.Volume, "pvc-a"); !errors.Is(err, journal.ErrNotFound) {
		t.Errorf("ceph-csi's reservation stays: %v", err)
	}
	if recs := e.records(t, journal.Volume); len(recs) != 1 || recs[0].Name != "pvc-a" {
		t.Errorf("Pelagic's journal: %v", recs)
	}
}

// TestListVolumesBothJournals: ListVolumes shows ceph-csi's volumes, with
// their sizes, beside Pelagic's.
func TestListVolumesBothJournals(t *testing.T) {
	e := newEnv(t)
	e.ccVolume(t, "pvc-a", ccVolUUID, 2*gib)
	own := e.create(t, createReq("pvc-own", gib))
	resp, err := e.c.ListVolumes(context.Background(), &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, en := range resp.GetEntries() {
		got[en.GetVolume().GetVolumeId()] = en.GetVolume().GetCapacityBytes()
	}
	want := map[string]int64{ccID(ccVolUUID): 2 * gib, own.GetVolumeId(): gib}
	if !maps.Equal(got, want) {
		t.Errorf("ListVolumes: %v, want %v", got, want)
	}
}

// TestPelagicctlSeesCephCSIVolumes: what pelagicctl reads tells ceph-csi's
// volumes from Pelagic's, and who they are for.
func TestPelagicctlSeesCephCSIVolumes(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	image := e.ccVolume(t, "pvc-a", ccVolUUID, gib)
	own := e.create(t, createReq("pvc-own", gib))
	from := map[string]bool{}
	for _, j := range Journals(e.pool, journal.DefaultCephCSIInstance) {
		if err := journal.ForEach(ctx, j, journal.Volume, 10, func(r *journal.Record) { from[r.UUID] = r.FromCephCSI() }); err != nil {
			t.Fatal(err)
		}
	}
	if want := map[string]bool{ccVolUUID: true, own.GetVolumeId()[len(own.GetVolumeId())-36:]: false}; !maps.Equal(from, want) {
		t.Errorf("volumes %v, want %v", from, want)
	}
	rec, err := LookupVolume(ctx, e.pool, journal.DefaultCephCSIInstance, ccVolUUID)
	if err != nil || rec.Backing != image || !rec.FromCephCSI() || rec.Owner != "shop" {
		t.Errorf("LookupVolume: %+v, %v", rec, err)
	}
	if err := e.pool.SetMetadata(ctx, image, map[string]string{ParamPVCName: "data-db-0", ParamPVCNamespace: "shop",
		ParamPVName: "pv-1"}); err != nil {
		t.Fatal(err)
	}
	if o, err := ReadOwner(ctx, e.pool, image); err != nil || o == nil || o.PVC != "data-db-0" || o.Namespace != "shop" || o.PV != "pv-1" {
		t.Errorf("owner of a volume ceph-csi recorded with --setmetadata: %+v, %v", o, err)
	}
}
