package kernel

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

var nbdClass = map[string]string{"mounter": "rbd-nbd"}

// nbdDaemon returns the pid of the rbd-nbd process serving /dev/dev, or 0
// when the device is not connected.
func nbdDaemon(t *testing.T, dev string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/block", dev, "pid"))
	if deviceGone(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	cmd, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if len(cmd) == 0 {
		t.Fatalf("/dev/%s is still connected, but its rbd-nbd (pid %d) is gone", dev, pid)
	}
	if name := filepath.Base(strings.SplitN(string(cmd), "\x00", 2)[0]); name != "rbd-nbd" {
		t.Fatalf("/dev/%s is served by pid %d, %q, not rbd-nbd", dev, pid, name)
	}
	return pid
}

// checkRecordIsDaemons fails unless the node's mapping record of v names
// the one client instance watching the image: the rbd-nbd daemon's.
func (e *env) checkRecordIsDaemons(t *testing.T, v *volume) string {
	t.Helper()
	rec := e.mappingRecord(t, v)
	watchers := e.usage(t, v).Watchers
	if len(watchers) != 1 {
		t.Fatalf("watchers of %s: %v; want the rbd-nbd daemon's only", v.image(), watchers)
	}
	w := watchers[0]
	if rec.Mapper != "rbd-nbd" || rec.ClientAddr != w.Addr || rec.ClientID != "client."+strconv.FormatInt(w.ID, 10) {
		t.Fatalf("mapping record %+v; the daemon watches as %v", rec, w)
	}
	return rec.ClientAddr
}

// TestNBDLifecycle: rbd-nbd maps ext4 and raw block volumes and the node
// records the daemon's client instance. The node plugin and its daemon
// host run as on a node, each a process of its own: the plugin's process
// group is killed, as a container restart kills it, and the mapping, a
// daemon of the host's, keeps serving; the restarted plugin unstages it,
// and the data is intact (the filesystem staged again, the block
// volume's image read).
func TestNBDLifecycle(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		c    *csi.VolumeCapability
		file string
	}{
		{"ext4", mountCap(rwo, "ext4"), "data"},
		{"block", blockCap(rwo), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e, node := shared.withNodeProcesses(t)
			ctx := testContext(t, 3*time.Minute)
			v := e.create(t, "nbd-"+tt.name, 64<<20, tt.c, nbdClass)
			path := filepath.Join(v.target, tt.file)
			data := bytes.Repeat([]byte("nbd "+tt.name+" "), 1024)
			if err := e.stage(ctx, v, tt.c); err != nil {
				t.Fatal(err)
			}
			dev := blockDevice(t, v.target)
			if !strings.HasPrefix(dev, "nbd") {
				t.Fatalf("published on %s, not an nbd device", dev)
			}
			pid := nbdDaemon(t, dev)
			e.checkRecordIsDaemons(t, v)

			node.killPlugin()
			if got := nbdDaemon(t, dev); got != pid {
				t.Fatalf("with the plugin killed /dev/%s is served by %d, was %d", dev, got, pid)
			}
			if err := writeSynced(path, data); err != nil {
				t.Fatalf("writing while the plugin is down: %v", err)
			}
			node.restartPlugin()
			if err := e.teardown(ctx, v); err != nil {
				t.Fatalf("tearing down with the restarted plugin: %v", err)
			}
			if got := nbdDaemon(t, dev); got != 0 {
				t.Fatalf("/dev/%s is still connected (rbd-nbd %d) after NodeUnstageVolume", dev, got)
			}
			waitFor(t, 30*time.Second, "rbd-nbd to exit", func() bool {
				_, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid)))
				return os.IsNotExist(err)
			})

			if tt.file == "" {
				if got := e.readImage(t, v, len(data)); !bytes.Equal(got, data) {
					t.Fatalf("the image holds %q..., not what was written", got[:16])
				}
				return
			}
			if err := e.stage(ctx, v, tt.c); err != nil {
				t.Fatal(err)
			}
			readBack(t, path, data)
			e.checkRecordIsDaemons(t, v)
			if err := e.teardown(ctx, v); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestNBDFencingTheRecordedInstance: the instance the node recorded is the
// daemon's own: blocklisting it fails the device's I/O.
func TestNBDFencingTheRecordedInstance(t *testing.T) {
	t.Parallel()
	e := shared
	ctx := testContext(t, 3*time.Minute)
	c := blockCap(rwo)
	v := e.create(t, "nbd-fence", 64<<20, c, nbdClass)
	if err := e.stage(ctx, v, c); err != nil {
		t.Fatal(err)
	}
	addr := e.checkRecordIsDaemons(t, v)
	if err := writeSynced(v.target, []byte("before the fence")); err != nil {
		t.Fatal(err)
	}
	if err := e.admin.Blocklist(ctx, addr, time.Hour); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = e.teardown(ctx, v)
		_ = e.admin.Unblocklist(ctx, addr)
	})
	var lateErr error
	waitFor(t, time.Minute, "the fenced device to fail a synced write", func() bool {
		lateErr = writeSynced(v.target, []byte("late"))
		return lateErr != nil
	})
	t.Logf("the fenced rbd-nbd device: %v", lateErr)
}
