package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/pelagic-csi/pelagic/e2e/cephtest"
	"github.com/pelagic-csi/pelagic/pkg/driver"
)

// TestNodeStageSurvivesPluginKill kills the node plugin process (rbd-fuse
// runs in a daemon host) with SIGKILL half way through a NodeStage: right
// after the image is mapped, before the mapping is recorded in the image
// or the stage record, and right after mkfs, before the mount. The
// NodeStage the CO retries, on the restarted plugin, converges on the
// mapping already made: one rbd-fuse, one loop device, one mount at the
// staging path. The volume publishes, what was written reads back after a
// restage, and NodeUnstage leaves no rbd-fuse, loop device or mount.
func TestNodeStageSurvivesPluginKill(t *testing.T) {
	for _, op := range []string{driver.OpMap, driver.OpMkfs} {
		t.Run("after "+op, func(t *testing.T) {
			ctx := testContext(t, 2*time.Minute)
			e := newRestartEnv(t, true)
			dying := e.proc
			dying.KillAfter = op
			pl := startPlugin(t, dying, false)
			err := e.stageAndPublish(ctx, pl.node)
			if err == nil {
				t.Fatalf("the plugin that was to die after %s staged and published", op)
			}
			waitKilled(t, func() error { return <-pl.done }, err)
			atKill := e.nodeState(t)
			if len(atKill.fuse) != 1 || len(atKill.loops) != 1 || atKill.stagingMounts != 0 {
				t.Fatalf("at the kill after %s: %s; want the image mapped and not mounted", op, atKill)
			}

			pl = startPlugin(t, e.proc, false)
			for range 2 { // the retry, and the CO's next call finding it done
				if err := e.stageAndPublish(ctx, pl.node); err != nil {
					t.Fatalf("the retry after the kill: %v", err)
				}
				now := e.nodeState(t)
				if !slices.Equal(now.fuse, atKill.fuse) || !slices.Equal(now.loops, atKill.loops) ||
					now.stagingMounts != 1 || now.targetMounts != 1 {
					t.Fatalf("staged and published after the kill: %s; at the kill: %s; want the same mapping, mounted once", now, atKill)
				}
			}
			const blocks = 64
			var data bytes.Buffer
			for seq := range int64(blocks) {
				data.Write(block(seq))
			}
			if err := writeSynced(filepath.Join(e.target, "data"), data.Bytes()); err != nil {
				t.Fatal(err)
			}
			e.readBack(t, ctx, pl.node, blocks)
			if left := e.nodeState(t); !left.empty() {
				t.Fatalf("after NodeUnstage: %s; want nothing left", left)
			}
		})
	}
}

