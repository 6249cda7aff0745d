package kernel

import (
	"bytes"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/driver"
)

// TestKRBDStageSurvivesPluginKill kills the node plugin with SIGKILL half
// way through a NodeStage of a krbd volume: right after the map, before
// the mapping is recorded, and right after mkfs, before the mount. The
// kernel keeps the device. The NodeStage the CO retries, on the restarted
// plugin, takes that device over rather than refusing the volume as held
// by a client no node recorded, or mapping it twice: one krbd device, the
// kernel's client instance recorded and the only watcher, mounted once.
// What was written reads back after a restage, and unstage unmaps it.
func TestKRBDStageSurvivesPluginKill(t *testing.T) {
	t.Parallel()
	for _, op := range []string{driver.OpMap, driver.OpMkfs} {
		t.Run("after "+op, func(t *testing.T) {
			t.Parallel()
			e, node := shared.withNodeProcesses(t, EnvKillAfter+"="+op)
			ctx := testContext(t, 3*time.Minute)
			c := mountCap(rwo, "ext4")
			v := e.create(t, "krbd-kill-"+op, 64<<20, c, nil)
			if err := e.stage(ctx, v, c); err == nil {
				t.Fatalf("the plugin that was to die after %s staged the volume", op)
			}
			node.waitPluginGone()
			atKill := krbdDevices(t, v.image())
			if len(atKill) != 1 {
				t.Fatalf("krbd devices of %s at the kill after %s: %v; want one", v.image(), op, atKill)
			}

			node.restartPlugin()
			for range 2 { // the retry, and the CO's next call finding it done
				if err := e.stage(ctx, v, c); err != nil {
					t.Fatalf("the retry after the kill: %v", err)
				}
				if now := krbdDevices(t, v.image()); !slices.Equal(now, atKill) {
					t.Fatalf("krbd devices of %s after the retry: %v; at the kill: %v; want the same one", v.image(), now, atKill)
				}
			}
			e.checkRecordIsKernels(t, v, false)
			data := bytes.Repeat([]byte("krbd after a kill "), 1024)
			path := filepath.Join(v.target, "data")
			if err := writeSynced(path, data); err != nil {
				t.Fatal(err)
			}
			e.teardownAndCheckUnmapped(t, v)
			if err := e.stage(ctx, v, c); err != nil {
				t.Fatal(err)
			}
			readBack(t, path, data)
			e.teardownAndCheckUnmapped(t, v)
		})
	}
}
