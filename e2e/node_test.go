package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/e2e/cephtest"
	"github.com/pelagic-csi/pelagic/e2e/lifecycle"
	"github.com/pelagic-csi/pelagic/pkg/driver"
	"github.com/pelagic-csi/pelagic/pkg/mount"
	"github.com/pelagic-csi/pelagic/pkg/util"
)

// nodeEnv is a controller and a node plugin (fuse mapper) on the local
// cluster; restart gives a new node plugin over the same state, as a
// restarted driver process would have.
type nodeEnv struct {
	*controllerEnv
	ctrl  csi.ControllerServer
	node  csi.NodeServer
	state string
	work  string
}

func newNodeEnv(t *testing.T) *nodeEnv {
	e := &nodeEnv{controllerEnv: newControllerEnv(t), state: shortTempDir(t), work: t.TempDir()}
	t.Cleanup(func() { cleanupNode(e.state, e.work) })
	d, err := driver.New(driver.Options{Type: "rbd", DriverName: "rbd.csi.pelagic.dev", Controller: true,
		Config: e.cfg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	e.ctrl = d.Services.Controller
	e.restart(t)
	return e
}

func (e *nodeEnv) restart(t *testing.T) {
	d, err := driver.New(driver.Options{Type: "rbd", DriverName: "rbd.csi.pelagic.dev", Node: true, NodeID: "node-1",
		Config: e.cfg, Mounter: "fuse", StateDir: e.state})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	e.node = d.Services.Node
}

func (e *nodeEnv) paths(name string) (staging, target string) {
	return filepath.Join(e.work, name, "staging"), filepath.Join(e.work, name, "target")
}

func (e *nodeEnv) stage(ctx context.Context, v *csi.Volume, c *csi.VolumeCapability) error {
	staging, _ := e.paths(v.GetVolumeId()[len(v.GetVolumeId())-8:])
	if err := os.MkdirAll(staging, 0o750); err != nil {
		return err
	}
	_, err := e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.GetVolumeId(), StagingTargetPath: staging,
		VolumeCapability: c, VolumeContext: v.GetVolumeContext(), Secrets: e.secrets})
	return err
}

func (e *nodeEnv) publish(ctx context.Context, v *csi.Volume, c *csi.VolumeCapability) error {
	staging, target := e.paths(v.GetVolumeId()[len(v.GetVolumeId())-8:])
	_, err := e.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.GetVolumeId(),
		StagingTargetPath: staging, TargetPath: target, VolumeCapability: c, VolumeContext: v.GetVolumeContext()})
	return err
}

func (e *nodeEnv) teardown(ctx context.Context, v *csi.Volume) error {
	staging, target := e.paths(v.GetVolumeId()[len(v.GetVolumeId())-8:])
	if _, err := e.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.GetVolumeId(), TargetPath: target}); err != nil {
		return err
	}
	_, err := e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.GetVolumeId(), StagingTargetPath: staging})
	return err
}

func (e *nodeEnv) create(t *testing.T, name string, size int64, params map[string]string) *csi.Volume {
	t.Helper()
	req := e.createReq(name, size)
	for k, v := range params {
		req.Parameters = mergeParams(req.Parameters, k, v)
	}
	resp, err := e.ctrl.CreateVolume(testContext(t, time.Minute), req)
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetVolume()
}

func mergeParams(in map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for kk, vv := range in {
		if kk != k {
			out[kk] = vv
		}
	}
	return out
}

// TestDataSurvivesRestageAndRestart writes through a published 1 GiB
// volume, tears it down with a restarted node plugin, stages it again and
// reads the data back. It reports NodeStage and NodePublish latency.
func TestDataSurvivesRestageAndRestart(t *testing.T) {
	e := newNodeEnv(t)
	ctx := testContext(t, 5*time.Minute)
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	vol := e.create(t, "pvc-restage", 1<<30, nil)

	start := time.Now()
	if err := e.stage(ctx, vol, c); err != nil {
		t.Fatal(err)
	}
	firstStage := time.Since(start)
	start = time.Now()
	if err := e.publish(ctx, vol, c); err != nil {
		t.Fatal(err)
	}
	publish := time.Since(start)
	_, target := e.paths(vol.GetVolumeId()[len(vol.GetVolumeId())-8:])
	payload := bytes.Repeat([]byte("pelagic "), 1<<16)
	if err := writeSynced(filepath.Join(target, "data"), payload); err != nil {
		t.Fatal(err)
	}

	e.restart(t) // the record beside the staging path is all the new plugin knows
	if err := e.teardown(ctx, vol); err != nil {
		t.Fatalf("teardown after a restart: %v", err)
	}
	start = time.Now()
	if err := e.stage(ctx, vol, c); err != nil {
		t.Fatal(err)
	}
	restage := time.Since(start)
	if err := e.stage(ctx, vol, c); err != nil {
		t.Fatalf("staging a staged volume again: %v", err)
	}
	if err := e.publish(ctx, vol, c); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(target, "data"))
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("read back %d bytes, %v; want the %d written", len(got), err, len(payload))
	}
	if err := e.teardown(ctx, vol); err != nil {
		t.Fatal(err)
	}
	if err := e.teardown(ctx, vol); err != nil {
		t.Fatalf("tearing down twice: %v", err)
	}
	t.Logf("1 GiB volume: first NodeStage (map + mkfs.ext4 + mount) %v, NodeStage of a formatted volume %v, NodePublish %v",
		firstStage.Round(time.Millisecond), restage.Round(time.Millisecond), publish.Round(time.Millisecond))
}

