package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/pelagic-csi/pelagic/e2e/cephtest"
	"github.com/pelagic-csi/pelagic/pkg/csiserver"
	"github.com/pelagic-csi/pelagic/pkg/driver"
)

// TestMonitorRestart restarts the only monitor of a private cluster, once
// stopped with SIGTERM and once killed with SIGKILL, under one driver
// process serving controller and node, with a volume published and
// written. Once the monitor answers again, every call succeeds at the
// first attempt on the driver's cached connections: Probe, CreateVolume,
// ControllerExpandVolume, NodeStage and NodePublish of a new volume, and
// the unpublish, unstage and delete of the volume published across the
// restart, whose data reads back.
func TestMonitorRestart(t *testing.T) {
	c := cephtest.Start(t)
	e := newControllerEnvOn(t, c)
	m := newMonRestartEnv(t, driver.Options{Type: "rbd", DriverName: "rbd.csi.pelagic.dev", Config: e.cfg, Mounter: "fuse"},
		e.secrets, mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER), e.createReq)
	m.restartMonitor(t, c)
	if left := e.images(t); len(left) != 0 {
		t.Fatalf("images left in the pool: %v", left)
	}
}

// restartMonitor stops the monitor with SIGTERM, then SIGKILL, and starts
// it again, with a volume published and written across each restart; it
// ends with every volume it made deleted.
func (m *monRestartEnv) restartMonitor(t *testing.T, c *cephtest.Cluster) {
	published := m.bringUp(t, "before")
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		ctx := testContext(t, time.Minute)
		if err := c.StopMon(ctx, sig); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		// The driver's cached connection has lost its monitor: Probe, which
		// asks the monitor through it, says so.
		eventually(t, 30*time.Second, "Probe failing with the monitor down", func() error {
			probe, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			if resp, err := m.svc.Identity.Probe(probe, &csi.ProbeRequest{}); err == nil && resp.GetReady().GetValue() {
				return errors.New("Probe says ready")
			}
			return nil
		})
		// A call made while the monitor is down succeeds by its deadline
		// once it is back.
		inFlight := make(chan error, 1)
		var whileDown *csi.CreateVolumeResponse
		go func() {
			var err error
			whileDown, err = m.svc.Controller.CreateVolume(m.call(t), m.createReq(uniqueName("pvc-mon-down"), 32<<20))
			inFlight <- err
		}()
		if err := c.StartMon(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("monitor down for %v after %v", time.Since(start).Round(time.Millisecond), sig)
		if err := <-inFlight; err != nil {
			t.Fatalf("CreateVolume called with the monitor down (%v): %v", sig, err)
		}
		if _, err := m.svc.Controller.DeleteVolume(m.call(t), &csi.DeleteVolumeRequest{VolumeId: whileDown.GetVolume().GetVolumeId(),
			Secrets: m.secrets}); err != nil {
			t.Fatalf("DeleteVolume once the monitor is back after %v: %v", sig, err)
		}
		// Probe caches its answer for a few seconds.
		eventually(t, 30*time.Second, "Probe ready once the monitor is back", func() error {
			resp, err := m.svc.Identity.Probe(m.call(t), &csi.ProbeRequest{})
			if err == nil && !resp.GetReady().GetValue() {
				err = errors.New("not ready")
			}
			return err
		})
		next := m.bringUp(t, "after "+sig.String())
		m.tearDown(t, published)
		published = next
	}
	m.tearDown(t, published)
}

// monRestartEnv is one driver process serving controller and node, and
// how to ask it for volumes.
type monRestartEnv struct {
	svc       csiserver.Services
	work      string
	secrets   map[string]string
	cap       *csi.VolumeCapability
	createReq func(name string, size int64) *csi.CreateVolumeRequest
}

