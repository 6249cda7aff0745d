package e2e

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ceph/go-ceph/cephfs/admin"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/e2e/cephtest"
	"github.com/pelagic-csi/pelagic/e2e/lifecycle"
	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/cephfs"
	"github.com/pelagic-csi/pelagic/pkg/driver"
)

// cephfsEnv is a CephFS controller on the local cluster, with a subvolume
// group and a journal namespace of its own, and node plugins made on demand.
type cephfsEnv struct {
	cluster *cephtest.Cluster
	cfg     *ceph.Config
	cfgPath string
	group   string
	ns      string // the journal's RADOS namespace
	ctrl    *cephfs.Controller
	fsa     *admin.FSAdmin
	secrets map[string]string
	params  map[string]string
}

func newCephFSEnv(t *testing.T) *cephfsEnv {
	c := cephtest.Get(t)
	group := uniqueName("fs")
	t.Cleanup(func() { removeGroup(t, c, group) })
	return newCephFSEnvIn(t, c, group)
}

// newCephFSEnvOn is newCephFSEnv on a private cluster: the group goes with
// the cluster. (After a monitor restart, the mgr may not answer a group's
// removal within the admin's timeout.)
func newCephFSEnvOn(t *testing.T, c *cephtest.Cluster) *cephfsEnv {
	return newCephFSEnvIn(t, c, uniqueName("fs"))
}

func newCephFSEnvIn(t *testing.T, c *cephtest.Cluster, group string) *cephfsEnv {
	e := &cephfsEnv{cluster: c, group: group, ns: uniqueName("ns"), secrets: cephfsSecrets(c)}
	e.cfg, e.cfgPath = writeClusterConfig(t, c, map[string]any{"subvolumeGroup": e.group, "radosNamespace": e.ns})
	e.ctrl = e.controller(t, nil)
	e.fsa = admin.NewFromConn(adminConn(t, c))
	e.params = map[string]string{"clusterID": testClusterID, "fsName": c.FSName, "subvolumeGroup": e.group, "mounter": "fuse"}
	return e
}

// controller returns a fresh controller, as a restarted process would be.
func (e *cephfsEnv) controller(t *testing.T, afterReserve func(string)) *cephfs.Controller {
	conns := ceph.NewConnPool(ceph.Timeouts{})
	t.Cleanup(conns.Close)
	return cephfs.NewController(cephfs.ControllerOptions{Config: e.cfg, AfterReserve: afterReserve,
		Connector: &cephfs.CephConnector{Config: e.cfg, Conns: conns}})
}

// node starts a node plugin (ceph-fuse) with a state of its own: another
// node, as far as Ceph and the volumes can tell.
func (e *cephfsEnv) node(t *testing.T, id string) csi.NodeServer {
	return e.nodeIn(t, id, shortTempDir(t))
}

// nodeIn starts a node plugin whose state is in state.
func (e *cephfsEnv) nodeIn(t *testing.T, id, state string) csi.NodeServer {
	_, d := startDriver(t, driver.Options{Type: "cephfs", DriverName: "cephfs.csi.pelagic.dev", Node: true, NodeID: id,
		StateDir: state, Config: e.cfg})
	return d.Services.Node
}

func fsCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode}}
}

var (
	rwx = fsCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)
	rox = fsCap(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY)
)

func (e *cephfsEnv) createReq(name string, size int64, c *csi.VolumeCapability, src *csi.VolumeContentSource, kv ...string) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{c}, Parameters: withParams(e.params, kv...), Secrets: e.secrets,
		VolumeContentSource: src}
}

