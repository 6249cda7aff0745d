package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/pelagic-csi/pelagic/cmd/pelagicctl/ctl"
	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/cephfs"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
	"github.com/pelagic-csi/pelagic/pkg/volume"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

// TestPelagicctlEveryCommand runs every pelagicctl command, in every
// output format, on real volumes: a mapped one, its snapshot, a clone of
// the snapshot and a clone of that clone (deleted, so it waits in the
// trash), and a CephFS subvolume.
func TestPelagicctlEveryCommand(t *testing.T) {
	e := newTwoNodes(t)
	a := e.nodes["node-a"]
	rwo := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	ctx := testContext(t, 10*time.Minute)
	vol := e.create(t, "pvc-every", rwo)
	image := vol.GetVolumeContext()[rbd.CtxImageName]
	if err := e.publish(ctx, vol, a.id, rwo); err != nil {
		t.Fatal(err)
	}
	if err := e.stage(ctx, a, vol, rwo); err != nil {
		t.Fatal(err)
	}
	if err := writeSynced(a.target(vol)+"/data.txt", []byte("every command\n")); err != nil {
		t.Fatal(err)
	}
	snap, err := e.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: uniqueName("snap-every"),
		SourceVolumeId: vol.GetVolumeId(), Secrets: e.secrets})
	if err != nil {
		t.Fatal(err)
	}
	fromSnap := e.createFrom(t, ctx, "pvc-from-snap", rwo, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshot().GetSnapshotId()}}})
	grandchild := e.createFrom(t, ctx, "pvc-grandchild", rwo, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: fromSnap.GetVolumeId()}}})
	if _, err := e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: fromSnap.GetVolumeId(), Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}

	c := newCtlRunner(t, e.cfgPath, e.cluster.AdminID, e.cluster.AdminKey, fake.NewClientset(kubeObjects(vol, e.cluster.Pool)...))

	var st struct {
		Image    string `json:"image"`
		Mappings []struct{ Node, ClientAddr string }
		Verdict  struct{ State string }
	}
	c.allFormats(ctx, &st, "status", vol.GetVolumeId())
	if st.Image != image || len(st.Mappings) != 1 || st.Mappings[0].Node != "node-a" || st.Verdict.State != "attached" {
		t.Errorf("status = %+v", st)
	}
	var ls struct {
		Volumes []struct {
			Image, PVC, Origin string
			UsedBytes          int64
			Attached           []string
		}
		Orphans []struct{ Kind, Image string }
	}
	text := c.allFormats(ctx, &ls, "ls", "--orphans")
	t.Logf("ls --orphans:\n%s", text)
	found := false
	for _, v := range ls.Volumes {
		if v.Image == image {
			found = v.PVC == "data-db-0" && v.Origin == "pelagic" && v.UsedBytes > 0 && len(v.Attached) == 1
		}
	}
	if !found || len(ls.Volumes) != 2 {
		t.Errorf("ls = %+v; want the mapped volume (used, attached, its PVC) and the grandchild", ls.Volumes)
	}
	c.allFormats(ctx, &ls, "ls", "--node", "node-b")
	if len(ls.Volumes) != 0 {
		t.Errorf("ls --node node-b = %+v, want none", ls.Volumes)
	}
	c.allFormats(ctx, &ls, "ls", "-n", "shop")
	if len(ls.Volumes) != 1 || ls.Volumes[0].Image != image {
		t.Errorf("ls -n shop = %+v, want the PVC's volume", ls.Volumes)
	}
	c.allFormats(ctx, &ls, "ls", "--stale")
	if len(ls.Volumes) != 0 {
		t.Errorf("ls --stale = %+v, want none", ls.Volumes)
	}
	var du struct {
		Pools []struct {
			Pool                        string
			Volumes                     int
			ProvisionedBytes, UsedBytes int64
		}
	}
	c.allFormats(ctx, &du, "du")
	if len(du.Pools) != 1 || du.Pools[0].Volumes != 2 || du.Pools[0].ProvisionedBytes < 512<<20 || du.Pools[0].UsedBytes == 0 {
		t.Errorf("du = %+v", du)
	}
	c.allFormats(ctx, &du, "du", vol.GetVolumeId())
	var snaps struct {
		Snapshots []struct {
			Name, SnapshotID string
			Clones           []struct{ Image string }
		}
	}
	text = c.allFormats(ctx, &snaps, "snapshots", vol.GetVolumeId())
	t.Logf("snapshots:\n%s", text)
	if len(snaps.Snapshots) != 1 || snaps.Snapshots[0].SnapshotID != snap.GetSnapshot().GetSnapshotId() ||
		len(snaps.Snapshots[0].Clones) != 1 {
		t.Errorf("snapshots = %+v", snaps)
	}
	var clones struct {
		Depth int
		Tree  []struct {
			Image   string
			Depth   int
			Trashed bool
		}
	}
	text = c.allFormats(ctx, &clones, "clones", e.cluster.Pool+"/"+grandchild.GetVolumeContext()[rbd.CtxImageName])
	t.Logf("clones:\n%s", text)
	if clones.Depth != 2 || len(clones.Tree) != 3 || clones.Tree[0].Image != image || !clones.Tree[1].Trashed {
		t.Errorf("clones = %+v; want the root, the trashed clone and the grandchild at depth 2", clones)
	}
	var trash struct {
		Entries []struct {
			Name    string
			Pelagic bool
			Outcome string
		}
	}
	c.allFormats(ctx, &trash, "trash", "ls")
	if len(trash.Entries) != 1 || trash.Entries[0].Name != fromSnap.GetVolumeContext()[rbd.CtxImageName] {
		t.Errorf("trash ls = %+v", trash)
	}
	c.allFormats(ctx, &trash, "trash", "purge")
	if len(trash.Entries) != 1 || !strings.HasPrefix(trash.Entries[0].Outcome, "kept") {
		t.Errorf("trash purge = %+v; want the image its grandchild needs kept", trash)
	}
	var fences struct{ Fences []any }
	c.allFormats(ctx, &fences, "fence", "ls")

	// The node side, on node A.
	nodeFlags := []string{"--state-dir", a.state, "--node", "node-a", "--kubelet-dir", a.work}
	var mapped struct {
		Mappings []struct {
			Mapper, Device, Image, VolumeID, Staging string
			Targets                                  []string
		}
	}
	text = c.allFormats(ctx, &mapped, append([]string{"showmapped"}, nodeFlags...)...)
	t.Logf("showmapped:\n%s", text)
	if len(mapped.Mappings) != 1 || mapped.Mappings[0].Image != image || mapped.Mappings[0].Staging != a.staging(vol) ||
		len(mapped.Mappings[0].Targets) != 1 {
		t.Fatalf("showmapped = %+v", mapped)
	}
	holder := exec.Command("sleep", "600")
	holder.Dir = a.target(vol)
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Process.Kill(); _, _ = holder.Process.Wait() })
	code, out, errOut := c.run(ctx, append([]string{"unmap", vol.GetVolumeId()}, nodeFlags...)...)
	if code != ctl.ExitFailed || !strings.Contains(errOut, fmt.Sprintf("pid %d (sleep)", holder.Process.Pid)) {
		t.Fatalf("unmap while sleep holds the target: exit %d, stdout %q, stderr %q; want a refusal naming it", code, out, errOut)
	}
	go func() { _, _ = holder.Process.Wait() }() // reap it once SIGTERM comes
	code, out, errOut = c.run(ctx, append([]string{"unmap", vol.GetVolumeId(), "--kill"}, nodeFlags...)...)
	t.Logf("unmap --kill:\n%s%s", out, errOut)
	if code != ctl.ExitOK || !strings.Contains(out, "removed node node-a's mapping record") {
		t.Fatalf("unmap --kill: exit %d", code)
	}
	c.allFormats(ctx, &st, "status", vol.GetVolumeId())
	if len(st.Mappings) != 0 {
		t.Errorf("status after unmap = %+v, want no mapping", st)
	}
	c.allFormats(ctx, &mapped, append([]string{"showmapped"}, nodeFlags...)...)
	if len(mapped.Mappings) != 0 {
		t.Errorf("showmapped after unmap = %+v", mapped)
	}

	// A CephFS volume: its subvolume, quota and usage.
	fsID, sv := e.cephfsSubvolume(t, ctx)
	fsVol := volumeid.ID{ClusterID: testClusterID, PoolID: fsID, UUID: strings.TrimPrefix(sv, "csi-vol-")}.String()
	var fsst struct {
		Type, Subvolume, State string
		QuotaBytes             int64
		Clients                []any
	}
	text = c.allFormats(ctx, &fsst, "status", fsVol)
	t.Logf("CephFS status:\n%s", text)
	if fsst.Type != "cephfs" || fsst.Subvolume != sv || fsst.QuotaBytes != 64<<20 || fsst.State != "complete" {
		t.Errorf("CephFS status = %+v", fsst)
	}
	if code, out, _ := c.run(ctx, "completion", "bash"); code != ctl.ExitOK || !strings.Contains(out, "complete -F") {
		t.Errorf("completion bash: exit %d: %s", code, out)
	}
}

