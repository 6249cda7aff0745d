package e2e

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rados"
	librbd "github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/e2e/cephtest"
	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
)

// controllerEnv is a controller on the local cluster with a pool of its own.
type controllerEnv struct {
	cluster *cephtest.Cluster
	cfg     *ceph.Config
	cfgPath string
	conns   *ceph.ConnPool
	pool    string
	secrets map[string]string
	params  map[string]string
}

// adminPool connects to cluster c as its admin, over conns, and opens pool.
func adminPool(ctx context.Context, t testing.TB, cfg *ceph.Config, conns *ceph.ConnPool, c *cephtest.Cluster,
	pool string) (rbd.Cluster, rbd.Pool) {
	t.Helper()
	cl, err := (&rbd.CephConnector{Config: cfg, Conns: conns}).Connect(ctx, testClusterID,
		ceph.Credentials{ID: c.AdminID, Key: c.AdminKey})
	if err != nil {
		t.Fatal(err)
	}
	p, err := cl.Pool(ctx, pool, "")
	if err != nil {
		t.Fatal(err)
	}
	return cl, p
}

func newControllerEnv(t testing.TB) *controllerEnv {
	return newControllerEnvOn(t, cephtest.Get(t))
}

// newControllerEnvOn is newControllerEnv on a given cluster.
func newControllerEnvOn(t testing.TB, c *cephtest.Cluster) *controllerEnv {
	cfg, cfgPath := clusterConfig(t, c)
	conns := ceph.NewConnPool(ceph.Timeouts{})
	t.Cleanup(conns.Close)
	pool := createPool(t, c, uniqueName("ctrl"))
	return &controllerEnv{
		cluster: c, cfg: cfg, cfgPath: cfgPath, conns: conns, pool: pool, secrets: rbdSecrets(c),
		params: map[string]string{"clusterID": testClusterID, "pool": pool},
	}
}

// controller returns a fresh controller, as a restarted process would be,
// sharing only the cluster; createHook runs after each CreateVolume step.
func (e *controllerEnv) controller(createHook func(step string)) *rbd.Controller {
	return e.controllerWith(rbd.ControllerOptions{CreateHook: createHook})
}

func (e *controllerEnv) controllerWith(o rbd.ControllerOptions) *rbd.Controller {
	o.Connector = &rbd.CephConnector{Config: e.cfg, Conns: ceph.NewConnPool(ceph.Timeouts{})}
	o.Config = e.cfg
	return rbd.NewController(o)
}

func (e *controllerEnv) createReq(name string, size int64) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{
		Name:               name,
		CapacityRange:      &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)},
		Parameters:         e.params,
		Secrets:            e.secrets,
	}
}

func mountCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

// images lists the pool's images with the admin user, outside the driver.
func (e *controllerEnv) images(t *testing.T) []string {
	t.Helper()
	return imageNames(t, e.adminIOContext(t))
}

func (e *controllerEnv) trash(t *testing.T) []librbd.TrashInfo {
	t.Helper()
	items, err := librbd.GetTrashList(e.adminIOContext(t))
	if err != nil {
		t.Fatal(err)
	}
	return items
}

func (e *controllerEnv) adminIOContext(t testing.TB) *rados.IOContext {
	t.Helper()
	cc, _ := e.cfg.Cluster(testClusterID)
	conn, err := e.conns.Get(testContext(t, 30*time.Second), cc,
		ceph.Credentials{ID: e.cluster.AdminID, Key: e.cluster.AdminKey})
	if err != nil {
		t.Fatal(err)
	}
	ioctx, err := conn.OpenIOContext(e.pool)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ioctx.Destroy)
	return ioctx
}