// create makes a volume, deleted when the test ends.
func (e *cephfsEnv) create(t *testing.T, req *csi.CreateVolumeRequest) *csi.Volume {
	t.Helper()
	resp, err := e.ctrl.CreateVolume(testContext(t, 2*time.Minute), req)
	if err != nil {
		t.Fatalf("CreateVolume %s: %v", req.GetName(), err)
	}
	t.Cleanup(func() {
		// The mgr removes a subvolume only once no client holds caps in it:
		// after a killed ceph-fuse, once its session times out.
		eventually(t, 3*time.Minute, "DeleteVolume "+req.GetName(), func() error {
			_, err := e.ctrl.DeleteVolume(testContext(t, 2*time.Minute), &csi.DeleteVolumeRequest{VolumeId: resp.GetVolume().GetVolumeId(),
				Secrets: e.secrets})
			return err
		})
	})
	return resp.GetVolume()
}

func (e *cephfsEnv) snapshot(t *testing.T, name string, v *csi.Volume) *csi.Snapshot {
	t.Helper()
	resp, err := e.ctrl.CreateSnapshot(testContext(t, time.Minute), &csi.CreateSnapshotRequest{Name: name,
		SourceVolumeId: v.GetVolumeId(), Secrets: e.secrets})
	if err != nil {
		t.Fatalf("CreateSnapshot %s: %v", name, err)
	}
	return resp.GetSnapshot()
}

func (e *cephfsEnv) deleteSnapshot(ctx context.Context, s *csi.Snapshot) error {
	_, err := e.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: s.GetSnapshotId(), Secrets: e.secrets})
	return err
}

// subvolumes lists the group's subvolumes, as the admin sees them.
func (e *cephfsEnv) subvolumes(t *testing.T) []string {
	t.Helper()
	subs, err := e.fsa.ListSubVolumes(e.cluster.FSName, e.group)
	if ceph.Errno(err) == syscall.ENOENT {
		return nil // no group yet
	}
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(subs)
	return subs
}

// mounted is a volume staged and published on a node.
type mounted struct {
	node            csi.NodeServer
	vol             *csi.Volume
	staging, target string
	cap             *csi.VolumeCapability
	targets         []string
}

// mount stages v on node (under dir) and publishes it at one target; both
// go when the test ends.
func (e *cephfsEnv) mount(t *testing.T, node csi.NodeServer, v *csi.Volume, c *csi.VolumeCapability, dir string) *mounted {
	t.Helper()
	return mountVolume(t, node, v, c, dir, e.secrets)
}

// mountVolume stages v on node (under dir), with its volume context and
// secrets, and publishes it at one target; both go when the test ends.
func mountVolume(t *testing.T, node csi.NodeServer, v *csi.Volume, c *csi.VolumeCapability, dir string, secrets map[string]string) *mounted {
	t.Helper()
	m := &mounted{node: node, vol: v, staging: filepath.Join(dir, "staging"), target: filepath.Join(dir, "target"), cap: c}
	ctx := testContext(t, time.Minute)
	if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.GetVolumeId(), StagingTargetPath: m.staging,
		VolumeCapability: c, VolumeContext: v.GetVolumeContext(), Secrets: secrets}); err != nil {
		t.Fatalf("NodeStageVolume: %v", err)
	}
	t.Cleanup(func() { m.close(t) })
	m.publish(t, m.target)
	return m
}

func (m *mounted) publish(t *testing.T, target string) {
	t.Helper()
	if _, err := m.node.NodePublishVolume(testContext(t, time.Minute), &csi.NodePublishVolumeRequest{VolumeId: m.vol.GetVolumeId(),
		StagingTargetPath: m.staging, TargetPath: target, VolumeCapability: m.cap, VolumeContext: m.vol.GetVolumeContext()}); err != nil {
		t.Fatalf("NodePublishVolume at %s: %v", target, err)
	}
	m.targets = append(m.targets, target)
}

// close unpublishes every target and unstages; again, it does nothing.
func (m *mounted) close(t *testing.T) {
	ctx := testContext(t, time.Minute)
	for _, target := range m.targets {
		if _, err := m.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: m.vol.GetVolumeId(),
			TargetPath: target}); err != nil {
			t.Errorf("NodeUnpublishVolume %s: %v", target, err)
		}
	}
	m.targets = nil
	if _, err := m.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: m.vol.GetVolumeId(),
		StagingTargetPath: m.staging}); err != nil {
		t.Errorf("NodeUnstageVolume: %v", err)
	}
}

