// Package cephcsi runs the reference driver, ceph-csi, against a test cluster, so that tests can
// provision volumes and snapshots exactly as ceph-csi does and check what Pelagic makes of them.
//
// The binary is not vendored: $PELAGIC_CEPHCSI_BIN names it (cephcsi.gz as shipped, or the unpacked
// cephcsi). A test that needs it fails, saying how to provide it, when the variable is unset.
//
// ceph-csi hard-codes /etc/ceph-csi-config/config.json, /etc/ceph and /tmp/csi/keys. Start runs it in a
// private mount namespace where /etc is an overlay and /tmp a tmpfs, both held in memory that goes
// away with the namespace: the host's /etc and /tmp are never written. Only the driver's directory
// (Driver.Dir, which holds the CSI socket and any staging paths a test uses) is shared, at the same
// path on both sides. A no-op modprobe comes first on its PATH: its RBD node server exits when
// `modprobe rbd` fails.
//
//	d := cephcsi.Start(t, cephcsi.Options{Type: "rbd", Clusters: []cephcsi.Cluster{cephcsi.ClusterOf(c, "e2e")}})
//	resp, err := d.Controller.CreateVolume(ctx, req)
//
// Stop (also run by t.Cleanup) ends every process of the namespace and removes the directory.
//
// With Options.SharedMounts, what ceph-csi mounts under Driver.Dir (its node plugin's staging
// and target mounts) shows in the caller's mount namespace too, as a node plugin's mounts reach
// the host through Bidirectional propagation; Kill then ends ceph-csi and leaves those mounts
// (and its krbd mappings, which live in the kernel) in place, as replacing the plugin does.
package cephcsi

import (
	"bufio"
	"compress/gzip"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pelagic-csi/pelagic/e2e/cephtest"
)

// EnvBinary names the environment variable that holds the path of ceph-csi's binary.
const EnvBinary = "PELAGIC_CEPHCSI_BIN"

// StartTimeout bounds how long Start waits for the driver to answer.
var StartTimeout = 30 * time.Second

// StopTimeout is how long Stop waits after SIGTERM before it kills.
var StopTimeout = 10 * time.Second

// nsScript prepares the private mount namespace, then becomes ceph-csi.
// Arguments: DIR BINARY CEPHCSI-ARGS...
//
//go:embed ns.sh
var nsScript string

// Cluster is one entry of ceph-csi's config.json.
type Cluster struct {
	ClusterID       string
	Monitors        []string
	RBDNamespace    string // rbd.radosNamespace
	SubvolumeGroup  string // cephFS.subvolumeGroup; ceph-csi's default is "csi"
	CephFSNamespace string // cephFS.radosNamespace; ceph-csi's default is "csi"
}

// ClusterOf returns the entry for a test cluster under clusterID.
func ClusterOf(c *cephtest.Cluster, clusterID string) Cluster {
	return Cluster{ClusterID: clusterID, Monitors: []string{c.Monitors}}
}

// Options say which driver to run. Zero values take ceph-csi's defaults.
type Options struct {
	Type       string // "rbd" (default) or "cephfs"
	Clusters   []Cluster
	DriverName string // default "<type>.csi.ceph.com"
	InstanceID string // journal suffix: csi.volumes.<InstanceID>; default "default"
	Node       bool   // also serve the node service
	NodeID     string // default "cephcsi-test-node"
	Args       []string
	// SharedMounts: ceph-csi's mounts under Dir show in the caller's mount namespace.
	SharedMounts bool
}

// Driver is a running ceph-csi.
type Driver struct {
	Dir        string // shared with the driver at the same path
	Endpoint   string // unix://Dir/csi.sock
	Conn       *grpc.ClientConn
	Identity   csi.IdentityClient
	Controller csi.ControllerClient
	Node       csi.NodeClient

	work    string // private: config, unpacked binary, namespace mount point, log
	shared  bool   // Dir is a shared mount of its own in the caller's namespace
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	mountNS string // the driver's mount namespace, to find every process in it
}

