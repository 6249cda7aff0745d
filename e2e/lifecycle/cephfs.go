package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
)

// CephFSConfig names what the CephFS walk needs besides the connections.
type CephFSConfig struct {
	ClusterID, FSName string
	Secrets           map[string]string // adminID/adminKey, as Rook's CephFS secrets
	WorkDir           string            // staging and target paths go here
}

// RunCephFS walks a shared volume through its life: created, staged on two
// nodes and published at a target on each, written on both, each node
// reading what the other wrote; then snapshotted, restored from the
// snapshot into a copy holding both files, expanded, and deleted. ctrl
// serves the Controller (and Identity), nodes the Node service of two nodes.
func RunCephFS(ctrl *grpc.ClientConn, nodes [2]*grpc.ClientConn, cfg CephFSConfig, out io.Writer) error {
	d := &demo{id: csi.NewIdentityClient(ctrl), ctrl: csi.NewControllerClient(ctrl), secrets: cfg.Secrets, volCap: rwxCap,
		params: map[string]string{"clusterID": cfg.ClusterID, "fsName": cfg.FSName}, work: cfg.WorkDir, out: out}
	w := &sharedWalk{demo: d}
	for i, c := range nodes {
		w.nodes[i] = fsNode{name: string(rune('a' + i)), node: csi.NewNodeClient(c)}
	}
	return d.timed("shared volume", w.run)
}

// fsNode is one node plugin of the walk.
type fsNode struct {
	name string
	node csi.NodeClient
}

type sharedWalk struct {
	*demo
	nodes [2]fsNode
}

var rwxCap = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER},
}

func (w *sharedWalk) run() error {
	a, b := w.nodes[0], w.nodes[1]
	steps := []step{
		{"probe", w.probe},
		w.createStep("create shared volume (1 GiB)", "demo-shared"),
		{"stage + publish on node a", func(ctx context.Context) (string, error) { return w.mount(ctx, a, w.vol) }},
		{"stage + publish on node b", func(ctx context.Context) (string, error) { return w.mount(ctx, b, w.vol) }},
		{"write on both nodes", func(context.Context) (string, error) {
			return "a.txt, b.txt", errors.Join(writeSynced(w.file(a, w.vol, "a.txt"), []byte("from a")),
				writeSynced(w.file(b, w.vol, "b.txt"), []byte("from b")))
		}},
		{"each reads the other's file", func(context.Context) (string, error) {
			return "a sees b.txt, b sees a.txt", errors.Join(w.expect(w.file(a, w.vol, "b.txt"), "from b"),
				w.expect(w.file(b, w.vol, "a.txt"), "from a"))
		}},
	}
	steps = append(steps, w.snapshotSteps("demo-shared-snap", "demo-shared-restored",
		func(v *csi.Volume) string { return "clone ready: " + v.GetVolumeId() })...)
	steps = append(steps,
		step{"mount restored on node a", func(ctx context.Context) (string, error) { return w.mount(ctx, a, w.restored) }},
		step{"check restored data", func(context.Context) (string, error) {
			return "a.txt and b.txt", errors.Join(w.expect(w.file(a, w.restored, "a.txt"), "from a"), w.expect(w.file(a, w.restored, "b.txt"), "from b"))
		}},
		step{"expand to 2 GiB", func(ctx context.Context) (string, error) { return w.expand(ctx, w.vol, b) }},
		step{"tear down restored", func(ctx context.Context) (string, error) { return w.unmount(ctx, a, w.restored) }},
		step{"tear down on both nodes", func(ctx context.Context) (string, error) {
			_, errA := w.unmount(ctx, a, w.vol)
			_, errB := w.unmount(ctx, b, w.vol)
			return "", errors.Join(errA, errB)
		}})
	return w.walk(append(steps, w.deleteSteps()...)...)
}

func (d *demo) probe(ctx context.Context) (string, error) {
	r, err := d.id.Probe(ctx, &csi.ProbeRequest{})
	if err != nil {
		return "", err
	}
	if !r.GetReady().GetValue() {
		return "", fmt.Errorf("driver is not ready")
	}
	return "ready", nil
}

func (w *sharedWalk) staging(n fsNode, v *csi.Volume) string {
	return filepath.Join(w.work, "node-"+n.name, "staging", v.GetVolumeId())
}

func (w *sharedWalk) target(n fsNode, v *csi.Volume) string {
	return filepath.Join(w.work, "node-"+n.name, "target", v.GetVolumeId(), "mount")
}

func (w *sharedWalk) file(n fsNode, v *csi.Volume, name string) string {
	return filepath.Join(w.target(n, v), name)
}

// mount stages the volume on a node and publishes it at that node's target.
func (w *sharedWalk) mount(ctx context.Context, n fsNode, v *csi.Volume) (string, error) {
	if _, err := n.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.GetVolumeId(), StagingTargetPath: w.staging(n, v),
		VolumeCapability: rwxCap, VolumeContext: v.GetVolumeContext(), Secrets: w.secrets}); err != nil {
		return "", err
	}
	_, err := n.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.GetVolumeId(), StagingTargetPath: w.staging(n, v),
		TargetPath: w.target(n, v), VolumeCapability: rwxCap, VolumeContext: v.GetVolumeContext()})
	return w.target(n, v), err
}

func (w *sharedWalk) unmount(ctx context.Context, n fsNode, v *csi.Volume) (string, error) {
	if _, err := n.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.GetVolumeId(), TargetPath: w.target(n, v)}); err != nil {
		return "", err
	}
	_, err := n.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.GetVolumeId(), StagingTargetPath: w.staging(n, v)})
	return "", err
}

// expect reads a file another client wrote, waiting while it is not there.
func (w *sharedWalk) expect(path, want string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := os.ReadFile(path)
		if err == nil && string(got) == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: read %q, %v; want %q", path, got, err, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// expand raises the quota; node n's mount shows the new size, with nothing
// for the node to do.
func (w *sharedWalk) expand(ctx context.Context, v *csi.Volume, n fsNode) (string, error) {
	r, err := w.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: v.GetVolumeId(),
		CapacityRange: &csi.CapacityRange{RequiredBytes: 2 << 30}, Secrets: w.secrets, VolumeCapability: rwxCap})
	if err != nil {
		return "", err
	}
	if r.GetNodeExpansionRequired() {
		return "", fmt.Errorf("the node was asked to expand")
	}
	for {
		s, err := n.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: v.GetVolumeId(), VolumePath: w.target(n, v)})
		if err == nil && len(s.GetUsage()) > 0 && s.GetUsage()[0].GetTotal() == 2<<30 {
			return fmt.Sprintf("quota %d bytes, seen on node %s", r.GetCapacityBytes(), n.name), nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("node %s still sees %v (%v): %w", n.name, s.GetUsage(), err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
