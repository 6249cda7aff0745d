package e2e

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	libcephfs "github.com/ceph/go-ceph/cephfs"
	"github.com/ceph/go-ceph/cephfs/admin"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/e2e/cephcsi"
	"github.com/pelagic-csi/pelagic/e2e/cephtest"
	"github.com/pelagic-csi/pelagic/pkg/driver"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

// swapFS is what ceph-csi's CephFS controller provisioned before it was replaced by Pelagic's,
// serving the same config under the same driver name.
type swapFS struct {
	e *cephcsiFS
	swapCtrl
	root  *libcephfs.MountInfo // the filesystem's root, the admin's, to write and read subvolumes' files
	names map[string]string    // request names by key
	srcs  map[string]*csi.VolumeContentSource

	vol, restore, clone, keep *csi.Volume   // by ceph-csi
	snap, keepSnap            *csi.Snapshot // by ceph-csi: of vol and of keep
	before                    map[string]map[string]string

	ownSnap                      *csi.Snapshot // by Pelagic, of vol
	ownRestore, ownClone, ownNew *csi.Volume   // by Pelagic: from ceph-csi's snapshot and volume, and new
	ownHalf                      *csi.Volume   // by Pelagic, over a name ceph-csi reserved without its entry
}

// TestCephCSISwapCephFS provisions with the real ceph-csi CephFS controller (a volume, a snapshot,
// a restore, a clone, and a volume with a snapshot that nobody deletes), stops it, starts Pelagic's
// with the same config and driver name, runs every controller call on them, and checks the
// subvolume group's subvolumes and snapshots and both journals: nothing left that should be gone,
// nothing gone that should be left.
func TestCephCSISwapCephFS(t *testing.T) {
	e := newCephCSIFS(t)
	ctx := testContext(t, 10*time.Minute)
	s := &swapFS{e: e, names: map[string]string{}, srcs: map[string]*csi.VolumeContentSource{}}
	s.provision(ctx, t)
	if err := e.d.Stop(); err != nil {
		t.Fatal(err)
	}
	s.swapCtrl = swapCtrl{secrets: e.secrets}
	s.ctrl = startPelagicController(t, []cephcsi.Cluster{e.cluster}, driver.Options{Type: "cephfs", DriverName: "cephfs.csi.ceph.com"})

	s.checkFound(ctx, t)
	s.checkSnapshots(ctx, t)
	s.checkExpand(ctx, t)
	s.checkNode(t)
	s.checkCopies(ctx, t)
	s.checkDeletions(ctx, t)
	s.checkUnknownIDs(ctx, t)
	s.checkLeft(t)
	s.deleteTheRest(ctx, t)
}

// provision makes, with ceph-csi, every kind of volume and snapshot it provisions on CephFS.
func (s *swapFS) provision(ctx context.Context, t *testing.T) {
	e := s.e
	create := func(key string, src *csi.VolumeContentSource) *csi.Volume {
		s.names[key], s.srcs[key] = e.volumeName("pvc-swap-fs-"+key), src
		resp, _ := retryAborted(ctx, t, "CreateVolume "+key+" with ceph-csi", func() (*csi.CreateVolumeResponse, error) {
			return e.d.Controller.CreateVolume(ctx, s.request(key))
		})
		return resp.GetVolume()
	}
	snapshot := func(key string, v *csi.Volume) *csi.Snapshot {
		s.names[key] = e.snapName("snapshot-swap-fs-" + key)
		resp, err := e.d.Controller.CreateSnapshot(ctx, s.snapRequest(key, v))
		if err != nil {
			t.Fatalf("CreateSnapshot %s with ceph-csi: %v", key, err)
		}
		return resp.GetSnapshot()
	}
	s.root = cephtest.MountFSRoot(t, adminConn(t, cephtest.Get(t)), e.fs)
	s.vol = create("vol", nil)
	s.write(t, s.vol, "before the snapshot")
	s.snap = snapshot("snap", s.vol)
	s.write(t, s.vol, "after the snapshot!")
	s.restore = create("restore", snapshotSource(s.snap.GetSnapshotId()))
	s.clone = create("clone", volumeSource(s.vol.GetVolumeId()))
	s.keep = create("keep", nil)
	s.keepSnap = snapshot("keepSnap", s.keep)

	// What nobody deletes: ceph-csi's entries of the kept volume and its snapshot.
	s.before = map[string]map[string]string{}
	for _, oid := range s.keptObjects() {
		s.before[oid] = omapOf(t, e.journal, oid)
	}
}

