package rbd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
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
	"github.com/pelagic-csi/pelagic/pkg/volume"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

const (
	testClusterID = "rook-ceph"
	testPool      = "replicapool"
	testPoolID    = 2
	testKey       = "QVFELVRPUC1TRUNSRVQtS0VZLWZvci10ZXN0cw==" // base64, as cephx keys are
	gib           = int64(1 << 30)
	mib           = int64(volume.MiB)
)

var testSecrets = map[string]string{"userID": "csi-rbd-provisioner", "userKey": testKey}

// errnoErr carries a Ceph errno the way go-ceph errors do.
type errnoErr int

func (e errnoErr) Error() string  { return "rados error" }
func (e errnoErr) ErrorCode() int { return int(e) }

type env struct {
	c     *Controller
	conn  *FakeConnector
	pool  *FakePool
	other *FakePool
}

func newEnv(t *testing.T, opts ...func(*ControllerOptions)) *env {
	t.Helper()
	cfg, err := ceph.ParseConfig([]byte(`[
		{"clusterID": "rook-ceph", "monitors": ["10.0.0.1:6789"]},
		{"clusterID": "ghost", "monitors": ["10.0.0.2:6789"]}]`))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{pool: NewFakePool(testPool, testPoolID), other: NewFakePool("other", 3)}
	e.conn = &FakeConnector{Clusters: map[string]*FakeCluster{testClusterID: NewFakeCluster(testClusterID, e.pool, e.other)}}
	o := ControllerOptions{Connector: e.conn, Config: cfg}
	for _, f := range opts {
		f(&o)
	}
	e.c = NewController(o)
	return e
}

func accessMode(m csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability_AccessMode {
	return &csi.VolumeCapability_AccessMode{Mode: m}
}

func mountCap(m csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{AccessMode: accessMode(m),
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}}}
}

func blockCap(m csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{AccessMode: accessMode(m),
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}}
}

func createReq(name string, size int64) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{
		Name:               name,
		CapacityRange:      &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{mountCap(rwo)},
		Parameters:         map[string]string{ParamClusterID: testClusterID, ParamPool: testPool, ParamImageFeatures: "layering"},
		Secrets:            maps.Clone(testSecrets),
	}
}

func fromSnapshot(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

func fromVolume(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
}

func (e *env) create(t *testing.T, req *csi.CreateVolumeRequest) *csi.Volume {
	t.Helper()
	resp, err := e.c.CreateVolume(context.Background(), req)
	if err != nil {
		t.Fatalf("CreateVolume(%s): %v", req.GetName(), err)
	}
	return resp.GetVolume()
}

func (e *env) snapshot(t *testing.T, name, volID string) *csi.Snapshot {
	t.Helper()
	resp, err := e.c.CreateSnapshot(context.Background(), &csi.CreateSnapshotRequest{
		Name: name, SourceVolumeId: volID, Secrets: maps.Clone(testSecrets)})
	if err != nil {
		t.Fatalf("CreateSnapshot(%s): %v", name, err)
	}
	return resp.GetSnapshot()
}

func (e *env) records(t *testing.T, kind journal.Kind) []*journal.Record {
	t.Helper()
	recs, err := e.pool.List(context.Background(), kind, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func wantCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("got code %v (%v), want %v", got, err, want)
	}
}

func TestCreateVolumeInvalidArgument(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*csi.CreateVolumeRequest)
	}{
		{"missing name", func(r *csi.CreateVolumeRequest) { r.Name = "" }},
		{"missing capabilities", func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = nil }},
		{"capability without access mode", func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities[0].AccessMode = nil }},
		{"RWX filesystem", func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities[0] = mountCap(rwx) }},
		{"unsupported fsType in capability", func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities[0].GetMount().FsType = "btrfs"
		}},
		{"unknown feature", func(r *csi.CreateVolumeRequest) { r.Parameters[ParamImageFeatures] = "layering,bogus" }},
		{"object-map without exclusive-lock", func(r *csi.CreateVolumeRequest) {
			r.Parameters[ParamImageFeatures] = "layering,object-map"
		}},
		{"image format 1", func(r *csi.CreateVolumeRequest) { r.Parameters[ParamImageFormat] = "1" }},
		{"missing clusterID", func(r *csi.CreateVolumeRequest) { delete(r.Parameters, ParamClusterID) }},
		{"missing pool", func(r *csi.CreateVolumeRequest) { delete(r.Parameters, ParamPool) }},
		{"encrypted", func(r *csi.CreateVolumeRequest) { r.Parameters["encrypted"] = "true" }},
		{"clusterID not in config", func(r *csi.CreateVolumeRequest) { r.Parameters[ParamClusterID] = "nope" }},
		{"clusterID the connector does not know", func(r *csi.CreateVolumeRequest) { r.Parameters[ParamClusterID] = "ghost" }},
		{"no secrets", func(r *csi.CreateVolumeRequest) { r.Secrets = nil }},
		{"key without user ID", func(r *csi.CreateVolumeRequest) { delete(r.Secrets, "userID") }},
		{"key not base64", func(r *csi.CreateVolumeRequest) { r.Secrets["userKey"] = "AQD-TOP-SECRET-KEY==" }},
		{"in-tree key whose adminId only the class names", func(r *csi.CreateVolumeRequest) {
			r.Secrets = map[string]string{"key": testKey}
			r.Parameters[ParamAdminID] = "kube"
		}},
		{"adminId other than the secret's user", func(r *csi.CreateVolumeRequest) { r.Parameters[ParamAdminID] = "admin" }},
		{"unknown parameter", func(r *csi.CreateVolumeRequest) { r.Parameters["imageFeature"] = "layering" }},
		{"journaling on krbd", func(r *csi.CreateVolumeRequest) {
			r.Parameters[ParamMounter] = "rbd"
			r.Parameters[ParamImageFeatures] = "layering,exclusive-lock,journaling"
		}},
		{"negative size", func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = -1 }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			req := createReq("pvc-1", gib)
			tc.mutate(req)
			_, err := e.c.CreateVolume(context.Background(), req)
			wantCode(t, err, codes.InvalidArgument)
			for _, secret := range []string{testKey, "AQD-TOP-SECRET-KEY=="} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error leaks the key: %v", err)
				}
			}
			if n := e.pool.Calls("CreateImage"); n != 0 {
				t.Errorf("CreateImage called %d times", n)
			}
			if recs := e.records(t, journal.Volume); len(recs) != 0 {
				t.Errorf("journal holds %d records", len(recs))
			}
		})
	}
}

