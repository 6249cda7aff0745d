package e2e

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/csiserver"
	"github.com/pelagic-csi/pelagic/pkg/daemonhost"
	"github.com/pelagic-csi/pelagic/pkg/driver"
)

// The restart tests run the node plugin, and the daemon host, as processes
// of their own: the test binary run again, doing what `pelagic --node` and
// `pelagic --daemon-host` do.
const (
	nodeProcessEnv = "PELAGIC_E2E_NODE_PROCESS" // JSON nodeProcess
	daemonHostEnv  = "PELAGIC_E2E_DAEMON_HOST"  // the socket to serve on
)

// nodeProcess configures a node plugin process.
type nodeProcess struct {
	Socket       string `json:"socket"`
	Config       string `json:"config"`
	StateDir     string `json:"stateDir"`
	DaemonSocket string `json:"daemonSocket,omitempty"`
	Type         string `json:"type,omitempty"` // "rbd" (the default) or "cephfs"
	// KillAfter is a node operation (driver.Op*) after which the process
	// kills itself with SIGKILL, half way through its NodeStage.
	KillAfter string `json:"killAfter,omitempty"`
}

// runNodeProcess serves a fuse node plugin until SIGTERM, as the pelagic
// binary does.
func runNodeProcess() int {
	var p nodeProcess
	if err := json.Unmarshal([]byte(os.Getenv(nodeProcessEnv)), &p); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	cfg, err := ceph.LoadConfig(p.Config)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	o := driver.Options{Type: cmp.Or(p.Type, "rbd"), DriverName: "csi.pelagic.dev", Node: true, NodeID: "restart-node",
		Config: cfg, Mounter: "fuse", StateDir: p.StateDir, DaemonSocket: p.DaemonSocket}
	if p.KillAfter != "" {
		o.ObserveNodeOp = func(op string, _ time.Duration) {
			if op == p.KillAfter {
				killSelf()
			}
		}
	}
	d, err := driver.New(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer d.Close()
	if err := csiserver.Serve(ctx, "unix://"+p.Socket, d.Services, time.Minute); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func runDaemonHost() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := daemonhost.Serve(ctx, daemonhost.Options{Socket: os.Getenv(daemonHostEnv)}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// plugin is a running node plugin process and its client.
type plugin struct {
	cmd  *exec.Cmd
	node csi.NodeClient
	done chan error
}

// startPlugin starts a node plugin process. In a PID namespace of its own
// (pidns), it is what a container is to its processes: when it dies, the
// kernel kills every process in it, daemons that detached included.
func startPlugin(t *testing.T, p nodeProcess, pidns bool) *plugin {
	t.Helper()
	b, _ := json.Marshal(p)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), nodeProcessEnv+"="+string(b))
	cmd.Stderr = os.Stderr
	if pidns {
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pl := &plugin{cmd: cmd, done: make(chan error, 1)}
	go func() { pl.done <- cmd.Wait() }()
	t.Cleanup(func() { pl.kill(t, syscall.SIGKILL) })
	pl.node = csi.NewNodeClient(dial(t, "unix://"+p.Socket))
	ctx := testContext(t, 30*time.Second)
	for {
		if _, err := pl.node.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{}); err == nil {
			return pl
		}
		select {
		case err := <-pl.done:
			t.Fatalf("the node plugin process ended before serving: %v", err)
		case <-ctx.Done():
			t.Fatal("the node plugin process never served")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// kill signals the plugin and waits for it to end.
func (pl *plugin) kill(t *testing.T, sig syscall.Signal) {
	if pl.cmd.ProcessState != nil {
		return
	}
	_ = pl.cmd.Process.Signal(sig)
	select {
	case <-pl.done:
	case <-time.After(time.Minute):
		t.Errorf("the node plugin process (pid %d) did not end after %v", pl.cmd.Process.Pid, sig)
	}
}

// startDaemonHost runs a daemon host process for the test's life.
func startDaemonHost(t *testing.T) string {
	t.Helper()
	socket := filepath.Join(shortTempDir(t), "daemons.sock")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), daemonHostEnv+"="+socket)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(socket); err == nil {
			return socket
		}
		if time.Now().After(deadline) {
			t.Fatal("the daemon host never listened")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// writer appends numbered 4 KiB blocks to a file, each fsynced, until told
// to stop or a write fails; synced is the count of blocks on stable storage.
type writer struct {
	path   string
	synced atomic.Int64
	stop   chan struct{}
	done   chan struct{}
	err    error
}

const blockSize = 4096

func block(seq int64) []byte {
	b := bytes.Repeat([]byte{byte(seq)}, blockSize)
	binary.BigEndian.PutUint64(b, uint64(seq))
	return b
}

func startWriter(path string, from int64) *writer {
	w := &writer{path: path, stop: make(chan struct{}), done: make(chan struct{})}
	w.synced.Store(from)
	go func() {
		defer close(w.done)
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
		if err != nil {
			w.err = err
			return
		}
		defer f.Close()
		for seq := from; ; seq++ {
			select {
			case <-w.stop:
				return
			default:
			}
			if _, err := f.WriteAt(block(seq), seq*blockSize); err != nil {
				w.err = err
				return
			}
			if err := f.Sync(); err != nil {
				w.err = err
				return
			}
			w.synced.Store(seq + 1)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return w
}

// waitFor waits until the writer has synced n blocks; false if it failed.
func (w *writer) waitFor(t *testing.T, n int64) bool {
	t.Helper()
	deadline := time.After(2 * time.Minute)
	for w.synced.Load() < n {
		select {
		case <-w.done:
			return false
		case <-deadline:
			t.Fatalf("the writer synced %d blocks in 2 minutes, want %d", w.synced.Load(), n)
		case <-time.After(10 * time.Millisecond):
		}
	}
	return true
}

func (w *writer) halt() int64 {
	close(w.stop)
	<-w.done
	return w.synced.Load()
}

// checkBlocks reads the first n blocks back.
func checkBlocks(t *testing.T, path string, n int64) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(data)) < n*blockSize {
		t.Fatalf("%s holds %d bytes, want the %d blocks synced (%d bytes)", path, len(data), n, n*blockSize)
	}
	for seq := range n {
		if !bytes.Equal(data[seq*blockSize:(seq+1)*blockSize], block(seq)) {
			t.Fatalf("block %d of the %d synced is not what was written", seq, n)
		}
	}
}

// restartEnv is one volume, staged and published by a node plugin process.
type restartEnv struct {
	*controllerEnv
	proc    nodeProcess
	vol     *csi.Volume
	staging string
	target  string
}

func newRestartEnv(t *testing.T, daemons bool) *restartEnv {
	e := &restartEnv{controllerEnv: newControllerEnv(t)}
	_, cfgPath := clusterConfig(t, e.cluster)
	state, work := shortTempDir(t), t.TempDir()
	t.Cleanup(func() { cleanupNode(state, work) })
	e.proc = nodeProcess{Socket: filepath.Join(shortTempDir(t), "csi.sock"), Config: cfgPath, StateDir: state}
	if daemons {
		e.proc.DaemonSocket = startDaemonHost(t)
	}
	e.staging, e.target = filepath.Join(work, "staging"), filepath.Join(work, "target")
	created, err := e.controller(nil).CreateVolume(testContext(t, time.Minute), e.createReq(uniqueName("pvc-restart"), 256<<20))
	if err != nil {
		t.Fatal(err)
	}
	e.vol = created.GetVolume()
	return e
}

func (e *restartEnv) stageAndPublish(ctx context.Context, node csi.NodeClient) error {
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	if err := os.MkdirAll(e.staging, 0o750); err != nil {
		return err
	}
	if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: e.vol.GetVolumeId(), StagingTargetPath: e.staging,
		VolumeCapability: c, VolumeContext: e.vol.GetVolumeContext(), Secrets: e.secrets}); err != nil {
		return fmt.Errorf("NodeStage: %w", err)
	}
	if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: e.vol.GetVolumeId(),
		StagingTargetPath: e.staging, TargetPath: e.target, VolumeCapability: c, VolumeContext: e.vol.GetVolumeContext()}); err != nil {
		return fmt.Errorf("NodePublish: %w", err)
	}
	return nil
}