func (m *mounted) file(name string) string { return filepath.Join(m.target, name) }

// readEventually reads a file written through another client, waiting
// while it is not there yet.
func readEventually(t *testing.T, path string) []byte {
	t.Helper()
	var data []byte
	eventually(t, 30*time.Second, "reading "+path, func() (err error) {
		data, err = os.ReadFile(path)
		return err
	})
	return data
}

// TestCephFSSharedVolume: one RWX volume staged on two nodes and published
// at two targets on one of them; every client sees what every other wrote,
// and the volume's size is its quota.
func TestCephFSSharedVolume(t *testing.T) {
	e := newCephFSEnv(t)
	v := e.create(t, e.createReq("pvc-shared", 64<<20, rwx, nil))
	a := e.mount(t, e.node(t, "node-a"), v, rwx, t.TempDir())
	b := e.mount(t, e.node(t, "node-b"), v, rwx, t.TempDir())
	second := filepath.Join(t.TempDir(), "second")
	a.publish(t, second)
	for _, w := range []struct{ path, data string }{{a.file("from-a"), "a"}, {b.file("from-b"), "b"}, {filepath.Join(second, "from-a2"), "a2"}} {
		if err := writeSynced(w.path, []byte(w.data)); err != nil {
			t.Fatalf("writing %s: %v", w.path, err)
		}
	}
	for _, r := range []struct{ path, want string }{{b.file("from-a"), "a"}, {a.file("from-b"), "b"},
		{filepath.Join(second, "from-b"), "b"}, {b.file("from-a2"), "a2"}} {
		if got := readEventually(t, r.path); string(got) != r.want {
			t.Errorf("%s holds %q, want %q", r.path, got, r.want)
		}
	}
	stats, err := b.node.NodeGetVolumeStats(testContext(t, time.Minute), &csi.NodeGetVolumeStatsRequest{VolumeId: v.GetVolumeId(), VolumePath: b.target})
	if err != nil || stats.GetUsage()[0].GetTotal() != 64<<20 || stats.GetUsage()[1].GetUnit() != csi.VolumeUsage_INODES {
		t.Errorf("stats = %v, %v; want 64 MiB in bytes, and inodes", stats, err)
	}
}

// TestCephFSQuota: writing past the quota fails with EDQUOT (or ENOSPC);
// ControllerExpandVolume raises it, with nothing for the node to do.
func TestCephFSQuota(t *testing.T) {
	e := newCephFSEnv(t)
	v := e.create(t, e.createReq("pvc-quota", 8<<20, rwx, nil))
	m := e.mount(t, e.node(t, "node-a"), v, rwx, t.TempDir())
	written, err := cephtest.FillFile(m.file("big"), 64<<20)
	if !errors.Is(err, syscall.EDQUOT) && !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("writing 64 MiB into 8 MiB: %v after %d bytes; want EDQUOT or ENOSPC", err, written)
	}
	t.Logf("refused after %d bytes: %v", written, err)
	resp, err := e.ctrl.ControllerExpandVolume(testContext(t, time.Minute), &csi.ControllerExpandVolumeRequest{VolumeId: v.GetVolumeId(),
		CapacityRange: &csi.CapacityRange{RequiredBytes: 32 << 20}, Secrets: e.secrets, VolumeCapability: rwx})
	if err != nil || resp.GetCapacityBytes() != 32<<20 || resp.GetNodeExpansionRequired() {
		t.Fatalf("ControllerExpandVolume = %v, %v", resp, err)
	}
	eventually(t, 30*time.Second, "the new quota as the size", func() error {
		stats, err := m.node.NodeGetVolumeStats(testContext(t, time.Minute), &csi.NodeGetVolumeStatsRequest{VolumeId: v.GetVolumeId(), VolumePath: m.target})
		if err == nil && stats.GetUsage()[0].GetTotal() != 32<<20 {
			err = errors.New("size " + stats.String())
		}
		return err
	})
}

