package kernel

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/pelagic-csi/pelagic/e2e/cephcsi"
)

// cephCSIVolume is a volume ceph-csi provisioned, staged and published on this node.
type cephCSIVolume struct {
	*csi.Volume
	staging, target string // ceph-csi's
	data            []byte // written through ceph-csi's mount
}

func (v *cephCSIVolume) at(target string) *volume {
	return &volume{Volume: v.Volume, staging: v.staging, target: target}
}

// TestCephCSINodeSwap is the node side of replacing ceph-csi in place, with the kernel's krbd:
// ceph-csi's node plugin stages and publishes two volumes its controller provisioned, and a file
// is written to each; the plugin is replaced by Pelagic's (same node ID), its krbd mappings and
// mounts left as they are. Pelagic unpublishes, unstages and stages again the first; the second
// it first adopts in place, as a restarted kubelet's NodeStage and a new pod's NodePublish ask,
// then tears it down and stages it again too. Every file reads back; Pelagic's controller
// deletes both volumes.
func TestCephCSINodeSwap(t *testing.T) {
	t.Parallel()
	e := shared
	ctx := testContext(t, 10*time.Minute)
	start := time.Now()
	cephcsi.StartTimeout = 3 * time.Minute // unpacking and starting it under emulation
	d := cephcsi.Start(t, cephcsi.Options{Type: "rbd", Clusters: []cephcsi.Cluster{cephcsi.ClusterOf(e.cluster, clusterID)},
		Node: true, NodeID: nodeID, SharedMounts: true})
	t.Logf("ceph-csi answers after %v", time.Since(start).Round(100*time.Millisecond))
	c := mountCap(rwo, "ext4")
	var vols []*cephCSIVolume
	for _, name := range []string{"direct", "adopted"} {
		v := e.cephCSIStage(ctx, t, d, "cephcsi-swap-"+name, c)
		vols = append(vols, v)
		t.Cleanup(func() { e.forget(v) })
	}
	t.Logf("ceph-csi's krbd client instances: %s and %s (it maps without noshare)",
		e.kernelAddrOf(t, vols[0]), e.kernelAddrOf(t, vols[1]))
	t.Logf("ceph-csi staged and published both after %v", time.Since(start).Round(100*time.Millisecond))
	if err := d.Kill(); err != nil {
		t.Fatal(err)
	}
	for _, v := range vols {
		readBack(t, filepath.Join(v.target, "data"), v.data) // the swap leaves pods' mounts alone
	}

	direct := vols[0]
	if err := e.unpublish(ctx, direct.at(direct.target)); err != nil {
		t.Fatal(err)
	}
	e.unstageCephCSI(ctx, t, direct)
	e.stageAgain(ctx, t, direct, c)

	adopted := vols[1]
	id := krbdDevice(t, adopted.image())
	kernelAddr := e.kernelAddrOf(t, adopted)
	second := adopted.at(filepath.Join(filepath.Dir(adopted.staging), "pod2", "mount"))
	if err := e.stage(ctx, second, c); err != nil {
		t.Fatalf("staging in place what ceph-csi staged: %v", err)
	}
	if got := krbdDevice(t, adopted.image()); got != id {
		t.Fatalf("adopting mapped %s again: /dev/rbd%s, was /dev/rbd%s", adopted.image(), got, id)
	}
	if rec := e.mappingRecord(t, second); rec.ClientAddr != kernelAddr {
		t.Errorf("the adopted mapping is recorded as %+v; the kernel's instance is %s", rec, kernelAddr)
	}
	readBack(t, filepath.Join(second.target, "data"), adopted.data)
	for _, target := range []string{second.target, adopted.target} {
		if err := e.unpublish(ctx, adopted.at(target)); err != nil {
			t.Fatal(err)
		}
	}
	e.unstageCephCSI(ctx, t, adopted)
	e.stageAgain(ctx, t, adopted, c)

	t.Logf("Pelagic's node plugin took both over, unstaged and staged them again after %v", time.Since(start).Round(100*time.Millisecond))
	for _, v := range vols {
		if _, err := e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId(), Secrets: e.secrets}); err != nil {
			t.Errorf("DeleteVolume %s through Pelagic: %v", v.GetVolumeId(), err)
		}
	}
}