// TestConcurrentCreateSameName: 50 concurrent calls with one name, spread
// over two controllers (so the in-process lock cannot be what saves us),
// retried as the provisioner would, make exactly one image.
func TestConcurrentCreateSameName(t *testing.T) {
	e := newControllerEnv(t)
	ctrls := []*rbd.Controller{e.controller(nil), e.controller(nil)}
	const calls = 50
	ids := make([]string, calls)
	var wg sync.WaitGroup
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := testContext(t, 2*time.Minute)
			for {
				resp, err := ctrls[i%2].CreateVolume(ctx, e.createReq("pvc-concurrent", 64<<20))
				if status.Code(err) == codes.Aborted {
					time.Sleep(20 * time.Millisecond)
					continue
				}
				if err != nil {
					t.Errorf("call %d: %v", i, err)
					return
				}
				ids[i] = resp.GetVolume().GetVolumeId()
				return
			}
		}()
	}
	wg.Wait()
	for i, id := range ids {
		if id != ids[0] {
			t.Fatalf("call %d got volume %s, call 0 got %s", i, id, ids[0])
		}
	}
	if imgs := e.images(t); len(imgs) != 1 {
		t.Fatalf("pool holds %d images, want exactly 1: %v", len(imgs), imgs)
	}
	if _, err := ctrls[0].DeleteVolume(testContext(t, time.Minute),
		&csi.DeleteVolumeRequest{VolumeId: ids[0], Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}
}

// TestCrashBetweenReservationAndImage stops a controller right after it
// reserved the name and before it created the image; a new controller's
// retry must finish the job under the same ID and leave no orphan.
func TestCrashBetweenReservationAndImage(t *testing.T) {
	e := newControllerEnv(t)
	crashed := make(chan struct{})
	never := make(chan struct{}) // the stuck controller never resumes: it "died"
	dying := e.controller(func(step string) {
		if step != rbd.CreateStepReserved {
			return
		}
		close(crashed)
		<-never
	})
	go func() { _, _ = dying.CreateVolume(context.Background(), e.createReq("pvc-crash", 64<<20)) }()
	select {
	case <-crashed:
	case <-time.After(time.Minute):
		t.Fatal("the first controller never reached its reservation")
	}
	if imgs := e.images(t); len(imgs) != 0 {
		t.Fatalf("an image exists before the retry: %v", imgs)
	}

	restarted := e.controller(nil)
	resp, err := restarted.CreateVolume(testContext(t, time.Minute), e.createReq("pvc-crash", 64<<20))
	if err != nil {
		t.Fatalf("retry after the crash: %v", err)
	}
	again, err := restarted.CreateVolume(testContext(t, time.Minute), e.createReq("pvc-crash", 64<<20))
	if err != nil || again.GetVolume().GetVolumeId() != resp.GetVolume().GetVolumeId() {
		t.Fatalf("second retry = %v, %v; want the same volume", again.GetVolume().GetVolumeId(), err)
	}
	imgs := e.images(t)
	if len(imgs) != 1 || !strings.HasSuffix(resp.GetVolume().GetVolumeId(), strings.TrimPrefix(imgs[0], "csi-vol-")) {
		t.Fatalf("images after the retry = %v, want exactly the one of %s", imgs, resp.GetVolume().GetVolumeId())
	}
	if _, err := restarted.DeleteVolume(testContext(t, time.Minute),
		&csi.DeleteVolumeRequest{VolumeId: resp.GetVolume().GetVolumeId(), Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}
	if imgs := e.images(t); len(imgs) != 0 {
		t.Fatalf("images after delete = %v", imgs)
	}
}

// TestDeleteParentWithLiveClone deletes a volume while a clone of it
// lives; the clone stays usable, and the parent leaves the trash once the
// clone is gone.
func TestDeleteParentWithLiveClone(t *testing.T) {
	e := newControllerEnv(t)
	ctrl := e.controller(nil)
	ctx := testContext(t, 2*time.Minute)
	parent, err := ctrl.CreateVolume(ctx, e.createReq("pvc-parent", 64<<20))
	if err != nil {
		t.Fatal(err)
	}
	cloneReq := e.createReq("pvc-clone", 128<<20)
	cloneReq.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: parent.GetVolume().GetVolumeId()}}}
	clone, err := ctrl.CreateVolume(ctx, cloneReq)
	if err != nil {
		t.Fatal(err)
	}
	if clone.GetVolume().GetCapacityBytes() != 128<<20 {
		t.Errorf("clone capacity = %d, want %d", clone.GetVolume().GetCapacityBytes(), 128<<20)
	}
	if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: parent.GetVolume().GetVolumeId(), Secrets: e.secrets}); err != nil {
		t.Fatalf("deleting the parent of a live clone: %v", err)
	}
	if _, err := ctrl.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{
		VolumeId: clone.GetVolume().GetVolumeId(), Secrets: e.secrets,
		VolumeCapabilities: []*csi.VolumeCapability{mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)},
	}); err != nil {
		t.Fatalf("clone after its parent was deleted: %v", err)
	}
	if imgs := e.images(t); len(imgs) != 1 {
		t.Fatalf("live images = %v, want only the clone", imgs)
	}
	if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: clone.GetVolume().GetVolumeId(), Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}
	if imgs, trash := e.images(t), e.trash(t); len(imgs) != 0 || len(trash) != 0 {
		t.Fatalf("after deleting both: images %v, trash %v", imgs, trash)
	}
}

