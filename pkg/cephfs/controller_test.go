package cephfs

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/util"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

var svcFS = FSInfo{Name: "cephfs", ID: 7, MetadataPool: "cephfs_metadata", MetadataPoolID: 2,
	DataPools: []string{"cephfs_data", "cephfs_ssd"}, DataPoolIDs: []int64{3, 4}}

// ctrlEnv is a controller over FakeVolumes; the cluster config names no
// group, so volumes go to ceph-csi's default, csi.
type ctrlEnv struct {
	vols    *FakeVolumes
	cluster *FakeCluster
	ctrl    *Controller
	secrets map[string]string
}

func newCtrlEnv(t *testing.T) *ctrlEnv {
	t.Helper()
	vols := NewFakeVolumes(svcFS)
	cl, err := NewFakeCluster(context.Background(), "c1", vols)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ceph.ParseConfig([]byte(`[{"clusterID": "c1", "monitors": ["10.0.0.1:6789"]}]`))
	if err != nil {
		t.Fatal(err)
	}
	ctrl := NewController(ControllerOptions{Connector: FakeConnector{"c1": cl}, Config: cfg, ClonePoll: time.Millisecond})
	return &ctrlEnv{vols: vols, cluster: cl, ctrl: ctrl, secrets: map[string]string{"userID": "csi", "userKey": "QUJD"}}
}

func capOf(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode}}
}

var (
	testRWX = capOf(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)
	testROX = capOf(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY)
)

func (e *ctrlEnv) req(name string, size int64, src *csi.VolumeContentSource, kv ...string) *csi.CreateVolumeRequest {
	params := map[string]string{ParamClusterID: "c1", ParamFSName: "cephfs"}
	for i := 0; i+1 < len(kv); i += 2 {
		params[kv[i]] = kv[i+1]
	}
	c := testRWX
	if params[ParamBackingSnapshot] == "true" {
		c = testROX
	}
	return &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{c}, Parameters: params, Secrets: e.secrets, VolumeContentSource: src}
}

func (e *ctrlEnv) create(t *testing.T, req *csi.CreateVolumeRequest) *csi.Volume {
	t.Helper()
	resp, err := e.ctrl.CreateVolume(context.Background(), req)
	if err != nil {
		t.Fatalf("CreateVolume %s: %v", req.GetName(), err)
	}
	return resp.GetVolume()
}

func (e *ctrlEnv) subvolume(t *testing.T, v *csi.Volume) (Subvolume, SubvolumeInfo) {
	t.Helper()
	sv := Subvolume{FS: "cephfs", Group: v.GetVolumeContext()[ParamSubvolumeGroup], Name: v.GetVolumeContext()[CtxSubvolumeName]}
	info, err := e.vols.Subvolume(context.Background(), sv)
	if err != nil {
		t.Fatalf("subvolume of %s: %v", v.GetVolumeId(), err)
	}
	return sv, info
}

func (e *ctrlEnv) snapshot(t *testing.T, name string, v *csi.Volume) *csi.Snapshot {
	t.Helper()
	resp, err := e.ctrl.CreateSnapshot(context.Background(), &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: v.GetVolumeId(), Secrets: e.secrets})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetSnapshot()
}

func fromSnapshot(s *csi.Snapshot) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: s.GetSnapshotId()}}}
}

func fromVolume(v *csi.Volume) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.GetVolumeId()}}}
}

