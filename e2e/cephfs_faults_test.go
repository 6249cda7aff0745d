package e2e

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/ceph/go-ceph/cephfs/admin"
	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/pelagic-csi/pelagic/e2e/cephtest"
	"github.com/pelagic-csi/pelagic/pkg/cephfs"
	"github.com/pelagic-csi/pelagic/pkg/driver"
	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

// TestCephFSCreateWithStalledOSD stops the OSD of a private cluster with
// SIGSTOP right after a CreateVolume reserved its name: the mgr volumes
// module and the MDS, whose pools are on that OSD, stall with it. The call
// returns DeadlineExceeded or Unavailable within its deadline, a second
// call for the name is not held behind it, and after SIGCONT a retry makes
// the volume: one subvolume, one journal entry, no orphan.
func TestCephFSCreateWithStalledOSD(t *testing.T) {
	c := cephtest.Start(t)
	e := newCephFSEnvOn(t, c)
	osd := newOSDStaller(t, c)
	ctrl := e.controller(t, func(string) { osd.stop() })
	req := e.createReq("pvc-stalled", 32<<20, rwx, nil)
	var resp *csi.CreateVolumeResponse
	stallCreate(t, osd, func(ctx context.Context) (err error) {
		resp, err = ctrl.CreateVolume(ctx, req)
		return err
	})
	e.assertExactly(t, testContext(t, time.Minute), []*csi.Volume{resp.GetVolume()})
}

// assertExactly checks that the group holds the subvolumes of vols and
// nothing else, and the journal an entry for each, naming its subvolume,
// and no other: no subvolume without its entry, no entry without its
// subvolume.
func (e *cephfsEnv) assertExactly(t *testing.T, ctx context.Context, vols []*csi.Volume) {
	t.Helper()
	want := map[string]string{} // subvolume -> volume ID's UUID
	for _, v := range vols {
		id, err := volumeid.Parse(v.GetVolumeId())
		if err != nil {
			t.Fatal(err)
		}
		want[v.GetVolumeContext()[cephfs.CtxSubvolumeName]] = id.UUID
	}
	if subs := e.subvolumes(t); !slices.Equal(subs, slices.Sorted(maps.Keys(want))) {
		t.Fatalf("the group holds subvolumes %v; want exactly %v", subs, slices.Sorted(maps.Keys(want)))
	}
	entries := map[string]string{}
	if err := journal.ForEach(ctx, e.journal(t), journal.Volume, 100, func(r *journal.Record) {
		entries[r.Backing] = r.UUID
	}); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(entries, want) {
		t.Fatalf("the journal holds entries %v (subvolume: UUID); want exactly %v", entries, want)
	}
}

// journal opens the env's journal, in the filesystem's metadata pool, as
// the admin.
func (e *cephfsEnv) journal(t *testing.T) journal.Journal {
	t.Helper()
	conn := adminConn(t, e.cluster)
	pools, err := e.fsa.ListFileSystems()
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(pools, func(p admin.FSPoolInfo) bool { return p.Name == e.cluster.FSName })
	if i < 0 {
		t.Fatalf("no filesystem %s in %v", e.cluster.FSName, pools)
	}
	ioctx, err := conn.OpenIOContext(pools[i].MetadataPool)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ioctx.Destroy)
	ioctx.SetNamespace(e.ns)
	return journal.NewRados(ioctx, cephfs.JournalPrefix)
}