// TestDeleteSnapshotPurgesItsDeletedVolume: a volume deleted while its
// snapshot lives waits in the trash, and goes with the snapshot; the
// snapshot of a live volume goes alone.
func TestDeleteSnapshotPurgesItsDeletedVolume(t *testing.T) {
	e := newControllerEnv(t)
	ctrl := e.controller(nil)
	ctx := testContext(t, 2*time.Minute)
	snapshotOf := func(name string) (*csi.Volume, *csi.Snapshot) {
		t.Helper()
		vol, err := ctrl.CreateVolume(ctx, e.createReq("pvc-"+name, 64<<20))
		if err != nil {
			t.Fatal(err)
		}
		snap, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-" + name,
			SourceVolumeId: vol.GetVolume().GetVolumeId(), Secrets: e.secrets})
		if err != nil {
			t.Fatal(err)
		}
		return vol.GetVolume(), snap.GetSnapshot()
	}
	deleteSnapshot := func(s *csi.Snapshot) {
		t.Helper()
		if _, err := ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: s.GetSnapshotId(), Secrets: e.secrets}); err != nil {
			t.Fatal(err)
		}
	}

	live, liveSnap := snapshotOf("live")
	deleteSnapshot(liveSnap)
	if imgs, trash := e.images(t), e.trash(t); len(imgs) != 1 || len(trash) != 0 {
		t.Fatalf("after deleting a live volume's snapshot: images %v, trash %v; want the volume's image only", imgs, trash)
	}

	gone, goneSnap := snapshotOf("gone")
	if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: gone.GetVolumeId(), Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}
	if trash := e.trash(t); len(trash) != 1 {
		t.Fatalf("trash after deleting a volume with a snapshot = %v, want its image", trash)
	}
	deleteSnapshot(goneSnap)
	if imgs, trash := e.images(t), e.trash(t); len(imgs) != 1 || len(trash) != 0 {
		t.Fatalf("after deleting the deleted volume's snapshot: images %v, trash %v; want the live volume's image only", imgs, trash)
	}
	if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: live.GetVolumeId(), Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}
}

// TestMalformedIDsNeverPanic sends garbage IDs to every RPC that takes one.
func TestMalformedIDsNeverPanic(t *testing.T) {
	e := newControllerEnv(t)
	ctrl := e.controller(nil)
	ctx := testContext(t, time.Minute)
	for _, id := range []string{"x", "0001-", "0001-0003-e2e-", "0001-ffff-" + strings.Repeat("a", 80),
		"0001-0003-e2e-0000000000000063-00000000-0000-0000-0000-000000000000", "\x00\xff", strings.Repeat("-", 200)} {
		if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: e.secrets}); err != nil {
			t.Errorf("DeleteVolume(%q) = %v, want success for a volume that does not exist", id, err)
		}
		_, err := ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id, Secrets: e.secrets,
			CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 30}})
		if status.Code(err) != codes.NotFound {
			t.Errorf("ControllerExpandVolume(%q) = %v, want NotFound", id, err)
		}
		_, err = ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: id, Secrets: e.secrets})
		if status.Code(err) != codes.NotFound {
			t.Errorf("CreateSnapshot(%q) = %v, want NotFound", id, err)
		}
	}
}

