package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/e2e/cephtest"
	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/driver"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
)

// twoNodes is a cluster on a test bridge, one controller, and two node
// plugins whose Ceph clients (rbd-fuse) run in namespaces of their own,
// so each node has its own address.
type twoNodes struct {
	net     *testNet
	cluster *cephtest.Cluster
	cfg     *ceph.Config
	cfgPath string
	ctrl    csi.ControllerServer
	nodes   map[string]*testNodePlugin
	secrets map[string]string
	params  map[string]string
}

type testNodePlugin struct {
	id    string
	addr  string
	state string
	work  string
	svc   csi.NodeServer
}

// newTwoNodes builds the environment; ctrlOpts adjust the controller's options.
func newTwoNodes(t *testing.T, ctrlOpts ...func(*driver.Options)) *twoNodes {
	net := newTestNet(t, 2)
	c := cephtest.Start(t, "CEPH_BIND_ADDR="+net.HostAddr())
	cfg, cfgPath := clusterConfig(t, c)
	o := driver.Options{Type: "rbd", DriverName: "rbd.csi.pelagic.dev", Controller: true, Config: cfg}
	for _, f := range ctrlOpts {
		f(&o)
	}
	ctrl, err := driver.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ctrl.Close)
	env := &twoNodes{net: net, cluster: c, cfg: cfg, cfgPath: cfgPath, ctrl: ctrl.Services.Controller, nodes: map[string]*testNodePlugin{},
		secrets: rbdSecrets(c), params: map[string]string{"clusterID": testClusterID, "pool": c.Pool}}
	for i, n := range net.nodes {
		id := []string{"node-a", "node-b"}[i]
		state := shortTempDir(t)
		d, err := driver.New(driver.Options{Type: "rbd", DriverName: "rbd.csi.pelagic.dev", Node: true, NodeID: id,
			Config: cfg, Mounter: "fuse", StateDir: state, FuseNetNS: n.netns,
			Timeouts: ceph.Timeouts{OSDOp: 10 * time.Second}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Close)
		work := t.TempDir()
		t.Cleanup(func() { cleanupNode(state, work) })
		env.nodes[id] = &testNodePlugin{id: id, addr: n.addr, state: state, work: work, svc: d.Services.Node}
	}
	return env
}

func (e *twoNodes) create(t *testing.T, name string, c *csi.VolumeCapability) *csi.Volume {
	t.Helper()
	resp, err := e.ctrl.CreateVolume(testContext(t, time.Minute), &csi.CreateVolumeRequest{
		Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: 256 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{c}, Parameters: e.params, Secrets: e.secrets})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetVolume()
}

func (e *twoNodes) publish(ctx context.Context, v *csi.Volume, node string, c *csi.VolumeCapability) error {
	_, err := e.ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{
		VolumeId: v.GetVolumeId(), NodeId: node, VolumeCapability: c, Secrets: e.secrets,
		Readonly: c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY})
	return err
}

func (e *twoNodes) unpublish(ctx context.Context, v *csi.Volume, node string) error {
	_, err := e.ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{
		VolumeId: v.GetVolumeId(), NodeId: node, Secrets: e.secrets})
	return err
}

func (n *testNodePlugin) staging(v *csi.Volume) string {
	return filepath.Join(n.work, "s-"+v.GetVolumeId()[len(v.GetVolumeId())-8:])
}
func (n *testNodePlugin) target(v *csi.Volume) string {
	return filepath.Join(n.work, "t-"+v.GetVolumeId()[len(v.GetVolumeId())-8:])
}

func (e *twoNodes) stage(ctx context.Context, n *testNodePlugin, v *csi.Volume, c *csi.VolumeCapability) error {
	if err := os.MkdirAll(n.staging(v), 0o750); err != nil {
		return err
	}
	_, err := n.svc.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.GetVolumeId(),
		StagingTargetPath: n.staging(v), VolumeCapability: c, VolumeContext: v.GetVolumeContext(), Secrets: e.secrets})
	if err != nil {
		return err
	}
	_, err = n.svc.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.GetVolumeId(),
		StagingTargetPath: n.staging(v), TargetPath: n.target(v), VolumeCapability: c, VolumeContext: v.GetVolumeContext(),
		Readonly: c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY})
	return err
}