func TestCreateVolumeSize(t *testing.T) {
	tests := []struct {
		name     string
		capRange *csi.CapacityRange
		want     int64
		code     codes.Code
	}{
		{"default", nil, gib, codes.OK},
		{"rounded up to MiB", &csi.CapacityRange{RequiredBytes: mib + 1}, 2 * mib, codes.OK},
		{"limit only", &csi.CapacityRange{LimitBytes: 10 * mib}, 10 * mib, codes.OK},
		{"limit below rounded size", &csi.CapacityRange{RequiredBytes: 1, LimitBytes: 1000}, 0, codes.OutOfRange},
		{"required above limit", &csi.CapacityRange{RequiredBytes: 2 * mib, LimitBytes: mib}, 0, codes.InvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			req := createReq("pvc-1", 0)
			req.CapacityRange = tc.capRange
			resp, err := e.c.CreateVolume(context.Background(), req)
			wantCode(t, err, tc.code)
			if err != nil {
				return
			}
			img := e.pool.Image(resp.GetVolume().GetVolumeContext()[CtxImageName])
			if resp.GetVolume().GetCapacityBytes() != tc.want || img == nil || img.size != tc.want {
				t.Errorf("capacity %d, image %+v; want %d", resp.GetVolume().GetCapacityBytes(), img, tc.want)
			}
		})
	}
}

func TestCreateVolumeIdempotent(t *testing.T) {
	e := newEnv(t)
	first := e.create(t, createReq("pvc-1", gib))
	again := e.create(t, createReq("pvc-1", gib))
	if first.GetVolumeId() != again.GetVolumeId() {
		t.Errorf("retry returned %s, first call %s", again.GetVolumeId(), first.GetVolumeId())
	}
	if n := e.pool.Calls("CreateImage"); n != 1 {
		t.Errorf("CreateImage called %d times, want 1", n)
	}
	id, err := volumeid.Parse(first.GetVolumeId())
	if err != nil || id.ClusterID != testClusterID || id.PoolID != testPoolID {
		t.Errorf("volume ID %s: %+v, %v", first.GetVolumeId(), id, err)
	}
	image := first.GetVolumeContext()[CtxImageName]
	if image != "csi-vol-"+id.UUID || first.GetVolumeContext()[ParamPool] != testPool {
		t.Errorf("volume context %v", first.GetVolumeContext())
	}
	if !strings.Contains(e.pool.Image(image).meta[metaOwnerKey], `"name":"pvc-1"`) {
		t.Errorf("owner metadata %v", e.pool.Image(image).meta)
	}

	for name, req := range map[string]*csi.CreateVolumeRequest{
		"larger size": createReq("pvc-1", 2*gib),
		"limit too low": func() *csi.CreateVolumeRequest {
			r := createReq("pvc-1", mib)
			r.CapacityRange.LimitBytes = mib
			return r
		}(),
		"other features": func() *csi.CreateVolumeRequest {
			r := createReq("pvc-1", gib)
			r.Parameters[ParamImageFeatures] = "layering,exclusive-lock"
			return r
		}(),
	} {
		_, err := e.c.CreateVolume(context.Background(), req)
		if status.Code(err) != codes.AlreadyExists {
			t.Errorf("%s: got %v, want AlreadyExists", name, err)
		}
	}
	if got := e.pool.ImageNames(); len(got) != 1 {
		t.Errorf("images %v, want one", got)
	}
}

func TestCreateVolumeCompletesReservation(t *testing.T) {
	e := newEnv(t)
	req := createReq("pvc-crash", gib)
	params, err := ParseVolumeParams(req.GetParameters())
	if err != nil {
		t.Fatal(err)
	}
	// A crash between Reserve and CreateImage leaves this behind.
	const uuid = "0c8a6c8e-7c1f-4a3b-9d3e-2b1f0f1e2d3c"
	rec := &journal.Record{Kind: journal.Volume, Name: "pvc-crash", UUID: uuid, Backing: "csi-vol-" + uuid,
		SizeBytes: gib, Params: params.journalParams()}
	if err := e.pool.Reserve(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	vol := e.create(t, req)
	if id, _ := volumeid.Parse(vol.GetVolumeId()); id.UUID != uuid {
		t.Errorf("retry used UUID %s, want the reserved %s", id.UUID, uuid)
	}
	if got := e.pool.ImageNames(); len(got) != 1 || got[0] != rec.Backing {
		t.Errorf("images %v, want only %s", got, rec.Backing)
	}
	if recs := e.records(t, journal.Volume); len(recs) != 1 {
		t.Errorf("journal holds %d records, want 1", len(recs))
	}
}

// TestCreateVolumeWritesANewImagesOwnerWithoutARead: a new image, no
// clone, inherits no records, so its owner is written without reading
// its metadata first; a retry that finds the image reads before writing.
func TestCreateVolumeWritesANewImagesOwnerWithoutARead(t *testing.T) {
	e := newEnv(t)
	vol := e.create(t, createReq("pvc-1", gib))
	image := vol.GetVolumeContext()[CtxImageName]
	if meta, _ := e.pool.Metadata(context.Background(), image); meta[metaOwnerKey] == "" {
		t.Fatalf("no owner record on %s: %v", image, meta)
	}
	if n := e.pool.Calls("Records"); n != 1 { // the Metadata above
		t.Errorf("%d metadata reads for a new image's owner, want none", n-1)
	}
	e.create(t, createReq("pvc-1", gib))
	if n := e.pool.Calls("Records"); n != 2 {
		t.Errorf("the retry read the records %d times, want once", n-1)
	}
}

// TestCreateVolumeFailureReservation: a create that failed finally takes
// its reservation back. One the provisioner retries keeps it, even after
// the claim's deletion: the image may yet appear (a call abandoned at the
// deadline, or timed out in librados, goes on), or another replica may be
// making it; the retry takes the same ID.
func TestCreateVolumeFailureReservation(t *testing.T) {
	tests := []struct {
		name string
		err  error
		code codes.Code
		kept bool
	}{
		{"plain error", errors.New("boom"), codes.Internal, false},
		{"EINVAL", errnoErr(-int(syscall.EINVAL)), codes.InvalidArgument, false},
		{"ENOSPC", errnoErr(-int(syscall.ENOSPC)), codes.ResourceExhausted, true},
		{"deadline", context.DeadlineExceeded, codes.DeadlineExceeded, true},
		{"abandoned", &util.AbandonedError{What: "creating image", Err: context.DeadlineExceeded}, codes.DeadlineExceeded, true},
		{"ETIMEDOUT", errnoErr(-int(syscall.ETIMEDOUT)), codes.DeadlineExceeded, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.pool.SetFail("CreateImage", tc.err)
			_, err := e.c.CreateVolume(context.Background(), createReq("pvc-1", gib))
			wantCode(t, err, tc.code)
			recs := e.records(t, journal.Volume)
			if kept := len(recs) == 1; kept != tc.kept || len(recs) > 1 {
				t.Fatalf("journal holds %d records after the failure, want the reservation kept = %v", len(recs), tc.kept)
			}
			if _, err := e.pool.LookupName(context.Background(), journal.Volume, "pvc-1"); errors.Is(err, journal.ErrNotFound) == tc.kept {
				t.Errorf("name reserved = %v, want %v", err == nil, tc.kept)
			}
			e.pool.SetFail("CreateImage", nil)
			vol := e.create(t, createReq("pvc-1", gib))
			if tc.kept && !strings.HasSuffix(vol.GetVolumeId(), recs[0].UUID) {
				t.Errorf("retry made %s, not the reserved %s", vol.GetVolumeId(), recs[0].UUID)
			}
		})
	}
}