func TestCreateVolume(t *testing.T) {
	e := newCtrlEnv(t)
	v := e.create(t, e.req("pvc-1", 100<<20+1, nil, ParamPool, "cephfs_ssd"))
	id, err := volumeid.Parse(v.GetVolumeId())
	if err != nil || id.ClusterID != "c1" || id.PoolID != svcFS.ID {
		t.Fatalf("volume ID %s (%v): want cluster c1 and the FSCID %d in the pool's place", v.GetVolumeId(), err, svcFS.ID)
	}
	sv, info := e.subvolume(t, v)
	if sv.Group != "csi" || sv.Name != "csi-vol-"+id.UUID || info.BytesQuota != 101<<20 || info.DataPool != "cephfs_ssd" ||
		v.GetCapacityBytes() != 101<<20 || v.GetVolumeContext()[CtxSubvolumePath] != "" {
		t.Errorf("volume %+v: subvolume %s %+v", v, sv, info)
	}
	again := e.create(t, e.req("pvc-1", 100<<20, nil, ParamPool, "cephfs_ssd"))
	if again.GetVolumeId() != v.GetVolumeId() || e.vols.Calls("CreateSubvolume") != 1 {
		t.Errorf("retry made %s (%d subvolume creations); want %s, one creation", again.GetVolumeId(), e.vols.Calls("CreateSubvolume"), v.GetVolumeId())
	}
	for name, req := range map[string]*csi.CreateVolumeRequest{
		"larger":      e.req("pvc-1", 200<<20, nil, ParamPool, "cephfs_ssd"),
		"other pool":  e.req("pvc-1", 100<<20, nil),
		"from a copy": e.req("pvc-1", 100<<20, fromVolume(v), ParamPool, "cephfs_ssd"),
	} {
		if _, err := e.ctrl.CreateVolume(context.Background(), req); status.Code(err) != codes.AlreadyExists {
			t.Errorf("%s: %v, want AlreadyExists", name, err)
		}
	}
	other := e.create(t, e.req("pvc-2", 0, nil, ParamSubvolumeGroup, "team-a", ParamNamePrefix, "team-"))
	if sv, info := e.subvolume(t, other); sv.Group != "team-a" || !strings.HasPrefix(sv.Name, "team-") || info.BytesQuota != 1<<30 {
		t.Errorf("a class's group and prefix, default size: %s %+v", sv, info)
	}
}

func TestCreateVolumeRefusals(t *testing.T) {
	e := newCtrlEnv(t)
	block := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	tests := []struct {
		name string
		req  *csi.CreateVolumeRequest
		want codes.Code
	}{
		{"no name", e.req("", 1, nil), codes.InvalidArgument},
		{"unknown filesystem", e.req("v", 1, nil, ParamFSName, "nofs"), codes.InvalidArgument},
		{"unknown cluster", e.req("v", 1, nil, ParamClusterID, "c9"), codes.InvalidArgument},
		{"unknown parameter", e.req("v", 1, nil, "imageFeatures", "layering"), codes.InvalidArgument},
		{"bad mounter", e.req("v", 1, nil, ParamMounter, "rbd-nbd"), codes.InvalidArgument},
		{"secret in kernel options", e.req("v", 1, nil, ParamKernelMountOptions, "secret=AQAB"), codes.InvalidArgument},
		{"encrypted", e.req("v", 1, nil, "encrypted", "true"), codes.InvalidArgument},
		{"view without a snapshot", e.req("v", 1, nil, ParamBackingSnapshot, "true"), codes.InvalidArgument},
		{"unknown source volume", e.req("v", 1, fromVolume(&csi.Volume{VolumeId: "0001-0002-c1-0000000000000007-x"})), codes.NotFound},
		{"no secrets", &csi.CreateVolumeRequest{Name: "v", Parameters: map[string]string{ParamClusterID: "c1", ParamFSName: "cephfs"},
			VolumeCapabilities: []*csi.VolumeCapability{testRWX}}, codes.InvalidArgument},
		{"block", &csi.CreateVolumeRequest{Name: "v", Parameters: map[string]string{ParamClusterID: "c1", ParamFSName: "cephfs"},
			VolumeCapabilities: []*csi.VolumeCapability{block}, Secrets: e.secrets}, codes.InvalidArgument},
	}
	for _, tc := range tests {
		if _, err := e.ctrl.CreateVolume(context.Background(), tc.req); status.Code(err) != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if n := e.vols.Calls("CreateSubvolume") + e.vols.Calls("Clone"); n != 0 {
		t.Errorf("refused requests made %d subvolumes", n)
	}
}

// A CreateVolume whose subvolume could not be made takes its reservation
// back if it failed finally; one the provisioner retries (the mgr timed
// out) keeps it, as does one that reserved and then died: the retry makes
// the subvolume under the reservation's UUID.
func TestCreateVolumeReservation(t *testing.T) {
	e := newCtrlEnv(t)
	j, _ := e.cluster.Journal(context.Background(), svcFS.MetadataPool, "csi")
	for errno, code := range map[syscall.Errno]codes.Code{syscall.EINVAL: codes.InvalidArgument, syscall.ETIMEDOUT: codes.DeadlineExceeded} {
		e.vols.FailNext("CreateSubvolume", &Error{Op: "fs subvolume create", Errno: errno})
		name := "pvc-" + errno.Error()
		if _, err := e.ctrl.CreateVolume(context.Background(), e.req(name, 1<<20, nil)); status.Code(err) != code {
			t.Fatalf("CreateVolume with the mgr failing with %v: %v, want %v", errno, err, code)
		}
		_, err := j.LookupName(context.Background(), journal.Volume, name)
		if kept := err == nil; kept != (code == codes.DeadlineExceeded) {
			t.Errorf("%v: reservation after the failure: %v", errno, err)
		}
	}
	var reserved string
	died := NewController(ControllerOptions{Connector: FakeConnector{"c1": e.cluster}, Config: e.ctrl.opts.Config,
		AfterReserve: func(string) { panic("killed") }})
	func() {
		defer func() { reserved = recover().(string) }()
		_, _ = died.CreateVolume(context.Background(), e.req("pvc-2", 1<<20, nil))
	}()
	rec, err := j.LookupName(context.Background(), journal.Volume, "pvc-2")
	if reserved != "killed" || err != nil {
		t.Fatalf("reservation of the killed call: %v", err)
	}
	before := e.vols.Calls("CreateSubvolume")
	v := e.create(t, e.req("pvc-2", 1<<20, nil))
	if sv, _ := e.subvolume(t, v); sv.Name != rec.Backing || e.vols.Calls("CreateSubvolume") != before+1 {
		t.Errorf("the retry made %s; the reservation names %s", sv.Name, rec.Backing)
	}
}

// TestCreateVolumeKeepsReservationOfAnAbandonedCreate: a create given up
// at the deadline (a stalled mgr) may still make its subvolume, so its
// reservation stays, unchecked: the reply does not wait on the stalled
// mgr. The retry makes the volume under the reserved name.
func TestCreateVolumeKeepsReservationOfAnAbandonedCreate(t *testing.T) {
	e := newCtrlEnv(t)
	e.vols.FailNext("CreateSubvolume", &util.AbandonedError{What: "fs subvolume create", Err: context.DeadlineExceeded})
	if _, err := e.ctrl.CreateVolume(context.Background(), e.req("pvc-1", 1<<20, nil)); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("CreateVolume abandoned at its deadline: %v", err)
	}
	j, _ := e.cluster.Journal(context.Background(), svcFS.MetadataPool, "csi")
	rec, err := j.LookupName(context.Background(), journal.Volume, "pvc-1")
	if err != nil {
		t.Fatalf("reservation after the abandoned create: %v, want it kept", err)
	}
	if n := e.vols.Calls("Subvolume"); n != 0 {
		t.Errorf("the failed call asked for the subvolume %d times", n)
	}
	v := e.create(t, e.req("pvc-1", 1<<20, nil))
	if sv, _ := e.subvolume(t, v); sv.Name != rec.Backing {
		t.Errorf("the retry made %s; the reservation names %s", sv.Name, rec.Backing)
	}
}