func (e *restartEnv) teardown(ctx context.Context, node csi.NodeClient) error {
	if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: e.vol.GetVolumeId(), TargetPath: e.target}); err != nil {
		return fmt.Errorf("NodeUnpublish: %w", err)
	}
	if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: e.vol.GetVolumeId(), StagingTargetPath: e.staging}); err != nil {
		return fmt.Errorf("NodeUnstage: %w", err)
	}
	return nil
}

// health returns the reasons NodeGetVolumeHealth gives, by volume ID only.
func (e *restartEnv) health(t *testing.T, ctx context.Context, node csi.NodeClient) []string {
	t.Helper()
	resp, err := node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: e.vol.GetVolumeId()})
	if err != nil {
		t.Fatalf("NodeGetVolumeHealth: %v", err)
	}
	var reasons []string
	for _, s := range resp.GetVolumeHealth().GetHealthStatuses() {
		reasons = append(reasons, s.GetReason()+": "+s.GetMessage())
	}
	return reasons
}

// readBack unstages, stages and publishes again, and checks the first n
// blocks: what was on stable storage survived.
func (e *restartEnv) readBack(t *testing.T, ctx context.Context, node csi.NodeClient, n int64) {
	t.Helper()
	if err := e.teardown(ctx, node); err != nil {
		t.Fatal(err)
	}
	if err := e.stageAndPublish(ctx, node); err != nil {
		t.Fatal(err)
	}
	checkBlocks(t, filepath.Join(e.target, "data"), n)
	if err := e.teardown(ctx, node); err != nil {
		t.Fatal(err)
	}
}