// Start runs ceph-csi as o says and returns it once it answers GetPluginInfo. It fails the test
// when the binary is not provided or the driver does not start; t.Cleanup stops it.
func Start(t testing.TB, o Options) *Driver {
	t.Helper()
	bin := binaryPath(t)
	d, err := start(bin, o)
	if err != nil {
		t.Fatalf("cephcsi: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("cephcsi: the last lines of ceph-csi's log:\n%s", d.LogTail(40))
		}
		if err := d.Stop(); err != nil {
			t.Errorf("cephcsi: %v", err)
		}
	})
	return d
}

// binaryPath returns $PELAGIC_CEPHCSI_BIN, a file or a directory holding cephcsi or cephcsi.gz.
func binaryPath(t testing.TB) string {
	t.Helper()
	p := os.Getenv(EnvBinary)
	if p == "" {
		t.Fatalf("cephcsi: this test runs the reference driver ceph-csi: set %s to its binary "+
			"(cephcsi.gz as shipped, or the unpacked cephcsi, or the directory holding it); .ci/run sets it", EnvBinary)
	}
	if st, err := os.Stat(p); err == nil && st.IsDir() {
		for _, name := range []string{"cephcsi", "cephcsi.gz"} {
			if _, err := os.Stat(filepath.Join(p, name)); err == nil {
				return filepath.Join(p, name)
			}
		}
		t.Fatalf("cephcsi: %s=%s is a directory without cephcsi or cephcsi.gz", EnvBinary, p)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("cephcsi: %s: %v", EnvBinary, err)
	}
	return p
}

func (o Options) withDefaults() Options {
	if o.Type == "" {
		o.Type = "rbd"
	}
	if o.DriverName == "" {
		o.DriverName = o.Type + ".csi.ceph.com"
	}
	if o.InstanceID == "" {
		o.InstanceID = "default"
	}
	if o.NodeID == "" {
		o.NodeID = "cephcsi-test-node"
	}
	return o
}

func start(bin string, o Options) (d *Driver, err error) {
	o = o.withDefaults()
	if o.Type != "rbd" && o.Type != "cephfs" {
		return nil, fmt.Errorf("type %q: want rbd or cephfs", o.Type)
	}
	if len(o.Clusters) == 0 {
		return nil, errors.New("no clusters to configure")
	}
	// Not t.TempDir: the socket path must stay under the 108-byte limit.
	work, err := os.MkdirTemp("", "cephcsi-")
	if err != nil {
		return nil, err
	}
	if work, err = filepath.EvalSymlinks(work); err != nil {
		return nil, err
	}
	d = &Driver{work: work, Dir: filepath.Join(work, "shared"), exited: make(chan struct{})}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, d.LogTail(30))
			if serr := d.Stop(); serr != nil {
				err = errors.Join(err, serr)
			}
		}
	}()
	if err := d.prepare(bin, o.Clusters); err != nil {
		return d, err
	}
	if o.SharedMounts {
		if err := d.shareDir(); err != nil {
			return d, err
		}
	}
	d.Endpoint = "unix://" + filepath.Join(d.Dir, "csi.sock")
	if err := d.run(o); err != nil {
		return d, err
	}
	if err := d.waitReady(); err != nil {
		return d, err
	}
	return d, nil
}

// prepare writes config.json and the unpacked binary into the work directory.
func (d *Driver) prepare(bin string, clusters []Cluster) error {
	for _, dir := range []string{d.Dir, filepath.Join(d.work, "ns")} {
		if err := os.Mkdir(dir, 0o700); err != nil {
			return err
		}
	}
	cfg, err := ConfigJSON(clusters)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d.work, "config.json"), cfg, 0o600); err != nil {
		return err
	}
	return unpack(bin, filepath.Join(d.work, "cephcsi"))
}

