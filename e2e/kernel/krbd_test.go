package kernel

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	librbd "github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
)

// Filesystem magic numbers, as statfs reports them.
const (
	ext4Magic = 0xEF53
	xfsMagic  = 0x58465342
)

// krbdDevice returns the id of the krbd device mapping image ("0" for
// /dev/rbd0), or "" when the kernel maps it nowhere.
func krbdDevice(t *testing.T, image string) string {
	t.Helper()
	if ids := krbdDevices(t, image); len(ids) > 0 {
		return ids[0]
	}
	return ""
}

// krbdDevices returns the ids of every krbd device mapping image.
func krbdDevices(t *testing.T, image string) []string {
	t.Helper()
	entries, err := os.ReadDir("/sys/bus/rbd/devices")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/sys/bus/rbd/devices", e.Name(), "name"))
		if deviceGone(err) {
			continue // another test's device, being unmapped
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(string(b)) == image {
			ids = append(ids, e.Name())
		}
	}
	return ids
}

// kernelInstance is the Ceph client instance the kernel uses for krbd
// device id, as its sysfs shows: client_addr "IP:PORT/NONCE" and client_id
// "client4126" (no dot).
func kernelInstance(t *testing.T, id string) (addr, clientID string) {
	t.Helper()
	return sysfs(t, "bus", "rbd", "devices", id, "client_addr"), sysfs(t, "bus", "rbd", "devices", id, "client_id")
}

// checkRecordIsKernels fails unless the node's mapping record of v names
// the client instance the kernel reports for v's device, and that instance
// is the one watching the image: the only watcher, or none at all for a
// read-only mapping, which the kernel maps without a watch (so only the
// record tells that this node maps it). It returns the instance's address.
func (e *env) checkRecordIsKernels(t *testing.T, v *volume, readOnly bool) string {
	t.Helper()
	id := krbdDevice(t, v.image())
	if id == "" {
		t.Fatalf("no krbd device maps %s", v.image())
	}
	addr, kernelID := kernelInstance(t, id)
	rec := e.mappingRecord(t, v)
	if rec.Mapper != "krbd" || rec.ClientAddr != addr {
		t.Errorf("mapping record %+v; the kernel's instance for /dev/rbd%s is %s", rec, id, addr)
	}
	// The record spells the id as the watch list and blocklist do.
	if want := "client." + strings.TrimPrefix(kernelID, "client"); rec.ClientID != want {
		t.Errorf("mapping record names %q; the kernel's client_id %q is %s", rec.ClientID, kernelID, want)
	}
	watchers := e.usage(t, v).Watchers
	switch {
	case readOnly && len(watchers) != 0:
		t.Errorf("watchers of %s: %v; the kernel watches no read-only mapping", v.image(), watchers)
	case !readOnly && (len(watchers) != 1 || watchers[0].Addr != addr || "client."+strconv.FormatInt(watchers[0].ID, 10) != rec.ClientID):
		t.Errorf("watchers of %s: %v; want only the kernel's %s at %s", v.image(), watchers, kernelID, addr)
	}
	return addr
}

// TestKRBDLifecycle stages, publishes, writes and tears down ext4, xfs and
// raw block volumes mapped by krbd; the mapping record names the kernel's
// own client instance for the device, and goes with the unmap. The
// filesystems are then staged again read-only: the kernel maps them
// read-only, the data is there, and neither the filesystem nor the device
// takes a write. What the block volume got is read from the image.
func TestKRBDLifecycle(t *testing.T) {
	t.Parallel()
	e := shared
	tests := []struct {
		name  string
		size  int64
		c     *csi.VolumeCapability
		magic int64 // of the filesystem; 0 for a block volume
	}{
		{"ext4", 64 << 20, mountCap(rwo, "ext4"), ext4Magic},
		{"xfs", 320 << 20, mountCap(rwo, "xfs"), xfsMagic}, // mkfs.xfs wants 300 MB at least
		{"block", 64 << 20, blockCap(rwo), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t, 3*time.Minute)
			v := e.create(t, "krbd-"+tt.name, tt.size, tt.c, nil)
			data := bytes.Repeat([]byte("krbd "+tt.name+" "), 1024)
			path := v.target
			if tt.magic != 0 {
				path = filepath.Join(v.target, "data")
			}
			if err := e.stage(ctx, v, tt.c); err != nil {
				t.Fatal(err)
			}
			if dev := blockDevice(t, v.target); !strings.HasPrefix(dev, "rbd") {
				t.Fatalf("published on %s, not a krbd device", dev)
			}
			if tt.magic != 0 {
				var st syscall.Statfs_t
				if err := syscall.Statfs(v.target, &st); err != nil || st.Type != tt.magic {
					t.Fatalf("target holds a filesystem of magic %#x (%v), want %s", st.Type, err, tt.name)
				}
			}
			e.checkRecordIsKernels(t, v, false)
			if err := writeSynced(path, data); err != nil {
				t.Fatal(err)
			}
			e.teardownAndCheckUnmapped(t, v)
			if tt.magic == 0 {
				if got := e.readImage(t, v, len(data)); !bytes.Equal(got, data) {
					t.Fatalf("the image holds %q..., not what was written", got[:16])
				}
				return
			}

			ro := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, tt.name)
			if err := e.stage(ctx, v, ro); err != nil {
				t.Fatal(err)
			}
			dev := blockDevice(t, v.target)
			if got := sysfs(t, "block", dev, "ro"); got != "1" {
				t.Errorf("/sys/block/%s/ro = %s: the kernel mapped it writable", dev, got)
			}
			e.checkRecordIsKernels(t, v, true)
			readBack(t, path, data)
			if err := writeSynced(filepath.Join(v.target, "new"), []byte("x")); !errors.Is(err, syscall.EROFS) {
				t.Errorf("writing a file on the read-only volume: %v, want EROFS", err)
			}
			// The kernel refuses the write itself (EPERM), below any filesystem.
			if err := writeSynced("/dev/"+dev, []byte("x")); err == nil {
				t.Errorf("writing to /dev/%s succeeded on a read-only mapping", dev)
			}
			e.teardownAndCheckUnmapped(t, v)
		})
	}
}