// TestNeverReformat stages an ext4 volume with data, then asks for xfs:
// the node mounts the ext4 that is there instead of formatting.
func TestNeverReformat(t *testing.T) {
	e := newNodeEnv(t)
	ctx := testContext(t, 5*time.Minute)
	ext4 := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	ext4.GetMount().FsType = "ext4"
	vol := e.create(t, "pvc-keep", 512<<20, nil)
	if err := e.stage(ctx, vol, ext4); err != nil {
		t.Fatal(err)
	}
	if err := e.publish(ctx, vol, ext4); err != nil {
		t.Fatal(err)
	}
	_, target := e.paths(vol.GetVolumeId()[len(vol.GetVolumeId())-8:])
	if err := writeSynced(filepath.Join(target, "keep"), []byte("precious")); err != nil {
		t.Fatal(err)
	}
	if err := e.teardown(ctx, vol); err != nil {
		t.Fatal(err)
	}

	xfs := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	xfs.GetMount().FsType = "xfs"
	if err := e.stage(ctx, vol, xfs); err != nil {
		t.Fatal(err)
	}
	if err := e.publish(ctx, vol, xfs); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(target, "keep"))
	if err != nil || string(got) != "precious" {
		t.Fatalf("after staging as xfs: %q, %v; the ext4 filesystem was not kept", got, err)
	}
	out, err := exec.Command("findmnt", "-n", "-o", "FSTYPE", target).Output()
	if err != nil || strings.TrimSpace(string(out)) != "ext4" {
		t.Fatalf("target is mounted as %q (%v), want the existing ext4", strings.TrimSpace(string(out)), err)
	}
	if err := e.teardown(ctx, vol); err != nil {
		t.Fatal(err)
	}
}

// TestUnavailableMapperSaysWhy: krbd cannot work on a kernel without the
// rbd module; NodeStage says so and points at the fuse mapper.
func TestUnavailableMapperSaysWhy(t *testing.T) {
	if _, err := os.Stat("/sys/module/rbd"); err == nil {
		t.Skip("this kernel has the rbd module: krbd is available")
	}
	e := newNodeEnv(t)
	vol := e.create(t, "pvc-krbd", 64<<20, map[string]string{"mounter": "krbd"})
	err := e.stage(testContext(t, time.Minute), vol, mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER))
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "mounter=fuse") {
		t.Fatalf("stage with krbd here = %v; want FailedPrecondition pointing at mounter=fuse", err)
	}
}

// TestBlockVolumeRoundTrip writes a pattern to a raw block volume and
// reads it back after a restage.
func TestBlockVolumeRoundTrip(t *testing.T) {
	e := newNodeEnv(t)
	ctx := testContext(t, 5*time.Minute)
	c := blockCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	vol := e.create(t, "pvc-block", 64<<20, nil)
	_, target := e.paths(vol.GetVolumeId()[len(vol.GetVolumeId())-8:])
	pattern := bytes.Repeat([]byte{0xA5, 0x5A}, 2048)
	for round := range 2 {
		if err := e.stage(ctx, vol, c); err != nil {
			t.Fatal(err)
		}
		if err := e.publish(ctx, vol, c); err != nil {
			t.Fatal(err)
		}
		if round == 0 {
			if err := writeSynced(target, pattern); err != nil {
				t.Fatal(err)
			}
		} else {
			f, err := os.Open(target)
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(pattern))
			_, err = f.ReadAt(got, 0)
			f.Close()
			if err != nil || !bytes.Equal(got, pattern) {
				t.Fatalf("block device reads back %x..., %v", got[:8], err)
			}
		}
		if err := e.teardown(ctx, vol); err != nil {
			t.Fatal(err)
		}
	}
}

