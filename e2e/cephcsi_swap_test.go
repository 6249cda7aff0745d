package e2e

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rados"
	librbd "github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/e2e/cephcsi"
	"github.com/pelagic-csi/pelagic/e2e/cephtest"
	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/driver"
	"github.com/pelagic-csi/pelagic/pkg/kube"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

// swapRBD is what ceph-csi provisioned before it was replaced by Pelagic, with Pelagic's
// controller serving the same config under the same driver name.
type swapRBD struct {
	e *cephcsiRBD
	swapCtrl
	base map[string]string // the class of the plain volume

	plain, data, ns, restore, clone *csi.Volume   // by ceph-csi
	snap, nsSnap, keep              *csi.Snapshot // by ceph-csi: of plain, ns and data
	names                           map[string]string
	params                          map[string]map[string]string // by request name
	before                          map[string]map[string]string // what must be left: journal objects, metadata

	ownSnap                         *csi.Snapshot // by Pelagic, of plain
	ownRestore, ownClone, ownNSCopy *csi.Volume   // by Pelagic, from ceph-csi's
	ownNew, ownHalf                 *csi.Volume   // new volumes, the second over a half reservation
}

func uuidOf(id string) string { return id[len(id)-36:] }

// TestCephCSISwapRBD provisions with the real ceph-csi (plain volumes, a data pool, a RADOS
// namespace, snapshots, a restore, a clone), stops it, starts Pelagic with the same config and
// driver name, runs every controller call on those volumes, and checks the pool's images, trash
// and journal objects: nothing left that should be gone, nothing gone that should be left.
func TestCephCSISwapRBD(t *testing.T) {
	e := newCephCSIRBD(t)
	ctx := testContext(t, 10*time.Minute)
	s := &swapRBD{e: e, names: map[string]string{}, params: map[string]map[string]string{}}
	s.provision(ctx, t)
	if err := e.d.Stop(); err != nil {
		t.Fatal(err)
	}
	s.swapCtrl = swapCtrl{ctrl: startPelagicFor(t, e), secrets: e.secrets}

	s.checkFound(ctx, t)
	s.checkPelagicctl(ctx, t)
	s.checkPublishAndExpand(ctx, t)
	s.checkSnapshots(ctx, t)
	s.checkCopies(ctx, t)
	s.checkDeletions(ctx, t)
	s.checkUnknownIDs(ctx, t)
	s.checkLeft(t)
	s.deleteTheRest(ctx, t)
}

// startPelagicFor serves Pelagic's controller with ceph-csi's config and driver name.
func startPelagicFor(t *testing.T, e *cephcsiRBD) csi.ControllerClient {
	t.Helper()
	return startPelagicController(t, e.clusters, driver.Options{Type: "rbd", DriverName: "rbd.csi.ceph.com",
		Nodes: kube.NewFakeNodes("node-a", "node-b")})
}

// startPelagicController serves Pelagic's controller as o says, with the config.json ceph-csi
// was given for clusters.
func startPelagicController(t *testing.T, clusters []cephcsi.Cluster, o driver.Options) csi.ControllerClient {
	t.Helper()
	o.Config, o.Controller = cephcsiConfig(t, clusters), true
	endpoint, _ := startDriver(t, o)
	return csi.NewControllerClient(dial(t, endpoint))
}

// cephcsiConfig is Pelagic's config read from the config.json ceph-csi was given for clusters.
func cephcsiConfig(t *testing.T, clusters []cephcsi.Cluster) *ceph.Config {
	t.Helper()
	cfgJSON, err := cephcsi.ConfigJSON(clusters)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := loadConfig(t, cfgJSON)
	return cfg
}