// ConfigJSON is the config.json ceph-csi is given for clusters, which Pelagic reads too.
func ConfigJSON(clusters []Cluster) ([]byte, error) {
	type rbdConf struct {
		RadosNamespace string `json:"radosNamespace,omitempty"`
	}
	type fsConf struct {
		SubvolumeGroup string `json:"subvolumeGroup,omitempty"`
		RadosNamespace string `json:"radosNamespace,omitempty"`
	}
	type entry struct {
		ClusterID string   `json:"clusterID"`
		Monitors  []string `json:"monitors"`
		RBD       rbdConf  `json:"rbd"`
		CephFS    fsConf   `json:"cephFS"`
	}
	out := make([]entry, 0, len(clusters))
	for _, c := range clusters {
		if c.ClusterID == "" || len(c.Monitors) == 0 {
			return nil, fmt.Errorf("cluster %+v: clusterID and monitors are required", c)
		}
		out = append(out, entry{ClusterID: c.ClusterID, Monitors: c.Monitors,
			RBD:    rbdConf{RadosNamespace: c.RBDNamespace},
			CephFS: fsConf{SubvolumeGroup: c.SubvolumeGroup, RadosNamespace: c.CephFSNamespace}})
	}
	return json.Marshal(out)
}

// unpack copies the binary to dst, gunzipping it when it is gzip data.
func unpack(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	br := bufio.NewReader(in)
	var r io.Reader = br
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("%s: %w", src, err)
		}
		defer gz.Close()
		r = gz
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, r); err != nil {
		out.Close()
		return fmt.Errorf("unpacking %s: %w", src, err)
	}
	return out.Close()
}

func (d *Driver) args(o Options) []string {
	args := []string{
		"--type=" + o.Type,
		"--controllerserver=true",
		"--nodeserver=" + strconv.FormatBool(o.Node),
		"--endpoint=" + d.Endpoint,
		"--csi-addons-endpoint=unix://" + filepath.Join(d.Dir, "csi-addons.sock"),
		"--nodeid=" + o.NodeID,
		"--drivername=" + o.DriverName,
		"--instanceid=" + o.InstanceID,
		"--pluginpath=" + filepath.Join(d.Dir, "plugins"),
		"--stagingpath=" + filepath.Join(d.Dir, "staging") + "/",
		"--pidlimit=0",
		"--v=5",
	}
	return append(args, o.Args...)
}

