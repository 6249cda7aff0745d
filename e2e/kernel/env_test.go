// Package kernel holds integration tests of the kernel clients (krbd,
// rbd-nbd behind the kernel nbd module, and the CephFS kernel client) with
// the real node plugins and the real tools. They need a kernel with the
// rbd, nbd and ceph modules, which this machine's kernel lacks: e2e/vm
// builds this test binary on the host, boots a guest kernel and runs the
// binary inside it, against a test cluster on the guest's bridge. Run
// directly on the host, the binary runs nothing.
package kernel

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/pelagic-csi/pelagic/e2e/cephtest"
	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/driver"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
)

// EnvCluster names the directory holding the cluster.json of the cluster
// the guest reaches; e2e/vm sets it. Without it the tests do not run.
const EnvCluster = "PELAGIC_GUEST_CLUSTER"

const (
	clusterID  = "guest"
	driverName = "rbd.csi.pelagic.dev"
	nodeID     = "guest-node"
)

func TestMain(m *testing.M) {
	dir := os.Getenv(EnvCluster)
	if dir == "" {
		fmt.Println("kernel client tests run inside a guest kernel, started by the e2e/vm tests; nothing to do here")
		os.Exit(0)
	}
	if role, ok := processRole(); ok {
		os.Exit(role(dir))
	}
	e, err := setUp(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	shared = e
	code := m.Run()
	e.close()
	os.Exit(code)
}

// shared is the env every test uses: connections to the cluster are slow
// to open in an emulated guest, so one controller and one node plugin
// serve all the tests, which run in parallel (most of their time is the
// rbd tools' and the kernel's round trips to the cluster).
var shared *env

// env is a controller and a node plugin of this guest, on the test cluster.
type env struct {
	cluster *cephtest.Cluster
	cfg     *ceph.Config
	ctrl    csi.ControllerServer
	node    nodeService
	conns   *ceph.ConnPool
	admin   rbd.Cluster // for what the test checks, outside the driver
	dir     string      // the node plugin's state, staging and target paths
	secrets map[string]string
	closers []func()
}

// setUp starts a controller and a node plugin (default mapper krbd) on the
// cluster described in dir/cluster.json.
func setUp(dir string) (*env, error) {
	c, err := cephtest.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("the test cluster: %w", err)
	}
	e := &env{cluster: c, secrets: map[string]string{"userID": c.RBDUserID, "userKey": c.RBDUserKey}}
	if e.dir, err = os.MkdirTemp("", "guest-node-"); err != nil {
		return nil, err
	}
	e.closers = append(e.closers, func() { _ = os.RemoveAll(e.dir) })
	if e.cfg, err = writeConfig(e.dir, c); err != nil {
		return nil, err
	}
	ctrl, err := driver.New(driver.Options{Type: "rbd", DriverName: driverName, Controller: true, Config: e.cfg})
	if err != nil {
		return nil, err
	}
	e.closers = append(e.closers, ctrl.Close)
	e.ctrl, e.conns = ctrl.Services.Controller, ctrl.Conns
	if err := e.startNode(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e.admin, err = (&rbd.CephConnector{Config: e.cfg, Conns: e.conns}).Connect(ctx, clusterID,
		ceph.Credentials{ID: c.AdminID, Key: c.AdminKey})
	return e, err
}

// writeConfig writes, in dir, the cluster config a ceph-csi ConfigMap
// would hold for c, and loads it.
func writeConfig(dir string, c *cephtest.Cluster) (*ceph.Config, error) {
	data, err := json.Marshal([]map[string]any{{"clusterID": clusterID, "monitors": []string{c.Monitors}, "rbd": map[string]any{}}})
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "config.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return nil, err
	}
	return ceph.LoadConfig(path)
}

// nodeOptions are those of this guest's node plugin: krbd by default, its
// state in state, its daemons started by the daemon host at daemonSocket
// ("": by the plugin itself).
func nodeOptions(cfg *ceph.Config, state, daemonSocket string) driver.Options {
	return driver.Options{Type: "rbd", DriverName: driverName, Node: true, NodeID: nodeID, Config: cfg,
		Mounter: "krbd", StateDir: state, DaemonSocket: daemonSocket}
}

// startNode starts a node plugin in this process, over the env's state.
func (e *env) startNode() error {
	d, err := driver.New(nodeOptions(e.cfg, filepath.Join(e.dir, "state"), ""))
	if err != nil {
		return err
	}
	e.closers = append(e.closers, d.Close)
	e.node = d.Services.Node
	return nil
}

func (e *env) close() {
	for i := len(e.closers) - 1; i >= 0; i-- {
		e.closers[i]()
	}
}

func testContext(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func mountCap(mode csi.VolumeCapability_AccessMode_Mode, fsType string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode}}
}

func blockCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode}}
}

const rwo = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER

// volume is a volume published to this node, and where it is staged and
// published here.
type volume struct {
	*csi.Volume
	staging, target string
}

// image is the volume's RBD image name.
func (v *volume) image() string { return v.GetVolumeContext()[rbd.CtxImageName] }