// A clone is waited for inside CreateVolume; when the deadline comes
// first, the answer is Aborted, and the retry waits for the same clone.
func TestCloneWaitedFor(t *testing.T) {
	e := newCtrlEnv(t)
	src := e.create(t, e.req("pvc-src", 10<<20, nil))
	snap := e.snapshot(t, "snap-1", src)
	e.vols.CloneSteps = 1 << 30
	req := e.req("pvc-restored", 20<<20, fromSnapshot(snap))
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := e.ctrl.CreateVolume(short, req); status.Code(err) != codes.Aborted || !strings.Contains(err.Error(), "in-progress") {
		t.Fatalf("CreateVolume before the clone is done: %v, want Aborted", err)
	}
	e.vols.CloneSteps = 3
	v := e.create(t, req)
	if _, info := e.subvolume(t, v); e.vols.Calls("Clone") != 1 || info.BytesQuota != 20<<20 || info.Type != "clone" {
		t.Errorf("%d clones; the volume %+v", e.vols.Calls("Clone"), info)
	}
	clone := e.create(t, e.req("pvc-clone", 10<<20, fromVolume(v)))
	if _, info := e.subvolume(t, clone); info.BytesQuota != 20<<20 || clone.GetCapacityBytes() != 20<<20 {
		t.Errorf("a clone of a volume has at least its source's size: %+v", info)
	}
	sv, _ := e.subvolume(t, v)
	if snaps, _ := e.vols.ListSnapshots(context.Background(), sv); len(snaps) != 0 {
		t.Errorf("snapshots left on the cloned volume: %v", snaps)
	}
}