// newMonRestartEnv starts a driver process of o serving controller and
// node, with a state directory of its own.
func newMonRestartEnv(t *testing.T, o driver.Options, secrets map[string]string, c *csi.VolumeCapability,
	createReq func(name string, size int64) *csi.CreateVolumeRequest) *monRestartEnv {
	state, work := shortTempDir(t), t.TempDir()
	t.Cleanup(func() { cleanupNode(state, work) })
	o.Controller, o.Node, o.NodeID, o.StateDir = true, true, "node-1", state
	d, err := driver.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return &monRestartEnv{svc: d.Services, work: work, secrets: secrets, cap: c, createReq: createReq}
}

// monVolume is a volume staged, published and written by monRestartEnv.
type monVolume struct {
	vol             *csi.Volume
	staging, target string
	data            []byte
}

// call is the context of one call: each must succeed at its first attempt.
func (m *monRestartEnv) call(t *testing.T) context.Context {
	return testContext(t, 30*time.Second)
}

// bringUp creates, expands, stages and publishes a volume and writes to it.
func (m *monRestartEnv) bringUp(t *testing.T, when string) monVolume {
	t.Helper()
	created, err := m.svc.Controller.CreateVolume(m.call(t), m.createReq(uniqueName("pvc-mon"), 32<<20))
	if err != nil {
		t.Fatalf("CreateVolume %s: %v", when, err)
	}
	v := monVolume{vol: created.GetVolume(), data: []byte("written " + when)}
	if _, err := m.svc.Controller.ControllerExpandVolume(m.call(t), &csi.ControllerExpandVolumeRequest{VolumeId: v.vol.GetVolumeId(),
		CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}, Secrets: m.secrets}); err != nil {
		t.Fatalf("ControllerExpandVolume %s: %v", when, err)
	}
	dir := filepath.Join(m.work, v.vol.GetVolumeId())
	v.staging, v.target = filepath.Join(dir, "staging"), filepath.Join(dir, "target")
	if err := os.MkdirAll(v.staging, 0o750); err != nil {
		t.Fatal(err)
	}
	c := m.cap
	if _, err := m.svc.Node.NodeStageVolume(m.call(t), &csi.NodeStageVolumeRequest{VolumeId: v.vol.GetVolumeId(),
		StagingTargetPath: v.staging, VolumeCapability: c, VolumeContext: v.vol.GetVolumeContext(), Secrets: m.secrets}); err != nil {
		t.Fatalf("NodeStage %s: %v", when, err)
	}
	if _, err := m.svc.Node.NodePublishVolume(m.call(t), &csi.NodePublishVolumeRequest{VolumeId: v.vol.GetVolumeId(),
		StagingTargetPath: v.staging, TargetPath: v.target, VolumeCapability: c, VolumeContext: v.vol.GetVolumeContext()}); err != nil {
		t.Fatalf("NodePublish %s: %v", when, err)
	}
	if err := writeSynced(filepath.Join(v.target, "data"), v.data); err != nil {
		t.Fatal(err)
	}
	return v
}

// tearDown reads a volume's data back, then unpublishes, unstages and
// deletes it.
func (m *monRestartEnv) tearDown(t *testing.T, v monVolume) {
	t.Helper()
	if got, err := os.ReadFile(filepath.Join(v.target, "data")); err != nil || string(got) != string(v.data) {
		t.Fatalf("volume %s reads %q, %v; want %q", v.vol.GetVolumeId(), got, err, v.data)
	}
	if _, err := m.svc.Node.NodeUnpublishVolume(m.call(t), &csi.NodeUnpublishVolumeRequest{VolumeId: v.vol.GetVolumeId(),
		TargetPath: v.target}); err != nil {
		t.Fatalf("NodeUnpublish: %v", err)
	}
	if _, err := m.svc.Node.NodeUnstageVolume(m.call(t), &csi.NodeUnstageVolumeRequest{VolumeId: v.vol.GetVolumeId(),
		StagingTargetPath: v.staging}); err != nil {
		t.Fatalf("NodeUnstage: %v", err)
	}
	if _, err := m.svc.Controller.DeleteVolume(m.call(t), &csi.DeleteVolumeRequest{VolumeId: v.vol.GetVolumeId(),
		Secrets: m.secrets}); err != nil {
		t.Fatalf("DeleteVolume: %v", err)
	}
}