func (s *swapFS) keptObjects() []string {
	return []string{"csi.volume." + uuidOf(s.keep.GetVolumeId()), "csi.snap." + uuidOf(s.keepSnap.GetSnapshotId())}
}

// request is the CreateVolume of the volume key, as the provisioner sends it, again and again.
func (s *swapFS) request(key string) *csi.CreateVolumeRequest {
	return s.e.createRequest(s.names[key], map[string]string{"mounter": "fuse",
		pvcNameKey: "data-" + key, pvcNamespaceKey: "shop", pvNameKey: "pv-" + key}, s.srcs[key])
}

func (s *swapFS) snapRequest(key string, v *csi.Volume) *csi.CreateSnapshotRequest {
	return &csi.CreateSnapshotRequest{Name: s.names[key], SourceVolumeId: v.GetVolumeId(), Secrets: s.e.secrets,
		Parameters: map[string]string{"clusterID": cephcsiFSClusterID, "fsName": s.e.fs}}
}

func subvolumeOf(v *csi.Volume) string { return v.GetVolumeContext()["subvolumeName"] }

// checkFound: CreateVolume with ceph-csi's names returns its volumes; they are found by ID,
// validated with the volume context their PVs carry, and listed with their snapshots.
func (s *swapFS) checkFound(ctx context.Context, t *testing.T) {
	e := s.e
	before := slices.Sorted(slices.Values(e.subvolumes(t)))
	for key, v := range map[string]*csi.Volume{"vol": s.vol, "restore": s.restore, "clone": s.clone, "keep": s.keep} {
		resp, err := s.ctrl.CreateVolume(ctx, s.request(key))
		if err != nil {
			t.Fatalf("CreateVolume %s again, through Pelagic: %v", s.names[key], err)
		}
		got := resp.GetVolume()
		if got.GetVolumeId() != v.GetVolumeId() || got.GetCapacityBytes() != gib || subvolumeOf(got) != subvolumeOf(v) ||
			got.GetVolumeContext()["mounter"] != "fuse" {
			t.Errorf("CreateVolume %s: %v; ceph-csi made %v", s.names[key], got, v)
		}
		gv, err := s.ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: v.GetVolumeId()})
		if err != nil || gv.GetVolume().GetCapacityBytes() != gib {
			t.Errorf("ControllerGetVolume %s: %v, %v", key, gv, err)
		}
		vr, err := s.ctrl.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: v.GetVolumeId(),
			VolumeContext: v.GetVolumeContext(), Parameters: s.request(key).GetParameters(), Secrets: e.secrets,
			VolumeCapabilities: []*csi.VolumeCapability{mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)}})
		if err != nil || vr.GetConfirmed() == nil {
			t.Errorf("ValidateVolumeCapabilities %s with its PV's context %v: %v, %v", key, v.GetVolumeContext(), vr.GetMessage(), err)
		}
	}
	if got := slices.Sorted(slices.Values(e.subvolumes(t))); !slices.Equal(got, before) {
		t.Errorf("subvolumes %v after CreateVolume of ceph-csi's names, were %v", got, before)
	}
	vols, err := s.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, entry := range vols.GetEntries() {
		ids = append(ids, entry.GetVolume().GetVolumeId())
	}
	for _, v := range []*csi.Volume{s.vol, s.restore, s.clone, s.keep} {
		if !slices.Contains(ids, v.GetVolumeId()) {
			t.Errorf("ListVolumes lacks ceph-csi's %s", v.GetVolumeId())
		}
	}
	snaps, err := s.ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SourceVolumeId: s.vol.GetVolumeId()})
	if err != nil || len(snaps.GetEntries()) != 1 || snaps.GetEntries()[0].GetSnapshot().GetSnapshotId() != s.snap.GetSnapshotId() {
		t.Errorf("ListSnapshots of %s: %v, %v; want ceph-csi's %s", s.vol.GetVolumeId(), snaps, err, s.snap.GetSnapshotId())
	}
}