// A clone that fails is removed, and the snapshot it was made from; the
// retry clones anew under the same reservation.
func TestFailedCloneRemoved(t *testing.T) {
	e := newCtrlEnv(t)
	src := e.create(t, e.req("pvc-src", 10<<20, nil))
	e.vols.CloneSteps = 1 << 30
	req := e.req("pvc-clone", 10<<20, fromVolume(src))
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := e.ctrl.CreateVolume(short, req); status.Code(err) != codes.Aborted {
		t.Fatal(err)
	}
	srcSV, _ := e.subvolume(t, src)
	subs, _ := e.vols.ListSubvolumes(context.Background(), "cephfs", "csi")
	target := Subvolume{FS: "cephfs", Group: "csi", Name: subs[0]}
	if target.Name == srcSV.Name {
		target.Name = subs[1]
	}
	if err := e.vols.FailClone(target, syscall.ENOENT, "snapshot gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ctrl.CreateVolume(context.Background(), req); status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "snapshot gone") {
		t.Fatalf("CreateVolume of a failed clone: %v", err)
	}
	sv, _ := e.subvolume(t, src)
	if subs, _ := e.vols.ListSubvolumes(context.Background(), "cephfs", "csi"); len(subs) != 1 {
		t.Errorf("subvolumes after the failure: %v", subs)
	}
	if snaps, _ := e.vols.ListSnapshots(context.Background(), sv); len(snaps) != 0 {
		t.Errorf("the clone's snapshot stays: %v", snaps)
	}
	e.vols.CloneSteps = 2
	if v := e.create(t, req); e.vols.Calls("Clone") != 2 || v.GetVolumeContext()[CtxSubvolumeName] != target.Name {
		t.Errorf("the retry after the failure: %d clones, volume %v", e.vols.Calls("Clone"), v.GetVolumeContext())
	}
}

// DeleteVolume of a volume whose clone still runs cancels and removes it,
// and the snapshot the clone was made from.
func TestDeleteVolumeDuringClone(t *testing.T) {
	e := newCtrlEnv(t)
	src := e.create(t, e.req("pvc-src", 10<<20, nil))
	e.vols.CloneSteps = 1 << 30
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, _ = e.ctrl.CreateVolume(short, e.req("pvc-clone", 10<<20, fromVolume(src)))
	j, _ := e.cluster.Journal(context.Background(), svcFS.MetadataPool, "csi")
	rec, err := j.LookupName(context.Background(), journal.Volume, "pvc-clone")
	if err != nil {
		t.Fatal(err)
	}
	id := volumeid.ID{ClusterID: "c1", PoolID: svcFS.ID, UUID: rec.UUID}.String()
	for range 2 {
		if _, err := e.ctrl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id, Secrets: e.secrets}); err != nil {
			t.Fatal(err)
		}
	}
	sv, _ := e.subvolume(t, src)
	subs, _ := e.vols.ListSubvolumes(context.Background(), "cephfs", "csi")
	snaps, _ := e.vols.ListSnapshots(context.Background(), sv)
	if len(subs) != 1 || len(snaps) != 0 || e.vols.Calls("CancelClone") != 1 {
		t.Errorf("after deleting a running clone: subvolumes %v, snapshots %v", subs, snaps)
	}
}

// A volume's snapshots outlive it; the last one's deletion frees it.
func TestSnapshotsOutliveTheirVolume(t *testing.T) {
	e := newCtrlEnv(t)
	v := e.create(t, e.req("pvc-1", 10<<20, nil))
	snap := e.snapshot(t, "snap-1", v)
	if again := e.snapshot(t, "snap-1", v); again.GetSnapshotId() != snap.GetSnapshotId() || snap.GetSizeBytes() != 10<<20 || !snap.GetReadyToUse() {
		t.Errorf("snapshot %v, again %v", snap, again)
	}
	other := e.create(t, e.req("pvc-2", 10<<20, nil))
	if _, err := e.ctrl.CreateSnapshot(context.Background(), &csi.CreateSnapshotRequest{Name: "snap-1", SourceVolumeId: other.GetVolumeId(),
		Secrets: e.secrets}); status.Code(err) != codes.AlreadyExists {
		t.Errorf("the name for another volume: %v", err)
	}
	if _, err := e.ctrl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId(), Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}
	restored := e.create(t, e.req("pvc-restored", 10<<20, fromSnapshot(snap)))
	if _, info := e.subvolume(t, restored); info.BytesQuota != 10<<20 {
		t.Errorf("restored from a deleted volume's snapshot: %+v", info)
	}
	list, err := e.ctrl.ListSnapshots(context.Background(), &csi.ListSnapshotsRequest{SourceVolumeId: v.GetVolumeId()})
	if err != nil || len(list.GetEntries()) != 1 {
		t.Errorf("ListSnapshots of the deleted volume: %v, %v", list, err)
	}
	for range 2 {
		if _, err := e.ctrl.DeleteSnapshot(context.Background(), &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId(), Secrets: e.secrets}); err != nil {
			t.Fatal(err)
		}
	}
	subs, _ := e.vols.ListSubvolumes(context.Background(), "cephfs", "csi")
	if len(subs) != 2 {
		t.Errorf("subvolumes once the last snapshot went: %v", subs)
	}
}