// TestCreateVolumeWaitsForAnImageBeingCreated: librbd takes an image's
// name before it writes its header, so EEXIST means another request (one
// abandoned at its deadline goes on in librbd) is creating the image. The
// create answers only once the image opens, and writes its owner.
func TestCreateVolumeWaitsForAnImageBeingCreated(t *testing.T) {
	e := newEnv(t)
	e.pool.SetFail("CreateImage", errnoErr(-int(syscall.EEXIST)))
	type result struct {
		vol *csi.Volume
		err error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := e.c.CreateVolume(context.Background(), createReq("pvc-1", gib))
		done <- result{resp.GetVolume(), err}
	}()
	ctx := context.Background()
	if err := util.WaitFor(ctx, 10*time.Second, "the create's EEXIST", func() (bool, error) {
		return e.pool.Calls("Head") > 0, nil
	}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		t.Fatalf("create answered (%v, %v) before the image opened", r.vol, r.err)
	default:
	}
	recs := e.records(t, journal.Volume)
	if len(recs) != 1 {
		t.Fatalf("journal holds %d records, want the reservation", len(recs))
	}
	e.pool.SetFail("CreateImage", nil)
	if err := e.pool.CreateImage(ctx, ImageSpec{Name: recs[0].Backing, Size: gib}); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !strings.HasSuffix(r.vol.GetVolumeId(), recs[0].UUID) {
		t.Errorf("created %s, not the reserved %s", r.vol.GetVolumeId(), recs[0].UUID)
	}
	if meta, _ := e.pool.Metadata(ctx, recs[0].Backing); meta[metaOwnerKey] == "" {
		t.Errorf("no owner record on %s: %v", recs[0].Backing, meta)
	}
}

// TestCreateVolumeAbortedWhileAnotherCreates: an image being created
// elsewhere that does not open in time is Aborted, and its reservation
// stays whoever made it, as that creation may still land.
func TestCreateVolumeAbortedWhileAnotherCreates(t *testing.T) {
	for _, reservedBefore := range []bool{false, true} {
		t.Run(fmt.Sprintf("reserved before %v", reservedBefore), func(t *testing.T) {
			e := newEnv(t, func(o *ControllerOptions) { o.CreatedElsewhereWait = 20 * time.Millisecond })
			e.pool.SetFail("CreateImage", errnoErr(-int(syscall.EEXIST)))
			if reservedBefore {
				if _, err := e.c.CreateVolume(context.Background(), createReq("pvc-1", gib)); status.Code(err) != codes.Aborted {
					t.Fatalf("first create: %v, want Aborted", err)
				}
			}
			_, err := e.c.CreateVolume(context.Background(), createReq("pvc-1", gib))
			wantCode(t, err, codes.Aborted)
			if !strings.Contains(err.Error(), "being created by another request") {
				t.Errorf("error %q does not say why", err)
			}
			if recs := e.records(t, journal.Volume); len(recs) != 1 {
				t.Errorf("journal holds %d records, want the reservation", len(recs))
			}
		})
	}
}

func TestCreateVolumeAbortedWhileNameLocked(t *testing.T) {
	e := newEnv(t)
	if !e.c.locks.TryLock("volname/pvc-1") {
		t.Fatal("lock taken")
	}
	_, err := e.c.CreateVolume(context.Background(), createReq("pvc-1", gib))
	wantCode(t, err, codes.Aborted)
	if n := e.pool.Calls("CreateImage"); n != 0 {
		t.Errorf("CreateImage called %d times under a held lock", n)
	}
	e.c.locks.Unlock("volname/pvc-1")
	e.create(t, createReq("pvc-1", gib))
}