// TestNodeStageWithStalledOSD stops the OSD of a private cluster with
// SIGSTOP, before a NodeStage, and right after its map (mkfs then writes
// to a stalled image). The call returns DeadlineExceeded or Unavailable
// within its deadline; a second call is not held behind it (not Aborted)
// and returns by its own deadline; after SIGCONT a retry stages the volume
// on exactly one mapping and one mount, without waiting for the watch of
// the client the failed stage ended to time out, and NodeUnstage leaves
// nothing.
func TestNodeStageWithStalledOSD(t *testing.T) {
	c := cephtest.Start(t)
	e := newControllerEnvOn(t, c)
	for _, tc := range []struct{ name, stallAfter string }{
		{"before the stage", ""},
		{"after the map", driver.OpMap},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state, work := shortTempDir(t), t.TempDir()
			t.Cleanup(func() { cleanupNode(state, work) })
			osd := newOSDStaller(t, c) // its cleanup, continuing the OSD, runs first
			d, err := driver.New(driver.Options{Type: "rbd", DriverName: "rbd.csi.pelagic.dev", Node: true, NodeID: "node-1",
				Config: e.cfg, Mounter: "fuse", StateDir: state,
				ObserveNodeOp: func(op string, _ time.Duration) {
					if op == tc.stallAfter {
						osd.stop()
					}
				}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(d.Close)
			node := d.Services.Node
			created, err := e.controller(nil).CreateVolume(testContext(t, time.Minute), e.createReq(uniqueName("pvc-stall"), 64<<20))
			if err != nil {
				t.Fatal(err)
			}
			vol := created.GetVolume()
			staging := filepath.Join(work, "staging")
			req := &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging,
				VolumeCapability: mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER),
				VolumeContext:    vol.GetVolumeContext(), Secrets: e.secrets}
			if tc.stallAfter == "" {
				osd.stop()
			}
			stage := func(ctx context.Context) error {
				_, err := node.NodeStageVolume(ctx, req)
				return err
			}
			callStalled(t, "in-flight NodeStage", 5*time.Second, 2*time.Second, stage)
			if !osd.stopped.Load() {
				t.Fatal("the OSD was never stopped")
			}
			callStalled(t, "a second NodeStage", 3*time.Second, 2*time.Second, stage)
			osd.thaw()
			thawed := time.Now()
			ctx := testContext(t, 2*time.Minute)
			eventually(t, 90*time.Second, "NodeStage after SIGCONT", func() error {
				_, err := node.NodeStageVolume(ctx, req)
				return err
			})
			// The stalled stage's own client, ended but unable to unwatch,
			// keeps its watch for the OSD's watch timeout (30 s): the retry
			// must not wait for it to lapse.
			if took := time.Since(thawed); took > 15*time.Second {
				t.Fatalf("staged %v after SIGCONT; the lingering watch of the client the failed stage ended held it up", took)
			} else {
				t.Logf("staged %v after SIGCONT", took.Round(time.Millisecond))
			}
			if now := nodeStateOf(t, state, staging, ""); len(now.fuse) != 1 || len(now.loops) != 1 || now.stagingMounts != 1 {
				t.Fatalf("staged after SIGCONT: %s; want one mapping, mounted once", now)
			}
			if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol.GetVolumeId(),
				StagingTargetPath: staging}); err != nil {
				t.Fatal(err)
			}
			if left := nodeStateOf(t, state, staging, ""); !left.empty() {
				t.Fatalf("after NodeUnstage: %s; want nothing left", left)
			}
		})
	}
}

// nodeState is what a node plugin process has set up on the host.
type nodeState struct {
	fuse          []int    // rbd-fuse processes of the state directory
	loops         []string // loop devices on files under it
	dirs          []string // fuse mapping directories
	stagingMounts int
	targetMounts  int
}

func (s nodeState) String() string {
	return fmt.Sprintf("rbd-fuse %v, loop devices %v, mapping directories %v, %d mounts at the staging path, %d at the target",
		s.fuse, s.loops, s.dirs, s.stagingMounts, s.targetMounts)
}

func (e *restartEnv) nodeState(t *testing.T) nodeState {
	t.Helper()
	return nodeStateOf(t, e.proc.StateDir, e.staging, e.target)
}

// nodeStateOf is what a node plugin with state directory state has set up,
// and the mounts at a volume's staging path and target.
func nodeStateOf(t *testing.T, state, staging, target string) nodeState {
	t.Helper()
	dirs, _ := filepath.Glob(filepath.Join(state, "fuse", "*"))
	return nodeState{fuse: fusePIDs(state), loops: loopsBackedUnder(t, state), dirs: dirs,
		stagingMounts: mountsAt(t, staging), targetMounts: mountsAt(t, target)}
}

// empty is whether nothing at all is set up.
func (s nodeState) empty() bool {
	return len(s.fuse)+len(s.loops)+len(s.dirs)+s.stagingMounts+s.targetMounts == 0
}

// loopsBackedUnder lists the loop devices whose backing file is under dir.
func loopsBackedUnder(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		t.Fatal(err)
	}
	var loops []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), dir+"/") {
			loops = append(loops, filepath.Base(filepath.Dir(filepath.Dir(f))))
		}
	}
	return loops
}

// mountsAt counts the mounts stacked at path.
func mountsAt(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == path {
			n++
		}
	}
	return n
}