// TestCephFSNodeStageWithStalledOSD stops the OSD of a private cluster
// with SIGSTOP before a NodeStage: one asking the mgr for the subvolume's
// path, and one whose volume context carries the path, so that ceph-fuse
// meets the stalled MDS as it mounts. The call returns DeadlineExceeded or
// Unavailable within its deadline and leaves no ceph-fuse behind; a second
// call is not held behind it and returns by its own deadline; after
// SIGCONT a retry stages the volume on exactly one ceph-fuse mounted once,
// and NodeUnstage leaves nothing.
func TestCephFSNodeStageWithStalledOSD(t *testing.T) {
	c := cephtest.Start(t)
	e := newCephFSEnvOn(t, c)
	for _, tc := range []struct {
		name     string
		withPath bool
	}{
		{"path asked of the mgr", false},
		{"path in the volume context", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state, work := shortTempDir(t), t.TempDir()
			t.Cleanup(func() { cleanupNode(state, work) })
			node := e.nodeIn(t, "node-1", state)
			vol := e.create(t, e.createReq(uniqueName("pvc-stall"), 32<<20, rwx, nil))
			osd := newOSDStaller(t, c) // its cleanup, continuing the OSD, runs first
			vctx := maps.Clone(vol.GetVolumeContext())
			if tc.withPath {
				path, err := e.fsa.SubVolumePath(c.FSName, e.group, vctx[cephfs.CtxSubvolumeName])
				if err != nil {
					t.Fatal(err)
				}
				vctx[cephfs.CtxSubvolumePath] = path
			}
			staging := filepath.Join(work, "staging")
			req := &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging,
				VolumeCapability: rwx, VolumeContext: vctx, Secrets: e.secrets}
			stage := func(ctx context.Context) error {
				_, err := node.NodeStageVolume(ctx, req)
				return err
			}
			osd.stop()
			callStalled(t, "in-flight NodeStage", 5*time.Second, 2*time.Second, stage)
			callStalled(t, "a second NodeStage", 3*time.Second, 2*time.Second, stage)
			if now := fsNodeStateOf(t, state, staging, ""); len(now.fuse) != 0 || now.stagingMounts != 0 {
				t.Fatalf("after the stalled stages: %s; want nothing mounted", now)
			}
			osd.thaw()
			ctx := testContext(t, 2*time.Minute)
			eventually(t, 90*time.Second, "NodeStage after SIGCONT", func() error { return stage(ctx) })
			if now := fsNodeStateOf(t, state, staging, ""); len(now.fuse) != 1 || len(now.dirs) != 1 || now.stagingMounts != 1 {
				t.Fatalf("staged after SIGCONT: %s; want one ceph-fuse, mounted once", now)
			}
			if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol.GetVolumeId(),
				StagingTargetPath: staging}); err != nil {
				t.Fatal(err)
			}
			eventually(t, 30*time.Second, "nothing left after NodeUnstage", func() error {
				if left := fsNodeStateOf(t, state, staging, ""); !left.empty() {
					return fmt.Errorf("left: %s", left)
				}
				return nil
			})
		})
	}
}

// fsNodeState is what a CephFS node plugin has set up on the host.
type fsNodeState struct {
	fuse          []int    // ceph-fuse processes mounting under the state directory
	dirs          []string // mount directories
	stagingMounts int
	targetMounts  int
}

func (s fsNodeState) String() string {
	return fmt.Sprintf("ceph-fuse %v, mount directories %v, %d mounts at the staging path, %d at the target",
		s.fuse, s.dirs, s.stagingMounts, s.targetMounts)
}

func (s fsNodeState) empty() bool {
	return len(s.fuse)+len(s.dirs)+s.stagingMounts+s.targetMounts == 0
}

// fsNodeStateOf is what a CephFS node plugin with state directory state
// has set up, and the mounts at a volume's staging path and target.
func fsNodeStateOf(t *testing.T, state, staging, target string) fsNodeState {
	t.Helper()
	dirs, _ := filepath.Glob(filepath.Join(state, "cephfs", "mounts", "*"))
	return fsNodeState{fuse: cephFusePIDs(state), dirs: dirs,
		stagingMounts: mountsAt(t, staging), targetMounts: mountsAt(t, target)}
}

