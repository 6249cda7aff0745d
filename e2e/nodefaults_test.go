package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

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
			if left := e.nodeState(t); len(left.fuse)+len(left.loops)+left.stagingMounts+left.targetMounts+len(left.dirs) != 0 {
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
	dirs, _ := filepath.Glob(filepath.Join(e.proc.StateDir, "fuse", "*"))
	return nodeState{fuse: fusePIDs(e.proc.StateDir), loops: loopsBackedUnder(t, e.proc.StateDir), dirs: dirs,
		stagingMounts: mountsAt(t, e.staging), targetMounts: mountsAt(t, e.target)}
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