// checkSnapshots: CreateSnapshot with ceph-csi's name returns its snapshot as ceph-csi answered
// it; a new one goes to Pelagic's journal, leaving ceph-csi's directory as it was.
func (s *swapFS) checkSnapshots(ctx context.Context, t *testing.T) {
	e := s.e
	resp, err := s.ctrl.CreateSnapshot(ctx, s.snapRequest("snap", s.vol))
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetSnapshot(); got.GetSnapshotId() != s.snap.GetSnapshotId() || got.GetSourceVolumeId() != s.vol.GetVolumeId() ||
		!got.GetCreationTime().AsTime().Equal(s.snap.GetCreationTime().AsTime()) || got.GetSizeBytes() != s.snap.GetSizeBytes() ||
		!got.GetReadyToUse() {
		t.Errorf("CreateSnapshot with ceph-csi's name: %v; ceph-csi answered %v", got, s.snap)
	}
	dir := omapOf(t, e.journal, "csi.snaps.default")
	s.names["ownSnap"] = e.snapName("snapshot-swap-fs-pelagic")
	resp, err = s.ctrl.CreateSnapshot(ctx, s.snapRequest("ownSnap", s.vol))
	if err != nil {
		t.Fatal(err)
	}
	s.ownSnap = resp.GetSnapshot()
	if got := objectsWithPrefix(t, e.journal, "pelagic.cephfs.snapshot.name."+s.names["ownSnap"]); len(got) != 1 {
		t.Errorf("Pelagic's snapshot is not in Pelagic's journal: %v", got)
	}
	if got := omapOf(t, e.journal, "csi.snaps.default"); !maps.Equal(got, dir) {
		t.Errorf("ceph-csi's snapshot directory changed: %v, was %v", got, dir)
	}
	want := []string{"csi-snap-" + uuidOf(s.ownSnap.GetSnapshotId()), "csi-snap-" + uuidOf(s.snap.GetSnapshotId())}
	slices.Sort(want)
	if got := slices.Sorted(slices.Values(e.snapshots(t, subvolumeOf(s.vol)))); !slices.Equal(got, want) {
		t.Errorf("snapshots of %s: %v, want %v", subvolumeOf(s.vol), got, want)
	}
}

// checkExpand: ControllerExpandVolume raises the quota of ceph-csi's subvolume.
func (s *swapFS) checkExpand(ctx context.Context, t *testing.T) {
	resp, err := s.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: s.vol.GetVolumeId(),
		CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * gib}, Secrets: s.e.secrets})
	if err != nil || resp.GetCapacityBytes() != 2*gib || resp.GetNodeExpansionRequired() {
		t.Fatalf("ControllerExpandVolume: %v, %v", resp, err)
	}
	if info, err := s.e.fsa.SubVolumeInfo(s.e.fs, s.e.group, subvolumeOf(s.vol)); err != nil || info.BytesQuota != admin.ByteCount(2*gib) {
		t.Errorf("subvolume after expansion: %+v, %v", info, err)
	}
}

// checkNode: Pelagic's node plugin stages and publishes ceph-csi's volume with the volume context
// its PV carries (ceph-fuse, as the context's mounter says), and finds ceph-csi's data there.
func (s *swapFS) checkNode(t *testing.T) {
	_, d := startDriver(t, driver.Options{Type: "cephfs", DriverName: "cephfs.csi.ceph.com", Node: true, NodeID: "node-a",
		StateDir: shortTempDir(t), Config: cephcsiConfig(t, []cephcsi.Cluster{s.e.cluster})})
	m := mountVolume(t, d.Services.Node, s.vol, mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER), shortTempDir(t), s.e.secrets)
	if got := readEventually(t, m.file("data")); string(got) != "after the snapshot!" {
		t.Errorf("ceph-csi's volume staged by Pelagic reads %q", got)
	}
	if err := os.WriteFile(m.file("node"), []byte("written through Pelagic's node"), 0o644); err != nil {
		t.Fatal(err)
	}
	m.close(t) // before the volume is deleted: a mounted client holds its caps
}