func (e *twoNodes) unstage(ctx context.Context, n *testNodePlugin, v *csi.Volume) error {
	if _, err := n.svc.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.GetVolumeId(), TargetPath: n.target(v)}); err != nil {
		return err
	}
	_, err := n.svc.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.GetVolumeId(), StagingTargetPath: n.staging(v)})
	return err
}

func blockCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode}}
}

// mappedInstance is the client instance node n recorded for its mapping
// of v, read from its stage record.
func (n *testNodePlugin) mappedInstance(t *testing.T, v *csi.Volume) string {
	t.Helper()
	b, err := os.ReadFile(n.staging(v) + ".pelagic.json")
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		Mapping struct {
			ClientAddr string `json:"clientAddr"`
		} `json:"mapping"`
	}
	if err := json.Unmarshal(b, &rec); err != nil || rec.Mapping.ClientAddr == "" {
		t.Fatalf("stage record of %s on %s names no client instance: %v: %s", v.GetVolumeId(), n.id, err, b)
	}
	return rec.Mapping.ClientAddr
}

// freeze stops n's rbd-fuse, which is how a partitioned node looks to
// Ceph: its client neither acknowledges watch pings nor sends anything.
// The returned thaw resumes it (once; cleanup thaws it too).
func (n *testNodePlugin) freeze(t *testing.T) (thaw func()) {
	t.Helper()
	pids := fusePIDs(n.state)
	if len(pids) != 1 {
		t.Fatalf("node %s runs %d rbd-fuse processes, want 1", n.id, len(pids))
	}
	if err := syscall.Kill(pids[0], syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	thawed := false
	thaw = func() {
		if !thawed {
			thawed = true
			_ = syscall.Kill(pids[0], syscall.SIGCONT)
		}
	}
	t.Cleanup(thaw)
	return thaw
}

// adminPool opens the cluster's pool with the admin user, outside the driver.
func (e *twoNodes) adminPool(t *testing.T, ctx context.Context) rbd.Pool {
	t.Helper()
	conns := ceph.NewConnPool(ceph.Timeouts{})
	t.Cleanup(conns.Close)
	_, pool := adminPool(ctx, t, e.cfg, conns, e.cluster, e.cluster.Pool)
	return pool
}

// waitWatchGone polls the image's watchers until addr is no longer among
// them: the OSD has timed the frozen client's watch out.
func (e *twoNodes) waitWatchGone(t *testing.T, ctx context.Context, v *csi.Volume, addr string) time.Duration {
	t.Helper()
	pool, image, start := e.adminPool(t, ctx), v.GetVolumeContext()[rbd.CtxImageName], time.Now()
	for {
		ws, err := pool.Watchers(ctx, image)
		if err != nil {
			t.Fatal(err)
		}
		held := false
		for _, w := range ws {
			held = held || ceph.SameClient(w.Addr, addr)
		}
		if !held {
			return time.Since(start)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the watch of %s never went from %s: %v", addr, image, ws)
		case <-time.After(time.Second):
		}
	}
}

// blocklisted lists the blocklist's client instances.
func (e *twoNodes) blocklisted(t *testing.T, ctx context.Context) []string {
	t.Helper()
	out, err := e.cluster.Ceph(ctx, "osd", "blocklist", "ls")
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.Contains(f[0], "/") {
			addrs = append(addrs, f[0])
		}
	}
	return addrs
}

// assertOnlyFenced checks that exactly addr is blocklisted among the test
// network's clients: no other instance of A, and nothing of B.
func (e *twoNodes) assertOnlyFenced(t *testing.T, ctx context.Context, addr string) {
	t.Helper()
	var ours []string
	for _, a := range e.blocklisted(t, ctx) {
		if strings.HasPrefix(a, e.net.subnet+".") {
			ours = append(ours, a)
		}
	}
	if len(ours) != 1 || !ceph.SameClient(ours[0], addr) {
		t.Fatalf("blocklisted instances on the test network = %v; want exactly %s", ours, addr)
	}
}

// lateWritesFail writes on a thawed node until a synced write fails, and
// fails the test if none does.
func lateWritesFail(t *testing.T, n *testNodePlugin, v *csi.Volume) {
	t.Helper()
	var werr error
	for i := 0; i < 20 && werr == nil; i++ {
		werr = writeSynced(filepath.Join(n.target(v), fmt.Sprintf("late-%d.txt", i)), bytes.Repeat([]byte("A"), 1<<20))
		if werr == nil {
			time.Sleep(500 * time.Millisecond) // the client may need a moment to hear it is blocklisted
		}
	}
	if werr == nil {
		t.Fatalf("node %s's synced writes kept succeeding after it was fenced", n.id)
	}
	t.Logf("%s's synced write after the fence: %v", n.id, werr)
}

