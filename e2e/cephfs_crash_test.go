package e2e

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/pelagic-csi/pelagic/pkg/cephfs"
)

// TestCephFSKillDuringCreate kills a controller process with SIGKILL
// between the reservation of a name and the making of its subvolume, and
// while it waits for a clone; a new controller's retry converges on one
// subvolume, the one of the reservation, and no orphan is left.
func TestCephFSKillDuringCreate(t *testing.T) {
	e := newCephFSEnv(t)
	t.Run("between reservation and subvolume", func(t *testing.T) {
		dying, proc := startControllerProcess(t, "cephfs", e.cfgPath, killAfterReserve)
		req := e.createReq("pvc-killed", 32<<20, rwx, nil)
		if _, err := dying.CreateVolume(testContext(t, time.Minute), req); err == nil {
			t.Fatal("the controller that was to die created the volume")
		}
		if werr := proc.Wait(); proc.ProcessState == nil || proc.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("the controller process ended with %v, not SIGKILL", werr)
		}
		if subs := e.subvolumes(t); len(subs) != 0 {
			t.Fatalf("subvolumes before the retry: %v", subs)
		}
		v := e.create(t, req)
		again := e.create(t, req)
		if subs := e.subvolumes(t); again.GetVolumeId() != v.GetVolumeId() ||
			!slices.Equal(subs, []string{v.GetVolumeContext()[cephfs.CtxSubvolumeName]}) ||
			!strings.HasSuffix(v.GetVolumeId(), strings.TrimPrefix(subs[0], "csi-vol-")) {
			t.Fatalf("retries made %s and %s; subvolumes %v", v.GetVolumeId(), again.GetVolumeId(), subs)
		}
	})
	t.Run("while waiting for a clone", func(t *testing.T) {
		src := e.create(t, e.createReq("pvc-source", 32<<20, rwx, nil))
		snap := e.snapshot(t, "snap-killed", src)
		t.Cleanup(func() { _ = e.deleteSnapshot(context.Background(), snap) })
		before := e.subvolumes(t)
		dying, proc := startControllerProcess(t, "cephfs", e.cfgPath, "")
		req := e.createReq("pvc-clone-killed", 32<<20, rwx, snapshotSource(snap.GetSnapshotId()))
		go func() { _, _ = dying.CreateVolume(context.Background(), req) }()
		eventually(t, time.Minute, "the clone to start", func() error {
			if subs := e.subvolumes(t); len(subs) == len(before) {
				return os.ErrNotExist
			}
			return nil
		})
		_ = proc.Process.Kill()
		_ = proc.Wait()
		v := e.create(t, req)
		after := e.subvolumes(t)
		if len(after) != len(before)+1 || !slices.Contains(after, v.GetVolumeContext()[cephfs.CtxSubvolumeName]) {
			t.Fatalf("subvolumes %v before, %v after the retry of %s: want exactly one clone", before, after, v.GetVolumeId())
		}
	})
}

// TestCephFSDeadFuseRemounted kills a volume's ceph-fuse: NodeGetVolumeHealth
// says so, and the next NodeStage, or NodePublish, mounts the volume again,
// staging path and targets, and it serves reads and writes again.
func TestCephFSDeadFuseRemounted(t *testing.T) {
	e := newCephFSEnv(t)
	state := shortTempDir(t)
	node := e.nodeIn(t, "node-a", state)
	v := e.create(t, e.createReq("pvc-dead-fuse", 32<<20, rwx, nil))
	m := e.mount(t, node, v, rwx, t.TempDir())
	if err := writeSynced(m.file("before"), []byte("kept")); err != nil {
		t.Fatal(err)
	}
	for _, via := range []string{"NodeStage", "NodePublish"} {
		t.Run(via, func(t *testing.T) {
			killCephFuse(t, state)
			h, err := node.NodeGetVolumeHealth(testContext(t, time.Minute), &csi.NodeGetVolumeHealthRequest{VolumeId: v.GetVolumeId()})
			if err != nil || len(h.GetVolumeHealth().GetHealthStatuses()) == 0 || h.GetVolumeHealth().GetHealthStatuses()[0].GetReason() != "MountDead" {
				t.Fatalf("health after the kill: %v, %v; want MountDead", h, err)
			}
			start := time.Now()
			// The MDS keeps the caps of the killed client's session until
			// it times the session out (session_timeout, 60 s): the new
			// mount may wait that long on the volume's root.
			ctx := testContext(t, 2*time.Minute)
			switch via {
			case "NodeStage":
				_, err = node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.GetVolumeId(),
					StagingTargetPath: m.staging, VolumeCapability: rwx, VolumeContext: v.GetVolumeContext(), Secrets: e.secrets})
			default:
				_, err = node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.GetVolumeId(),
					StagingTargetPath: m.staging, TargetPath: m.target, VolumeCapability: rwx, VolumeContext: v.GetVolumeContext()})
			}
			if err != nil {
				t.Fatalf("%s after the kill: %v", via, err)
			}
			if got := readEventually(t, m.file("before")); string(got) != "kept" {
				t.Errorf("read back %q after the remount", got)
			}
			if err := writeSynced(m.file("after-"+via), []byte("written")); err != nil {
				t.Errorf("writing after the remount: %v", err)
			}
			t.Logf("%s remounted, and the volume served a write, %v after it was called", via, time.Since(start).Round(time.Millisecond))
		})
	}
}