// teardownAndCheckUnmapped unpublishes and unstages v, and fails unless
// its device and its mapping record are gone.
func (e *env) teardownAndCheckUnmapped(t *testing.T, v *volume) {
	t.Helper()
	if err := e.teardown(testContext(t, 2*time.Minute), v); err != nil {
		t.Fatal(err)
	}
	if id := krbdDevice(t, v.image()); id != "" {
		t.Fatalf("/dev/rbd%s still maps %s after NodeUnstageVolume", id, v.image())
	}
	if m, ok := e.usage(t, v).Mappings[nodeID]; ok {
		t.Fatalf("mapping record %+v stays after a clean unmap", m)
	}
}

// TestKRBDUnmapOptionsForce: a class with unmapOptions "force" unmaps even
// a device still mounted; the kernel then fails that mount's I/O.
func TestKRBDUnmapOptionsForce(t *testing.T) {
	t.Parallel()
	e := shared
	ctx := testContext(t, 3*time.Minute)
	c := mountCap(rwo, "ext4")
	v := e.create(t, "krbd-force", 64<<20, c, map[string]string{"unmapOptions": "force"})
	if err := e.stage(ctx, v, c); err != nil {
		t.Fatal(err)
	}
	if err := e.unstage(ctx, v); err != nil {
		t.Fatalf("unstaging with unmapOptions force: %v", err)
	}
	if id := krbdDevice(t, v.image()); id != "" {
		t.Fatalf("/dev/rbd%s still maps %s after a forced unmap", id, v.image())
	}
	if err := writeSynced(filepath.Join(v.target, "late"), bytes.Repeat([]byte("x"), 1<<16)); err == nil {
		t.Fatal("a write through the mount of a force-unmapped device succeeded")
	}
	if err := e.unpublish(ctx, v); err != nil {
		t.Fatal(err)
	}
}

// TestKRBDMapOptions: the class's mapOptions reach the kernel as given,
// and take effect.
func TestKRBDMapOptions(t *testing.T) {
	t.Parallel()
	e := shared
	ctx := testContext(t, 3*time.Minute)
	c := blockCap(rwo)
	v := e.create(t, "krbd-opts", 64<<20, c, map[string]string{"mapOptions": "queue_depth=64,alloc_size=65536,notrim"})
	if err := e.stage(ctx, v, c); err != nil {
		t.Fatal(err)
	}
	id := krbdDevice(t, v.image())
	// config_info: "MONITORS OPTIONS POOL IMAGE SNAP", what rbd wrote to the bus.
	info := strings.Fields(sysfs(t, "bus", "rbd", "devices", id, "config_info"))
	if len(info) < 2 {
		t.Fatalf("config_info %q", info)
	}
	options := strings.Split(info[1], ",")
	for _, want := range []string{"queue_depth=64", "alloc_size=65536", "notrim"} {
		if !slices.Contains(options, want) {
			t.Errorf("the kernel got options %q, without %s", info[1], want)
		}
	}
	t.Logf("kernel map options: %s", strings.Join(slices.DeleteFunc(options, func(o string) bool {
		return strings.HasPrefix(o, "key=") || strings.HasPrefix(o, "secret=")
	}), ","))
	if got := sysfs(t, "block", "rbd"+id, "queue", "discard_max_bytes"); got != "0" {
		t.Errorf("notrim: discard_max_bytes = %s, want 0", got)
	}
	if got := sysfs(t, "block", "rbd"+id, "queue", "nr_requests"); got != "64" {
		t.Errorf("queue_depth=64: nr_requests = %s", got)
	}
	if err := e.teardown(ctx, v); err != nil {
		t.Fatal(err)
	}
}