// assertImageHolds restages v on n and checks that it holds exactly the
// files want names (with their contents): nothing a fenced node wrote late.
func (e *twoNodes) assertImageHolds(t *testing.T, ctx context.Context, n *testNodePlugin, v *csi.Volume,
	c *csi.VolumeCapability, want map[string][]byte) {
	t.Helper()
	if err := e.unstage(ctx, n, v); err != nil {
		t.Fatal(err)
	}
	if err := e.stage(ctx, n, v, c); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(n.target(v))
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range entries {
		if _, ok := want[en.Name()]; !ok && en.Name() != "lost+found" {
			t.Errorf("the image holds %s, written by a node after it was fenced", en.Name())
		}
	}
	for name, data := range want {
		got, err := os.ReadFile(filepath.Join(n.target(v), name))
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s reads %q, %v; want %q", name, got, err, data)
		}
	}
}

// moveAwayFromFrozenHolder is the Multi-Attach story end to end: node A
// writes; B is refused by name; A is cut off (frozen), for as long as
// partitioned tells (past the OSD's watch timeout, or a moment); the CO
// unpublishes A; publishing to B fences exactly A's client; B writes; A,
// back, can no longer write, and nothing it tried reaches the image.
func moveAwayFromFrozenHolder(t *testing.T, partitioned bool) {
	e := newTwoNodes(t)
	a, b := e.nodes["node-a"], e.nodes["node-b"]
	rwo := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	vol := e.create(t, "pvc-multiattach", rwo)
	ctx := testContext(t, 10*time.Minute)

	if err := e.publish(ctx, vol, a.id, rwo); err != nil {
		t.Fatal(err)
	}
	if err := e.stage(ctx, a, vol, rwo); err != nil {
		t.Fatal(err)
	}
	instanceA := a.mappedInstance(t, vol)
	payload := []byte("written on node A before it was cut off\n")
	if err := writeSynced(filepath.Join(a.target(vol), "data.txt"), payload); err != nil {
		t.Fatal(err)
	}

	// While A holds it, B is refused, and told who holds it and from where.
	err := e.publish(ctx, vol, b.id, rwo)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "node-a") ||
		!strings.Contains(err.Error(), instanceA) {
		t.Fatalf("publish to B while A holds the volume = %v; want FailedPrecondition naming node-a and %s", err, instanceA)
	}
	t.Logf("refused: %v", status.Convert(err).Message())
	_, err = e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId(), Secrets: e.secrets})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "node-a") {
		t.Fatalf("delete while A holds the volume = %v; want FailedPrecondition naming node-a", err)
	}
	if err := e.stage(ctx, b, vol, rwo); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "node-a") {
		t.Fatalf("stage on B while A holds the volume = %v; want FailedPrecondition naming node-a", err)
	}

	thaw := a.freeze(t)
	if partitioned {
		took := e.waitWatchGone(t, ctx, vol, instanceA)
		t.Logf("A's watch timed out %v after A was cut off", took.Round(time.Second))
		// Kubernetes has not given up on A yet: B is still refused, by A's
		// mapping record now that its watch is gone.
		if err := e.publish(ctx, vol, b.id, rwo); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), instanceA) {
			t.Fatalf("publish to B while A is attached, its watch gone = %v; want FailedPrecondition naming %s", err, instanceA)
		}
	}
	if err := e.unpublish(ctx, vol, a.id); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := e.publish(ctx, vol, b.id, rwo); err != nil {
		t.Fatalf("publish to B after A was unpublished: %v", err)
	}
	published := time.Since(start)
	if err := e.stage(ctx, b, vol, rwo); err != nil {
		t.Fatalf("stage on B after fencing A: %v", err)
	}
	t.Logf("publish to B (fencing A) took %v; publish to B's successful stage took %v",
		published.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if got, err := os.ReadFile(filepath.Join(b.target(vol), "data.txt")); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("B reads %q, %v; want A's data %q", got, err, payload)
	}
	fromB := []byte("written on node B after the move\n")
	if err := writeSynced(filepath.Join(b.target(vol), "b.txt"), fromB); err != nil {
		t.Fatal(err)
	}
	e.assertOnlyFenced(t, ctx, instanceA)

	thaw()
	lateWritesFail(t, a, vol)
	e.assertImageHolds(t, ctx, b, vol, rwo, map[string][]byte{"data.txt": payload, "b.txt": fromB})
	if err := e.unstage(ctx, b, vol); err != nil {
		t.Fatal(err)
	}
}