// provision makes, with ceph-csi, every kind of volume and snapshot it provisions.
func (s *swapRBD) provision(ctx context.Context, t *testing.T) {
	e := s.e
	s.base = map[string]string{"clusterID": cephcsiClusterID, "pool": e.pool, "imageFeatures": "layering",
		pvcNameKey: "data-db-0", pvcNamespaceKey: "shop", pvNameKey: "pv-data-db-0"}
	create := func(key string, params map[string]string, src *csi.VolumeContentSource) *csi.Volume {
		s.names[key], s.params[key] = uniqueName("pvc-swap-"+key), params
		return e.createVolume(ctx, t, s.names[key], params, src)
	}
	s.plain = create("plain", s.base, nil)
	writeImage(t, e.io, s.image(s.plain), []byte("before the snapshot"))
	s.data = create("data", withParams(s.base, "dataPool", e.dataPool), nil)
	s.ns = create("ns", withParams(s.base, "clusterID", cephcsiNSClusterID), nil)
	s.nsSnap = e.createSnapshot(ctx, t, uniqueName("snapshot-swap-ns"), s.ns.GetVolumeId(), map[string]string{"clusterID": cephcsiNSClusterID})
	s.names["snap"] = uniqueName("snapshot-swap")
	s.snap = e.createSnapshot(ctx, t, s.names["snap"], s.plain.GetVolumeId(), map[string]string{"clusterID": cephcsiClusterID})
	writeImage(t, e.io, s.image(s.plain), []byte("after the snapshot!"))
	s.restore = create("restore", s.base, snapshotSource(s.snap.GetSnapshotId()))
	s.clone = create("clone", s.base, volumeSource(s.plain.GetVolumeId()))
	s.keep = e.createSnapshot(ctx, t, uniqueName("snapshot-swap-keep"), s.data.GetVolumeId(), map[string]string{"clusterID": cephcsiClusterID})

	// What nobody deletes: ceph-csi's entries and metadata of the data-pool volume and its snapshot.
	dUUID, kUUID := uuidOf(s.data.GetVolumeId()), uuidOf(s.keep.GetSnapshotId())
	s.before = map[string]map[string]string{
		"csi.volume." + dUUID: omapOf(t, e.io, "csi.volume."+dUUID),
		"csi.snap." + kUUID:   omapOf(t, e.io, "csi.snap."+kUUID),
		"metadata data":       openImage(t, e.io, s.image(s.data)).metadata(t),
		"metadata keep":       openImage(t, e.io, "csi-snap-"+kUUID).metadata(t),
	}
}

func (s *swapRBD) image(v *csi.Volume) string { return v.GetVolumeContext()["imageName"] }

// checkPelagicctl: pelagicctl lists ceph-csi's volumes as ceph-csi's and
// finds one by its volume ID through ceph-csi's journal.
func (s *swapRBD) checkPelagicctl(ctx context.Context, t *testing.T) {
	cfgJSON, err := cephcsi.ConfigJSON(s.e.clusters)
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(cfgPath, cfgJSON, 0o600); err != nil {
		t.Fatal(err)
	}
	c := cephtest.Get(t)
	run := newCtlRunner(t, cfgPath, c.AdminID, c.AdminKey, nil)
	var list struct {
		Volumes []struct{ Image, Origin string }
	}
	run.allFormats(ctx, &list, "ls", "--cluster-id", cephcsiClusterID, "--pool", s.e.pool)
	origins := map[string]string{}
	for _, v := range list.Volumes {
		origins[v.Image] = v.Origin
	}
	for _, v := range []*csi.Volume{s.plain, s.data, s.restore, s.clone} {
		if got := origins[s.image(v)]; got != "ceph-csi" {
			t.Errorf("pelagicctl ls: %s has origin %q, want ceph-csi (listed: %v)", s.image(v), got, origins)
		}
	}
	var st struct{ Image, VolumeID string }
	run.allFormats(ctx, &st, "status", s.plain.GetVolumeId())
	if st.Image != s.image(s.plain) {
		t.Errorf("pelagicctl status %s found image %q, want %s", s.plain.GetVolumeId(), st.Image, s.image(s.plain))
	}
}

