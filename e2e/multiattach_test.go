package e2e

import (
	"bytes"
	"context"
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
)

// twoNodes is a cluster on a test bridge, one controller, and two node
// plugins whose Ceph clients (rbd-fuse) run in namespaces of their own,
// so each node has its own address.
type twoNodes struct {
	net     *testNet
	cluster *cephtest.Cluster
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

func newTwoNodes(t *testing.T) *twoNodes {
	net := newTestNet(t, 2)
	c := cephtest.Start(t, "CEPH_BIND_ADDR="+net.HostAddr())
	cfg, _ := clusterConfig(t, c)
	ctrl, err := driver.New(driver.Options{Type: "rbd", DriverName: "rbd.csi.pelagic.dev", Controller: true, Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ctrl.Close)
	env := &twoNodes{net: net, cluster: c, ctrl: ctrl.Services.Controller, nodes: map[string]*testNodePlugin{},
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

// TestMultiAttachFencesStaleHolder is the Multi-Attach story end to end:
// node A writes; B is refused by name; A freezes with its watch held; the
// CO unpublishes A; publishing to B fences exactly A's client; B reads A's
// data; A, thawed, can no longer write.
func TestMultiAttachFencesStaleHolder(t *testing.T) {
	e := newTwoNodes(t)
	a, b := e.nodes["node-a"], e.nodes["node-b"]
	rwo := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	vol := e.create(t, "pvc-multiattach", rwo)
	ctx := testContext(t, 5*time.Minute)

	if err := e.publish(ctx, vol, a.id, rwo); err != nil {
		t.Fatal(err)
	}
	if err := e.stage(ctx, a, vol, rwo); err != nil {
		t.Fatal(err)
	}
	payload := []byte("written on node A before it froze\n")
	if err := writeSynced(filepath.Join(a.target(vol), "data.txt"), payload); err != nil {
		t.Fatal(err)
	}

	// While A holds it, B is refused, and told who holds it and from where.
	err := e.publish(ctx, vol, b.id, rwo)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "node-a") ||
		!strings.Contains(err.Error(), a.addr) {
		t.Fatalf("publish to B while A holds the volume = %v; want FailedPrecondition naming node-a at %s", err, a.addr)
	}
	t.Logf("refused: %v", status.Convert(err).Message())
	// Nor is a volume in use deleted.
	_, err = e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId(), Secrets: e.secrets})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "node-a") {
		t.Fatalf("delete while A holds the volume = %v; want FailedPrecondition naming node-a", err)
	}
	// B's node plugin refuses to map it as well, even if asked directly.
	if err := e.stage(ctx, b, vol, rwo); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "node-a") {
		t.Fatalf("stage on B while A holds the volume = %v; want FailedPrecondition naming node-a", err)
	}

	// A freezes with its watch held; Kubernetes gives up on A.
	pids := fusePIDs(a.state)
	if len(pids) != 1 {
		t.Fatalf("node A runs %d rbd-fuse processes, want 1", len(pids))
	}
	if err := syscall.Kill(pids[0], syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	thawed := false
	thaw := func() {
		if !thawed {
			thawed = true
			_ = syscall.Kill(pids[0], syscall.SIGCONT)
		}
	}
	defer thaw()
	if err := e.unpublish(ctx, vol, a.id); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	if err := e.publish(ctx, vol, b.id, rwo); err != nil {
		t.Fatalf("publish to B after A was unpublished: %v", err)
	}
	fenced := time.Since(start)
	if err := e.stage(ctx, b, vol, rwo); err != nil {
		t.Fatalf("stage on B after fencing A: %v", err)
	}
	t.Logf("publish to B (fencing A) took %v; publish to B's successful stage took %v",
		fenced.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	got, err := os.ReadFile(filepath.Join(b.target(vol), "data.txt"))
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("B reads %q, %v; want A's data %q", got, err, payload)
	}
	out, err := e.cluster.Ceph(ctx, "osd", "blocklist", "ls")
	if err != nil || !strings.Contains(out, a.addr+":0/") {
		t.Fatalf("blocklist does not hold A's client (%s): %v\n%s", a.addr, err, out)
	}
	if strings.Contains(out, b.addr) {
		t.Fatalf("B's address is blocklisted:\n%s", out)
	}

	// A resumes and finds itself fenced: its writes fail with I/O errors.
	thaw()
	var werr error
	for i := 0; i < 20 && werr == nil; i++ {
		werr = writeSynced(filepath.Join(a.target(vol), fmt.Sprintf("late-%d.txt", i)), bytes.Repeat([]byte("A"), 1<<20))
		if werr == nil {
			time.Sleep(500 * time.Millisecond)
		}
	}
	if werr == nil {
		t.Error("node A's writes kept succeeding after it was fenced")
	}
	t.Logf("A's write after the fence: %v", werr)

	// Nothing A tried reached the image: B, staging it afresh, sees A's
	// data from before the fence and none of the late files.
	if err := e.unstage(ctx, b, vol); err != nil {
		t.Fatal(err)
	}
	if err := e.stage(ctx, b, vol, rwo); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(b.target(vol))
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range entries {
		if strings.HasPrefix(en.Name(), "late") {
			t.Errorf("a write A made after the fence reached the image: %s", en.Name())
		}
	}
	got, err = os.ReadFile(filepath.Join(b.target(vol), "data.txt"))
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("after A's attempts, B reads %q, %v", got, err)
	}
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