func TestDeleteVolume(t *testing.T) {
	const watcherAddr = "10.244.1.7:0/3021773490"
	missing := volumeid.ID{ClusterID: testClusterID, PoolID: testPoolID, UUID: "0c8a6c8e-7c1f-4a3b-9d3e-2b1f0f1e2d3c"}
	tests := []struct {
		name    string
		setup   func(t *testing.T, e *env) string // returns the ID to delete
		code    codes.Code
		wantMsg string
	}{
		{"empty ID", func(*testing.T, *env) string { return "" }, codes.InvalidArgument, ""},
		{"malformed ID", func(*testing.T, *env) string { return "pvc-not-an-id" }, codes.OK, ""},
		{"missing volume", func(*testing.T, *env) string { return missing.String() }, codes.OK, ""},
		{"unknown pool", func(*testing.T, *env) string { m := missing; m.PoolID = 99; return m.String() }, codes.OK, ""},
		{"unknown cluster", func(*testing.T, *env) string { m := missing; m.ClusterID = "nope"; return m.String() }, codes.OK, ""},
		{"image in use", func(t *testing.T, e *env) string {
			v := e.create(t, createReq("pvc-1", gib))
			e.pool.SetWatchers(v.GetVolumeContext()[CtxImageName], Watcher{Addr: watcherAddr, ID: 4123})
			return v.GetVolumeId()
		}, codes.FailedPrecondition, watcherAddr},
		{"existing volume", func(t *testing.T, e *env) string { return e.create(t, createReq("pvc-1", gib)).GetVolumeId() }, codes.OK, ""},
		{"image already gone", func(t *testing.T, e *env) string {
			v := e.create(t, createReq("pvc-1", gib))
			image := e.pool.Image(v.GetVolumeContext()[CtxImageName])
			if err := e.pool.Trash(context.Background(), image.name); err != nil {
				t.Fatal(err)
			}
			if removed, err := e.pool.Purge(context.Background(), image.id); !removed || err != nil {
				t.Fatalf("purge: %t, %v", removed, err)
			}
			return v.GetVolumeId()
		}, codes.OK, ""},
		{"image left in the trash", func(t *testing.T, e *env) string {
			v := e.create(t, createReq("pvc-1", gib))
			if err := e.pool.Trash(context.Background(), v.GetVolumeContext()[CtxImageName]); err != nil {
				t.Fatal(err)
			}
			return v.GetVolumeId()
		}, codes.OK, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			id := tc.setup(t, e)
			_, err := e.c.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id, Secrets: maps.Clone(testSecrets)})
			wantCode(t, err, tc.code)
			if tc.wantMsg != "" && !strings.Contains(status.Convert(err).Message(), tc.wantMsg) {
				t.Errorf("message %q does not name %s", status.Convert(err).Message(), tc.wantMsg)
			}
			recs := e.records(t, journal.Volume)
			switch {
			case tc.code == codes.OK && (len(recs) != 0 || len(e.pool.ImageNames()) != 0 || len(e.pool.TrashNames()) != 0):
				t.Errorf("after delete: journal %d records, images %v, trash %v", len(recs), e.pool.ImageNames(), e.pool.TrashNames())
			case tc.code == codes.FailedPrecondition && (len(recs) != 1 || len(e.pool.ImageNames()) != 1):
				t.Errorf("refused delete changed state: journal %d records, images %v", len(recs), e.pool.ImageNames())
			}
		})
	}
}

// TestDeletePurgesWhatItFrees: a deletion purges its own image and the
// trashed ancestors it was the last user of, and no other trashed image.
func TestDeletePurgesWhatItFrees(t *testing.T) {
	ctx := context.Background()
	type step struct {
		op   string // "vol", "snap", "restore" (from the snapshot named by from), "clone" (of the volume named by from), "delvol", "delsnap"
		name string
		from string
	}
	tests := []struct {
		name      string
		steps     []step
		wantTrash []string // volume names whose images stay in the trash
	}{
		{"another volume's trashed image stays", []step{{"vol", "kept", ""}, {"snap", "s", "kept"}, {"delvol", "kept", ""},
			{"vol", "v", ""}, {"delvol", "v", ""}}, []string{"kept"}},
		{"restore of a deleted volume's snapshot", []step{{"vol", "p", ""}, {"snap", "s", "p"}, {"restore", "r", "s"},
			{"delvol", "p", ""}, {"delsnap", "s", ""}, {"delvol", "r", ""}}, nil},
		{"parent kept by a live restore", []step{{"vol", "p", ""}, {"snap", "s", "p"}, {"restore", "r", "s"},
			{"delvol", "p", ""}, {"delsnap", "s", ""}}, []string{"p"}},
		{"clone of a deleted volume", []step{{"vol", "p", ""}, {"clone", "c", "p"}, {"delvol", "p", ""}, {"delvol", "c", ""}}, nil},
		{"snapshot deleted last", []step{{"vol", "p", ""}, {"snap", "s", "p"}, {"restore", "r", "s"},
			{"delvol", "p", ""}, {"delvol", "r", ""}, {"delsnap", "s", ""}}, nil},
		{"chain of two trashed parents", []step{{"vol", "p", ""}, {"snap", "s1", "p"}, {"restore", "r1", "s1"},
			{"snap", "s2", "r1"}, {"restore", "r2", "s2"}, {"delvol", "p", ""}, {"delsnap", "s1", ""},
			{"delvol", "r1", ""}, {"delsnap", "s2", ""}, {"delvol", "r2", ""}}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			vols, snaps := map[string]*csi.Volume{}, map[string]*csi.Snapshot{}
			for _, st := range tc.steps {
				req := createReq("pvc-"+st.name, gib)
				var err error
				switch st.op {
				case "vol":
					vols[st.name] = e.create(t, req)
				case "restore", "clone":
					req.VolumeContentSource = fromVolume(vols[st.from].GetVolumeId())
					if st.op == "restore" {
						req.VolumeContentSource = fromSnapshot(snaps[st.from].GetSnapshotId())
					}
					vols[st.name] = e.create(t, req)
				case "snap":
					snaps[st.name] = e.snapshot(t, st.name, vols[st.from].GetVolumeId())
				case "delvol":
					purges := e.pool.Calls("Purge")
					_, err = e.c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vols[st.name].GetVolumeId(), Secrets: testSecrets})
					if n := e.pool.Calls("Purge") - purges; n > 3 {
						t.Errorf("deleting %s tried %d purges", st.name, n)
					}
				case "delsnap":
					_, err = e.c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snaps[st.name].GetSnapshotId(), Secrets: testSecrets})
				}
				if err != nil {
					t.Fatalf("%s %s: %v", st.op, st.name, err)
				}
			}
			var want []string
			for _, n := range tc.wantTrash {
				want = append(want, vols[n].GetVolumeContext()[CtxImageName])
			}
			if got := e.pool.TrashNames(); strings.Join(got, ",") != strings.Join(want, ",") {
				t.Errorf("trash %v, want %v (volumes %v)", got, want, tc.wantTrash)
			}
		})
	}
}

// TestDeleteVolumeFailedPurgeKeepsRecord: a purge that fails for a reason
// other than snapshots or children fails the call and keeps the journal
// record, so that the retry purges the trashed image.
func TestDeleteVolumeFailedPurgeKeepsRecord(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	vol := e.create(t, createReq("pvc-1", gib))
	req := &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId(), Secrets: testSecrets}
	e.pool.SetFail("Purge", errnoErr(-117)) // EUCLEAN
	if _, err := e.c.DeleteVolume(ctx, req); err == nil {
		t.Fatal("DeleteVolume succeeded with a failing purge")
	}
	if len(e.records(t, journal.Volume)) != 1 || len(e.pool.TrashNames()) != 1 {
		t.Fatalf("after a failed purge: %d records, trash %v; want the record and the trashed image", len(e.records(t, journal.Volume)), e.pool.TrashNames())
	}
	e.pool.SetFail("Purge", nil)
	if _, err := e.c.DeleteVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	if len(e.records(t, journal.Volume)) != 0 || len(e.pool.TrashNames()) != 0 {
		t.Errorf("after the retry: %d records, trash %v", len(e.records(t, journal.Volume)), e.pool.TrashNames())
	}
}