// checkFound: CreateVolume with ceph-csi's names returns its volumes; they are found by ID,
// validated with the volume context their PVs carry, and listed with their snapshots.
func (s *swapRBD) checkFound(ctx context.Context, t *testing.T) {
	for key, v := range map[string]*csi.Volume{"plain": s.plain, "data": s.data, "ns": s.ns} {
		resp, err := s.ctrl.CreateVolume(ctx, s.e.createRequest(s.names[key], s.params[key], nil))
		if err != nil {
			t.Fatalf("CreateVolume %s again, through Pelagic: %v", s.names[key], err)
		}
		got := resp.GetVolume()
		if got.GetVolumeId() != v.GetVolumeId() || got.GetCapacityBytes() != gib || s.image(got) != s.image(v) {
			t.Errorf("CreateVolume %s: %v; ceph-csi made %v", s.names[key], got, v)
		}
		gv, err := s.ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: v.GetVolumeId()})
		if err != nil || gv.GetVolume().GetCapacityBytes() != gib {
			t.Errorf("ControllerGetVolume %s: %v, %v", key, gv, err)
		}
		vr, err := s.ctrl.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: v.GetVolumeId(),
			VolumeContext: v.GetVolumeContext(), Parameters: s.params[key], Secrets: s.e.secrets,
			VolumeCapabilities: []*csi.VolumeCapability{mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)}})
		if err != nil || vr.GetConfirmed() == nil {
			t.Errorf("ValidateVolumeCapabilities %s with its PV's context %v: %v, %v", key, v.GetVolumeContext(), vr.GetMessage(), err)
		}
	}
	lv, err := s.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]int64{}
	for _, en := range lv.GetEntries() {
		listed[en.GetVolume().GetVolumeId()] = en.GetVolume().GetCapacityBytes()
	}
	for _, v := range []*csi.Volume{s.plain, s.data, s.ns, s.restore, s.clone} {
		if listed[v.GetVolumeId()] != gib {
			t.Errorf("ListVolumes: %s listed with %d bytes (listed: %v)", v.GetVolumeId(), listed[v.GetVolumeId()], listed)
		}
	}
	ls, err := s.ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]*csi.Snapshot{}
	for _, en := range ls.GetEntries() {
		byID[en.GetSnapshot().GetSnapshotId()] = en.GetSnapshot()
	}
	for src, snap := range map[string]*csi.Snapshot{s.plain.GetVolumeId(): s.snap, s.ns.GetVolumeId(): s.nsSnap,
		s.data.GetVolumeId(): s.keep} {
		got := byID[snap.GetSnapshotId()]
		if got.GetSourceVolumeId() != src || got.GetSizeBytes() != gib || !got.GetCreationTime().AsTime().Equal(snap.GetCreationTime().AsTime()) {
			t.Errorf("ListSnapshots: %v; ceph-csi answered %v of %s", got, snap, src)
		}
	}
}

// checkPublishAndExpand: publishing keeps its Multi-Attach checks on ceph-csi's volumes (a
// client no node recorded, as ceph-csi's node plugin leaves, refuses a single-node publish), and
// expansion grows them.
func (s *swapRBD) checkPublishAndExpand(ctx context.Context, t *testing.T) {
	e, id, image := s.e, s.plain.GetVolumeId(), s.image(s.plain)
	publish := func(node string) error {
		_, err := s.ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: node,
			VolumeCapability: mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER), Secrets: e.secrets})
		return err
	}
	held, err := librbd.OpenImage(e.io, image, librbd.NoSnapshot) // a writable open watches, as a mapping does
	if err != nil {
		t.Fatal(err)
	}
	err = publish("node-a")
	held.Close()
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "ceph-csi") {
		t.Errorf("publishing over a client no node recorded: %v", err)
	}
	if err := publish("node-a"); err != nil {
		t.Fatalf("ControllerPublishVolume to node-a: %v", err)
	}
	if _, ok := openImage(t, e.io, image).metadata(t)["pelagic.csi/attach.node-a"]; !ok {
		t.Error("no attachment record after ControllerPublishVolume")
	}
	if err := publish("node-b"); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "node-a") {
		t.Errorf("publishing to node-b while attached to node-a: %v", err)
	}
	if _, err := s.ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: "node-a",
		Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}
	if md := openImage(t, e.io, image).metadata(t); slices.ContainsFunc(slices.Collect(maps.Keys(md)), func(k string) bool {
		return strings.HasPrefix(k, "pelagic.")
	}) {
		t.Errorf("Pelagic records left after unpublishing: %v", md)
	}
	for _, v := range []*csi.Volume{s.plain, s.data} {
		resp, err := s.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: v.GetVolumeId(),
			CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * gib}, Secrets: e.secrets})
		if err != nil || resp.GetCapacityBytes() != 2*gib {
			t.Fatalf("ControllerExpandVolume %s: %v, %v", v.GetVolumeId(), resp, err)
		}
		if size, err := openImage(t, e.io, s.image(v)).GetSize(); err != nil || size != uint64(2*gib) {
			t.Errorf("image %s is %d bytes after expansion (%v)", s.image(v), size, err)
		}
	}
}