func (d *Driver) run(o Options) error {
	logf, err := os.Create(filepath.Join(d.work, "log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	// The namespace's copies of the host's mounts are slaves: an unmount on the host reaches
	// them, so no copy keeps a host filesystem, and its device, busy after the host let it go
	// (a private copy of a test's loop-device mount did). With shared mounts, the namespace
	// keeps the caller's propagation, and the script makes every mount a slave but Dir's
	// before it mounts anything.
	propagation := "slave"
	if o.SharedMounts {
		propagation = "unchanged"
	}
	argv := append([]string{"--mount", "--propagation", propagation, "sh", "-c", nsScript, "cephcsi-ns",
		d.work, filepath.Join(d.work, "cephcsi")}, d.args(o)...)
	cmd := exec.Command("unshare", argv...)
	cmd.Env = append(os.Environ(), "CEPHCSI_SHARED="+strconv.FormatBool(o.SharedMounts))
	cmd.Stdout, cmd.Stderr = logf, logf
	// Killed with the test binary if that dies first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting ceph-csi in a mount namespace: %w", err)
	}
	d.cmd = cmd
	go func() {
		d.waitErr = cmd.Wait()
		close(d.exited)
	}()
	return nil
}

// waitReady polls until the driver answers GetPluginInfo.
func (d *Driver) waitReady() error {
	conn, err := grpc.NewClient(d.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	d.Conn = conn
	d.Identity, d.Controller, d.Node = csi.NewIdentityClient(conn), csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	deadline := time.Now().Add(StartTimeout)
	for {
		select {
		case <-d.exited:
			return fmt.Errorf("ceph-csi exited while starting: %v", d.waitErr)
		default:
		}
		if _, err := os.Stat(filepath.Join(d.Dir, "csi.sock")); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err = d.Identity.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
			cancel()
			if err == nil {
				d.mountNS = privateNamespace(d.cmd.Process.Pid)
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ceph-csi did not answer on %s within %v", d.Endpoint, StartTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop ends ceph-csi (SIGTERM, SIGKILL after StopTimeout) and every process left in its mount
// namespace, which takes the namespace's mounts with it, and removes its directory. It is idempotent.
func (d *Driver) Stop() error {
	errs := []error{d.Kill()}
	if d.shared {
		// Detaching Dir takes every mount below it along, before anything is removed: a
		// filesystem still mounted there must not be emptied.
		if err := syscall.Unmount(d.Dir, syscall.MNT_DETACH); err != nil {
			return errors.Join(append(errs, fmt.Errorf("detaching %s (left in place): %w", d.Dir, err))...)
		}
		d.shared = false
	}
	if d.work != "" {
		errs = append(errs, os.RemoveAll(d.work))
		d.work = ""
	}
	return errors.Join(errs...)
}

// PID is ceph-csi's process, in its mount namespace (0 once it was stopped).
func (d *Driver) PID() int {
	if d.cmd == nil {
		return 0
	}
	return d.cmd.Process.Pid
}

// Kill ends ceph-csi and every process of its mount namespace, and leaves Dir as it is: with
// SharedMounts, the mounts ceph-csi made there stay, as they do when its node plugin is replaced.
func (d *Driver) Kill() error {
	if d.Conn != nil {
		d.Conn.Close()
		d.Conn = nil
	}
	if d.cmd == nil {
		return nil
	}
	err := d.stopProcesses()
	d.cmd = nil
	return err
}

// shareDir makes Dir a shared mount of its own, so that what the driver mounts below it
// propagates back to this namespace.
func (d *Driver) shareDir() error {
	if err := syscall.Mount(d.Dir, d.Dir, "", syscall.MS_BIND, ""); err != nil {
		return fmt.Errorf("binding %s onto itself: %w", d.Dir, err)
	}
	d.shared = true
	if err := syscall.Mount("", d.Dir, "", syscall.MS_SHARED, ""); err != nil {
		return fmt.Errorf("making %s a shared mount: %w", d.Dir, err)
	}
	return nil
}

func (d *Driver) stopProcesses() error {
	if d.mountNS == "" {
		d.mountNS = privateNamespace(d.cmd.Process.Pid)
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(StopTimeout):
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
	// What it started (rbd, ceph-fuse) may outlive it; all of it is in its mount namespace.
	left := d.namespaceProcesses()
	for _, p := range left {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	deadline := time.Now().Add(StopTimeout)
	for len(left) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		left = d.namespaceProcesses()
	}
	if len(left) > 0 {
		return fmt.Errorf("processes %v of ceph-csi's mount namespace survived SIGKILL", left)
	}
	return nil
}

// privateNamespace returns the mount namespace of pid, or "" while it is still this process's
// own (unshare has not run yet): a namespace never to sweep.
func privateNamespace(pid int) string {
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	self, serr := os.Readlink("/proc/self/ns/mnt")
	if err != nil || serr != nil || ns == self {
		return ""
	}
	return ns
}

// namespaceProcesses lists the processes in the driver's mount namespace.
func (d *Driver) namespaceProcesses() []int {
	if d.mountNS == "" {
		return nil
	}
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ns, err := os.Readlink("/proc/" + e.Name() + "/ns/mnt"); err == nil && ns == d.mountNS {
			pids = append(pids, pid)
		}
	}
	return pids
}

// cephxKey matches a cephx secret, so that no log excerpt shows one.
var cephxKey = regexp.MustCompile(`AQ[A-Za-z0-9+/]{38}==`)

// LogTail returns the last n lines of ceph-csi's output, cephx keys redacted.
func (d *Driver) LogTail(n int) string {
	b, err := os.ReadFile(filepath.Join(d.work, "log"))
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return cephxKey.ReplaceAllString(strings.Join(lines, "\n"), "<key>")
}