func TestSnapshots(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	vol := e.create(t, createReq("pvc-1", gib))
	other := e.create(t, createReq("pvc-2", gib))
	snap := e.snapshot(t, "snap-1", vol.GetVolumeId())
	if !snap.GetReadyToUse() || snap.GetSourceVolumeId() != vol.GetVolumeId() || snap.GetSizeBytes() != gib ||
		snap.GetCreationTime() == nil {
		t.Errorf("snapshot %v", snap)
	}
	if again := e.snapshot(t, "snap-1", vol.GetVolumeId()); again.GetSnapshotId() != snap.GetSnapshotId() {
		t.Errorf("retry returned %s, want %s", again.GetSnapshotId(), snap.GetSnapshotId())
	}
	_, err := e.c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-1", SourceVolumeId: other.GetVolumeId(), Secrets: testSecrets})
	wantCode(t, err, codes.AlreadyExists)
	if snaps := e.pool.Image(other.GetVolumeContext()[CtxImageName]).snaps; len(snaps) != 0 {
		t.Errorf("a snapshot refused its name was taken: %v", snaps)
	}
	e.snapshot(t, "snap-2", other.GetVolumeId())
	got, err := e.c.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: snap.GetSnapshotId(), Secrets: testSecrets})
	if err != nil || got.GetSnapshot().GetSnapshotId() != snap.GetSnapshotId() || got.GetSnapshot().GetSourceVolumeId() != vol.GetVolumeId() {
		t.Errorf("GetSnapshot = %v, %v", got, err)
	}
	_, err = e.c.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: "not-an-id", Secrets: testSecrets})
	wantCode(t, err, codes.NotFound)

	list := func(req *csi.ListSnapshotsRequest) []string {
		t.Helper()
		resp, err := e.c.ListSnapshots(ctx, req)
		if err != nil {
			t.Fatalf("ListSnapshots(%v): %v", req, err)
		}
		var ids []string
		for _, en := range resp.GetEntries() {
			ids = append(ids, en.GetSnapshot().GetSnapshotId())
		}
		return ids
	}
	listTests := []struct {
		name string
		req  *csi.ListSnapshotsRequest
		want int
	}{
		{"all", &csi.ListSnapshotsRequest{}, 2},
		{"by source volume", &csi.ListSnapshotsRequest{SourceVolumeId: vol.GetVolumeId()}, 1},
		{"by snapshot ID", &csi.ListSnapshotsRequest{SnapshotId: snap.GetSnapshotId()}, 1},
		{"by snapshot ID of another source", &csi.ListSnapshotsRequest{SnapshotId: snap.GetSnapshotId(), SourceVolumeId: other.GetVolumeId()}, 0},
		{"unknown snapshot ID", &csi.ListSnapshotsRequest{SnapshotId: "not-an-id"}, 0},
	}
	for _, tc := range listTests {
		if got := list(tc.req); len(got) != tc.want {
			t.Errorf("%s: got %v, want %d entries", tc.name, got, tc.want)
		}
	}
	if got := list(&csi.ListSnapshotsRequest{SnapshotId: snap.GetSnapshotId()}); len(got) == 1 && got[0] != snap.GetSnapshotId() {
		t.Errorf("by ID returned %v", got)
	}

	// Deleting the volume keeps its image in the trash while the snapshot needs it.
	if _, err := e.c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId(), Secrets: testSecrets}); err != nil {
		t.Fatal(err)
	}
	image := vol.GetVolumeContext()[CtxImageName]
	if img := e.pool.Image(image); img == nil || !img.trashed {
		t.Fatalf("source image %s: %+v, want trashed", image, img)
	}
	for range 2 { // the second call finds nothing to delete
		if _, err := e.c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId(), Secrets: testSecrets}); err != nil {
			t.Fatal(err)
		}
	}
	if got := list(&csi.ListSnapshotsRequest{SourceVolumeId: vol.GetVolumeId()}); len(got) != 0 {
		t.Errorf("deleted snapshot still listed: %v", got)
	}
	if img := e.pool.Image(image); img != nil {
		t.Errorf("trashed image %s not purged after its last snapshot went", image)
	}
}

func TestListSnapshotsPagination(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	vol := e.create(t, createReq("pvc-1", gib))
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		e.snapshot(t, "snap-"+n, vol.GetVolumeId())
	}
	seen := map[string]bool{}
	var tokens []string
	token := ""
	for {
		resp, err := e.c.ListSnapshots(ctx, &csi.ListSnapshotsRequest{MaxEntries: 2, StartingToken: token})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetEntries()) > 2 {
			t.Fatalf("page of %d entries", len(resp.GetEntries()))
		}
		for _, en := range resp.GetEntries() {
			seen[en.GetSnapshot().GetSnapshotId()] = true
		}
		if token = resp.GetNextToken(); token == "" {
			break
		}
		tokens = append(tokens, token)
	}
	if len(seen) != 5 || strings.Join(tokens, ",") != "2,4" {
		t.Errorf("saw %d snapshots with tokens %v", len(seen), tokens)
	}
	for _, bad := range []string{"x", "-1", "6"} {
		_, err := e.c.ListSnapshots(ctx, &csi.ListSnapshotsRequest{StartingToken: bad})
		if status.Code(err) != codes.Aborted {
			t.Errorf("token %q: got %v, want Aborted", bad, err)
		}
	}
}