// create makes a volume of the class params (besides clusterID and pool)
// and publishes it to this node, as the attacher would. At cleanup it is
// torn down here, whatever the test left, and deleted.
func (e *env) create(t *testing.T, name string, size int64, c *csi.VolumeCapability, params map[string]string) *volume {
	t.Helper()
	ctx := testContext(t, 2*time.Minute)
	p := map[string]string{"clusterID": clusterID, "pool": e.cluster.Pool}
	for k, val := range params {
		p[k] = val
	}
	resp, err := e.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name,
		CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapabilities: []*csi.VolumeCapability{c},
		Parameters: p, Secrets: e.secrets})
	if err != nil {
		t.Fatalf("CreateVolume %s: %v", name, err)
	}
	v := &volume{Volume: resp.GetVolume(), staging: filepath.Join(e.dir, name, "staging"),
		target: filepath.Join(e.dir, name, "target")}
	if err := os.MkdirAll(v.staging, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := e.controllerPublish(ctx, v, nodeID, c); err != nil {
		t.Fatalf("ControllerPublishVolume %s to %s: %v", name, nodeID, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_ = e.teardown(ctx, v)
		_, _ = e.ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: v.GetVolumeId(),
			NodeId: nodeID, Secrets: e.secrets})
		if _, err := e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId(), Secrets: e.secrets}); err != nil {
			t.Logf("DeleteVolume %s at cleanup: %v", name, err)
		}
	})
	return v
}

func (e *env) controllerPublish(ctx context.Context, v *volume, node string, c *csi.VolumeCapability) error {
	_, err := e.ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: v.GetVolumeId(),
		NodeId: node, VolumeCapability: c, Secrets: e.secrets, Readonly: readOnly(c)})
	return err
}

func readOnly(c *csi.VolumeCapability) bool {
	m := c.GetAccessMode().GetMode()
	return m == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY || m == csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
}

// stage stages and publishes v on this node with capability c.
func (e *env) stage(ctx context.Context, v *volume, c *csi.VolumeCapability) error {
	if _, err := e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.GetVolumeId(),
		StagingTargetPath: v.staging, VolumeCapability: c, VolumeContext: v.GetVolumeContext(), Secrets: e.secrets}); err != nil {
		return fmt.Errorf("NodeStageVolume: %w", err)
	}
	if _, err := e.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.GetVolumeId(),
		StagingTargetPath: v.staging, TargetPath: v.target, VolumeCapability: c, VolumeContext: v.GetVolumeContext(),
		Readonly: readOnly(c)}); err != nil {
		return fmt.Errorf("NodePublishVolume: %w", err)
	}
	return nil
}

// teardown unpublishes and unstages v on this node.
func (e *env) teardown(ctx context.Context, v *volume) error {
	if err := e.unpublish(ctx, v); err != nil {
		return err
	}
	return e.unstage(ctx, v)
}

func (e *env) unpublish(ctx context.Context, v *volume) error {
	_, err := e.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.GetVolumeId(), TargetPath: v.target})
	if err != nil {
		return fmt.Errorf("NodeUnpublishVolume: %w", err)
	}
	return nil
}

func (e *env) unstage(ctx context.Context, v *volume) error {
	_, err := e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.GetVolumeId(), StagingTargetPath: v.staging})
	if err != nil {
		return fmt.Errorf("NodeUnstageVolume: %w", err)
	}
	return nil
}

// usage reads the image's records and watchers, as the controller does.
func (e *env) usage(t *testing.T, v *volume) *rbd.Usage {
	t.Helper()
	ctx := testContext(t, time.Minute)
	pool, err := e.admin.Pool(ctx, e.cluster.Pool, "")
	if err != nil {
		t.Fatal(err)
	}
	u, err := rbd.ReadUsage(ctx, pool, v.image())
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// mappingRecord is this node's mapping record of v: which client instance
// the node says maps it.
func (e *env) mappingRecord(t *testing.T, v *volume) rbd.NodeMapping {
	t.Helper()
	m, ok := e.usage(t, v).Mappings[nodeID]
	if !ok {
		t.Fatalf("image %s has no mapping record of node %s", v.image(), nodeID)
	}
	return m
}

// blockDevice returns the kernel name ("rbd0", "nbd1") of the block device
// behind path: the device file of a published block volume, or any path
// on a mounted filesystem.
func blockDevice(t *testing.T, path string) string {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	dev := st.Dev
	if st.Mode&syscall.S_IFMT == syscall.S_IFBLK {
		dev = st.Rdev
	}
	major := (dev>>8)&0xfff | (dev>>32)&^0xfff
	minor := dev&0xff | (dev>>12)&^0xff
	link, err := os.Readlink(fmt.Sprintf("/sys/dev/block/%d:%d", major, minor))
	if err != nil {
		t.Fatalf("the block device behind %s: %v", path, err)
	}
	return filepath.Base(link)
}

// sysfs reads one attribute file, trimmed.
func sysfs(t *testing.T, path ...string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(append([]string{"/sys"}, path...)...))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// deviceGone tells whether err is a read of a device's sysfs file made
// while the device went away: its file gone, or its attributes torn down
// (ENODEV) during an unmap or disconnect.
func deviceGone(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENODEV)
}

// writeSynced writes data to path and syncs it, returning the first error.
func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	return errors.Join(werr, f.Sync(), f.Close())
}

// readBack fails the test unless path starts with data.
func readBack(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, len(data))
	if _, err := io.ReadFull(f, got); err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("%s reads back %q..., want %q...", path, got[:min(len(got), 16)], data[:min(len(data), 16)])
	}
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", timeout, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
