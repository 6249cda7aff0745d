package rbd

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/pelagic-csi/pelagic/pkg/mapper"
)

// cephCSIContext is the volume context of a PV ceph-csi provisioned with
// a full class: every class parameter, plus imageName and journalPool.
func cephCSIContext() map[string]string {
	return map[string]string{ParamClusterID: testClusterID, ParamPool: testPool, CtxImageName: nodeTestImage,
		"journalPool": testPool, "imageFeatures": "layering", "imageFormat": "2", "mounter": "rbd",
		"mapOptions": "krbd:lock_on_read", "unmapOptions": "force", "mkfsOptions": "-m0", "volumeNamePrefix": "csi-vol-",
		"unknownParam": "kept"}
}

// cephCSIStages stages the volume as ceph-csi's node plugin leaves it: its
// stash at the staging path, the image mapped by krbd (in the kernel, so
// it outlives the plugin), the filesystem mounted at <staging>/<volume ID>
// and bound at target.
func (e *nodeEnv) cephCSIStages(t *testing.T, target string) mapper.Mapping {
	t.Helper()
	ctx := context.Background()
	stash, _ := json.Marshal(map[string]any{"Version": 3, "pool": testPool, "radosNamespace": "", "image": nodeTestImage,
		"unmapOptions": "force", "accessType": false, "encrypted": false, "device": "", "logDir": "", "logFileStrategy": ""})
	if err := os.WriteFile(filepath.Join(e.staging, cephCSIStashFile), stash, 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := e.krbd.Map(ctx, mapper.Image{Pool: testPool, Name: nodeTestImage}, mapper.MapOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(e.staging, e.volID)
	if err := os.Mkdir(mnt, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := e.mnt.Mount(ctx, m.Device, mnt, "ext4", nil); err != nil {
		t.Fatal(err)
	}
	if target != "" {
		if err := e.mnt.BindMount(ctx, mnt, target, false); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// wantCephCSIGone fails unless nothing ceph-csi staged is left.
func (e *nodeEnv) wantCephCSIGone(t *testing.T) {
	t.Helper()
	for _, p := range []string{cephCSIStashFile, e.volID} {
		if _, err := os.Stat(filepath.Join(e.staging, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is left at the staging path: %v", p, err)
		}
	}
	if mounted, _ := e.mnt.IsMountPoint(context.Background(), filepath.Join(e.staging, e.volID)); mounted {
		t.Error("ceph-csi's mount point is still mounted")
	}
}

// TestNodeUnstagesCephCSIStaging: after the swap, Pelagic unpublishes and
// unstages what ceph-csi's node plugin staged (its unmapOptions kept),
// and stages it again its own way from the PV's ceph-csi context.
func TestNodeUnstagesCephCSIStaging(t *testing.T) {
	e := newNodeEnv(t)
	ctx := context.Background()
	target := e.target("pod1")
	m := e.cephCSIStages(t, target)
	if _, err := e.n.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: e.volID, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.n.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: e.volID, StagingTargetPath: e.staging}); err != nil {
		t.Fatalf("NodeUnstageVolume of ceph-csi's staging: %v", err)
	}
	un := e.krbd.UnmapCalls()
	if len(un) != 1 || un[0].Mapping.Device != m.Device || un[0].Opts.Options != "force" {
		t.Fatalf("unmaps %+v; want %s with ceph-csi's unmapOptions force", un, m.Device)
	}
	e.wantCephCSIGone(t)

	req := e.stageReq(mountCap(rwo))
	req.VolumeContext = cephCSIContext()
	e.stage(t, req)
	calls := e.krbd.MapCalls()
	if len(calls) != 2 || calls[1].Opts.Options != "lock_on_read" {
		t.Fatalf("map calls %+v; want a second one with the context's krbd options", calls)
	}
	if rec := e.record(t); rec.UnmapOptions != "force" || rec.MountPath != "" {
		t.Errorf("stage record %+v", rec)
	}
}

// TestNodeAdoptsCephCSIStaging: a volume ceph-csi's node plugin staged is
// staged again (a kubelet restart) or published (another pod) in place:
// nothing is mapped or mounted anew, the mapping is recorded in the image
// at NodeStage, and unstage then removes what ceph-csi left.
func TestNodeAdoptsCephCSIStaging(t *testing.T) {
	for _, first := range []string{"stage", "publish"} {
		t.Run(first, func(t *testing.T) {
			e := newNodeEnv(t)
			ctx := context.Background()
			m := e.cephCSIStages(t, "")
			mountPath := filepath.Join(e.staging, e.volID)
			req := e.stageReq(mountCap(rwo))
			req.VolumeContext = cephCSIContext()
			if first == "stage" {
				e.stage(t, req)
			}
			target := e.target("pod2")
			e.publish(t, e.publishReq(target, mountCap(rwo)))
			e.stage(t, req) // again, as a restarted kubelet does
			recs, _ := readRecords(ctx, e.pool, nodeTestImage)
			if got := recs.Mappings[nodeTestNode]; got.ClientAddr != m.ClientAddr {
				t.Errorf("mapping record %+v; ceph-csi's mapping is %s", got, m.ClientAddr)
			}
			if n := len(e.krbd.MapCalls()); n != 1 {
				t.Errorf("%d map calls; ceph-csi's mapping should be kept", n)
			}
			if binds := e.calls("BindMount"); len(binds) != 1 || binds[0] != "BindMount "+mountPath+" "+target+" false" {
				t.Errorf("binds %q; want %s bound at %s", binds, mountPath, target)
			}
			if rec := e.record(t); rec.MountPath != mountPath || !rec.CephCSIStash || rec.Mapping.Device != m.Device {
				t.Errorf("stage record %+v", rec)
			}
			if _, err := e.n.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: e.volID, TargetPath: target}); err != nil {
				t.Fatal(err)
			}
			if _, err := e.n.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: e.volID, StagingTargetPath: e.staging}); err != nil {
				t.Fatal(err)
			}
			e.wantCephCSIGone(t)
			if un := e.krbd.UnmapCalls(); len(un) != 1 || un[0].Opts.Options != "force" {
				t.Errorf("unmaps %+v", un)
			}
			if recs, _ := readRecords(ctx, e.pool, nodeTestImage); len(recs.Mappings) > 0 {
				t.Errorf("mapping records left: %v", recs.Mappings)
			}
		})
	}
}

// TestNodeStageOverDeadCephCSIStaging: a stash whose mapping went with a
// reboot is removed, and the volume staged afresh.
func TestNodeStageOverDeadCephCSIStaging(t *testing.T) {
	e := newNodeEnv(t)
	m := e.cephCSIStages(t, "")
	if err := e.krbd.Unmap(context.Background(), m, mapper.UnmapOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.mnt.Unmount(context.Background(), filepath.Join(e.staging, e.volID)); err != nil {
		t.Fatal(err)
	}
	req := e.stageReq(mountCap(rwo))
	req.VolumeContext = maps.Clone(cephCSIContext())
	e.stage(t, req)
	e.wantCephCSIGone(t)
	if rec := e.record(t); rec.MountPath != "" || rec.CephCSIStash {
		t.Errorf("stage record %+v", rec)
	}
	if n := len(e.krbd.MapCalls()); n != 2 {
		t.Errorf("%d map calls, want a fresh one", n)
	}
}