// A volume backed by a snapshot is a read-only view of it: no subvolume,
// the snapshot's path in the volume context, and the snapshot kept.
func TestBackingSnapshot(t *testing.T) {
	e := newCtrlEnv(t)
	src := e.create(t, e.req("pvc-src", 10<<20, nil))
	snap := e.snapshot(t, "snap-1", src)
	rw := e.req("pvc-view", 10<<20, fromSnapshot(snap), ParamBackingSnapshot, "true")
	rw.VolumeCapabilities = []*csi.VolumeCapability{testRWX}
	if _, err := e.ctrl.CreateVolume(context.Background(), rw); status.Code(err) != codes.InvalidArgument {
		t.Errorf("a writable view: %v", err)
	}
	view := e.create(t, e.req("pvc-view", 10<<20, fromSnapshot(snap), ParamBackingSnapshot, "true"))
	sv, info := e.subvolume(t, src)
	want := strings.TrimSuffix(info.Path, "/"+info.Path[strings.LastIndex(info.Path, "/")+1:]) + "/.snap/"
	if p := view.GetVolumeContext()[CtxSubvolumePath]; !strings.HasPrefix(p, want) || e.vols.Calls("CreateSubvolume") != 1 || e.vols.Calls("Clone") != 0 {
		t.Errorf("view path %q, want below %s; %d subvolumes made", p, want, e.vols.Calls("CreateSubvolume"))
	}
	del := &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId(), Secrets: e.secrets}
	if _, err := e.ctrl.DeleteSnapshot(context.Background(), del); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "pvc-view") {
		t.Errorf("DeleteSnapshot under a view: %v", err)
	}
	for _, call := range []func() error{
		func() error {
			_, err := e.ctrl.CreateSnapshot(context.Background(), &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: view.GetVolumeId(), Secrets: e.secrets})
			return err
		},
		func() error {
			_, err := e.ctrl.ControllerExpandVolume(context.Background(), &csi.ControllerExpandVolumeRequest{VolumeId: view.GetVolumeId(),
				CapacityRange: &csi.CapacityRange{RequiredBytes: 20 << 20}, Secrets: e.secrets})
			return err
		},
	} {
		if err := call(); status.Code(err) != codes.InvalidArgument {
			t.Errorf("snapshot or expansion of a view: %v", err)
		}
	}
	if _, err := e.ctrl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: view.GetVolumeId(), Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ctrl.DeleteSnapshot(context.Background(), del); err != nil {
		t.Errorf("DeleteSnapshot once the view is gone: %v", err)
	}
	if snaps, _ := e.vols.ListSnapshots(context.Background(), sv); len(snaps) != 0 {
		t.Errorf("snapshots left: %v", snaps)
	}
}

func TestControllerExpandVolume(t *testing.T) {
	e := newCtrlEnv(t)
	v := e.create(t, e.req("pvc-1", 10<<20, nil))
	expand := func(size int64) (*csi.ControllerExpandVolumeResponse, error) {
		return e.ctrl.ControllerExpandVolume(context.Background(), &csi.ControllerExpandVolumeRequest{VolumeId: v.GetVolumeId(),
			CapacityRange: &csi.CapacityRange{RequiredBytes: size}, Secrets: e.secrets})
	}
	resp, err := expand(20 << 20)
	if _, info := e.subvolume(t, v); err != nil || resp.GetCapacityBytes() != 20<<20 || resp.GetNodeExpansionRequired() || info.BytesQuota != 20<<20 {
		t.Errorf("expansion to 20 MiB: %v, %v; quota %d", resp, err, info.BytesQuota)
	}
	resp, err = expand(5 << 20)
	if _, info := e.subvolume(t, v); err != nil || resp.GetCapacityBytes() != 20<<20 || info.BytesQuota != 20<<20 {
		t.Errorf("a smaller size never shrinks: %v, %v; quota %d", resp, err, info.BytesQuota)
	}
}