// cephCSIStage creates a volume with ceph-csi's controller, stages and publishes it with its
// node plugin (krbd) under its shared directory, and writes a file to it.
func (e *env) cephCSIStage(ctx context.Context, t *testing.T, d *cephcsi.Driver, name string, c *csi.VolumeCapability) *cephCSIVolume {
	t.Helper()
	resp, err := d.Controller.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}, VolumeCapabilities: []*csi.VolumeCapability{c},
		Parameters: map[string]string{"clusterID": clusterID, "pool": e.cluster.Pool, "imageFeatures": "layering"},
		Secrets:    e.secrets})
	if err != nil {
		t.Fatalf("ceph-csi's CreateVolume %s: %v", name, err)
	}
	v := &cephCSIVolume{Volume: resp.GetVolume(), staging: filepath.Join(d.Dir, "kubelet", name, "globalmount"),
		target: filepath.Join(d.Dir, "kubelet", name, "pod1", "mount"), data: bytes.Repeat([]byte(name+" "), 4096)}
	if err := os.MkdirAll(v.staging, 0o750); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.GetVolumeId(), StagingTargetPath: v.staging,
		VolumeCapability: c, VolumeContext: v.GetVolumeContext(), Secrets: e.secrets}); err != nil {
		t.Fatalf("ceph-csi's NodeStageVolume %s: %v", name, err)
	}
	if _, err := d.Node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.GetVolumeId(), StagingTargetPath: v.staging,
		TargetPath: v.target, VolumeCapability: c, VolumeContext: v.GetVolumeContext()}); err != nil {
		t.Fatalf("ceph-csi's NodePublishVolume %s: %v", name, err)
	}
	for _, p := range []string{filepath.Join(v.staging, "image-meta.json"), filepath.Join(v.staging, v.GetVolumeId())} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("ceph-csi staged %s without %s: %v", name, p, err)
		}
	}
	if krbdDevice(t, v.image()) == "" {
		t.Fatalf("ceph-csi staged %s, but no krbd device maps %s", name, v.image())
	}
	if err := writeSynced(filepath.Join(v.target, "data"), v.data); err != nil {
		t.Fatal(err)
	}
	return v
}

func (v *cephCSIVolume) image() string { return v.GetVolumeContext()["imageName"] }

// kernelAddrOf is the client instance of the kernel's mapping of v.
func (e *env) kernelAddrOf(t *testing.T, v *cephCSIVolume) string {
	t.Helper()
	addr, _ := kernelInstance(t, krbdDevice(t, v.image()))
	return addr
}

// unstageCephCSI unstages with Pelagic's node plugin a volume ceph-csi's staged (or Pelagic
// adopted): its mapping, its mount at <staging>/<volume ID> and its stash go.
func (e *env) unstageCephCSI(ctx context.Context, t *testing.T, v *cephCSIVolume) {
	t.Helper()
	if err := e.unstage(ctx, v.at("")); err != nil {
		t.Fatal(err)
	}
	if id := krbdDevice(t, v.image()); id != "" {
		t.Fatalf("/dev/rbd%s still maps %s after Pelagic's NodeUnstageVolume", id, v.image())
	}
	for _, p := range []string{filepath.Join(v.staging, "image-meta.json"), filepath.Join(v.staging, v.GetVolumeId())} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s is left after unstaging: %v", p, err)
		}
	}
	if m, ok := e.usage(t, v.at("")).Mappings[nodeID]; ok {
		t.Errorf("mapping record %+v left after unstaging", m)
	}
}

// stageAgain stages v with Pelagic's node plugin, from the volume context ceph-csi's PV carries,
// publishes it to a new pod, reads its file back and tears it down.
func (e *env) stageAgain(ctx context.Context, t *testing.T, v *cephCSIVolume, c *csi.VolumeCapability) {
	t.Helper()
	again := v.at(filepath.Join(filepath.Dir(v.staging), "pod3", "mount"))
	if err := e.stage(ctx, again, c); err != nil {
		t.Fatalf("staging again with Pelagic: %v", err)
	}
	e.checkRecordIsKernels(t, again, false)
	readBack(t, filepath.Join(again.target, "data"), v.data)
	e.teardownAndCheckUnmapped(t, again)
}

// forget tears v down on this node with Pelagic's plugin, whatever a failed test left, and
// deletes it.
func (e *env) forget(v *cephCSIVolume) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, pod := range []string{"pod1", "pod2", "pod3"} {
		_ = e.unpublish(ctx, v.at(filepath.Join(filepath.Dir(v.staging), pod, "mount")))
	}
	_ = e.unstage(ctx, v.at(""))
	_, _ = e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId(), Secrets: e.secrets})
}