// TestVolumeLifecycle runs the main job's walk (what `make demo` prints)
// against an in-process driver: controller and node, fuse mapper.
func TestVolumeLifecycle(t *testing.T) {
	c := cephtest.Get(t)
	cfg, _ := clusterConfig(t, c)
	state, work := shortTempDir(t), t.TempDir()
	endpoint, _ := startDriver(t, driver.Options{Type: "rbd", DriverName: "rbd.csi.pelagic.dev", Controller: true,
		Node: true, NodeID: "lifecycle-node", Mounter: "fuse", StateDir: state, Config: cfg})
	t.Cleanup(func() { cleanupNode(state, work) })
	var out bytes.Buffer
	err := lifecycle.Run(dial(t, endpoint), lifecycle.Config{ClusterID: testClusterID, Pool: c.Pool,
		Secrets: rbdSecrets(c), WorkDir: work}, &out)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
}

// TestFirstStageOfLargeVolume stages an 8 GiB volume with the fuse mapper
// and reports how long the first NodeStage (map, mkfs.ext4, mount) takes:
// mkfs does not discard the thin image (see mount's formatArgs, whose
// arguments the unit tests assert).
func TestFirstStageOfLargeVolume(t *testing.T) {
	e := newNodeEnv(t)
	ctx := testContext(t, 5*time.Minute)
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	vol := e.create(t, "pvc-large", 8<<30, nil)
	start := time.Now()
	if err := e.stage(ctx, vol, c); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	staging, _ := e.paths(vol.GetVolumeId()[len(vol.GetVolumeId())-8:])
	out, err := exec.Command("df", "-B1", "--output=size", staging).Output()
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(string(out)); len(f) != 2 || len(f[1]) < 10 { // at least 1e9 bytes
		t.Fatalf("the staged filesystem is %q bytes; want about 8 GiB", f)
	}
	_, err = e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("8 GiB volume, fuse mapper: first NodeStage (map + mkfs.ext4 + mount) took %v", took.Round(time.Millisecond))
}

// TestReadOnlyBlockPublication: a raw block volume published read-only
// cannot be written through its target, whether the volume is staged for
// writing (another pod writes it) or read-only (ROX); it reads.
func TestReadOnlyBlockPublication(t *testing.T) {
	for _, tc := range []struct {
		name     string
		mode     csi.VolumeCapability_AccessMode_Mode
		readonly bool
	}{
		{"RWO volume, read-only publish", csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, true},
		{"ROX volume", csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newNodeEnv(t)
			ctx := testContext(t, 5*time.Minute)
			vol := e.create(t, "pvc-roblock", 64<<20, nil)
			c := blockCap(tc.mode)
			if err := e.stage(ctx, vol, c); err != nil {
				t.Fatal(err)
			}
			staging, target := e.paths(vol.GetVolumeId()[len(vol.GetVolumeId())-8:])
			_, err := e.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol.GetVolumeId(),
				StagingTargetPath: staging, TargetPath: target, VolumeCapability: c, Readonly: tc.readonly})
			if err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(target, os.O_RDWR, 0)
			if err == nil {
				_, err = f.WriteAt([]byte("must not land"), 0)
				if err == nil {
					err = f.Sync()
				}
				f.Close()
			}
			if err == nil {
				t.Fatal("a write through the read-only published block device succeeded")
			}
			buf := make([]byte, 4096)
			if r, rerr := os.Open(target); rerr != nil {
				t.Fatal(rerr)
			} else if _, rerr := r.ReadAt(buf, 0); rerr != nil {
				r.Close()
				t.Fatalf("reading the read-only device: %v", rerr)
			} else {
				r.Close()
			}
			if bytes.HasPrefix(buf, []byte("must not land")) {
				t.Fatal("the refused write reached the device")
			}
			if err := e.teardown(ctx, vol); err != nil {
				t.Fatal(err)
			}
			t.Logf("write refused: %v", err)
		})
	}
}

