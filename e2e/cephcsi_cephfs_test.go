package e2e

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/ceph/go-ceph/cephfs/admin"
	"github.com/ceph/go-ceph/rados"
	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/pelagic-csi/pelagic/e2e/cephcsi"
	"github.com/pelagic-csi/pelagic/e2e/cephtest"
)

const cephcsiFSClusterID = "e2e-cephcsi-fs"

// cephcsiFS is ceph-csi's CephFS controller on a subvolume group of the test's own.
type cephcsiFS struct {
	d       *cephcsi.Driver
	cluster cephcsi.Cluster // its config.json entry
	fsa     *admin.FSAdmin
	fs      string
	group   string
	fscid   int64
	journal *rados.IOContext // the metadata pool, namespace "csi"
	secrets map[string]string

	volumeNames, snapNames []string
}

func newCephCSIFS(t *testing.T) *cephcsiFS {
	c := cephtest.Get(t)
	e := &cephcsiFS{fs: c.FSName, group: uniqueName("cephcsi"), secrets: map[string]string{
		"adminID": c.FSUserID, "adminKey": c.FSUserKey, "userID": c.FSUserID, "userKey": c.FSUserKey}}
	entry := cephcsi.ClusterOf(c, cephcsiFSClusterID)
	entry.SubvolumeGroup = e.group
	e.cluster = entry
	e.d = cephcsi.Start(t, cephcsi.Options{Type: "cephfs", Clusters: []cephcsi.Cluster{entry}})
	conn := adminConn(t, c)
	e.fsa = admin.NewFromConn(conn)
	var metadataPool int64
	e.fscid, metadataPool = filesystemIDs(t, conn, e.fs)
	pool, err := conn.GetPoolByID(metadataPool)
	if err != nil {
		t.Fatal(err)
	}
	e.journal = openIOContext(t, conn, pool, "csi")
	if err := e.fsa.CreateSubVolumeGroup(e.fs, e.group, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.removeLeftovers(t) })
	return e
}

// filesystemIDs returns the FSCID and metadata pool ID of the named filesystem.
func filesystemIDs(t testing.TB, conn *rados.Conn, fs string) (fscid, metadataPool int64) {
	t.Helper()
	cmd, _ := json.Marshal(map[string]string{"prefix": "fs dump", "format": "json"})
	out, info, err := conn.MonCommand(cmd)
	if err != nil {
		t.Fatalf("fs dump: %v %s", err, info)
	}
	var dump struct {
		Filesystems []struct {
			ID     int64 `json:"id"`
			MDSMap struct {
				Name         string `json:"fs_name"`
				MetadataPool int64  `json:"metadata_pool"`
			} `json:"mdsmap"`
		} `json:"filesystems"`
	}
	if err := json.Unmarshal(out, &dump); err != nil {
		t.Fatal(err)
	}
	for _, f := range dump.Filesystems {
		if f.MDSMap.Name == fs {
			return f.ID, f.MDSMap.MetadataPool
		}
	}
	t.Fatalf("filesystem %s not in fs dump", fs)
	return 0, 0
}

// removeLeftovers removes what a failed test left: the group's subvolumes and snapshots, the group,
// and the journal entries of this test's request names (the journal's namespace is shared).
func (e *cephcsiFS) removeLeftovers(t testing.TB) {
	t.Helper()
	subs, _ := e.fsa.ListSubVolumes(e.fs, e.group)
	for _, sub := range subs {
		snaps, _ := e.fsa.ListSubVolumeSnapshots(e.fs, e.group, sub)
		for _, snap := range snaps {
			_ = e.fsa.ForceRemoveSubVolumeSnapshot(e.fs, e.group, sub, snap)
		}
		_ = e.fsa.ForceRemoveSubVolume(e.fs, e.group, sub)
	}
	if err := e.fsa.RemoveSubVolumeGroup(e.fs, e.group); err != nil {
		t.Errorf("removing subvolume group %s: %v", e.group, err)
	}
	for kind, names := range map[string][]string{"volume": e.volumeNames, "snap": e.snapNames} {
		for _, name := range names {
			uuid, _ := journalEntry(t, e.journal, kind, name)
			if uuid == "" {
				continue
			}
			_ = e.journal.Delete("csi." + kind + "." + uuid)
			_ = e.journal.RmOmapKeys("csi."+kind+"s.default", []string{"csi." + kind + "." + name})
		}
	}
}