// checkSnapshots: CreateSnapshot with ceph-csi's name returns its snapshot; a new snapshot of a
// ceph-csi volume is Pelagic's, in Pelagic's journal.
func (s *swapRBD) checkSnapshots(ctx context.Context, t *testing.T) {
	e := s.e
	resp, err := s.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: s.names["snap"], SourceVolumeId: s.plain.GetVolumeId(),
		Secrets: e.secrets})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetSnapshot(); got.GetSnapshotId() != s.snap.GetSnapshotId() || got.GetSourceVolumeId() != s.plain.GetVolumeId() ||
		!got.GetCreationTime().AsTime().Equal(s.snap.GetCreationTime().AsTime()) || got.GetSizeBytes() != gib {
		t.Errorf("CreateSnapshot with ceph-csi's name: %v; ceph-csi answered %v", got, s.snap)
	}
	dir := omapOf(t, e.io, "csi.snaps.default")
	name := uniqueName("snapshot-swap-pelagic")
	resp, err = s.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: s.plain.GetVolumeId(), Secrets: e.secrets})
	if err != nil {
		t.Fatal(err)
	}
	s.ownSnap = resp.GetSnapshot()
	if got := objectsWithPrefix(t, e.io, "pelagic.snapshot.name."+name); len(got) != 1 {
		t.Errorf("Pelagic's snapshot is not in Pelagic's journal: %v", got)
	}
	if got := omapOf(t, e.io, "csi.snaps.default"); !maps.Equal(got, dir) {
		t.Errorf("ceph-csi's snapshot directory changed: %v, was %v", got, dir)
	}
}

// checkCopies: Pelagic restores ceph-csi's snapshots and clones its volumes, with the data each
// had; new volumes, even over a name ceph-csi reserved without an image, are Pelagic's.
func (s *swapRBD) checkCopies(ctx context.Context, t *testing.T) {
	e := s.e
	create := func(name string, params map[string]string, src *csi.VolumeContentSource) *csi.Volume {
		resp, err := s.ctrl.CreateVolume(ctx, e.createRequest(name, params, src))
		if err != nil {
			t.Fatalf("CreateVolume %s through Pelagic: %v", name, err)
		}
		return resp.GetVolume()
	}
	s.ownRestore = create(uniqueName("pvc-swap-own-restore"), s.base, snapshotSource(s.snap.GetSnapshotId()))
	s.ownClone = create(uniqueName("pvc-swap-own-clone"), s.base, volumeSource(s.plain.GetVolumeId()))
	s.ownNSCopy = create(uniqueName("pvc-swap-own-ns"), withParams(s.base, "clusterID", cephcsiNSClusterID),
		snapshotSource(s.nsSnap.GetSnapshotId()))
	for v, want := range map[*csi.Volume]string{s.ownRestore: "before the snapshot", s.ownClone: "after the snapshot!"} {
		if got := readImage(t, e.io, s.image(v), len(want)); string(got) != want {
			t.Errorf("%s reads %q, want %q", s.image(v), got, want)
		}
	}
	if p := openImage(t, e.io, s.image(s.ownRestore)).parent(t, e.io); p.Image != "csi-snap-"+uuidOf(s.snap.GetSnapshotId()) {
		t.Errorf("Pelagic's restore of a ceph-csi snapshot has parent %v", p)
	}
	if !slices.Contains(imageNames(t, e.nsIO), s.image(s.ownNSCopy)) {
		t.Errorf("a restore in namespace %s is not there", cephcsiNamespace)
	}

	dir := omapOf(t, e.io, "csi.volumes.default")
	name := uniqueName("pvc-swap-new")
	s.ownNew = create(name, s.base, nil)
	if got := objectsWithPrefix(t, e.io, "pelagic.volume.name."+name); len(got) != 1 {
		t.Errorf("a new volume is not in Pelagic's journal: %v", got)
	}
	if got := omapOf(t, e.io, "csi.volumes.default"); !maps.Equal(got, dir) {
		t.Errorf("ceph-csi's volume directory changed: %v, was %v", got, dir)
	}

	// A name ceph-csi reserved (its directory key) without its entry or image, as a crash leaves it.
	half := uniqueName("pvc-swap-half")
	setOmap(t, e.io, "csi.volumes.default", map[string]string{"csi.volume." + half: "55555555-5555-4555-8555-555555555555"})
	s.ownHalf = create(half, s.base, nil)
	if uuidOf(s.ownHalf.GetVolumeId()) == "55555555-5555-4555-8555-555555555555" {
		t.Error("CreateVolume answered a reservation ceph-csi left without its volume")
	}
	if _, ok := omapOf(t, e.io, "csi.volumes.default")["csi.volume."+half]; ok {
		t.Error("the half reservation is still in ceph-csi's directory")
	}
}