// TestCephFSMonitorRestart restarts the only monitor of a private cluster,
// once stopped with SIGTERM and once killed with SIGKILL, under one CephFS
// driver process serving controller and node (ceph-fuse), with a volume
// staged, published and written. Once the monitor answers again, every
// call succeeds at the first attempt on the driver's cached connections,
// and the volume staged across the restart reads back.
func TestCephFSMonitorRestart(t *testing.T) {
	c := cephtest.Start(t)
	e := newCephFSEnvOn(t, c)
	m := newMonRestartEnv(t, driver.Options{Type: "cephfs", DriverName: "cephfs.csi.pelagic.dev", Config: e.cfg}, e.secrets, rwx,
		func(name string, size int64) *csi.CreateVolumeRequest { return e.createReq(name, size, rwx, nil) })
	m.restartMonitor(t, c)
	e.assertExactly(t, testContext(t, time.Minute), nil)
}

// TestCephFSNodeStageSurvivesPluginKill kills the node plugin process
// (ceph-fuse runs in a daemon host) with SIGKILL half way through a
// NodeStage: right after ceph-fuse mounted the volume, before the staging
// path is bound and the stage is recorded. The NodeStage the CO retries,
// on the restarted plugin, converges on one ceph-fuse and one mount at the
// staging path, the leftover client's caps given back; the volume
// publishes, what was written reads back after a restage without waiting
// on them, and NodeUnstage leaves no ceph-fuse, mount or mount directory.
func TestCephFSNodeStageSurvivesPluginKill(t *testing.T) {
	e := newCephFSEnv(t)
	state, work := shortTempDir(t), t.TempDir()
	t.Cleanup(func() { cleanupNode(state, work) })
	r := &restartEnv{controllerEnv: &controllerEnv{cluster: e.cluster, secrets: e.secrets},
		proc: nodeProcess{Socket: filepath.Join(shortTempDir(t), "csi.sock"), Config: e.cfgPath, StateDir: state,
			DaemonSocket: startDaemonHost(t), Type: "cephfs"},
		vol: e.create(t, e.createReq("pvc-plugin-kill", 32<<20, rwx, nil)), staging: filepath.Join(work, "staging"),
		target: filepath.Join(work, "target")}
	ctx := testContext(t, 2*time.Minute)
	dying := r.proc
	dying.KillAfter = driver.OpMount
	pl := startPlugin(t, dying, false)
	err := r.stageAndPublish(ctx, pl.node)
	if err == nil {
		t.Fatal("the plugin that was to die after the mount staged and published")
	}
	waitKilled(t, func() error { return <-pl.done }, err)
	state0 := fsNodeStateOf(t, state, r.staging, r.target)
	if len(state0.fuse) != 1 || state0.stagingMounts != 0 {
		t.Fatalf("at the kill: %s; want ceph-fuse mounted and the staging path not", state0)
	}

	pl = startPlugin(t, r.proc, false)
	var fuse []int
	for i := range 2 { // the retry, and the CO's next call finding it done
		if err := r.stageAndPublish(ctx, pl.node); err != nil {
			t.Fatalf("the retry after the kill: %v", err)
		}
		now := fsNodeStateOf(t, state, r.staging, r.target)
		if len(now.fuse) != 1 || len(now.dirs) != 1 || now.stagingMounts != 1 || now.targetMounts != 1 ||
			(i > 0 && !slices.Equal(now.fuse, fuse)) {
			t.Fatalf("staged and published after the kill: %s (ceph-fuse before: %v); want one ceph-fuse, mounted once", now, fuse)
		}
		fuse = now.fuse
	}
	const blocks = 64
	var data []byte
	for seq := range int64(blocks) {
		data = append(data, block(seq)...)
	}
	// The killed stage's ceph-fuse must have given its caps back: had it
	// been stopped without closing its session, this write would wait for
	// the MDS to time that session out (60 s).
	start := time.Now()
	if err := writeSynced(filepath.Join(r.target, "data"), data); err != nil {
		t.Fatal(err)
	}
	r.readBack(t, ctx, pl.node, blocks)
	if took := time.Since(start); took > 30*time.Second {
		t.Fatalf("writing and reading back took %v: the leftover client's caps held it up", took)
	}
	eventually(t, 30*time.Second, "nothing left after NodeUnstage", func() error {
		if left := fsNodeStateOf(t, state, r.staging, r.target); !left.empty() {
			return fmt.Errorf("left: %s", left)
		}
		return nil
	})
}