func TestValidateAndGetVolume(t *testing.T) {
	e := newCtrlEnv(t)
	v := e.create(t, e.req("pvc-1", 10<<20, nil))
	validate := func(params, vctx map[string]string, caps ...*csi.VolumeCapability) *csi.ValidateVolumeCapabilitiesResponse {
		resp, err := e.ctrl.ValidateVolumeCapabilities(context.Background(), &csi.ValidateVolumeCapabilitiesRequest{VolumeId: v.GetVolumeId(),
			VolumeCapabilities: caps, Parameters: params, VolumeContext: vctx, Secrets: e.secrets})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	block := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}}
	params := map[string]string{ParamClusterID: "c1", ParamFSName: "cephfs"}
	tests := []struct {
		name      string
		params    map[string]string
		vctx      map[string]string
		caps      []*csi.VolumeCapability
		confirmed bool
	}{
		{"every file mode", nil, nil, []*csi.VolumeCapability{testRWX, testROX, capOf(csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER)}, true},
		{"its parameters and context", params, v.GetVolumeContext(), []*csi.VolumeCapability{testRWX}, true},
		{"block", nil, nil, []*csi.VolumeCapability{block}, false},
		{"other parameters", map[string]string{ParamClusterID: "c1", ParamFSName: "cephfs", ParamPool: "cephfs_ssd"}, nil, []*csi.VolumeCapability{testRWX}, false},
		{"another subvolume", nil, map[string]string{CtxSubvolumeName: "csi-vol-x"}, []*csi.VolumeCapability{testRWX}, false},
	}
	for _, tc := range tests {
		if resp := validate(tc.params, tc.vctx, tc.caps...); (resp.GetConfirmed() != nil) != tc.confirmed {
			t.Errorf("%s: %v", tc.name, resp)
		}
	}
	got, err := e.ctrl.ControllerGetVolume(context.Background(), &csi.ControllerGetVolumeRequest{VolumeId: v.GetVolumeId()})
	if err != nil || got.GetVolume().GetCapacityBytes() != 10<<20 {
		t.Errorf("ControllerGetVolume = %v, %v", got, err)
	}
	missing := volumeid.ID{ClusterID: "c1", PoolID: svcFS.ID, UUID: "00000000-0000-4000-8000-000000000000"}.String()
	if _, err := e.ctrl.ControllerGetVolume(context.Background(), &csi.ControllerGetVolumeRequest{VolumeId: missing}); status.Code(err) != codes.NotFound {
		t.Errorf("a volume that is not there: %v", err)
	}
}

func TestListVolumesAndCapacity(t *testing.T) {
	e := newCtrlEnv(t)
	var ids []string
	for _, name := range []string{"a", "b", "c"} {
		ids = append(ids, e.create(t, e.req(name, 1<<20, nil)).GetVolumeId())
	}
	var got []string
	token := ""
	for {
		resp, err := e.ctrl.ListVolumes(context.Background(), &csi.ListVolumesRequest{MaxEntries: 2, StartingToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, en := range resp.GetEntries() {
			got = append(got, en.GetVolume().GetVolumeId())
		}
		if token = resp.GetNextToken(); token == "" {
			break
		}
	}
	if len(got) != 3 {
		t.Errorf("listed %v, want %v", got, ids)
	}
	capResp, err := e.ctrl.GetCapacity(context.Background(), &csi.GetCapacityRequest{Parameters: map[string]string{ParamFSName: "cephfs"}})
	if err != nil || capResp.GetAvailableCapacity() != 100<<30 {
		t.Errorf("GetCapacity = %v, %v", capResp, err)
	}
	capResp, err = e.ctrl.GetCapacity(context.Background(), &csi.GetCapacityRequest{Parameters: map[string]string{ParamFSName: "other"}})
	if err != nil || capResp.GetAvailableCapacity() != 0 {
		t.Errorf("GetCapacity of an unknown filesystem = %v, %v", capResp, err)
	}
}