// TestMultiAttachPartitionedHolder: A stays away past the OSD's watch
// timeout, as a partitioned node does long before Kubernetes gives up on
// it; A's mapping record, not its watch, gets it fenced.
func TestMultiAttachPartitionedHolder(t *testing.T) { moveAwayFromFrozenHolder(t, true) }

// TestMultiAttachFencesStaleHolder: the volume moves while A's watch is
// still there; the fence drops it at once.
func TestMultiAttachFencesStaleHolder(t *testing.T) { moveAwayFromFrozenHolder(t, false) }

// TestMoveAfterCleanUnstageFencesNothing: A unstaged cleanly before it was
// unpublished, so it holds nothing and nothing is fenced.
func TestMoveAfterCleanUnstageFencesNothing(t *testing.T) {
	e := newTwoNodes(t)
	a, b := e.nodes["node-a"], e.nodes["node-b"]
	rwo := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	vol := e.create(t, "pvc-clean-move", rwo)
	ctx := testContext(t, 5*time.Minute)
	for _, step := range []func() error{
		func() error { return e.publish(ctx, vol, a.id, rwo) },
		func() error { return e.stage(ctx, a, vol, rwo) },
		func() error { return writeSynced(filepath.Join(a.target(vol), "data.txt"), []byte("a")) },
		func() error { return e.unstage(ctx, a, vol) },
		func() error { return e.unpublish(ctx, vol, a.id) },
		func() error { return e.publish(ctx, vol, b.id, rwo) },
		func() error { return e.stage(ctx, b, vol, rwo) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	for _, addr := range e.blocklisted(t, ctx) {
		if strings.HasPrefix(addr, e.net.subnet+".") {
			t.Errorf("%s was fenced although its node unstaged cleanly", addr)
		}
	}
	recs, _, err := e.adminPool(t, ctx).Records(ctx, vol.GetVolumeContext()[rbd.CtxImageName])
	if err != nil {
		t.Fatal(err)
	}
	for k := range recs {
		if strings.HasPrefix(k, "pelagic.csi/fence.") || k == "pelagic.csi/map.node-a" {
			t.Errorf("record %s left after a clean move", k)
		}
	}
	if err := e.unstage(ctx, b, vol); err != nil {
		t.Fatal(err)
	}
}

// TestFenceOutlastsExpiryWhileHolderMaps: a fence configured to expire
// quickly is kept while the fenced node still holds its mapping (renewed,
// or made to last until lifted where Ceph cannot renew an entry), so A,
// thawed after the original expiry, still cannot write.
func TestFenceOutlastsExpiryWhileHolderMaps(t *testing.T) {
	const expiry = 20 * time.Second
	e := newTwoNodes(t, func(o *driver.Options) { o.FenceExpiry, o.FenceCheckInterval = expiry, 2*time.Second })
	a, b := e.nodes["node-a"], e.nodes["node-b"]
	rwo := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	vol := e.create(t, "pvc-renew", rwo)
	ctx := testContext(t, 5*time.Minute)
	if err := e.publish(ctx, vol, a.id, rwo); err != nil {
		t.Fatal(err)
	}
	if err := e.stage(ctx, a, vol, rwo); err != nil {
		t.Fatal(err)
	}
	instanceA := a.mappedInstance(t, vol)
	payload := []byte("before the fence\n")
	if err := writeSynced(filepath.Join(a.target(vol), "data.txt"), payload); err != nil {
		t.Fatal(err)
	}
	thaw := a.freeze(t)
	if err := e.unpublish(ctx, vol, a.id); err != nil {
		t.Fatal(err)
	}
	fencedAt := time.Now()
	if err := e.publish(ctx, vol, b.id, rwo); err != nil {
		t.Fatal(err)
	}
	originalExpiry := fencedAt.Add(expiry)

	// Let the original expiry pass, with the fence keeper running every
	// two seconds; the fence must still hold, renewed in place where Ceph
	// can extend an entry, or made to last until lifted where it cannot
	// (Pacific: re-adding an entry keeps its old expiry).
	pool, image := e.adminPool(t, ctx), vol.GetVolumeContext()[rbd.CtxImageName]
	for time.Now().Before(originalExpiry.Add(5 * time.Second)) {
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(time.Until(originalExpiry.Add(5 * time.Second))):
		}
	}
	u, err := rbd.ReadUsage(ctx, pool, image)
	if err != nil {
		t.Fatal(err)
	}
	fence := u.Fences[instanceA]
	if !fence.InForce(time.Now()) {
		t.Fatalf("fence of %s not in force after its first expiry %s: %+v", instanceA, originalExpiry.Format(time.RFC3339), fence)
	}
	t.Logf("fence of %s, first due to expire %s: now until %s (renewed %s)", instanceA,
		originalExpiry.Format(time.RFC3339), fence.Expires.Format(time.RFC3339), fence.Renewed.Format(time.RFC3339))
	e.assertOnlyFenced(t, ctx, instanceA)
	thaw()
	lateWritesFail(t, a, vol)
	if err := e.stage(ctx, b, vol, rwo); err != nil {
		t.Fatal(err)
	}
	e.assertImageHolds(t, ctx, b, vol, rwo, map[string][]byte{"data.txt": payload})
	if err := e.unstage(ctx, b, vol); err != nil {
		t.Fatal(err)
	}
}

// TestMultiNodeModesShare attaches ROX and RWX-block volumes to both nodes.
func TestMultiNodeModesShare(t *testing.T) {
	e := newTwoNodes(t)
	a, b := e.nodes["node-a"], e.nodes["node-b"]
	ctx := testContext(t, 5*time.Minute)

	rwx := blockCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)
	blockVol := e.create(t, "pvc-rwx-block", rwx)
	for _, n := range []*testNodePlugin{a, b} {
		if err := e.publish(ctx, blockVol, n.id, rwx); err != nil {
			t.Fatalf("RWX block publish to %s: %v", n.id, err)
		}
		if err := e.stage(ctx, n, blockVol, rwx); err != nil {
			t.Fatalf("RWX block stage on %s: %v", n.id, err)
		}
	}

	// A filesystem written once on A, then shared read-only by both.
	rwo := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	rox := mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY)
	fsVol := e.create(t, "pvc-rox", rwo)
	payload := []byte("shared read-only\n")
	if err := e.publish(ctx, fsVol, a.id, rwo); err != nil {
		t.Fatal(err)
	}
	if err := e.stage(ctx, a, fsVol, rwo); err != nil {
		t.Fatal(err)
	}
	if err := writeSynced(filepath.Join(a.target(fsVol), "data.txt"), payload); err != nil {
		t.Fatal(err)
	}
	if err := e.unstage(ctx, a, fsVol); err != nil {
		t.Fatal(err)
	}
	if err := e.unpublish(ctx, fsVol, a.id); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*testNodePlugin{a, b} {
		if err := e.publish(ctx, fsVol, n.id, rox); err != nil {
			t.Fatalf("ROX publish to %s: %v", n.id, err)
		}
		if err := e.stage(ctx, n, fsVol, rox); err != nil {
			t.Fatalf("ROX stage on %s: %v", n.id, err)
		}
		got, err := os.ReadFile(filepath.Join(n.target(fsVol), "data.txt"))
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("%s reads %q, %v", n.id, got, err)
		}
	}
	// A single-writer request meets the ROX holders and is refused.
	if err := e.publish(ctx, fsVol, "node-c", rwo); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("RWO publish while two nodes hold ROX = %v, want FailedPrecondition", err)
	}
	for _, n := range []*testNodePlugin{a, b} {
		for _, v := range []*csi.Volume{blockVol, fsVol} {
			if err := e.unstage(ctx, n, v); err != nil {
				t.Fatalf("unstage on %s: %v", n.id, err)
			}
		}
	}
	// No node was fenced: sharing is not a conflict.
	if out, err := e.cluster.Ceph(ctx, "osd", "blocklist", "ls"); err != nil || strings.Contains(out, e.net.subnet) {
		t.Fatalf("a node was fenced while sharing: %v\n%s", err, out)
	}
}