// checkCopies: Pelagic restores ceph-csi's snapshot and clones its volume; new volumes are Pelagic's.
func (s *swapFS) checkCopies(ctx context.Context, t *testing.T) {
	e := s.e
	dir := omapOf(t, e.journal, "csi.volumes.default")
	create := func(key string, src *csi.VolumeContentSource) *csi.Volume {
		s.names[key], s.srcs[key] = e.volumeName("pvc-swap-fs-"+key), src
		resp, _ := retryAborted(ctx, t, "CreateVolume "+key+" through Pelagic", func() (*csi.CreateVolumeResponse, error) {
			return s.ctrl.CreateVolume(ctx, s.request(key))
		})
		v := resp.GetVolume()
		if got := objectsWithPrefix(t, e.journal, "pelagic.cephfs.volume.name."+s.names[key]); len(got) != 1 {
			t.Errorf("%s is not in Pelagic's journal: %v", key, got)
		}
		info, err := e.fsa.SubVolumeInfo(e.fs, e.group, subvolumeOf(v))
		if quota, ok := info.BytesQuota.(admin.ByteCount); err != nil || info.State != admin.StateComplete || !ok || quota < admin.ByteCount(gib) {
			t.Errorf("subvolume of %s: %+v, %v", key, info, err)
		}
		return v
	}
	s.ownRestore = create("ownRestore", snapshotSource(s.snap.GetSnapshotId()))
	s.ownClone = create("ownClone", volumeSource(s.vol.GetVolumeId()))
	s.ownNew = create("ownNew", nil)
	for v, want := range map[*csi.Volume]string{s.restore: "before the snapshot", s.clone: "after the snapshot!",
		s.ownRestore: "before the snapshot", s.ownClone: "after the snapshot!"} {
		if got := s.read(t, v); got != want {
			t.Errorf("%s reads %q, want %q", subvolumeOf(v), got, want)
		}
	}
	if got := omapOf(t, e.journal, "csi.volumes.default"); !maps.Equal(got, dir) {
		t.Errorf("ceph-csi's volume directory changed: %v, was %v", got, dir)
	}
	if got := e.snapshots(t, subvolumeOf(s.vol)); len(got) != 2 {
		t.Errorf("the clone left snapshots on its source: %v", got)
	}

	// A name ceph-csi reserved (its directory key) without its entry or subvolume, as a crash leaves it.
	s.names["ownHalf"] = e.volumeName("pvc-swap-fs-half")
	const halfUUID = "55555555-5555-4555-8555-555555555555"
	setOmap(t, e.journal, "csi.volumes.default", map[string]string{"csi.volume." + s.names["ownHalf"]: halfUUID})
	s.ownHalf = create("ownHalf", nil)
	if uuidOf(s.ownHalf.GetVolumeId()) == halfUUID {
		t.Error("CreateVolume answered a reservation ceph-csi left without its volume")
	}
	if _, ok := omapOf(t, e.journal, "csi.volumes.default")["csi.volume."+s.names["ownHalf"]]; ok {
		t.Error("the half reservation is still in ceph-csi's directory")
	}
}