// killCephFuse kills the one ceph-fuse serving a mount under state.
func killCephFuse(t *testing.T, state string) {
	t.Helper()
	pid := cephFusePID(t, state)
	if pid == 0 {
		t.Fatalf("no ceph-fuse serves a mount under %s", state)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "ceph-fuse to die", func() error {
		if cephFusePID(t, state) != 0 {
			return os.ErrExist
		}
		return nil
	})
}

// cephFusePID finds the ceph-fuse whose mount point lies under state; 0 if none.
func cephFusePID(t *testing.T, state string) int {
	if pids := cephFusePIDs(state); len(pids) > 0 {
		return pids[0]
	}
	return 0
}

// cephFusePIDs lists the ceph-fuse processes whose mount point lies under state.
func cephFusePIDs(state string) []int {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var pids []int
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if filepath.Base(args[0]) == "ceph-fuse" && strings.HasPrefix(args[len(args)-1], state+"/") {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	return pids
}

// TestCephFSPluginRestart: a volume's ceph-fuse, started through the daemon
// host, outlives the node plugin's process killed in a PID namespace of its
// own (a container restart); the restarted plugin serves the volume on
// and unstages it.
func TestCephFSPluginRestart(t *testing.T) {
	e := newCephFSEnv(t)
	p := nodeProcess{Socket: filepath.Join(shortTempDir(t), "csi.sock"), Config: e.cfgPath, StateDir: shortTempDir(t),
		DaemonSocket: startDaemonHost(t), Type: "cephfs"}
	v := e.create(t, e.createReq("pvc-restart", 32<<20, rwx, nil))
	dir := t.TempDir()
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "target")
	first := startPlugin(t, p, true)
	ctx := testContext(t, 2*time.Minute)
	if _, err := first.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.GetVolumeId(), StagingTargetPath: staging,
		VolumeCapability: rwx, VolumeContext: v.GetVolumeContext(), Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}
	if _, err := first.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.GetVolumeId(), StagingTargetPath: staging,
		TargetPath: target, VolumeCapability: rwx, VolumeContext: v.GetVolumeContext()}); err != nil {
		t.Fatal(err)
	}
	fuse := cephFusePID(t, p.StateDir)
	first.kill(t, syscall.SIGKILL)
	if err := writeSynced(filepath.Join(target, "while-down"), []byte("no plugin")); err != nil {
		t.Fatalf("writing while the plugin is down: %v", err)
	}
	second := startPlugin(t, p, true)
	h, err := second.node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: v.GetVolumeId(), VolumePublishPath: target})
	if err != nil || len(h.GetVolumeHealth().GetHealthStatuses()) != 0 || cephFusePID(t, p.StateDir) != fuse {
		t.Fatalf("after the restart: health %v, %v; ceph-fuse %d, was %d", h, err, cephFusePID(t, p.StateDir), fuse)
	}
	if _, err := second.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.GetVolumeId(), TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := second.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.GetVolumeId(), StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "ceph-fuse to exit after the unstage", func() error {
		if cephFusePID(t, p.StateDir) != 0 {
			return os.ErrExist
		}
		return nil
	})
}