// volumeName and snapName return a unique request name, remembered for removeLeftovers.
func (e *cephcsiFS) volumeName(prefix string) string {
	name := uniqueName(prefix)
	e.volumeNames = append(e.volumeNames, name)
	return name
}

func (e *cephcsiFS) snapName(prefix string) string {
	name := uniqueName(prefix)
	e.snapNames = append(e.snapNames, name)
	return name
}

func (e *cephcsiFS) createRequest(name string, params map[string]string, src *csi.VolumeContentSource) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{
		Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: gib},
		VolumeCapabilities:  []*csi.VolumeCapability{mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)},
		Parameters:          withParams(params, "clusterID", cephcsiFSClusterID, "fsName", e.fs),
		Secrets:             e.secrets,
		VolumeContentSource: src,
	}
}

func (e *cephcsiFS) subvolumes(t testing.TB) []string {
	t.Helper()
	names, err := e.fsa.ListSubVolumes(e.fs, e.group)
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func (e *cephcsiFS) snapshots(t testing.TB, subvolume string) []string {
	t.Helper()
	names, err := e.fsa.ListSubVolumeSnapshots(e.fs, e.group, subvolume)
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// TestCephCSIFormatCephFS provisions subvolumes, a snapshot, a restore and a clone with the real
// ceph-csi and checks its journal in the metadata pool, the names and what deletion leaves.
func TestCephCSIFormatCephFS(t *testing.T) {
	e := newCephCSIFS(t)
	ctx := testContext(t, 10*time.Minute)
	c := e.d.Controller

	fName := e.volumeName("pvc-fs")
	resp, err := c.CreateVolume(ctx, e.createRequest(fName, map[string]string{
		"mounter": "fuse", pvcNameKey: "shared", pvcNamespaceKey: "shop", pvNameKey: "pv-shared"}, nil))
	if err != nil {
		t.Fatal(err)
	}
	f := resp.GetVolume()
	fUUID, fEntry := journalEntry(t, e.journal, "volume", fName)
	parseID(t, f.GetVolumeId(), cephcsiFSClusterID, e.fscid)
	fSub := "csi-vol-" + fUUID
	wantMap(t, "journal entry of a subvolume", fEntry,
		map[string]string{"csi.volname": fName, "csi.imagename": fSub, "csi.volume.owner": "shop"})
	if info, err := e.fsa.SubVolumeInfo(e.fs, e.group, fSub); err != nil || info.BytesQuota != admin.ByteCount(gib) {
		t.Errorf("subvolume %s: %+v, %v; want a quota of 1 GiB", fSub, info, err)
	}
	path, err := e.fsa.SubVolumePath(e.fs, e.group, fSub)
	if err != nil {
		t.Fatal(err)
	}
	wantMap(t, "volume context of a subvolume", f.GetVolumeContext(), map[string]string{
		"clusterID": cephcsiFSClusterID, "fsName": e.fs, "mounter": "fuse", "subvolumeName": fSub, "subvolumePath": path})

	sName := e.snapName("snapshot-fs")
	sResp, err := c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: sName, SourceVolumeId: f.GetVolumeId(),
		Parameters: map[string]string{"clusterID": cephcsiFSClusterID, "fsName": e.fs}, Secrets: e.secrets})
	if err != nil {
		t.Fatal(err)
	}
	s := sResp.GetSnapshot()
	if !s.GetReadyToUse() {
		t.Error("a subvolume snapshot is not ready to use")
	}
	sUUID, sEntry := journalEntry(t, e.journal, "snap", sName)
	parseID(t, s.GetSnapshotId(), cephcsiFSClusterID, e.fscid)
	wantMap(t, "journal entry of a subvolume snapshot", sEntry, map[string]string{
		"csi.snapname": sName, "csi.imagename": "csi-snap-" + sUUID, "csi.source": fSub, "": "shop"})
	if !slices.Contains(e.snapshots(t, fSub), "csi-snap-"+sUUID) {
		t.Errorf("subvolume snapshots %v lack csi-snap-%s", e.snapshots(t, fSub), sUUID)
	}

	rName := e.volumeName("pvc-fs-restore")
	r, _ := retryAborted(ctx, t, "restore", func() (*csi.CreateVolumeResponse, error) {
		return c.CreateVolume(ctx, e.createRequest(rName, nil, snapshotSource(s.GetSnapshotId())))
	})
	rUUID, _ := journalEntry(t, e.journal, "volume", rName)
	if info, err := e.fsa.SubVolumeInfo(e.fs, e.group, "csi-vol-"+rUUID); err != nil || info.State != admin.StateComplete {
		t.Errorf("restored subvolume: %+v, %v", info, err)
	}

	// While a volume clone is pending, its temporary snapshot on the source is named after the clone.
	cName := e.volumeName("pvc-fs-clone")
	var tempSeen bool
	cl, aborted := retryAborted(ctx, t, "clone", func() (*csi.CreateVolumeResponse, error) {
		resp, err := c.CreateVolume(ctx, e.createRequest(cName, nil, volumeSource(f.GetVolumeId())))
		if cUUID, _ := journalEntry(t, e.journal, "volume", cName); err != nil && cUUID != "" {
			tempSeen = tempSeen || slices.Contains(e.snapshots(t, fSub), "csi-vol-"+cUUID)
		}
		return resp, err
	})
	t.Logf("the clone was pending for %d answers", aborted)
	if aborted > 0 && !tempSeen {
		t.Error("no temporary snapshot named after the clone while it was pending")
	}
	cUUID, _ := journalEntry(t, e.journal, "volume", cName)
	if got := e.snapshots(t, fSub); !slices.Equal(got, []string{"csi-snap-" + sUUID}) {
		t.Errorf("source snapshots after the clone: %v", got)
	}

	// A subvolume with a snapshot is removed with the snapshot retained.
	deleteVolume := func(id string) {
		if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: e.secrets}); err != nil {
			t.Fatalf("DeleteVolume %s: %v", id, err)
		}
	}
	deleteVolume(f.GetVolumeId())
	if info, err := e.fsa.SubVolumeInfo(e.fs, e.group, fSub); err != nil || info.State != admin.StateSnapRetained {
		t.Errorf("deleted subvolume with a snapshot: %+v, %v", info, err)
	}
	if uuid, _ := journalEntry(t, e.journal, "volume", fName); uuid != "" || omapOf(t, e.journal, "csi.volume."+fUUID) != nil {
		t.Error("journal entry survives DeleteVolume")
	}
	if _, err := c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: s.GetSnapshotId(), Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}
	deleteVolume(r.GetVolume().GetVolumeId())
	deleteVolume(cl.GetVolume().GetVolumeId())
	if got := e.subvolumes(t); len(got) > 0 {
		t.Errorf("subvolumes left: %v", got)
	}
	for _, name := range []string{fName, rName, cName} {
		if uuid, _ := journalEntry(t, e.journal, "volume", name); uuid != "" {
			t.Errorf("directory key of %s left", name)
		}
	}
	for _, oid := range []string{"csi.volume." + fUUID, "csi.volume." + rUUID, "csi.volume." + cUUID, "csi.snap." + sUUID} {
		if omapOf(t, e.journal, oid) != nil {
			t.Errorf("journal object %s left", oid)
		}
	}
	if uuid, _ := journalEntry(t, e.journal, "snap", sName); uuid != "" {
		t.Error("snapshot directory key left")
	}
}