func TestCreateVolumeFromSource(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name     string
		volume   bool // clone a volume, not a snapshot
		capRange *csi.CapacityRange
		wantSize int64
		code     codes.Code
	}{
		{"snapshot, larger", false, &csi.CapacityRange{RequiredBytes: 2 * gib}, 2 * gib, codes.OK},
		{"snapshot, size from source", false, &csi.CapacityRange{RequiredBytes: mib}, gib, codes.OK},
		{"snapshot, limit below source", false, &csi.CapacityRange{RequiredBytes: mib, LimitBytes: 10 * mib}, 0, codes.OutOfRange},
		{"volume, larger", true, &csi.CapacityRange{RequiredBytes: 3 * gib}, 3 * gib, codes.OK},
		{"volume, same size", true, &csi.CapacityRange{RequiredBytes: gib}, gib, codes.OK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			src := e.create(t, createReq("pvc-src", gib))
			srcImage := src.GetVolumeContext()[CtxImageName]
			source, wantSnap := fromVolume(src.GetVolumeId()), ""
			if !tc.volume {
				snap := e.snapshot(t, "snap-1", src.GetVolumeId())
				source = fromSnapshot(snap.GetSnapshotId())
				recs := e.records(t, journal.Snapshot)
				wantSnap = recs[0].SnapName
			}
			req := createReq("pvc-clone", 0)
			req.CapacityRange, req.VolumeContentSource = tc.capRange, source
			resp, err := e.c.CreateVolume(ctx, req)
			wantCode(t, err, tc.code)
			if err != nil {
				if got := e.pool.ImageNames(); len(got) != 1 {
					t.Errorf("failed clone left images %v", got)
				}
				return
			}
			vol := resp.GetVolume()
			img := e.pool.Image(vol.GetVolumeContext()[CtxImageName])
			if img == nil || img.size != tc.wantSize || vol.GetCapacityBytes() != tc.wantSize {
				t.Fatalf("clone image %+v, capacity %d; want size %d", img, vol.GetCapacityBytes(), tc.wantSize)
			}
			if img.parent == nil || img.parent.Image != srcImage || (wantSnap != "" && img.parent.Snap != wantSnap) {
				t.Errorf("clone parent %+v, want %s@%s", img.parent, srcImage, wantSnap)
			}
			if vol.GetContentSource().String() != source.String() {
				t.Errorf("content source %v, want %v", vol.GetContentSource(), source)
			}
			if tc.volume && len(e.pool.Image(srcImage).snaps) != 0 {
				t.Errorf("temporary clone snapshot left on the source: %v", e.pool.Image(srcImage).snaps)
			}
			if again := e.create(t, req); again.GetVolumeId() != vol.GetVolumeId() || e.pool.Calls("Clone") != 1 {
				t.Errorf("retry: %s vs %s, %d clones", again.GetVolumeId(), vol.GetVolumeId(), e.pool.Calls("Clone"))
			}
		})
	}
}

func TestCreateVolumeFromMissingSource(t *testing.T) {
	e := newEnv(t)
	e.create(t, createReq("pvc-src", gib)) // opens the pool
	gone := volumeid.ID{ClusterID: testClusterID, PoolID: testPoolID, UUID: "0c8a6c8e-7c1f-4a3b-9d3e-2b1f0f1e2d3c"}.String()
	for _, src := range []*csi.VolumeContentSource{fromSnapshot(gone), fromVolume(gone), fromSnapshot("garbage")} {
		req := createReq("pvc-clone", gib)
		req.VolumeContentSource = src
		_, err := e.c.CreateVolume(context.Background(), req)
		if status.Code(err) != codes.NotFound {
			t.Errorf("source %v: got %v, want NotFound", src, err)
		}
	}
}

func TestCloneChainFlattenedBeyondHardDepth(t *testing.T) {
	e := newEnv(t, func(o *ControllerOptions) { o.SoftCloneDepth, o.HardCloneDepth = 5, 1 })
	prev := e.create(t, createReq("pvc-0", gib))
	var images []*FakeImage
	for _, name := range []string{"pvc-1", "pvc-2"} {
		req := createReq(name, gib)
		req.VolumeContentSource = fromVolume(prev.GetVolumeId())
		prev = e.create(t, req)
		images = append(images, e.pool.Image(prev.GetVolumeContext()[CtxImageName]))
	}
	if images[0].parent == nil {
		t.Errorf("depth-1 clone was flattened")
	}
	if images[1].parent != nil || e.pool.Calls("Flatten") != 1 {
		t.Errorf("depth-2 clone parent %+v after %d flattens, want flattened once", images[1].parent, e.pool.Calls("Flatten"))
	}
}

// TestSnapshotReservesFromTheOpenImage: CreateSnapshot reserves the
// snapshot's name with the ID and size of the image it opens to snapshot
// it, reading neither itself.
func TestSnapshotReservesFromTheOpenImage(t *testing.T) {
	e := newEnv(t)
	vol := e.create(t, createReq("pvc-1", gib))
	image := vol.GetVolumeContext()[CtxImageName]
	heads := e.pool.Calls("Head")
	snap := e.snapshot(t, "snap-1", vol.GetVolumeId())
	if n := e.pool.Calls("Head") - heads; n != 0 {
		t.Errorf("%d header reads besides the open", n)
	}
	recs := e.records(t, journal.Snapshot)
	img := e.pool.Image(image)
	if len(recs) != 1 || recs[0].BackingID != img.id || recs[0].SizeBytes != gib || len(img.snaps) != 1 ||
		img.snaps[recs[0].SnapName].Size != snap.GetSizeBytes() {
		t.Fatalf("records %v, snapshots %v", recs, img.snaps)
	}
}

// TestSnapshotWaitsForFlatten: while a volume's background flatten runs,
// snapshots and clones of it wait; Unavailable when it outlasts the call,
// and they go ahead once it is done.
func TestSnapshotWaitsForFlatten(t *testing.T) {
	e := newEnv(t)
	vol := e.create(t, createReq("pvc-1", gib))
	key := flattenKey(e.pool, vol.GetVolumeContext()[CtxImageName])
	if !e.c.locks.TryLock(key) {
		t.Fatal("flatten lock taken")
	}
	snapReq := &csi.CreateSnapshotRequest{Name: "snap-1", SourceVolumeId: vol.GetVolumeId(), Secrets: testSecrets}
	cloneReq := createReq("pvc-clone", gib)
	cloneReq.VolumeContentSource = fromVolume(vol.GetVolumeId())
	short := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
		t.Cleanup(cancel)
		return ctx
	}
	_, err := e.c.CreateSnapshot(short(), snapReq)
	wantCode(t, err, codes.Unavailable)
	_, err = e.c.CreateVolume(short(), cloneReq)
	wantCode(t, err, codes.Unavailable)
	// The provisioner retries the clone: its reservation stays, its image is not made.
	if imgs := e.pool.ImageNames(); len(imgs) != 1 || len(e.records(t, journal.Volume)) != 2 {
		t.Errorf("a clone that timed out left images %v, records %d", imgs, len(e.records(t, journal.Volume)))
	}
	snapped := make(chan error, 1)
	go func() {
		_, err := e.c.CreateSnapshot(context.Background(), snapReq)
		snapped <- err
	}()
	e.c.locks.Unlock(key) // the flatten ends
	if err := <-snapped; err != nil {
		t.Fatalf("snapshot after the flatten: %v", err)
	}
	e.create(t, cloneReq)
}