// TestCloneChainIsBounded clones a volume from its own clone again and
// again: past the hard depth the new clone is flattened at once, so the
// chain never grows unbounded.
func TestCloneChainIsBounded(t *testing.T) {
	e := newControllerEnv(t)
	ctrl := e.controllerWith(rbd.ControllerOptions{SoftCloneDepth: 1, HardCloneDepth: 2})
	ctx := testContext(t, 3*time.Minute)
	prev, err := ctrl.CreateVolume(ctx, e.createReq("pvc-gen0", 16<<20))
	if err != nil {
		t.Fatal(err)
	}
	ioctx := e.adminIOContext(t)
	depth := func(vol *csi.Volume) int {
		name := vol.GetVolumeContext()["imageName"]
		d := 0
		for {
			img, err := librbd.OpenImageReadOnly(ioctx, name, librbd.NoSnapshot)
			if err != nil {
				t.Fatal(err)
			}
			parent, err := img.GetParent()
			img.Close()
			if err != nil {
				return d
			}
			d++
			name = parent.Image.ImageName
		}
	}
	for gen := 1; gen <= 4; gen++ {
		req := e.createReq(fmt.Sprintf("pvc-gen%d", gen), 16<<20)
		req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: prev.GetVolume().GetVolumeId()}}}
		// Cloning a volume whose background flatten still runs is Aborted
		// until it is done; the provisioner retries, and so does this.
		next, err := ctrl.CreateVolume(ctx, req)
		for status.Code(err) == codes.Aborted && ctx.Err() == nil {
			time.Sleep(100 * time.Millisecond)
			next, err = ctrl.CreateVolume(ctx, req)
		}
		if err != nil {
			t.Fatalf("generation %d: %v", gen, err)
		}
		if d := depth(next.GetVolume()); d > 2 {
			t.Fatalf("generation %d has clone depth %d, more than the hard limit 2", gen, d)
		}
		prev = next
	}
}

// TestSnapshotDuringBackgroundFlattenRestores snapshots a clone at once,
// while it is being flattened in the background, and restores the
// snapshot: a snapshot taken mid-flatten names a parent snapshot the
// flatten frees, so the controller waits for the flatten first.
func TestSnapshotDuringBackgroundFlattenRestores(t *testing.T) {
	e := newControllerEnv(t)
	ctrl := e.controllerWith(rbd.ControllerOptions{SoftCloneDepth: 1, HardCloneDepth: 8})
	ctx := testContext(t, 3*time.Minute)
	const size = 128 << 20
	prev, err := ctrl.CreateVolume(ctx, e.createReq("pvc-data", size))
	if err != nil {
		t.Fatal(err)
	}
	writeImage(t, e.adminIOContext(t), prev.GetVolume().GetVolumeContext()[rbd.CtxImageName],
		bytes.Repeat([]byte{0xa5}, size)) // data for the flatten to copy up
	for gen := 1; gen <= 2; gen++ { // the second clone is past the soft depth
		req := e.createReq(fmt.Sprintf("pvc-copy%d", gen), size)
		req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: prev.GetVolume().GetVolumeId()}}}
		if prev, err = ctrl.CreateVolume(ctx, req); err != nil {
			t.Fatalf("clone %d: %v", gen, err)
		}
	}
	snap, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-flattening",
		SourceVolumeId: prev.GetVolume().GetVolumeId(), Secrets: e.secrets})
	if err != nil {
		t.Fatal(err)
	}
	restore := e.createReq("pvc-restore", size)
	restore.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshot().GetSnapshotId()}}}
	if _, err := ctrl.CreateVolume(ctx, restore); err != nil {
		t.Fatalf("restoring a snapshot taken during the flatten: %v", err)
	}
}