// TestCephFSCopies: a volume restored from a snapshot, and a clone of a
// volume, hold the data, each waited for inside CreateVolume; the clone of
// a volume leaves no snapshot behind on its source.
func TestCephFSCopies(t *testing.T) {
	e := newCephFSEnv(t)
	node := e.node(t, "node-a")
	src := e.create(t, e.createReq("pvc-source", 32<<20, rwx, nil))
	m := e.mount(t, node, src, rwx, t.TempDir())
	if err := writeSynced(m.file("data"), []byte("snapshot me")); err != nil {
		t.Fatal(err)
	}
	snap := e.snapshot(t, "snap-copies", src)
	t.Cleanup(func() { _ = e.deleteSnapshot(context.Background(), snap) })
	if err := writeSynced(m.file("data"), []byte("after the snapshot")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		src  *csi.VolumeContentSource
		want string
	}{
		{"pvc-restored", snapshotSource(snap.GetSnapshotId()), "snapshot me"},
		{"pvc-clone", volumeSource(src.GetVolumeId()), "after the snapshot"},
	} {
		start := time.Now()
		v := e.create(t, e.createReq(c.name, 48<<20, rwx, c.src))
		t.Logf("%s ready in %v", c.name, time.Since(start).Round(time.Millisecond))
		copied := e.mount(t, node, v, rwx, t.TempDir())
		if got := readEventually(t, copied.file("data")); string(got) != c.want {
			t.Errorf("%s holds %q, want %q", c.name, got, c.want)
		}
		stats, err := node.NodeGetVolumeStats(testContext(t, time.Minute), &csi.NodeGetVolumeStatsRequest{VolumeId: v.GetVolumeId(), VolumePath: copied.target})
		if err != nil || stats.GetUsage()[0].GetTotal() != 48<<20 {
			t.Errorf("%s: stats %v, %v; want the requested 48 MiB", c.name, stats, err)
		}
	}
	snaps, err := e.fsa.ListSubVolumeSnapshots(e.cluster.FSName, e.group, src.GetVolumeContext()[cephfs.CtxSubvolumeName])
	if err != nil || len(snaps) != 1 {
		t.Errorf("snapshots of the source: %v, %v; want only the CSI snapshot", snaps, err)
	}
}

// TestCephFSRetryDuringClone: a CreateVolume whose deadline comes before
// its clone is done answers Aborted; retries, two at once, never start a
// second clone: one waits for it, the other returns it or is refused
// while the first waits; the last returns the volume.
func TestCephFSRetryDuringClone(t *testing.T) {
	e := newCephFSEnv(t)
	src := e.create(t, e.createReq("pvc-source", 32<<20, rwx, nil))
	snap := e.snapshot(t, "snap-retry", src)
	t.Cleanup(func() { _ = e.deleteSnapshot(context.Background(), snap) })
	req := e.createReq("pvc-retried", 32<<20, rwx, snapshotSource(snap.GetSnapshotId()))
	short, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	if _, err := e.ctrl.CreateVolume(short, req); status.Code(err) != codes.Aborted {
		t.Fatalf("CreateVolume with 400 ms to go = %v; want Aborted while the clone runs", err)
	}
	before := e.subvolumes(t)
	if len(before) != 2 {
		t.Fatalf("subvolumes after the first call: %v; want the source and one clone", before)
	}
	// Two retries at once: one waits for the clone, the other is refused
	// while it does (unless the clone was done before they met).
	results := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := e.ctrl.CreateVolume(testContext(t, 2*time.Minute), req)
			results <- err
		}()
	}
	var refused int
	for range 2 {
		switch err := <-results; {
		case err == nil:
		case status.Code(err) == codes.Aborted && strings.Contains(err.Error(), "already in progress"):
			refused++
		default:
			t.Errorf("a concurrent retry: %v", err)
		}
	}
	if refused == 2 {
		t.Errorf("both concurrent retries refused: neither waited for the clone")
	}
	t.Logf("%d of 2 concurrent retries refused while the other waited", refused)
	v := e.create(t, req) // once more: the volume there is returned as it is
	if after := e.subvolumes(t); !slices.Equal(after, before) || !slices.Contains(after, v.GetVolumeContext()[cephfs.CtxSubvolumeName]) {
		t.Errorf("subvolumes %v after the retries, %v before; the volume is %s", after, before, v.GetVolumeContext()[cephfs.CtxSubvolumeName])
	}
}

