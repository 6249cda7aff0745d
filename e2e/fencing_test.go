package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	librbd "github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/cmd/pelagicctl/ctl"
	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/cephfs"
	"github.com/pelagic-csi/pelagic/pkg/csiserver"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
)

// TestTwoControllersPublishRace: two controllers, each with its own
// connection and no lock in common (as two replicas whose sidecars elected
// leaders separately), publish one RWO volume to two nodes at once, 50
// times: exactly one wins each round, and the loser names the winner.
func TestTwoControllersPublishRace(t *testing.T) {
	e := newControllerEnv(t)
	ctx := testContext(t, 5*time.Minute)
	ctrls := []*rbd.Controller{e.controller(nil), e.controller(nil)}
	created, err := ctrls[0].CreateVolume(ctx, e.createReq(uniqueName("pvc-race"), 64<<20))
	if err != nil {
		t.Fatal(err)
	}
	vol := created.GetVolume().GetVolumeId()
	rwo := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	nodes := []string{"node-x", "node-y"}
	start := time.Now()
	for round := range 50 {
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range ctrls {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = ctrls[i].ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{
					VolumeId: vol, NodeId: nodes[i], VolumeCapability: rwo, Secrets: e.secrets})
			}()
		}
		wg.Wait()
		var winner, loser int
		switch {
		case errs[0] == nil && errs[1] != nil:
			winner, loser = 0, 1
		case errs[1] == nil && errs[0] != nil:
			winner, loser = 1, 0
		default:
			t.Fatalf("round %d: publish results %v, %v; want exactly one success", round, errs[0], errs[1])
		}
		if status.Code(errs[loser]) != codes.FailedPrecondition || !strings.Contains(errs[loser].Error(), "node "+nodes[winner]) {
			t.Fatalf("round %d: the loser got %v; want FailedPrecondition naming %s", round, errs[loser], nodes[winner])
		}
		if _, err := ctrls[loser].ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{
			VolumeId: vol, NodeId: nodes[winner], Secrets: e.secrets}); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("50 rounds in %v", time.Since(start).Round(time.Millisecond))
}

// TestPeerControllerOpenIsNotAHolder: one replica holds the image open
// writable (as a resize, snapshot or flatten does) while another publishes
// it RWO: the open is recognised as a controller's own. An open by a
// client no controller registered is still refused by name.
func TestPeerControllerOpenIsNotAHolder(t *testing.T) {
	e := newControllerEnv(t)
	ctx := testContext(t, 5*time.Minute)
	peerConns := ceph.NewConnPool(ceph.Timeouts{})
	t.Cleanup(peerConns.Close)
	peer := rbd.NewController(rbd.ControllerOptions{Config: e.cfg,
		Connector: &rbd.CephConnector{Config: e.cfg, Conns: peerConns}})
	ctrl := e.controller(nil)
	created, err := ctrl.CreateVolume(ctx, e.createReq(uniqueName("pvc-peer"), 64<<20))
	if err != nil {
		t.Fatal(err)
	}
	vol, image := created.GetVolume().GetVolumeId(), created.GetVolume().GetVolumeContext()[rbd.CtxImageName]
	if _, err := peer.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: vol,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 128 << 20}, Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}
	holdOpen := func(conns *ceph.ConnPool) func() {
		t.Helper()
		cc, _ := e.cfg.Cluster(testClusterID)
		conn, err := conns.Get(ctx, cc, ceph.Credentials{ID: e.cluster.RBDUserID, Key: e.cluster.RBDUserKey})
		if err != nil {
			t.Fatal(err)
		}
		ioctx, err := conn.OpenIOContext(e.pool)
		if err != nil {
			t.Fatal(err)
		}
		img, err := librbd.OpenImage(ioctx, image, librbd.NoSnapshot)
		if err != nil {
			t.Fatal(err)
		}
		return func() { _ = img.Close(); ioctx.Destroy() }
	}
	publish := func(node string) error {
		_, err := ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: vol, NodeId: node,
			VolumeCapability: mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER), Secrets: e.secrets})
		return err
	}
	closePeer := holdOpen(peerConns) // the peer's own connection, as its resize uses
	if err := publish("node-a"); err != nil {
		t.Fatalf("publish while a peer controller holds the image open: %v", err)
	}
	closePeer()
	if _, err := ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: vol, NodeId: "node-a",
		Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}
	strangerConns := ceph.NewConnPool(ceph.Timeouts{})
	t.Cleanup(strangerConns.Close)
	closeStranger := holdOpen(strangerConns)
	defer closeStranger()
	if err := publish("node-a"); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "no node recorded") {
		t.Fatalf("publish while an unregistered client holds the image = %v; want FailedPrecondition naming it", err)
	}
}