func TestDecideFlatten(t *testing.T) {
	tests := []struct {
		depth, soft, hard int
		want              flattenDecision
	}{
		{0, 4, 8, keepClone},
		{4, 4, 8, keepClone},
		{5, 4, 8, flattenInBackground},
		{8, 4, 8, flattenInBackground},
		{9, 4, 8, flattenNow},
		{3, 8, 2, flattenNow}, // hard wins over a larger soft limit
	}
	for _, tc := range tests {
		if got := decideFlatten(tc.depth, tc.soft, tc.hard); got != tc.want {
			t.Errorf("decideFlatten(%d, %d, %d) = %d, want %d", tc.depth, tc.soft, tc.hard, got, tc.want)
		}
	}
}

func TestControllerExpandVolume(t *testing.T) {
	tests := []struct {
		name          string
		capability    *csi.VolumeCapability
		required      int64
		wantSize      int64
		nodeExpansion bool
	}{
		{"grow filesystem", mountCap(rwo), 2 * gib, 2 * gib, true},
		{"grow block", blockCap(rwo), 3*gib + 1, 3*gib + mib, false},
		{"already large enough", mountCap(rwo), gib / 2, gib, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			vol := e.create(t, createReq("pvc-1", gib))
			resp, err := e.c.ControllerExpandVolume(context.Background(), &csi.ControllerExpandVolumeRequest{
				VolumeId: vol.GetVolumeId(), CapacityRange: &csi.CapacityRange{RequiredBytes: tc.required},
				VolumeCapability: tc.capability, Secrets: testSecrets})
			if err != nil {
				t.Fatal(err)
			}
			img := e.pool.Image(vol.GetVolumeContext()[CtxImageName])
			if resp.GetCapacityBytes() != tc.wantSize || img.size != tc.wantSize || resp.GetNodeExpansionRequired() != tc.nodeExpansion {
				t.Errorf("response %v, image size %d; want %d, node expansion %v", resp, img.size, tc.wantSize, tc.nodeExpansion)
			}
		})
	}

	e := newEnv(t)
	vol := e.create(t, createReq("pvc-1", gib))
	for name, req := range map[string]*csi.ControllerExpandVolumeRequest{
		"no capacity range": {VolumeId: vol.GetVolumeId(), Secrets: testSecrets},
		"no volume ID":      {CapacityRange: &csi.CapacityRange{RequiredBytes: gib}},
	} {
		_, err := e.c.ControllerExpandVolume(context.Background(), req)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: got %v, want InvalidArgument", name, err)
		}
	}
	_, err := e.c.ControllerExpandVolume(context.Background(), &csi.ControllerExpandVolumeRequest{
		VolumeId: "garbage", CapacityRange: &csi.CapacityRange{RequiredBytes: gib}})
	wantCode(t, err, codes.NotFound)
}

// TestControllerExpandVolumeHolders: an image a client no record explains,
// or a stale mapping, watches is not grown; the watch of the controller's
// own open is no holder, and the records are read only when a watcher is
// another client's.
func TestControllerExpandVolumeHolders(t *testing.T) {
	const other = "10.0.0.9:0/7"
	tests := []struct {
		name        string
		watcher     string
		records     map[string]any
		code        codes.Code
		readRecords bool
	}{
		{"own open", "10.0.0.1:0/1", nil, codes.OK, false},
		{"unknown client", other, nil, codes.FailedPrecondition, true},
		{"stale mapping", other, map[string]any{metaMapPrefix + "node-b": NodeMapping{Node: "node-b", ClientAddr: other}},
			codes.FailedPrecondition, true},
		{"attached mapping", other, map[string]any{
			metaMapPrefix + "node-b":    NodeMapping{Node: "node-b", ClientAddr: other},
			metaAttachPrefix + "node-b": Attachment{Node: "node-b"}}, codes.OK, true},
		{"fenced client", other, map[string]any{metaFencePrefix + other: Fence{Node: "node-b", ClientAddr: other,
			Expires: time.Now().Add(time.Hour), State: FenceDone}}, codes.OK, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			vol := e.create(t, createReq("pvc-1", gib))
			image := vol.GetVolumeContext()[CtxImageName]
			e.pool.SetWatchers(image, Watcher{Addr: tc.watcher, ID: 7})
			meta := map[string]string{}
			for k, v := range tc.records {
				b, err := json.Marshal(v)
				if err != nil {
					t.Fatal(err)
				}
				meta[k] = string(b)
			}
			if err := e.pool.SetMetadata(context.Background(), image, meta); err != nil {
				t.Fatal(err)
			}
			before := e.pool.Calls("Records")
			_, err := e.c.ControllerExpandVolume(context.Background(), &csi.ControllerExpandVolumeRequest{
				VolumeId: vol.GetVolumeId(), CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * gib}, Secrets: testSecrets})
			wantCode(t, err, tc.code)
			want := 2 * gib
			if tc.code != codes.OK {
				want = gib
			}
			if size := e.pool.Image(image).size; size != want {
				t.Errorf("image size %d, want %d", size, want)
			}
			if read := e.pool.Calls("Records") > before; read != tc.readRecords {
				t.Errorf("records read: %v, want %v", read, tc.readRecords)
			}
		})
	}
}

func TestValidateVolumeCapabilities(t *testing.T) {
	e := newEnv(t)
	vol := e.create(t, createReq("pvc-1", gib))
	tests := []struct {
		name      string
		id        string
		caps      []*csi.VolumeCapability
		code      codes.Code
		confirmed bool
	}{
		{"RWO filesystem", vol.GetVolumeId(), []*csi.VolumeCapability{mountCap(rwo)}, codes.OK, true},
		{"RWX block", vol.GetVolumeId(), []*csi.VolumeCapability{blockCap(rwx)}, codes.OK, true},
		{"RWX filesystem", vol.GetVolumeId(), []*csi.VolumeCapability{mountCap(rwo), mountCap(rwx)}, codes.OK, false},
		{"no capabilities", vol.GetVolumeId(), nil, codes.InvalidArgument, false},
		{"unknown volume", "garbage", []*csi.VolumeCapability{mountCap(rwo)}, codes.NotFound, false},
		{"missing volume", volumeid.ID{ClusterID: testClusterID, PoolID: testPoolID,
			UUID: "0c8a6c8e-7c1f-4a3b-9d3e-2b1f0f1e2d3c"}.String(), []*csi.VolumeCapability{mountCap(rwo)}, codes.NotFound, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := e.c.ValidateVolumeCapabilities(context.Background(), &csi.ValidateVolumeCapabilitiesRequest{
				VolumeId: tc.id, VolumeCapabilities: tc.caps, Secrets: testSecrets})
			wantCode(t, err, tc.code)
			if err != nil {
				return
			}
			if (resp.GetConfirmed() != nil) != tc.confirmed {
				t.Errorf("confirmed = %v, want %v", resp.GetConfirmed(), tc.confirmed)
			}
			if !tc.confirmed && resp.GetMessage() == "" {
				t.Error("unconfirmed without a message")
			}
		})
	}
}