// checkDeletions deletes in the order that exercises the clone chains: a snapshot whose restores
// live on, the clone (and its -temp), the source under its snapshots and clones, then each child;
// every trashed parent goes with its last child.
func (s *swapRBD) checkDeletions(ctx context.Context, t *testing.T) {
	e := s.e
	snapImage := "csi-snap-" + uuidOf(s.snap.GetSnapshotId())
	s.deleteSnapshot(ctx, t, s.snap)
	s.wantGone(t, e.io, "snap", s.snap.GetSnapshotId(), snapImage)
	s.wantTrash(t, e.io, snapImage, true)

	s.deleteVolume(ctx, t, s.clone)
	s.wantGone(t, e.io, "volume", s.clone.GetVolumeId(), s.image(s.clone), s.image(s.clone)+"-temp")
	s.wantTrash(t, e.io, s.image(s.clone), false)
	s.wantTrash(t, e.io, s.image(s.clone)+"-temp", false)

	s.deleteVolume(ctx, t, s.plain)
	s.wantGone(t, e.io, "volume", s.plain.GetVolumeId(), s.image(s.plain))
	s.wantTrash(t, e.io, s.image(s.plain), true) // its snapshots and clones need it
	s.deleteVolume(ctx, t, s.plain)              // a retry

	s.deleteVolume(ctx, t, s.restore)
	s.wantGone(t, e.io, "volume", s.restore.GetVolumeId(), s.image(s.restore))
	s.wantTrash(t, e.io, snapImage, true) // Pelagic's restore needs it still
	s.deleteVolume(ctx, t, s.ownRestore)
	s.wantTrash(t, e.io, snapImage, false)

	s.deleteSnapshot(ctx, t, s.ownSnap)
	s.wantTrash(t, e.io, s.image(s.plain), true) // Pelagic's clone needs it still
	s.deleteVolume(ctx, t, s.ownClone)
	s.wantTrash(t, e.io, s.image(s.plain), false)

	s.deleteSnapshot(ctx, t, s.nsSnap)
	s.deleteVolume(ctx, t, s.ns)
	s.deleteVolume(ctx, t, s.ownNSCopy)
	s.wantGone(t, e.nsIO, "volume", s.ns.GetVolumeId(), s.image(s.ns))
	s.wantGone(t, e.nsIO, "snap", s.nsSnap.GetSnapshotId(), "csi-snap-"+uuidOf(s.nsSnap.GetSnapshotId()))
	if imgs, trash := imageNames(t, e.nsIO), trashNames(t, e.nsIO); len(imgs)+len(trash) > 0 {
		t.Errorf("namespace %s keeps images %v and trash %v", cephcsiNamespace, imgs, trash)
	}
	if got := objectsWithPrefix(t, e.nsIO, "csi."); !slices.Equal(got, []string{"csi.snaps.default", "csi.volumes.default"}) {
		t.Errorf("namespace %s keeps journal objects %v", cephcsiNamespace, got)
	}
}

// checkUnknownIDs: an ID no journal knows is deleted only when no image of its UUID is left.
func (s *swapRBD) checkUnknownIDs(ctx context.Context, t *testing.T) {
	e := s.e
	gone := volumeid.ID{ClusterID: cephcsiClusterID, PoolID: e.poolID, UUID: "66666666-6666-4666-8666-666666666666"}
	if _, err := s.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: gone.String(), Secrets: e.secrets}); err != nil {
		t.Errorf("DeleteVolume of an ID nothing is left of: %v", err)
	}
	orphan := volumeid.ID{ClusterID: cephcsiClusterID, PoolID: e.poolID, UUID: "77777777-7777-4777-8777-777777777777"}
	image := "csi-vol-" + orphan.UUID
	if err := librbd.CreateImage(e.io, image, 1<<20, librbd.NewRbdImageOptions()); err != nil {
		t.Fatal(err)
	}
	_, err := s.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: orphan.String(), Secrets: e.secrets})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), image) {
		t.Errorf("DeleteVolume of an ID whose image no journal records: %v", err)
	}
	if !slices.Contains(imageNames(t, e.io), image) {
		t.Fatalf("%s was deleted", image)
	}
	if err := librbd.RemoveImage(e.io, image); err != nil {
		t.Fatal(err)
	}
}