// A controller in a process of its own, killed with SIGKILL by its own
// fence or create hook at the step the test names.
const (
	controllerProcessEnv = "PELAGIC_E2E_CONTROLLER_PROCESS" // the unix socket to serve on
	controllerConfigEnv  = "PELAGIC_E2E_CONTROLLER_CONFIG"
	controllerKillEnv    = "PELAGIC_E2E_CONTROLLER_KILL_AT"
	controllerTypeEnv    = "PELAGIC_E2E_CONTROLLER_TYPE" // "rbd" (the default) or "cephfs"
)

func runControllerProcess() int {
	cfg, err := ceph.LoadConfig(os.Getenv(controllerConfigEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	killAt := os.Getenv(controllerKillEnv)
	die := func(step string) {
		if step == killAt {
			killSelf()
		}
	}
	conns := ceph.NewConnPool(ceph.Timeouts{})
	var ctrl csi.ControllerServer = rbd.NewController(rbd.ControllerOptions{Config: cfg,
		Connector: &rbd.CephConnector{Config: cfg, Conns: conns}, FenceHook: die, CreateHook: die})
	if os.Getenv(controllerTypeEnv) == "cephfs" {
		ctrl = cephfs.NewController(cephfs.ControllerOptions{Config: cfg, Connector: &cephfs.CephConnector{Config: cfg, Conns: conns},
			AfterReserve: func(string) { die(killAfterReserve) }})
	}
	lis, err := csiserver.Listen("unix://" + os.Getenv(controllerProcessEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := csiserver.NewServer(csiserver.Services{Controller: ctrl}, time.Minute).Serve(lis); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	return 1
}

// killSelf ends this process with SIGKILL, as a crash would, at once.
func killSelf() {
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL is on its way
}

// killAfterReserve is the kill point of a CephFS controller process: right
// after CreateVolume reserved the name, before it made the subvolume.
const killAfterReserve = "after-reserve"

// startControllerProcess runs the test binary as a controller of driver
// type typ that kills itself at killAt, and returns its client and process.
func startControllerProcess(t *testing.T, typ, cfgPath, killAt string) (csi.ControllerClient, *exec.Cmd) {
	t.Helper()
	sock := filepath.Join(shortTempDir(t), "ctrl.sock")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), controllerProcessEnv+"="+sock, controllerConfigEnv+"="+cfgPath, controllerKillEnv+"="+killAt,
		controllerTypeEnv+"="+typ)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the controller process never listened")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return csi.NewControllerClient(dial(t, "unix://"+sock)), cmd
}

// TestFenceSurvivesControllerKill kills a controller with SIGKILL after it
// recorded a fence's intent and before the blocklist call, and after the
// blocklist call and before it completed the record. The next publish, by
// another controller, converges: exactly A's instance fenced, B attached,
// A unable to write; and pelagicctl status shows the fence all along.
func TestFenceSurvivesControllerKill(t *testing.T) {
	e := newTwoNodes(t)
	a, b := e.nodes["node-a"], e.nodes["node-b"]
	rwo := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	keyFile := filepath.Join(t.TempDir(), "admin.key")
	if err := os.WriteFile(keyFile, []byte(e.cluster.AdminKey), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, step := range []string{rbd.FenceStepIntent, rbd.FenceStepBlocklisted} {
		t.Run(step, func(t *testing.T) {
			ctx := testContext(t, 5*time.Minute)
			vol := e.create(t, "pvc-kill-"+step, rwo)
			if err := e.publish(ctx, vol, a.id, rwo); err != nil {
				t.Fatal(err)
			}
			if err := e.stage(ctx, a, vol, rwo); err != nil {
				t.Fatal(err)
			}
			instanceA := a.mappedInstance(t, vol)
			if err := e.unpublish(ctx, vol, a.id); err != nil {
				t.Fatal(err)
			}
			dying, proc := startControllerProcess(t, "rbd", e.cfgPath, step)
			_, err := dying.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: vol.GetVolumeId(),
				NodeId: b.id, VolumeCapability: rwo, Secrets: e.secrets})
			if err == nil {
				t.Fatal("the controller that was to die at " + step + " published")
			}
			var exit *exec.ExitError
			if werr := proc.Wait(); !errors.As(werr, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("the controller process ended with %v; want killed by SIGKILL", werr)
			}
			listed := slicesContains(e.blocklisted(t, ctx), instanceA)
			if listed != (step == rbd.FenceStepBlocklisted) {
				t.Fatalf("after a kill at %s, A's instance blocklisted = %v", step, listed)
			}
			status := pelagicctlStatus(t, ctx, e, keyFile, vol)
			if !strings.Contains(status, instanceA) || !strings.Contains(status, "PENDING FENCE") {
				t.Fatalf("pelagicctl status after the kill does not show the pending fence of %s:\n%s", instanceA, status)
			}

			if err := e.publish(ctx, vol, b.id, rwo); err != nil {
				t.Fatalf("the next publish after the kill: %v", err)
			}
			e.assertFencedAmong(t, ctx, instanceA)
			status = pelagicctlStatus(t, ctx, e, keyFile, vol)
			if !strings.Contains(status, instanceA) || !strings.Contains(status, "FENCED") || strings.Contains(status, "PENDING") {
				t.Fatalf("pelagicctl status after the next publish does not show A fenced:\n%s", status)
			}
			if err := e.stage(ctx, b, vol, rwo); err != nil {
				t.Fatal(err)
			}
			lateWritesFail(t, a, vol)
			if err := e.unstage(ctx, b, vol); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// assertFencedAmong checks that addr is blocklisted and no instance of
// node B's address is.
func (e *twoNodes) assertFencedAmong(t *testing.T, ctx context.Context, addr string) {
	t.Helper()
	listed := e.blocklisted(t, ctx)
	if !slicesContains(listed, addr) {
		t.Fatalf("%s is not blocklisted: %v", addr, listed)
	}
	for _, l := range listed {
		if strings.HasPrefix(l, e.nodes["node-b"].addr+":") {
			t.Fatalf("node B's instance %s is blocklisted", l)
		}
	}
}

func slicesContains(list []string, addr string) bool {
	for _, a := range list {
		if ceph.SameClient(a, addr) {
			return true
		}
	}
	return false
}

// pelagicctlStatus runs pelagicctl status in-process with the admin key,
// and checks the key is not in what it prints.
func pelagicctlStatus(t *testing.T, ctx context.Context, e *twoNodes, keyFile string, vol *csi.Volume) string {
	t.Helper()
	var out, errOut bytes.Buffer
	code := ctl.Run(ctx, []string{"--config", e.cfgPath, "--keyfile", keyFile, "--id", e.cluster.AdminID,
		"status", vol.GetVolumeId()}, &out, &errOut)
	if code != ctl.ExitOK {
		t.Fatalf("pelagicctl status: exit %d: %s", code, errOut.String())
	}
	if strings.Contains(out.String()+errOut.String(), e.cluster.AdminKey) {
		t.Fatal("pelagicctl status printed the admin key")
	}
	return out.String()
}

// TestCopiesDoNotInheritHolders: librbd copies a parent's image metadata
// into its clones; a restore or a clone of an attached, mapped volume must
// not carry the parent's attachment or mapping records.
func TestCopiesDoNotInheritHolders(t *testing.T) {
	e := newControllerEnv(t)
	ctx := testContext(t, 5*time.Minute)
	ctrl := e.controller(nil)
	created, err := ctrl.CreateVolume(ctx, e.createReq(uniqueName("pvc-held"), 64<<20))
	if err != nil {
		t.Fatal(err)
	}
	vol := created.GetVolume()
	if _, err := ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: vol.GetVolumeId(),
		NodeId: "node-a", VolumeCapability: mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER),
		Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}
	snap, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: uniqueName("snap-held"),
		SourceVolumeId: vol.GetVolumeId(), Secrets: e.secrets})
	if err != nil {
		t.Fatal(err)
	}
	sources := map[string]*csi.VolumeContentSource{
		"restore": {Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{
			SnapshotId: snap.GetSnapshot().GetSnapshotId()}}},
		"clone": {Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{
			VolumeId: vol.GetVolumeId()}}},
	}
	ioctx := e.adminIOContext(t)
	for what, src := range sources {
		req := e.createReq(uniqueName("pvc-"+what), 64<<20)
		req.VolumeContentSource = src
		copied, err := ctrl.CreateVolume(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		img, err := librbd.OpenImageReadOnly(ioctx, copied.GetVolume().GetVolumeContext()[rbd.CtxImageName], librbd.NoSnapshot)
		if err != nil {
			t.Fatal(err)
		}
		keys, err := img.ListMetadata()
		_ = img.Close()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := keys["pelagic.csi/owner"]; !ok {
			t.Errorf("the %s has no owner record: %v", what, keys)
		}
		for k := range keys {
			if strings.HasPrefix(k, "pelagic.csi/attach.") || strings.HasPrefix(k, "pelagic.csi/map.") {
				t.Errorf("the %s of a held volume carries %s", what, k)
			}
		}
	}
}