// TestRookCephBlockClass creates, grows, snapshots and deletes a volume
// with the parameters of Rook's rook-ceph-block example, unchanged.
func TestRookCephBlockClass(t *testing.T) {
	e := newControllerEnv(t)
	ctrl := e.controller(nil)
	ctx := testContext(t, 2*time.Minute)
	req := e.createReq("pvc-rook", 64<<20)
	// Rook's class for 5.4 and later kernels (see classes_test.go), with
	// what the provisioner adds.
	req.Parameters = class(rookClasses[1].params, map[string]string{
		"clusterID": testClusterID, "pool": e.pool,
		"csi.storage.k8s.io/pvc/name":      "data-web-0",
		"csi.storage.k8s.io/pvc/namespace": "default",
		"csi.storage.k8s.io/pv/name":       "pvc-6f1c",
	})
	vol, err := ctrl.CreateVolume(ctx, req)
	if err != nil {
		t.Fatalf("rook-ceph-block parameters: %v", err)
	}
	id := vol.GetVolume().GetVolumeId()
	img, err := librbd.OpenImageReadOnly(e.adminIOContext(t), vol.GetVolume().GetVolumeContext()["imageName"], librbd.NoSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	features, _ := img.GetFeatures()
	owner, _ := img.GetMetadata("pelagic.csi/owner")
	img.Close()
	want := librbd.FeatureLayering | librbd.FeatureExclusiveLock | librbd.FeatureObjectMap | librbd.FeatureFastDiff | librbd.FeatureDeepFlatten
	if features&want != want {
		t.Errorf("image features = %#x, want %#x set", features, want)
	}
	if !strings.Contains(owner, `"pvc":"data-web-0"`) || !strings.Contains(owner, `"namespace":"default"`) {
		t.Errorf("owner metadata = %q, want the PVC data-web-0 in default", owner)
	}
	if _, err := ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id, Secrets: e.secrets,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 128 << 20}}); err != nil {
		t.Fatal(err)
	}
	snap, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-rook", SourceVolumeId: id, Secrets: e.secrets})
	if err != nil || !snap.GetSnapshot().GetReadyToUse() || snap.GetSnapshot().GetSizeBytes() != 128<<20 {
		t.Fatalf("snapshot = %v, %v", snap, err)
	}
	if _, err := ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshot().GetSnapshotId(), Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}
}

// TestListAfterRestart: a restarted controller lists the volumes an
// earlier one made as soon as any call with secrets opened the cluster.
func TestListAfterRestart(t *testing.T) {
	e := newControllerEnv(t)
	ctx := testContext(t, time.Minute)
	first, err := e.controller(nil).CreateVolume(ctx, e.createReq("pvc-before-restart", 16<<20))
	if err != nil {
		t.Fatal(err)
	}
	restarted := e.controller(nil)
	if _, err := restarted.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-after-restart",
		SourceVolumeId: first.GetVolume().GetVolumeId(), Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}
	vols, err := restarted.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, v := range vols.GetEntries() {
		found = found || v.GetVolume().GetVolumeId() == first.GetVolume().GetVolumeId()
	}
	if !found {
		t.Fatalf("the restarted controller does not list %s: %v", first.GetVolume().GetVolumeId(), vols.GetEntries())
	}
}

// TestGetCapacityOfANewPool asks for the capacity of a pool created a moment
// ago, before the mgr's statistics list it: the answer waits for them.
func TestGetCapacityOfANewPool(t *testing.T) {
	e := newControllerEnv(t)
	ctrl := e.controller(nil)
	ctx := testContext(t, time.Minute)
	if _, err := ctrl.CreateVolume(ctx, e.createReq("pvc-capacity", 16<<20)); err != nil {
		t.Fatal(err)
	}
	resp, err := ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: e.params})
	if err != nil {
		t.Fatalf("GetCapacity of the new pool %s: %v", e.pool, err)
	}
	if resp.GetAvailableCapacity() <= 0 {
		t.Errorf("GetCapacity of the new pool %s = %d bytes, want some", e.pool, resp.GetAvailableCapacity())
	}
}