// TestHungFuseMountHonoursDeadlines stops rbd-fuse (SIGSTOP: its mount
// then blocks every request instead of failing) under a published volume.
// Calls that look at it return by their deadline and release the volume's
// lock: the next call on the volume is not refused as busy.
func TestHungFuseMountHonoursDeadlines(t *testing.T) {
	e := newNodeEnv(t)
	ctx := testContext(t, 5*time.Minute)
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	vol := e.create(t, "pvc-hung", 64<<20, nil)
	if err := e.stage(ctx, vol, c); err != nil {
		t.Fatal(err)
	}
	if err := e.publish(ctx, vol, c); err != nil {
		t.Fatal(err)
	}
	staging, target := e.paths(vol.GetVolumeId()[len(vol.GetVolumeId())-8:])
	pids := fusePIDs(e.state)
	if len(pids) != 1 {
		t.Fatalf("rbd-fuse processes %v, want one", pids)
	}
	if err := syscall.Kill(pids[0], syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pids[0], syscall.SIGCONT) })
	mnts, _ := filepath.Glob(filepath.Join(e.state, "fuse", "*", "mnt"))
	if len(mnts) != 1 {
		t.Fatalf("fuse mounts %v, want one", mnts)
	}
	// Make sure the mount does hang: a stat of the image file blocks.
	probe := make(chan error, 1)
	go func() {
		entries, err := os.ReadDir(mnts[0])
		if err == nil && len(entries) > 0 {
			_, err = os.Stat(filepath.Join(mnts[0], entries[0].Name()))
		}
		probe <- err
	}()
	select {
	case err := <-probe:
		t.Skipf("rbd-fuse answered while stopped (%v): cached attributes; nothing hangs here", err)
	case <-time.After(2 * time.Second):
	}

	const deadline = 3 * time.Second
	bounded := func(name string, call func(ctx context.Context) error) {
		t.Helper()
		cctx, cancel := context.WithTimeout(ctx, deadline)
		defer cancel()
		start := time.Now()
		err := call(cctx)
		if took := time.Since(start); took > deadline+2*time.Second {
			t.Errorf("%s took %v with a %v deadline", name, took.Round(time.Millisecond), deadline)
		}
		t.Logf("%s while rbd-fuse hangs: %v in %v", name, err, time.Since(start).Round(time.Millisecond))
	}
	mounter := mount.NewHostMounter(mount.Config{Runner: util.ExecRunner{}})
	bounded("IsMountPoint(rbd-fuse mount)", func(ctx context.Context) error {
		mounted, err := mounter.IsMountPoint(ctx, mnts[0])
		if err == nil && !mounted {
			t.Error("the hung rbd-fuse mount does not count as mounted")
		}
		return err
	})
	bounded("NodeExpandVolume", func(ctx context.Context) error {
		_, err := e.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: vol.GetVolumeId(), VolumePath: target,
			StagingTargetPath: staging, VolumeCapability: c})
		return err
	})
	bounded("NodeGetVolumeStats", func(ctx context.Context) error {
		_, err := e.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: vol.GetVolumeId(), VolumePath: target})
		return err
	})
	bounded("NodeGetVolumeHealth", func(ctx context.Context) error {
		_, err := e.node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: vol.GetVolumeId()})
		return err
	})
	bounded("NodePublishVolume (again)", func(ctx context.Context) error {
		err := e.publish(ctx, vol, c)
		if status.Code(err) == codes.Aborted {
			t.Errorf("the volume's lock was still held: %v", err)
		}
		return err
	})
	if err := syscall.Kill(pids[0], syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if err := <-probe; err != nil {
		t.Fatalf("rbd-fuse did not answer once continued: %v", err)
	}
	if err := e.teardown(ctx, vol); err != nil {
		t.Fatal(err)
	}
}

// TestExt4GrowsAtTheNextStage: where the node may not grow ext4 online
// (resize2fs needs CAP_SYS_RESOURCE, which this machine lacks), the
// expansion it refused is done at the next stage, before the mount, and
// the data is still there.
func TestExt4GrowsAtTheNextStage(t *testing.T) {
	e := newNodeEnv(t)
	ctx := testContext(t, 5*time.Minute)
	rwo := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}}}
	vol := e.create(t, uniqueName("pvc-grow"), 256<<20, nil)
	if _, err := e.ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: vol.GetVolumeId(),
		NodeId: "node-1", VolumeCapability: rwo, Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}
	if err := e.stage(ctx, vol, rwo); err != nil {
		t.Fatal(err)
	}
	if err := e.publish(ctx, vol, rwo); err != nil {
		t.Fatal(err)
	}
	staging, target := e.paths(vol.GetVolumeId()[len(vol.GetVolumeId())-8:])
	payload := []byte("written before the expansion\n")
	if err := writeSynced(filepath.Join(target, "data.txt"), payload); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: vol.GetVolumeId(),
		CapacityRange: &csi.CapacityRange{RequiredBytes: 512 << 20}, Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}
	_, err := e.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: vol.GetVolumeId(), VolumePath: target,
		StagingTargetPath: staging, VolumeCapability: rwo})
	t.Logf("online growth: %v", err)
	if err := e.teardown(ctx, vol); err != nil {
		t.Fatal(err)
	}
	if err := e.stage(ctx, vol, rwo); err != nil {
		t.Fatal(err)
	}
	if err := e.publish(ctx, vol, rwo); err != nil {
		t.Fatal(err)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(target, &st); err != nil {
		t.Fatal(err)
	}
	if size := int64(st.Blocks) * st.Bsize; size < 400<<20 {
		t.Fatalf("after the restage the filesystem is %d bytes; want it grown to about 512 MiB", size)
	}
	if got, err := os.ReadFile(filepath.Join(target, "data.txt")); err != nil || string(got) != string(payload) {
		t.Fatalf("after the growth data.txt reads %q, %v", got, err)
	}
	if err := e.teardown(ctx, vol); err != nil {
		t.Fatal(err)
	}
}
