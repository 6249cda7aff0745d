package kernel

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/pelagic-csi/pelagic/e2e/cephtest"
	"github.com/pelagic-csi/pelagic/pkg/driver"
)

// TestCephFSKernelClient walks a shared volume with `mounter: kernel`
// through the real CephFS node plugin in the guest: NodeStage mounts it
// with the kernel client (mount -t ceph, the key in a secretfile), two
// targets share it (one read-only), writing past the quota fails, and
// NodeUnstage leaves no ceph mount behind.
func TestCephFSKernelClient(t *testing.T) {
	t.Parallel()
	e := shared
	ctx := testContext(t, 5*time.Minute)
	ctrl, err := driver.New(driver.Options{Type: "cephfs", DriverName: "cephfs.csi.pelagic.dev", Controller: true, Node: true,
		NodeID: nodeID, Config: e.cfg, StateDir: filepath.Join(e.dir, "cephfs-state")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ctrl.Close)
	fsCtrl, node := ctrl.Services.Controller, ctrl.Services.Node
	secrets := map[string]string{"adminID": e.cluster.FSUserID, "adminKey": e.cluster.FSUserKey}
	rwx := mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, "")
	const quota = 16 << 20
	resp, err := fsCtrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-kernel-fs", CapacityRange: &csi.CapacityRange{RequiredBytes: quota},
		VolumeCapabilities: []*csi.VolumeCapability{rwx}, Secrets: secrets,
		Parameters: map[string]string{"clusterID": clusterID, "fsName": e.cluster.FSName, "mounter": "kernel"}})
	if err != nil {
		t.Fatal(err)
	}
	v := resp.GetVolume()
	t.Cleanup(func() {
		if _, err := fsCtrl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId(), Secrets: secrets}); err != nil {
			t.Errorf("DeleteVolume: %v", err)
		}
	})
	dir := filepath.Join(e.dir, "pvc-kernel-fs")
	staging, rw, ro := filepath.Join(dir, "staging"), filepath.Join(dir, "rw"), filepath.Join(dir, "ro")
	if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.GetVolumeId(), StagingTargetPath: staging,
		VolumeCapability: rwx, VolumeContext: v.GetVolumeContext(), Secrets: secrets}); err != nil {
		t.Fatalf("NodeStageVolume: %v", err)
	}
	if mounts := cephMounts(t); len(mounts) != 2 || !strings.Contains(strings.Join(mounts, "\n"), "name="+e.cluster.FSUserID) ||
		strings.Contains(strings.Join(mounts, "\n"), e.cluster.FSUserKey) {
		t.Errorf("ceph mounts after NodeStage (the node's own, and its bind at the staging path):\n%s", strings.Join(mounts, "\n"))
	}
	for target, readOnly := range map[string]bool{rw: false, ro: true} {
		if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.GetVolumeId(), StagingTargetPath: staging,
			TargetPath: target, VolumeCapability: rwx, Readonly: readOnly, VolumeContext: v.GetVolumeContext()}); err != nil {
			t.Fatalf("NodePublishVolume at %s: %v", target, err)
		}
	}
	if err := writeSynced(filepath.Join(rw, "shared"), []byte("through the kernel client")); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(ro, "shared")); err != nil || string(got) != "through the kernel client" {
		t.Errorf("the read-only target reads %q, %v", got, err)
	}
	if err := os.WriteFile(filepath.Join(ro, "refused"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("writing through the read-only target: %v, want EROFS", err)
	}
	stats, err := node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: v.GetVolumeId(), VolumePath: rw})
	if err != nil || stats.GetUsage()[0].GetTotal() != quota {
		t.Errorf("stats %v, %v; want the quota, %d bytes", stats, err, quota)
	}
	written, err := cephtest.FillFile(filepath.Join(rw, "big"), 4*quota)
	if !errors.Is(err, syscall.EDQUOT) && !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("writing %d bytes into a %d-byte quota: %v after %d bytes; want EDQUOT or ENOSPC", 4*quota, quota, err, written)
	}
	t.Logf("the kernel client refused after %d bytes: %v", written, err)
	for _, target := range []string{rw, ro} {
		if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.GetVolumeId(), TargetPath: target}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.GetVolumeId(), StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	if mounts := cephMounts(t); len(mounts) != 0 {
		t.Errorf("ceph mounts left after NodeUnstage:\n%s", strings.Join(mounts, "\n"))
	}
}

// cephMounts lists the lines of /proc/mounts of type ceph.
func cephMounts(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[2] == "ceph" {
			out = append(out, line)
		}
	}
	return out
}
