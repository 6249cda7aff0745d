package kernel

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pelagic-csi/pelagic/e2e/cephtest"
	"github.com/pelagic-csi/pelagic/pkg/csiserver"
	"github.com/pelagic-csi/pelagic/pkg/daemonhost"
	"github.com/pelagic-csi/pelagic/pkg/driver"
)

// This test binary also plays the node's processes, as deploy/rbd runs
// them: a node plugin, and the daemon host that starts the plugin's Ceph
// daemons (rbd-nbd) so that they outlive it. A test runs them as processes
// of their own, so it can kill the plugin as a container restart would.
const (
	// EnvNodePlugin, set to a state directory, makes the binary a node
	// plugin serving CSI on STATE/csi.sock with its daemons started by
	// the daemon host on STATE/daemons.sock.
	EnvNodePlugin = "PELAGIC_GUEST_NODE_PLUGIN"
	// EnvDaemonHost, set to a state directory, makes the binary the daemon
	// host serving on STATE/daemons.sock.
	EnvDaemonHost = "PELAGIC_GUEST_DAEMON_HOST"
	// EnvKillAfter, set beside EnvNodePlugin to a node operation
	// (driver.Op*), makes the plugin SIGKILL itself right after that
	// operation, as a crash there would end it.
	EnvKillAfter = "PELAGIC_GUEST_KILL_AFTER"
)

func pluginSocket(state string) string { return filepath.Join(state, "csi.sock") }
func daemonSocket(state string) string { return filepath.Join(state, "daemons.sock") }

// processRole returns what to run instead of the tests when this binary
// was started as one of the node's processes.
func processRole() (func(clusterDir string) int, bool) {
	if state := os.Getenv(EnvNodePlugin); state != "" {
		return func(clusterDir string) int { return serveNodePlugin(clusterDir, state) }, true
	}
	if state := os.Getenv(EnvDaemonHost); state != "" {
		return func(string) int { return serveDaemonHost(state) }, true
	}
	return nil, false
}

func serveNodePlugin(clusterDir, state string) int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "node plugin:", err)
		return 1
	}
	c, err := cephtest.Load(clusterDir)
	if err != nil {
		return fail(err)
	}
	cfg, err := writeConfig(state, c)
	if err != nil {
		return fail(err)
	}
	opts := nodeOptions(cfg, state, daemonSocket(state))
	if op := os.Getenv(EnvKillAfter); op != "" {
		opts.ObserveNodeOp = func(done string, _ time.Duration) {
			if done == op {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			}
		}
	}
	d, err := driver.New(opts)
	if err != nil {
		return fail(err)
	}
	lis, err := csiserver.Listen("unix://" + pluginSocket(state))
	if err != nil {
		return fail(err)
	}
	return fail(csiserver.NewServer(d.Services, time.Minute).Serve(lis))
}

func serveDaemonHost(state string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := daemonhost.Serve(ctx, daemonhost.Options{Socket: daemonSocket(state)}); err != nil {
		fmt.Fprintln(os.Stderr, "daemon host:", err)
		return 1
	}
	return 0
}

// nodeService is what the tests call of a node plugin, in this process or
// in another.
type nodeService interface {
	NodeStageVolume(context.Context, *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error)
	NodePublishVolume(context.Context, *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error)
	NodeUnpublishVolume(context.Context, *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error)
	NodeUnstageVolume(context.Context, *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error)
}

// remoteNode calls the node plugin serving on a socket, whichever process
// serves it at the time: each call dials afresh.
type remoteNode struct{ socket string }

func (r remoteNode) call(fn func(csi.NodeClient) error) error {
	conn, err := grpc.NewClient("unix://"+r.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	return fn(csi.NewNodeClient(conn))
}

func (r remoteNode) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (resp *csi.NodeStageVolumeResponse, err error) {
	err = r.call(func(c csi.NodeClient) error { resp, err = c.NodeStageVolume(ctx, req); return err })
	return resp, err
}

func (r remoteNode) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (resp *csi.NodePublishVolumeResponse, err error) {
	err = r.call(func(c csi.NodeClient) error { resp, err = c.NodePublishVolume(ctx, req); return err })
	return resp, err
}

func (r remoteNode) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (resp *csi.NodeUnpublishVolumeResponse, err error) {
	err = r.call(func(c csi.NodeClient) error { resp, err = c.NodeUnpublishVolume(ctx, req); return err })
	return resp, err
}

func (r remoteNode) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (resp *csi.NodeUnstageVolumeResponse, err error) {
	err = r.call(func(c csi.NodeClient) error { resp, err = c.NodeUnstageVolume(ctx, req); return err })
	return resp, err
}

// nodeProcesses is a node plugin and its daemon host, each a process of
// its own, over a state directory of their own.
type nodeProcesses struct {
	t      *testing.T
	state  string
	plugin *exec.Cmd
}

// withNodeProcesses returns a copy of e whose node plugin runs in a
// process of its own, with a daemon host beside it. pluginEnv is added to
// the first plugin's environment.
func (e *env) withNodeProcesses(t *testing.T, pluginEnv ...string) (*env, *nodeProcesses) {
	t.Helper()
	p := &nodeProcesses{t: t, state: t.TempDir()}
	p.start(EnvDaemonHost, daemonSocket(p.state))
	p.plugin = p.start(EnvNodePlugin, pluginSocket(p.state), pluginEnv...)
	own := *e
	own.dir, own.node, own.closers = p.state, remoteNode{socket: pluginSocket(p.state)}, nil
	return &own, p
}

// start runs this binary in role (an environment variable naming the
// state directory), with env added, and waits for it to serve on socket.
// At cleanup its process group is killed.
func (p *nodeProcesses) start(role, socket string, env ...string) *exec.Cmd {
	p.t.Helper()
	_ = os.Remove(socket) // a killed plugin leaves its socket
	log, err := os.OpenFile(filepath.Join(p.state, role+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		p.t.Fatal(err)
	}
	defer log.Close()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(append(os.Environ(), role+"="+p.state), env...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	p.t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	})
	waitFor(p.t, time.Minute, role+" to serve on "+socket, func() bool {
		_, err := os.Stat(socket)
		return err == nil
	})
	return cmd
}

// killPlugin kills the node plugin's whole process group at once, as a
// container restart does; the daemon host and its daemons stay.
func (p *nodeProcesses) killPlugin() {
	p.t.Helper()
	if err := syscall.Kill(-p.plugin.Process.Pid, syscall.SIGKILL); err != nil {
		p.t.Fatal(err)
	}
	p.waitPluginGone()
}

// waitPluginGone waits until the node plugin process has exited.
func (p *nodeProcesses) waitPluginGone() {
	p.t.Helper()
	waitFor(p.t, 30*time.Second, "the node plugin to die", func() bool {
		return syscall.Kill(p.plugin.Process.Pid, 0) != nil
	})
}

// restartPlugin starts a new node plugin process over the same state.
func (p *nodeProcesses) restartPlugin() {
	p.t.Helper()
	p.plugin = p.start(EnvNodePlugin, pluginSocket(p.state))
}