// checkDeletions deletes ceph-csi's snapshot, its clone, its volume under Pelagic's snapshot (the
// subvolume stays, snapshot-retained, until that snapshot goes) and its restore.
func (s *swapFS) checkDeletions(ctx context.Context, t *testing.T) {
	e := s.e
	s.deleteSnapshot(ctx, t, s.snap)
	s.wantGone(t, "snap", s.snap.GetSnapshotId())
	if got := e.snapshots(t, subvolumeOf(s.vol)); slices.Contains(got, "csi-snap-"+uuidOf(s.snap.GetSnapshotId())) {
		t.Errorf("ceph-csi's subvolume snapshot survives DeleteSnapshot: %v", got)
	}
	s.deleteVolume(ctx, t, s.clone)
	s.wantGone(t, "volume", s.clone.GetVolumeId(), subvolumeOf(s.clone))

	s.deleteVolume(ctx, t, s.vol)
	s.wantGone(t, "volume", s.vol.GetVolumeId())
	if info, err := e.fsa.SubVolumeInfo(e.fs, e.group, subvolumeOf(s.vol)); err != nil || info.State != admin.StateSnapRetained {
		t.Errorf("deleted subvolume with Pelagic's snapshot: %+v, %v; want snapshot-retained", info, err)
	}
	s.deleteVolume(ctx, t, s.vol) // a retry
	s.deleteSnapshot(ctx, t, s.ownSnap)
	s.wantGone(t, "volume", s.vol.GetVolumeId())
	// The mgr removes a snapshot-retained subvolume with its last snapshot; a client that had it
	// mounted (the node check's ceph-fuse) may hold it a little longer.
	start := time.Now()
	eventually(t, time.Minute, "the subvolume gone with its last snapshot", func() error {
		if info, err := e.fsa.SubVolumeInfo(e.fs, e.group, subvolumeOf(s.vol)); err == nil {
			return fmt.Errorf("%s is left: %+v", subvolumeOf(s.vol), info)
		}
		return nil
	})
	if d := time.Since(start); d > time.Second {
		t.Logf("the subvolume went %v after its last snapshot", d.Round(time.Millisecond))
	}

	s.deleteVolume(ctx, t, s.restore)
	s.wantGone(t, "volume", s.restore.GetVolumeId(), subvolumeOf(s.restore))
	s.deleteVolume(ctx, t, s.ownRestore)
	s.deleteVolume(ctx, t, s.ownClone)
}

// checkUnknownIDs: an ID no journal knows is deleted only when no subvolume of its UUID is left.
func (s *swapFS) checkUnknownIDs(ctx context.Context, t *testing.T) {
	e := s.e
	gone := volumeid.ID{ClusterID: cephcsiFSClusterID, PoolID: e.fscid, UUID: "66666666-6666-4666-8666-666666666666"}
	if _, err := s.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: gone.String(), Secrets: e.secrets}); err != nil {
		t.Errorf("DeleteVolume of an ID nothing is left of: %v", err)
	}
	orphan := volumeid.ID{ClusterID: cephcsiFSClusterID, PoolID: e.fscid, UUID: "77777777-7777-4777-8777-777777777777"}
	sub := "csi-vol-" + orphan.UUID
	if err := e.fsa.CreateSubVolume(e.fs, e.group, sub, nil); err != nil {
		t.Fatal(err)
	}
	_, err := s.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: orphan.String(), Secrets: e.secrets})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), sub) {
		t.Errorf("DeleteVolume of an ID whose subvolume no journal records: %v", err)
	}
	if !slices.Contains(e.subvolumes(t), sub) {
		t.Fatalf("%s was deleted", sub)
	}
	if err := e.fsa.RemoveSubVolume(e.fs, e.group, sub); err != nil {
		t.Fatal(err)
	}

	// An entry ceph-csi left without its subvolume's name, as a deletion it never finished leaves it.
	half := volumeid.ID{ClusterID: cephcsiFSClusterID, PoolID: e.fscid, UUID: "88888888-8888-4888-8888-888888888888"}
	setOmap(t, e.journal, "csi.volume."+half.UUID, map[string]string{"csi.volname": e.volumeName("pvc-swap-fs-dangling")})
	if _, err := s.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: half.String(), Secrets: e.secrets}); err != nil {
		t.Errorf("DeleteVolume of an ID whose entry ceph-csi left incomplete: %v", err)
	}
	wantEntryGone(t, e.journal, "volume", half.String())
}

