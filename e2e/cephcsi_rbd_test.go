package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rados"
	librbd "github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/pelagic-csi/pelagic/e2e/cephcsi"
	"github.com/pelagic-csi/pelagic/e2e/cephtest"
)

const (
	cephcsiClusterID   = "e2e-cephcsi"
	cephcsiNSClusterID = "e2e-cephcsi-ns"
	cephcsiNamespace   = "ns1"
	gib                = int64(1) << 30
)

// cephcsiRBD is ceph-csi's RBD controller on pools of the test's own, read back as admin.
type cephcsiRBD struct {
	d                  *cephcsi.Driver
	conn               *rados.Conn
	pool, dataPool     string
	poolID, dataPoolID int64
	io, nsIO, dataIO   *rados.IOContext // the pool, its namespace ns1, the data pool
	secrets            map[string]string
	clusters           []cephcsi.Cluster // its config.json
}

func newCephCSIRBD(t *testing.T, args ...string) *cephcsiRBD {
	c := cephtest.Get(t)
	ns := cephcsi.ClusterOf(c, cephcsiNSClusterID)
	ns.RBDNamespace = cephcsiNamespace
	e := &cephcsiRBD{conn: adminConn(t, c), secrets: rbdSecrets(c), clusters: []cephcsi.Cluster{cephcsi.ClusterOf(c, cephcsiClusterID), ns}}
	e.d = cephcsi.Start(t, cephcsi.Options{Type: "rbd", Clusters: e.clusters, Args: args})
	e.pool = createPool(t, c, uniqueName("cephcsi"))
	e.dataPool = createPool(t, c, uniqueName("cephcsi-data"))
	var err error
	if e.poolID, err = e.conn.GetPoolByName(e.pool); err != nil {
		t.Fatal(err)
	}
	if e.dataPoolID, err = e.conn.GetPoolByName(e.dataPool); err != nil {
		t.Fatal(err)
	}
	e.io = openIOContext(t, e.conn, e.pool, "")
	e.nsIO = openIOContext(t, e.conn, e.pool, cephcsiNamespace)
	e.dataIO = openIOContext(t, e.conn, e.dataPool, "")
	if err := librbd.NamespaceCreate(e.io, cephcsiNamespace); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *cephcsiRBD) createVolume(ctx context.Context, t *testing.T, name string, params map[string]string,
	src *csi.VolumeContentSource) *csi.Volume {
	t.Helper()
	resp, _ := retryAborted(ctx, t, "CreateVolume "+name, func() (*csi.CreateVolumeResponse, error) {
		return e.d.Controller.CreateVolume(ctx, e.createRequest(name, params, src))
	})
	return resp.GetVolume()
}

func (e *cephcsiRBD) createRequest(name string, params map[string]string, src *csi.VolumeContentSource) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{
		Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: gib},
		VolumeCapabilities:  []*csi.VolumeCapability{mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)},
		Parameters:          params,
		Secrets:             e.secrets,
		VolumeContentSource: src,
	}
}

func (e *cephcsiRBD) createSnapshot(ctx context.Context, t *testing.T, name, source string, params map[string]string) *csi.Snapshot {
	t.Helper()
	resp, err := e.d.Controller.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{
		Name: name, SourceVolumeId: source, Parameters: params, Secrets: e.secrets})
	if err != nil {
		t.Fatalf("CreateSnapshot %s: %v", name, err)
	}
	return resp.GetSnapshot()
}

func (e *cephcsiRBD) deleteVolume(ctx context.Context, t *testing.T, id string) {
	t.Helper()
	if _, err := e.d.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: e.secrets}); err != nil {
		t.Fatalf("DeleteVolume %s: %v", id, err)
	}
}

func (e *cephcsiRBD) deleteSnapshot(ctx context.Context, t *testing.T, id string) {
	t.Helper()
	if _, err := e.d.Controller.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id, Secrets: e.secrets}); err != nil {
		t.Fatalf("DeleteSnapshot %s: %v", id, err)
	}
}

func volumeSource(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
}