// checkLeft: exactly what nobody deleted is left, ceph-csi's entries and metadata unchanged.
func (s *swapRBD) checkLeft(t *testing.T) {
	e := s.e
	dUUID, kUUID := uuidOf(s.data.GetVolumeId()), uuidOf(s.keep.GetSnapshotId())
	want := []string{s.image(s.data), "csi-snap-" + kUUID, s.image(s.ownHalf), s.image(s.ownNew)}
	slices.Sort(want)
	if got := imageNames(t, e.io); !slices.Equal(got, want) {
		t.Errorf("images %v, want %v", got, want)
	}
	if trash := trashNames(t, e.io); len(trash) > 0 {
		t.Errorf("trash %v, want none", trash)
	}
	wantMap(t, "ceph-csi's volume directory", omapOf(t, e.io, "csi.volumes.default"),
		map[string]string{"csi.volume." + s.names["data"]: dUUID})
	if got := omapOf(t, e.io, "csi.snaps.default"); len(got) != 1 || got["csi.snap."+s.before["csi.snap."+kUUID]["csi.snapname"]] != kUUID {
		t.Errorf("ceph-csi's snapshot directory: %v", got)
	}
	if got := objectsWithPrefix(t, e.io, "csi.volume."); !slices.Equal(got, []string{"csi.volume." + dUUID}) {
		t.Errorf("ceph-csi's volume entries: %v", got)
	}
	if got := objectsWithPrefix(t, e.io, "csi.snap."); !slices.Equal(got, []string{"csi.snap." + kUUID}) {
		t.Errorf("ceph-csi's snapshot entries: %v", got)
	}
	after := map[string]map[string]string{
		"csi.volume." + dUUID: omapOf(t, e.io, "csi.volume."+dUUID),
		"csi.snap." + kUUID:   omapOf(t, e.io, "csi.snap."+kUUID),
		"metadata data":       openImage(t, e.io, s.image(s.data)).metadata(t),
		"metadata keep":       openImage(t, e.io, "csi-snap-"+kUUID).metadata(t),
	}
	for k, v := range s.before {
		wantMap(t, k+" after the swap", after[k], v)
	}
}

// deleteTheRest deletes what is left through Pelagic: the pool then holds no image, no trash and
// only empty journal directories.
func (s *swapRBD) deleteTheRest(ctx context.Context, t *testing.T) {
	e := s.e
	s.deleteSnapshot(ctx, t, s.keep)
	for _, v := range []*csi.Volume{s.data, s.ownNew, s.ownHalf} {
		s.deleteVolume(ctx, t, v)
	}
	if imgs, trash := imageNames(t, e.io), trashNames(t, e.io); len(imgs)+len(trash) > 0 {
		t.Errorf("images %v and trash %v left", imgs, trash)
	}
	for _, prefix := range []string{"csi.", "pelagic.volume", "pelagic.snapshot"} {
		for _, oid := range objectsWithPrefix(t, e.io, prefix) {
			if m := omapOf(t, e.io, oid); len(m) > 0 || strings.Contains(oid, ".name.") ||
				strings.HasPrefix(oid, "csi.volume.") || strings.HasPrefix(oid, "csi.snap.") {
				t.Errorf("journal object %s left: %v", oid, m)
			}
		}
	}
	if got := objectsWithPrefix(t, e.dataIO, "rbd_data."); len(got) > 0 {
		t.Errorf("data pool keeps %d data objects", len(got))
	}
}

// swapCtrl is Pelagic's controller after the swap, and the secrets the provisioner passes it.
type swapCtrl struct {
	ctrl    csi.ControllerClient
	secrets map[string]string
}

func (s swapCtrl) deleteVolume(ctx context.Context, t *testing.T, v *csi.Volume) {
	t.Helper()
	if _, err := s.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId(), Secrets: s.secrets}); err != nil {
		t.Fatalf("DeleteVolume %s through Pelagic: %v", v.GetVolumeId(), err)
	}
}