// checkLeft: exactly what nobody deleted is left, ceph-csi's entries unchanged.
func (s *swapFS) checkLeft(t *testing.T) {
	e := s.e
	want := []string{subvolumeOf(s.keep), subvolumeOf(s.ownNew), subvolumeOf(s.ownHalf)}
	slices.Sort(want)
	if got := slices.Sorted(slices.Values(e.subvolumes(t))); !slices.Equal(got, want) {
		t.Errorf("subvolumes %v, want %v", got, want)
	}
	if got := e.snapshots(t, subvolumeOf(s.keep)); !slices.Equal(got, []string{"csi-snap-" + uuidOf(s.keepSnap.GetSnapshotId())}) {
		t.Errorf("snapshots of the kept volume: %v", got)
	}
	for key, kind := range map[string]string{"vol": "volume", "restore": "volume", "clone": "volume", "snap": "snap"} {
		if uuid, _ := journalEntry(t, e.journal, kind, s.names[key]); uuid != "" {
			t.Errorf("ceph-csi's directory key of %s is left", key)
		}
	}
	for key, kind := range map[string]string{"keep": "volume", "keepSnap": "snap"} {
		if uuid, _ := journalEntry(t, e.journal, kind, s.names[key]); uuid == "" {
			t.Errorf("ceph-csi's directory key of %s is gone", key)
		}
	}
	for _, oid := range s.keptObjects() {
		wantMap(t, oid+" after the swap", omapOf(t, e.journal, oid), s.before[oid])
	}
}

// deleteTheRest deletes what is left through Pelagic: the group then holds no subvolume, and no
// journal holds an entry of this test's.
func (s *swapFS) deleteTheRest(ctx context.Context, t *testing.T) {
	e := s.e
	s.deleteSnapshot(ctx, t, s.keepSnap)
	s.deleteVolume(ctx, t, s.keep)
	s.deleteVolume(ctx, t, s.ownNew)
	s.deleteVolume(ctx, t, s.ownHalf)
	if got := e.subvolumes(t); len(got) > 0 {
		t.Errorf("subvolumes left: %v", got)
	}
	for key, v := range map[string]*csi.Volume{"keep": s.keep, "ownNew": s.ownNew, "ownHalf": s.ownHalf} {
		s.wantGone(t, "volume", v.GetVolumeId())
		if got := objectsWithPrefix(t, e.journal, "pelagic.cephfs.volume.name."+s.names[key]); len(got) > 0 {
			t.Errorf("Pelagic's journal keeps %v", got)
		}
	}
	s.wantGone(t, "snap", s.keepSnap.GetSnapshotId())
	if got := objectsWithPrefix(t, e.journal, "pelagic.cephfs.snapshot.name."+s.names["ownSnap"]); len(got) > 0 {
		t.Errorf("Pelagic's journal keeps %v", got)
	}
}

// wantGone fails unless ceph-csi's entry of the ID (kind "volume" or "snap") is gone, directory
// key and object, and the subvolumes are gone from the group.
func (s *swapFS) wantGone(t *testing.T, kind, id string, subvolumes ...string) {
	t.Helper()
	wantEntryGone(t, s.e.journal, kind, id)
	for _, sub := range subvolumes {
		if slices.Contains(s.e.subvolumes(t), sub) {
			t.Errorf("subvolume %s is left", sub)
		}
	}
}

// dataFile is the file the test writes in a volume's subvolume.
func (s *swapFS) dataFile(t *testing.T, v *csi.Volume) string {
	t.Helper()
	dir, err := s.e.fsa.SubVolumePath(s.e.fs, s.e.group, subvolumeOf(v))
	if err != nil {
		t.Fatal(err)
	}
	return path.Join(dir, "data")
}

func (s *swapFS) write(t *testing.T, v *csi.Volume, data string) {
	t.Helper()
	f, err := s.root.Open(s.dataFile(t, v), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte(data)); err != nil {
		t.Fatal(err)
	}
	if err := f.Fsync(libcephfs.SyncAll); err != nil {
		t.Fatal(err)
	}
}

func (s *swapFS) read(t *testing.T, v *csi.Volume) string {
	t.Helper()
	f, err := s.root.Open(s.dataFile(t, v), os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