// TestCephFSBackingSnapshot: a volume with backingSnapshot is a read-only
// view of the snapshot, made without a copy; the snapshot cannot be
// deleted while the view lives.
func TestCephFSBackingSnapshot(t *testing.T) {
	e := newCephFSEnv(t)
	node := e.node(t, "node-a")
	src := e.create(t, e.createReq("pvc-source", 32<<20, rwx, nil))
	m := e.mount(t, node, src, rwx, t.TempDir())
	if err := writeSynced(m.file("data"), []byte("in the snapshot")); err != nil {
		t.Fatal(err)
	}
	snap := e.snapshot(t, "snap-backing", src)
	if err := writeSynced(m.file("data"), []byte("changed since")); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ctrl.CreateVolume(testContext(t, time.Minute), e.createReq("pvc-rw-view", 32<<20, rwx,
		snapshotSource(snap.GetSnapshotId()), "backingSnapshot", "true")); status.Code(err) != codes.InvalidArgument {
		t.Errorf("a writable view: %v, want InvalidArgument", err)
	}
	before := e.subvolumes(t)
	start := time.Now()
	v := e.create(t, e.createReq("pvc-view", 32<<20, rox, snapshotSource(snap.GetSnapshotId()), "backingSnapshot", "true"))
	t.Logf("view ready in %v", time.Since(start).Round(time.Millisecond))
	if after := e.subvolumes(t); !slices.Equal(after, before) {
		t.Errorf("subvolumes %v after the view, %v before: a view makes none", after, before)
	}
	view := e.mount(t, node, v, rox, t.TempDir())
	if got := readEventually(t, view.file("data")); string(got) != "in the snapshot" {
		t.Errorf("the view holds %q", got)
	}
	if err := os.WriteFile(view.file("new"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("writing into the view: %v, want EROFS", err)
	}
	if err := e.deleteSnapshot(testContext(t, time.Minute), snap); status.Code(err) != codes.FailedPrecondition ||
		!strings.Contains(err.Error(), "pvc-view") {
		t.Errorf("DeleteSnapshot under a view = %v; want FailedPrecondition naming the view", err)
	}
	view.close(t)
	if _, err := e.ctrl.DeleteVolume(testContext(t, time.Minute), &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId(), Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}
	if err := e.deleteSnapshot(testContext(t, time.Minute), snap); err != nil {
		t.Errorf("DeleteSnapshot once the view is gone: %v", err)
	}
}

// TestCephFSLifecycle runs the main job's CephFS walk (what `make demo`
// prints) against in-process drivers: a controller with node a, and node b.
func TestCephFSLifecycle(t *testing.T) {
	e := newCephFSEnv(t)
	ctrl, _ := startDriver(t, driver.Options{Type: "cephfs", DriverName: "cephfs.csi.pelagic.dev", Controller: true, Node: true,
		NodeID: "node-a", StateDir: shortTempDir(t), Config: e.cfg})
	nodeB, _ := startDriver(t, driver.Options{Type: "cephfs", DriverName: "cephfs.csi.pelagic.dev", Node: true,
		NodeID: "node-b", StateDir: shortTempDir(t), Config: e.cfg})
	var out bytes.Buffer
	err := lifecycle.RunCephFS(dial(t, ctrl), [2]*grpc.ClientConn{dial(t, ctrl), dial(t, nodeB)},
		lifecycle.CephFSConfig{ClusterID: testClusterID, FSName: e.cluster.FSName, Secrets: e.secrets, WorkDir: t.TempDir()}, &out)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
}