func (s swapCtrl) deleteSnapshot(ctx context.Context, t *testing.T, snap *csi.Snapshot) {
	t.Helper()
	if _, err := s.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId(), Secrets: s.secrets}); err != nil {
		t.Fatalf("DeleteSnapshot %s through Pelagic: %v", snap.GetSnapshotId(), err)
	}
}

// wantGone fails unless the images are gone from the pool's list and the ceph-csi entry of the
// ID (kind "volume" or "snap") is gone, directory key and object.
func (s *swapRBD) wantGone(t *testing.T, io *rados.IOContext, kind, id string, images ...string) {
	t.Helper()
	wantEntryGone(t, io, kind, id)
	for _, image := range images {
		if slices.Contains(imageNames(t, io), image) {
			t.Errorf("image %s is left", image)
		}
	}
}

// wantEntryGone fails unless ceph-csi's journal entry of the ID (kind "volume" or "snap") is gone,
// directory key and object.
func wantEntryGone(t *testing.T, io *rados.IOContext, kind, id string) {
	t.Helper()
	uuid := uuidOf(id)
	for key, v := range omapOf(t, io, "csi."+kind+"s.default") {
		if v == uuid {
			t.Errorf("directory key %s of %s is left", key, id)
		}
	}
	if omapOf(t, io, "csi."+kind+"."+uuid) != nil {
		t.Errorf("csi.%s.%s is left", kind, uuid)
	}
}

// wantTrash fails unless image is in the trash (in) or not.
func (s *swapRBD) wantTrash(t *testing.T, io *rados.IOContext, image string, in bool) {
	t.Helper()
	if got := slices.Contains(trashNames(t, io), image); got != in {
		t.Errorf("image %s in the trash: %v, want %v (trash %v)", image, got, in, trashNames(t, io))
	}
}

func writeImage(t *testing.T, io *rados.IOContext, name string, data []byte) {
	t.Helper()
	img, err := librbd.OpenImage(io, name, librbd.NoSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if _, err := img.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
}

func readImage(t *testing.T, io *rados.IOContext, name string, n int) []byte {
	t.Helper()
	buf := make([]byte, n)
	if _, err := openImage(t, io, name).ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(buf)
}

func setOmap(t *testing.T, io *rados.IOContext, oid string, kv map[string]string) {
	t.Helper()
	pairs := map[string][]byte{}
	for k, v := range kv {
		pairs[k] = []byte(v)
	}
	if err := io.SetOmap(oid, pairs); err != nil {
		t.Fatal(err)
	}
}

// TestCephCSISharedMounts: with SharedMounts, a mount made in ceph-csi's namespace under its
// directory shows in this one (as its node plugin's mounts reach the host), nothing else of its
// namespace does, Kill leaves the mount, and Stop takes it away with the directory.
func TestCephCSISharedMounts(t *testing.T) {
	c := cephtest.Get(t)
	d := cephcsi.Start(t, cephcsi.Options{Type: "rbd", Clusters: []cephcsi.Cluster{cephcsi.ClusterOf(c, "e2e")},
		Node: true, SharedMounts: true})
	probe := filepath.Join(d.Dir, "staging", "probe")
	if err := os.MkdirAll(probe, 0o750); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("nsenter", "-t", strconv.Itoa(d.PID()), "-m", "--",
		"mount", "-t", "tmpfs", "cephcsi-probe", probe).CombinedOutput(); err != nil {
		t.Fatalf("mounting in ceph-csi's namespace: %v: %s", err, out)
	}
	mounts := func() string {
		b, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if m := mounts(); !strings.Contains(m, " "+probe+" ") {
		t.Fatalf("the mount at %s did not reach this namespace", probe)
	}
	for _, private := range []string{"cephcsi-ns", "cephcsi-etc", "cephcsi-etc-ceph"} {
		if strings.Contains(mounts(), " "+private+" ") {
			t.Errorf("ceph-csi's private mount %s reached this namespace", private)
		}
	}
	if err := d.Kill(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(mounts(), " "+probe+" ") {
		t.Error("Kill took the mount away")
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(mounts(), " "+probe+" ") {
		t.Error("Stop left the mount")
	}
	if _, err := os.Stat(d.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Stop left %s: %v", d.Dir, err)
	}
}