func snapshotSource(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

// TestCephCSIFormatRBD provisions with the real ceph-csi and checks, on the cluster, what
// docs/ceph-csi-format.md says it writes: journal objects, IDs, images, metadata, snapshot images,
// clone chains, volume context, and what deletion leaves.
func TestCephCSIFormatRBD(t *testing.T) {
	e := newCephCSIRBD(t, "--setmetadata=true", "--clustername=prod-east")
	ctx := testContext(t, 10*time.Minute)
	checkRBDCapabilities(ctx, t, e)
	owner := map[string]string{pvcNameKey: "data-db-0", pvcNamespaceKey: "shop", pvNameKey: "pv-data-db-0"}
	base := withParams(owner, "clusterID", cephcsiClusterID, "pool", e.pool, "imageFeatures", "layering")

	// A plain volume, with parameters ceph-csi only passes through.
	vName := uniqueName("pvc-plain")
	vParams := withParams(base, "mapOptions", "lock_on_read", "unmapOptions", "force", "mkfsOptions", "-m0",
		"unknownParam", "kept", "csi.storage.k8s.io/fstype", "ext4")
	v := e.createVolume(ctx, t, vName, vParams, nil)
	vUUID, vEntry := journalEntry(t, e.io, "volume", vName)
	vid := parseID(t, v.GetVolumeId(), cephcsiClusterID, e.poolID)
	if vid.UUID != vUUID {
		t.Errorf("ID's UUID %s, journal's %s", vid.UUID, vUUID)
	}
	vImage := "csi-vol-" + vUUID
	vImg := openImage(t, e.io, vImage)
	wantMap(t, "journal entry of a volume", vEntry, map[string]string{
		"csi.volname": vName, "csi.imagename": vImage, "csi.imageid": vImg.id(t), "csi.volume.owner": "shop"})
	wantMap(t, "volume context", v.GetVolumeContext(), map[string]string{
		"clusterID": cephcsiClusterID, "pool": e.pool, "imageFeatures": "layering", "mapOptions": "lock_on_read",
		"unmapOptions": "force", "mkfsOptions": "-m0", "unknownParam": "kept",
		"imageName": vImage, "journalPool": e.pool})
	if f := vImg.features(t); f != librbd.FeatureLayering {
		t.Errorf("features %#x, want layering only", f)
	}
	wantMap(t, "metadata of a volume", vImg.metadata(t), withParams(owner, clusterNameKey, "prod-east"))
	if again := e.createVolume(ctx, t, vName, vParams, nil); again.GetVolumeId() != v.GetVolumeId() {
		t.Errorf("repeated CreateVolume: %s, first %s", again.GetVolumeId(), v.GetVolumeId())
	}

	// imageFeatures are taken as they are.
	fName := uniqueName("pvc-features")
	fv := e.createVolume(ctx, t, fName, withParams(base, "imageFeatures", "layering,exclusive-lock,object-map,fast-diff"), nil)
	_, fEntry := journalEntry(t, e.io, "volume", fName)
	want := uint64(librbd.FeatureLayering | librbd.FeatureExclusiveLock | librbd.FeatureObjectMap | librbd.FeatureFastDiff)
	if got := openImage(t, e.io, fEntry["csi.imagename"]).features(t); got != want {
		t.Errorf("features %#x, want %#x", got, want)
	}

	// dataPool: the image's data objects go to the data pool.
	dName := uniqueName("pvc-datapool")
	d := e.createVolume(ctx, t, dName, withParams(base, "dataPool", e.dataPool), nil)
	_, dEntry := journalEntry(t, e.io, "volume", dName)
	dImg := openImage(t, e.io, dEntry["csi.imagename"])
	if id, err := dImg.GetDataPoolID(); err != nil || id != e.dataPoolID {
		t.Errorf("data pool of %s: %d, %v; want %d", dEntry["csi.imagename"], id, err, e.dataPoolID)
	}
	if dImg.features(t)&librbd.FeatureDataPool == 0 {
		t.Error("a dataPool image lacks the data-pool feature")
	}
	if d.GetVolumeContext()["dataPool"] != e.dataPool {
		t.Errorf("context of a dataPool volume: %v", d.GetVolumeContext())
	}

	// journalPool: ignored for where the journal goes, echoed in the context.
	jName := uniqueName("pvc-journalpool")
	j := e.createVolume(ctx, t, jName, withParams(base, "journalPool", e.dataPool), nil)
	if uuid, _ := journalEntry(t, e.io, "volume", jName); uuid == "" {
		t.Error("with journalPool set, the journal entry is not in the image's pool")
	}
	if got := objectsWithPrefix(t, e.dataIO, "csi."); len(got) > 0 {
		t.Errorf("journalPool received journal objects %v", got)
	}
	parseID(t, j.GetVolumeId(), cephcsiClusterID, e.poolID)
	if j.GetVolumeContext()["journalPool"] != e.dataPool {
		t.Errorf("context with journalPool: %v", j.GetVolumeContext())
	}

	// A rados namespace: journal and image in it, the ID unchanged in shape.
	nName := uniqueName("pvc-ns")
	n := e.createVolume(ctx, t, nName, withParams(base, "clusterID", cephcsiNSClusterID), nil)
	nUUID, nEntry := journalEntry(t, e.nsIO, "volume", nName)
	parseID(t, n.GetVolumeId(), cephcsiNSClusterID, e.poolID)
	if nUUID == "" || nEntry["csi.imagename"] != "csi-vol-"+nUUID {
		t.Errorf("namespace journal: %s %v", nUUID, nEntry)
	}
	if uuid, _ := journalEntry(t, e.io, "volume", nName); uuid != "" {
		t.Error("a namespaced volume's entry is in the default namespace")
	}
	if !slices.Contains(imageNames(t, e.nsIO), "csi-vol-"+nUUID) {
		t.Errorf("image csi-vol-%s not in namespace %s", nUUID, cephcsiNamespace)
	}
	if n.GetVolumeContext()["radosNamespace"] != cephcsiNamespace {
		t.Errorf("context of a namespaced volume: %v", n.GetVolumeContext())
	}
	nSnap := e.createSnapshot(ctx, t, uniqueName("snapshot-ns"), n.GetVolumeId(), map[string]string{"clusterID": cephcsiNSClusterID})
	nsSnapUUID := parseID(t, nSnap.GetSnapshotId(), cephcsiNSClusterID, e.poolID).UUID
	if !slices.Contains(imageNames(t, e.nsIO), "csi-snap-"+nsSnapUUID) {
		t.Errorf("snapshot image csi-snap-%s not in namespace %s", nsSnapUUID, cephcsiNamespace)
	}

	s, sUUID := checkSnapshot(ctx, t, e, v, vImage, owner)
	r, c := checkRestoreAndClone(ctx, t, e, v, s, sUUID, vImage)
	checkDeletion(ctx, t, e, []string{fv.GetVolumeId(), d.GetVolumeId(), j.GetVolumeId(), n.GetVolumeId()},
		nSnap.GetSnapshotId(), v, vImage, vImg.id(t), s, r, c)
}

// checkRBDCapabilities: ceph-csi's RBD controller has no publish, list or get calls.
func checkRBDCapabilities(ctx context.Context, t *testing.T, e *cephcsiRBD) {
	t.Helper()
	resp, err := e.d.Controller.ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range resp.GetCapabilities() {
		got = append(got, c.GetRpc().GetType().String())
	}
	slices.Sort(got)
	want := []string{"CLONE_VOLUME", "CREATE_DELETE_SNAPSHOT", "CREATE_DELETE_VOLUME", "EXPAND_VOLUME"}
	if !slices.Equal(got, want) {
		t.Errorf("controller capabilities %v, want %v", got, want)
	}
}

// checkSnapshot takes a snapshot of v and checks its clone image, journal entry, metadata and the
// metadata a repeated CreateSnapshot leaves on the source.
func checkSnapshot(ctx context.Context, t *testing.T, e *cephcsiRBD, v *csi.Volume, vImage string,
	owner map[string]string) (*csi.Snapshot, string) {
	t.Helper()
	sName := uniqueName("snapshot")
	sParams := map[string]string{"clusterID": cephcsiClusterID, "pool": e.pool,
		snapNameKey: "snap-a", snapNamespaceKey: "shop", snapContentNameKey: "snapcontent-a"}
	s := e.createSnapshot(ctx, t, sName, v.GetVolumeId(), sParams)
	sUUID, sEntry := journalEntry(t, e.io, "snap", sName)
	if parseID(t, s.GetSnapshotId(), cephcsiClusterID, e.poolID).UUID != sUUID {
		t.Errorf("snapshot ID %s does not name journal UUID %s", s.GetSnapshotId(), sUUID)
	}
	sImage := "csi-snap-" + sUUID
	sImg := openImage(t, e.io, sImage)
	wantMap(t, "journal entry of a snapshot", sEntry, map[string]string{"csi.snapname": sName,
		"csi.imagename": sImage, "csi.imageid": sImg.id(t), "csi.source": vImage, "csi.volume.owner": "shop"})
	if got, want := sImg.parent(t, e.io), (parentLink{Image: vImage, Snap: sImage, Trash: true}); got != want {
		t.Errorf("parent of the snapshot image: %v, want %v", got, want)
	}
	if got := sImg.userSnaps(t); !slices.Equal(got, []string{sImage}) {
		t.Errorf("snapshots of the snapshot image: %v, want [%s]", got, sImage)
	}
	if sImg.features(t)&librbd.FeatureDeepFlatten == 0 {
		t.Error("the snapshot image lacks deep-flatten")
	}
	snapMeta := map[string]string{snapNameKey: "snap-a", snapNamespaceKey: "shop", snapContentNameKey: "snapcontent-a"}
	wantMap(t, "metadata of a snapshot image", sImg.metadata(t), withParams(snapMeta, clusterNameKey, "prod-east"))
	created, err := sImg.GetCreateTimestamp()
	if err != nil {
		t.Fatal(err)
	}
	if ct := s.GetCreationTime(); ct.GetSeconds() != created.Sec || int64(ct.GetNanos()) != created.Nsec {
		t.Errorf("creation time %v, the snapshot image was created at %d.%09d", ct.AsTime(), created.Sec, created.Nsec)
	}
	if !s.GetReadyToUse() || s.GetSizeBytes() != gib {
		t.Errorf("snapshot ready %v size %d", s.GetReadyToUse(), s.GetSizeBytes())
	}
	if s.GetSourceVolumeId() != "" {
		t.Errorf("first CreateSnapshot answered source %q; the doc says it leaves it out", s.GetSourceVolumeId())
	}
	again := e.createSnapshot(ctx, t, sName, v.GetVolumeId(), sParams)
	if again.GetSnapshotId() != s.GetSnapshotId() || again.GetSourceVolumeId() != v.GetVolumeId() {
		t.Errorf("repeated CreateSnapshot: %s from %q", again.GetSnapshotId(), again.GetSourceVolumeId())
	}
	vImg := openImage(t, e.io, vImage)
	wantMap(t, "source metadata after a repeated CreateSnapshot", vImg.metadata(t), withParams(owner, clusterNameKey, "prod-east",
		snapNameKey, "snap-a", snapNamespaceKey, "shop", snapContentNameKey, "snapcontent-a"))
	return s, sUUID
}

// checkRestoreAndClone restores s and clones v, and checks both images' parents and metadata.
func checkRestoreAndClone(ctx context.Context, t *testing.T, e *cephcsiRBD, v *csi.Volume, s *csi.Snapshot,
	sUUID, vImage string) (r, c *csi.Volume) {
	t.Helper()
	sImage := "csi-snap-" + sUUID
	params := map[string]string{"clusterID": cephcsiClusterID, "pool": e.pool, "imageFeatures": "layering",
		pvcNameKey: "restore-a", pvcNamespaceKey: "shop", pvNameKey: "pv-restore-a"}

	rName := uniqueName("pvc-restore")
	r = e.createVolume(ctx, t, rName, params, snapshotSource(s.GetSnapshotId()))
	rUUID, _ := journalEntry(t, e.io, "volume", rName)
	rImg := openImage(t, e.io, "csi-vol-"+rUUID)
	if got, want := rImg.parent(t, e.io), (parentLink{Image: sImage, Snap: sImage}); got != want {
		t.Errorf("parent of a restored image: %v, want %v", got, want)
	}
	wantMap(t, "metadata of a restored image", rImg.metadata(t), map[string]string{
		pvcNameKey: "restore-a", pvcNamespaceKey: "shop", pvNameKey: "pv-restore-a", clusterNameKey: "prod-east"})

	cName := uniqueName("pvc-clone")
	c = e.createVolume(ctx, t, cName, withParams(params, pvcNameKey, "clone-a", pvNameKey, "pv-clone-a"),
		volumeSource(v.GetVolumeId()))
	cUUID, cEntry := journalEntry(t, e.io, "volume", cName)
	cImage, temp := "csi-vol-"+cUUID, "csi-vol-"+cUUID+"-temp"
	if cEntry["csi.imagename"] != cImage {
		t.Errorf("journal of a clone names %q", cEntry["csi.imagename"])
	}
	cImg, tempImg := openImage(t, e.io, cImage), openImage(t, e.io, temp)
	if got, want := cImg.parent(t, e.io), (parentLink{Image: temp, Snap: cImage, Trash: true}); got != want {
		t.Errorf("parent of a clone: %v, want %v", got, want)
	}
	if got, want := tempImg.parent(t, e.io), (parentLink{Image: vImage, Snap: temp, Trash: true}); got != want {
		t.Errorf("parent of a clone's -temp image: %v, want %v", got, want)
	}
	if tempImg.features(t)&librbd.FeatureDeepFlatten == 0 {
		t.Error("the -temp image lacks deep-flatten")
	}
	for _, oid := range objectsWithPrefix(t, e.io, "csi.volume.") {
		if omapOf(t, e.io, oid)["csi.imagename"] == temp {
			t.Errorf("journal object %s names the -temp image", oid)
		}
	}
	// The source's metadata (including the snapshot keys a repeated CreateSnapshot put there) comes along.
	md := cImg.metadata(t)
	if md[snapNameKey] != "snap-a" || md[pvcNameKey] != "clone-a" {
		t.Errorf("metadata of a clone: %v", md)
	}
	return r, c
}

// checkDeletion deletes the source volume first (its snapshot and clone still need it), restores
// from the snapshot of the deleted volume, then deletes everything and checks nothing is left.
func checkDeletion(ctx context.Context, t *testing.T, e *cephcsiRBD, others []string, nsSnapID string,
	v *csi.Volume, vImage, vImageID string, s *csi.Snapshot, r, c *csi.Volume) {
	t.Helper()
	vUUID := v.GetVolumeId()[len(v.GetVolumeId())-36:]
	e.deleteVolume(ctx, t, v.GetVolumeId())
	if slices.Contains(imageNames(t, e.io), vImage) {
		t.Errorf("%s still listed after DeleteVolume", vImage)
	}
	if !slices.Contains(trashNames(t, e.io), vImage) {
		t.Errorf("a deleted source with live children is not in the trash: %v", trashNames(t, e.io))
	}
	if !hasTask(mgrTasks(t, e.conn), "trash remove", e.pool, "", vImageID) {
		t.Errorf("no mgr trash remove task for %s (%s): %+v", vImage, vImageID, mgrTasks(t, e.conn))
	}
	for key, uuid := range omapOf(t, e.io, "csi.volumes.default") {
		if uuid == vUUID {
			t.Errorf("directory key %s survives DeleteVolume", key)
		}
	}
	if omapOf(t, e.io, "csi.volume."+vUUID) != nil {
		t.Error("csi.volume.<uuid> survives DeleteVolume")
	}

	r2Name := uniqueName("pvc-restore-orphan")
	r2 := e.createVolume(ctx, t, r2Name, map[string]string{"clusterID": cephcsiClusterID, "pool": e.pool},
		snapshotSource(s.GetSnapshotId()))
	r2UUID, r2Entry := journalEntry(t, e.io, "volume", r2Name)
	wantMap(t, "journal entry of a volume requested without PVC parameters", r2Entry, map[string]string{
		"csi.volname": r2Name, "csi.imagename": "csi-vol-" + r2UUID,
		"csi.imageid": openImage(t, e.io, "csi-vol-"+r2UUID).id(t)})

	for _, id := range append([]string{r.GetVolumeId(), r2.GetVolumeId(), c.GetVolumeId()}, others...) {
		e.deleteVolume(ctx, t, id)
	}
	cUUID := c.GetVolumeId()[len(c.GetVolumeId())-36:]
	for _, name := range []string{"csi-vol-" + cUUID, "csi-vol-" + cUUID + "-temp"} {
		if slices.Contains(imageNames(t, e.io), name) {
			t.Errorf("%s still listed after DeleteVolume of the clone", name)
		}
	}
	e.deleteSnapshot(ctx, t, s.GetSnapshotId())
	e.deleteSnapshot(ctx, t, nsSnapID)
	if got := objectsWithPrefix(t, e.io, "csi.snap."); len(got) > 0 {
		t.Errorf("snapshot journal objects left: %v", got)
	}

	// The mgr purges the trash on its own, retrying while children still need an image.
	for _, io := range []*rados.IOContext{e.io, e.nsIO} {
		eventually(t, 3*time.Minute, "images or trash left", func() error {
			if imgs, trash := imageNames(t, io), trashNames(t, io); len(imgs)+len(trash) > 0 {
				return fmt.Errorf("images %v, trash %v", imgs, trash)
			}
			return nil
		})
		for _, oid := range objectsWithPrefix(t, io, "csi.") {
			if oid != "csi.volumes.default" && oid != "csi.snaps.default" {
				t.Errorf("journal object %s left", oid)
			} else if m := omapOf(t, io, oid); len(m) > 0 {
				t.Errorf("%s keeps %v", oid, m)
			}
		}
	}
}

// TestCephCSICloneDepth: with soft and hard clone depth limits of 1 and 2, ceph-csi flattens the
// source's -temp image through a mgr task, in the background past the soft limit and before
// answering (Aborted meanwhile) past the hard one.
func TestCephCSICloneDepth(t *testing.T) {
	e := newCephCSIRBD(t, "--rbdsoftmaxclonedepth=1", "--rbdhardmaxclonedepth=2")
	ctx := testContext(t, 5*time.Minute)
	params := map[string]string{"clusterID": cephcsiClusterID, "pool": e.pool, "imageFeatures": "layering,deep-flatten"}
	var chain []*csi.Volume
	var src *csi.VolumeContentSource
	for i := range 3 {
		v := e.createVolume(ctx, t, uniqueName(fmt.Sprintf("pvc-depth%d", i)), params, src)
		chain, src = append(chain, v), volumeSource(v.GetVolumeId())
	}
	temp := func(v *csi.Volume) string { return "csi-vol-" + v.GetVolumeId()[len(v.GetVolumeId())-36:] + "-temp" }
	hasParent := func(image string) bool { return openImage(t, e.io, image).parent(t, e.io) != parentLink{} }

	// Cloning chain[2]'s source chain[1] found chain[1]'s -temp at depth 1: flattened in the background.
	eventually(t, time.Minute, "the soft limit's flatten", func() error {
		if hasParent(temp(chain[1])) {
			return fmt.Errorf("%s still has a parent", temp(chain[1]))
		}
		return nil
	})
	// chain[2]'s -temp is now at depth 2: the next clone waits for its flatten.
	name := uniqueName("pvc-depth3")
	d3, aborted := retryAborted(ctx, t, "CreateVolume past the hard limit", func() (*csi.CreateVolumeResponse, error) {
		return e.d.Controller.CreateVolume(ctx, e.createRequest(name, params, src))
	})
	if aborted == 0 {
		t.Error("a clone past the hard depth limit was answered without an Aborted while flattening")
	}
	if hasParent(temp(chain[2])) {
		t.Errorf("%s not flattened before the clone past the hard limit", temp(chain[2]))
	}
	if !hasParent(temp(d3.GetVolume())) || !hasParent(strings.TrimSuffix(temp(d3.GetVolume()), "-temp")) {
		t.Error("the new clone itself was flattened")
	}
	all := append(chain, d3.GetVolume())
	for i := len(all) - 1; i >= 0; i-- {
		e.deleteVolume(ctx, t, all[i].GetVolumeId())
	}
}