// TestKRBDFencingCutsOnlyThatMapping is a stale attachment as it happens:
// the node maps two volumes, each with a client instance of its own (the
// kernel's for that device; without noshare the kernel would share one
// among all mappings of a cluster and user); Kubernetes detaches one of
// them from the node and attaches it to another; publishing there fences
// the node's client instance of that volume. Its device then fails I/O,
// while the other volume, still attached here, keeps working.
func TestKRBDFencingCutsOnlyThatMapping(t *testing.T) {
	t.Parallel()
	e := shared
	ctx := testContext(t, 4*time.Minute)
	c := mountCap(rwo, "ext4")
	stale, current := e.create(t, "krbd-fence-stale", 64<<20, c, nil), e.create(t, "krbd-fence-current", 64<<20, c, nil)
	var addrs []string
	for _, v := range []*volume{stale, current} {
		if err := e.stage(ctx, v, c); err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, e.checkRecordIsKernels(t, v, false))
		if err := writeSynced(filepath.Join(v.target, "before"), []byte("before the fence")); err != nil {
			t.Fatal(err)
		}
	}
	staleAddr, currentAddr := addrs[0], addrs[1]
	if staleAddr == currentAddr {
		t.Errorf("both mappings use client instance %s: fencing one fences both", staleAddr)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = e.teardown(ctx, stale) // before the fence is lifted: nothing may reach the image
		_, _ = e.ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: stale.GetVolumeId(),
			NodeId: "node-b", Secrets: e.secrets})
		_ = e.admin.Unblocklist(ctx, staleAddr)
	})

	if _, err := e.ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: stale.GetVolumeId(),
		NodeId: nodeID, Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := e.controllerPublish(ctx, stale, "node-b", c); err != nil {
		t.Fatalf("publishing to node-b over this node's stale mapping: %v", err)
	}
	t.Logf("ControllerPublishVolume to node-b, fence included: %v", time.Since(start).Round(time.Millisecond))

	var lateErr error
	waitFor(t, time.Minute, "the fenced device to fail a synced write", func() bool {
		lateErr = writeSynced(filepath.Join(stale.target, "late"), bytes.Repeat([]byte("late"), 1024))
		return lateErr != nil
	})
	t.Logf("the fenced volume, %v after the publish: %v", time.Since(start).Round(time.Millisecond), lateErr)
	if err := writeSynced(filepath.Join(current.target, "after"), []byte("after the fence")); err != nil {
		t.Fatalf("the volume still attached here fails too: %v", err)
	}
	readBack(t, filepath.Join(current.target, "after"), []byte("after the fence"))
	blocked := e.blocklist(t)
	if !slices.Contains(blocked, staleAddr) || slices.Contains(blocked, currentAddr) {
		t.Fatalf("blocklist %q; want the stale mapping's %s and not the current one's %s", blocked, staleAddr, currentAddr)
	}
}

// readImage reads the first n bytes of v's image with librbd, as the
// cluster holds them.
func (e *env) readImage(t *testing.T, v *volume, n int) []byte {
	t.Helper()
	cc, err := e.cfg.Cluster(clusterID)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := e.conns.Get(testContext(t, time.Minute), cc, ceph.Credentials{ID: e.cluster.AdminID, Key: e.cluster.AdminKey})
	if err != nil {
		t.Fatal(err)
	}
	ioctx, err := conn.OpenIOContext(e.cluster.Pool)
	if err != nil {
		t.Fatal(err)
	}
	defer ioctx.Destroy()
	img, err := librbd.OpenImageReadOnly(ioctx, v.image(), librbd.NoSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	buf := make([]byte, n)
	if _, err := img.ReadAt(buf, 0); err != nil {
		t.Fatalf("reading image %s: %v", v.image(), err)
	}
	return buf
}

// blocklist returns the client instances the cluster has blocklisted.
func (e *env) blocklist(t *testing.T) []string {
	t.Helper()
	ctx := testContext(t, time.Minute)
	cc, err := e.cfg.Cluster(clusterID)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := e.conns.Get(ctx, cc, ceph.Credentials{ID: e.cluster.AdminID, Key: e.cluster.AdminKey})
	if err != nil {
		t.Fatal(err)
	}
	out, err := conn.MonCommand(ctx, map[string]any{"prefix": "osd blocklist ls", "format": "json"})
	if err != nil {
		t.Fatal(err)
	}
	var entries []struct {
		Addr string `json:"addr"`
	}
	// The list of ranges may follow: the first document is the one.
	if err := json.NewDecoder(bytes.NewReader(out)).Decode(&entries); err != nil {
		t.Fatalf("osd blocklist ls: %v: %s", err, out)
	}
	var addrs []string
	for _, en := range entries {
		addrs = append(addrs, en.Addr)
	}
	return addrs
}