// TestValidateVolumeCapabilitiesChecksParameters: the class parameters and
// volume context a request names are confirmed only when they describe the
// volume.
func TestValidateVolumeCapabilitiesChecksParameters(t *testing.T) {
	e := newEnv(t)
	req := createReq("pvc-1", gib)
	req.Parameters[ParamImageFeatures] = "layering,exclusive-lock"
	req.Parameters[ParamMapOptions] = "krbd:lock_on_read"
	vol := e.create(t, req)
	ctxWith := func(kv ...string) map[string]string {
		m := maps.Clone(vol.GetVolumeContext())
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	paramsWith := func(kv ...string) map[string]string {
		m := maps.Clone(req.Parameters)
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name    string
		params  map[string]string
		vctx    map[string]string
		wantWhy string // "" means confirmed
	}{
		{"the class and context it was made with", req.Parameters, vol.GetVolumeContext(), ""},
		{"features in another order", paramsWith(ParamImageFeatures, "exclusive-lock, layering"), ctxWith(ParamImageFeatures, "exclusive-lock,layering"), ""},
		{"another mapper that maps the features", nil, ctxWith(ParamMounter, "rbd-nbd"), ""},
		{"other features", paramsWith(ParamImageFeatures, "layering"), nil, `"imageFeatures"`},
		{"other pool", paramsWith(ParamPool, "other"), nil, `"pool"`},
		{"other data pool", paramsWith(ParamDataPool, "ec"), nil, `"dataPool"`},
		{"striping the volume lacks", paramsWith(ParamObjectSize, "1048576"), nil, `"objectSize"`},
		{"a class Pelagic refuses", paramsWith("encrypted", "true"), nil, `"encrypted"`},
		{"context naming another image", nil, ctxWith(CtxImageName, "csi-vol-other"), `"imageName"`},
		{"context naming another pool", nil, ctxWith(ParamPool, "other"), `"pool"`},
		{"context without the image", nil, map[string]string{ParamClusterID: testClusterID, ParamPool: testPool}, `"imageName"`},
		{"context with a key Pelagic never returns", nil, ctxWith("staticVolume", "true"), `"staticVolume"`},
		{"context with options a node refuses", nil, ctxWith(ParamMapOptions, "krbd:try-netlink"), `"mapOptions"`},
		{"context with an unknown mapper", nil, ctxWith(ParamMounter, "iscsi"), `"mounter"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := e.c.ValidateVolumeCapabilities(context.Background(), &csi.ValidateVolumeCapabilitiesRequest{
				VolumeId: vol.GetVolumeId(), VolumeCapabilities: []*csi.VolumeCapability{mountCap(rwo)},
				Parameters: tc.params, VolumeContext: tc.vctx, Secrets: testSecrets})
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantWhy == "" {
				if resp.GetConfirmed() == nil || !maps.Equal(resp.GetConfirmed().GetParameters(), tc.params) ||
					!maps.Equal(resp.GetConfirmed().GetVolumeContext(), tc.vctx) {
					t.Fatalf("not confirmed as given: %v", resp)
				}
				return
			}
			if resp.GetConfirmed() != nil || !strings.Contains(resp.GetMessage(), tc.wantWhy) {
				t.Fatalf("response %v: want it unconfirmed, naming %s", resp, tc.wantWhy)
			}
		})
	}
}

func TestListVolumesPagination(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	want := map[string]bool{}
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		want[e.create(t, createReq("pvc-"+n, gib)).GetVolumeId()] = true
	}
	req := createReq("pvc-other-pool", gib)
	req.Parameters[ParamPool] = "other"
	want[e.create(t, req).GetVolumeId()] = true

	seen, token, pages := map[string]bool{}, "", 0
	for {
		resp, err := e.c.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 4, StartingToken: token})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, en := range resp.GetEntries() {
			if seen[en.GetVolume().GetVolumeId()] || en.GetVolume().GetCapacityBytes() != gib {
				t.Errorf("entry %v repeated or wrong size", en.GetVolume())
			}
			seen[en.GetVolume().GetVolumeId()] = true
		}
		if token = resp.GetNextToken(); token == "" {
			break
		}
	}
	if !maps.Equal(seen, want) || pages != 2 {
		t.Errorf("listed %v in %d pages, want %v in 2", seen, pages, want)
	}
	for _, tc := range []struct {
		req  *csi.ListVolumesRequest
		code codes.Code
	}{
		{&csi.ListVolumesRequest{StartingToken: "x"}, codes.Aborted},
		{&csi.ListVolumesRequest{StartingToken: "99"}, codes.Aborted},
		{&csi.ListVolumesRequest{MaxEntries: -1}, codes.InvalidArgument},
	} {
		_, err := e.c.ListVolumes(ctx, tc.req)
		if status.Code(err) != tc.code {
			t.Errorf("%v: got %v, want %v", tc.req, err, tc.code)
		}
	}
}

func TestControllerGetVolumeAndCapacity(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	vol := e.create(t, createReq("pvc-1", gib))
	got, err := e.c.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: vol.GetVolumeId()})
	if err != nil || got.GetVolume().GetCapacityBytes() != gib {
		t.Errorf("ControllerGetVolume: %v, %v", got, err)
	}
	tests := []struct {
		name string
		req  *csi.GetCapacityRequest
		want int64
	}{
		{"known pool", &csi.GetCapacityRequest{Parameters: map[string]string{ParamPool: testPool}}, 100 << 30},
		{"unknown pool", &csi.GetCapacityRequest{Parameters: map[string]string{ParamPool: "nope"}}, 0},
		{"RWX filesystem", &csi.GetCapacityRequest{VolumeCapabilities: []*csi.VolumeCapability{mountCap(rwx)}}, 0},
	}
	for _, tc := range tests {
		resp, err := e.c.GetCapacity(ctx, tc.req)
		if err != nil || resp.GetAvailableCapacity() != tc.want {
			t.Errorf("%s: %v, %v; want %d", tc.name, resp, err, tc.want)
		}
	}
}