// TestNodePluginRestart restarts the node plugin while a volume is
// published and written (fuse mapper, daemons in a daemon host): with
// SIGTERM, with SIGKILL, and by killing every process of the plugin's
// "container" (a PID namespace of its own). Each time the writer keeps
// going through the restart, rbd-fuse is the same process, the restarted
// plugin reports the volume healthy and stages and publishes it again
// without mapping anew, and every block synced before, during and after
// the restart reads back after a restage.
func TestNodePluginRestart(t *testing.T) {
	for _, tc := range []struct {
		name  string
		sig   syscall.Signal
		pidns bool
	}{
		{"SIGTERM", syscall.SIGTERM, false},
		{"SIGKILL", syscall.SIGKILL, false},
		{"container restart", syscall.SIGKILL, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t, 5*time.Minute)
			e := newRestartEnv(t, true)
			pl := startPlugin(t, e.proc, tc.pidns)
			if err := e.stageAndPublish(ctx, pl.node); err != nil {
				t.Fatal(err)
			}
			daemon := fusePIDs(e.proc.StateDir)
			w := startWriter(filepath.Join(e.target, "data"), 0)
			if !w.waitFor(t, 20) {
				t.Fatalf("the writer failed before the restart: %v", w.err)
			}

			start := time.Now()
			pl.kill(t, tc.sig)
			atKill := w.synced.Load()
			pl = startPlugin(t, e.proc, tc.pidns)
			restarted := time.Since(start)
			if !w.waitFor(t, atKill+50) {
				t.Fatalf("the writer stopped at block %d after the restart: %v", w.synced.Load(), w.err)
			}
			if now := fusePIDs(e.proc.StateDir); len(daemon) != 1 || len(now) != 1 || now[0] != daemon[0] {
				t.Fatalf("rbd-fuse was %v before the restart and is %v after", daemon, now)
			}
			if reasons := e.health(t, ctx, pl.node); len(reasons) > 0 {
				t.Fatalf("the restarted plugin reports the volume unhealthy: %q", reasons)
			}
			// The CO may stage and publish again: nothing changes.
			if err := e.stageAndPublish(ctx, pl.node); err != nil {
				t.Fatalf("again after the restart: %v", err)
			}
			if now := fusePIDs(e.proc.StateDir); len(now) != 1 || now[0] != daemon[0] {
				t.Fatalf("staging again after the restart replaced rbd-fuse %v with %v", daemon, now)
			}
			written := w.halt()
			if w.err != nil {
				t.Fatalf("the writer failed: %v", w.err)
			}
			e.readBack(t, ctx, pl.node, written)
			t.Logf("%s: plugin back in %v; %d blocks synced before the kill, %d in all, none lost; rbd-fuse pid %d throughout",
				tc.name, restarted.Round(time.Millisecond), atKill, written, daemon[0])
		})
	}
}