// createFrom creates a volume from a content source.
func (e *twoNodes) createFrom(t *testing.T, ctx context.Context, name string, c *csi.VolumeCapability,
	src *csi.VolumeContentSource) *csi.Volume {
	t.Helper()
	resp, err := e.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: 256 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{c}, Parameters: e.params, Secrets: e.secrets, VolumeContentSource: src})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetVolume()
}

// cephfsSubvolume makes a 64 MiB subvolume csi-vol-UUID in group csi of
// filesystem cephfs, as the CephFS service lays volumes out, and returns
// the filesystem's FSCID and the subvolume's name.
func (e *twoNodes) cephfsSubvolume(t *testing.T, ctx context.Context) (int64, string) {
	t.Helper()
	conns := ceph.NewConnPool(ceph.Timeouts{})
	t.Cleanup(conns.Close)
	cc, err := e.cfg.Cluster(testClusterID)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := conns.Get(ctx, cc, ceph.Credentials{ID: e.cluster.AdminID, Key: e.cluster.AdminKey})
	if err != nil {
		t.Fatal(err)
	}
	vols := cephfs.NewMgrVolumes(conn.Conn)
	info, err := vols.FileSystem(ctx, "cephfs")
	if err != nil {
		t.Fatal(err)
	}
	if err := vols.EnsureGroup(ctx, "cephfs", "csi"); err != nil {
		t.Fatal(err)
	}
	name := "csi-vol-" + volume.NewUUID()
	sv := cephfs.Subvolume{FS: "cephfs", Group: "csi", Name: name}
	if err := vols.CreateSubvolume(ctx, sv, cephfs.SubvolumeSpec{Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = vols.RemoveSubvolume(ctx, sv, cephfs.RemoveOptions{Force: true})
	})
	return info.ID, name
}