// TestDeadMappingRecovered: rbd-fuse dies under a published volume, once
// with the plugin (no daemon host: the whole "container" is killed), once
// alone (as the OOM killer would). Health reports the mapping dead, with
// the reason; the next NodeStage, or NodePublish, maps the volume again
// as a new client instance, remounts staging and target, and the writer,
// reopening, goes on where the synced data ends, none of it lost.
func TestDeadMappingRecovered(t *testing.T) {
	for _, tc := range []struct {
		name      string
		killAlone bool // kill rbd-fuse only; else the plugin's whole process tree
	}{
		{"plugin container restarts without a daemon host", false},
		{"rbd-fuse killed", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // each waits about 30 s for Ceph to drop the dead instance's watch
			ctx := testContext(t, 5*time.Minute)
			e := newRestartEnv(t, false)
			pl := startPlugin(t, e.proc, !tc.killAlone)
			if err := e.stageAndPublish(ctx, pl.node); err != nil {
				t.Fatal(err)
			}
			oldClient := fuseClient(t, e.proc.StateDir)
			w := startWriter(filepath.Join(e.target, "data"), 0)
			if !w.waitFor(t, 20) {
				t.Fatalf("the writer failed before the kill: %v", w.err)
			}
			if tc.killAlone {
				for _, pid := range fusePIDs(e.proc.StateDir) {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			} else {
				pl.kill(t, syscall.SIGKILL)
				pl = startPlugin(t, e.proc, false)
			}
			<-w.done // the dead mapping fails the writer's next write or sync
			synced := w.synced.Load()
			reasons := e.health(t, ctx, pl.node)
			if len(reasons) == 0 || !strings.HasPrefix(reasons[0], "MappingDead") {
				t.Fatalf("health after rbd-fuse died: %q; want MappingDead", reasons)
			}

			start := time.Now()
			if tc.killAlone {
				// The plugin still has the secrets of the stage: NodePublish recovers.
				_, err := pl.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: e.vol.GetVolumeId(),
					StagingTargetPath: e.staging, TargetPath: e.target, VolumeContext: e.vol.GetVolumeContext(),
					VolumeCapability: mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)})
				if err != nil {
					t.Fatalf("NodePublish after rbd-fuse died: %v", err)
				}
			} else if err := e.stageAndPublish(ctx, pl.node); err != nil {
				t.Fatalf("NodeStage and NodePublish after the restart: %v", err)
			}
			recovered := time.Since(start)
			if reasons := e.health(t, ctx, pl.node); len(reasons) > 0 {
				t.Fatalf("still unhealthy after the recovery: %q", reasons)
			}
			newClient := fuseClient(t, e.proc.StateDir)
			if newClient == oldClient {
				t.Fatalf("the recovered mapping is the dead client instance %s", oldClient)
			}
			checkBlocks(t, filepath.Join(e.target, "data"), synced)
			w = startWriter(filepath.Join(e.target, "data"), synced)
			if !w.waitFor(t, synced+20) {
				t.Fatalf("the writer failed after the recovery: %v", w.err)
			}
			written := w.halt()
			e.readBack(t, ctx, pl.node, written)
			t.Logf("%s: %d blocks synced before rbd-fuse died, none lost; mapping replaced (client %s -> %s) in %v",
				tc.name, synced, oldClient, newClient, recovered.Round(time.Millisecond))
		})
	}
}

// fuseClient is the client instance the only fuse mapping under state
// records.
func fuseClient(t *testing.T, state string) string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(state, "fuse", "*", "state.json"))
	if len(files) != 1 {
		t.Fatalf("%d fuse mappings under %s, want 1", len(files), state)
	}
	var st struct {
		ClientAddr string `json:"clientAddr"`
	}
	b, err := os.ReadFile(files[0])
	if err == nil {
		err = json.Unmarshal(b, &st)
	}
	if err != nil || st.ClientAddr == "" {
		t.Fatalf("fuse mapping state %s: %v, client %q", files[0], err, st.ClientAddr)
	}
	return st.ClientAddr
}
