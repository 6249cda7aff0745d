package cephfs

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/mount"
	"github.com/pelagic-csi/pelagic/pkg/nodefs"
)

// nodeEnv is a node service over fake mounters, with a volume made by a
// controller over FakeVolumes.
type nodeEnv struct {
	*ctrlEnv
	node   *Node
	fuse   *FakeMounter
	kernel *FakeMounter
	binds  *mount.FakeMounter
	state  string
	vol    *csi.Volume
}

func newNodeEnv(t *testing.T) *nodeEnv {
	t.Helper()
	e := &nodeEnv{ctrlEnv: newCtrlEnv(t), fuse: NewFakeMounter(MounterFuse), kernel: NewFakeMounter(MounterKernel),
		binds: mount.NewFakeMounter(), state: t.TempDir()}
	e.node = NewNode(NodeOptions{Connector: FakeConnector{"c1": e.cluster}, Config: e.ctrl.opts.Config,
		Mounters: map[string]Mounter{MounterFuse: e.fuse, MounterKernel: e.kernel},
		Options:  nodefs.Options{NodeID: "node-a", Mounter: e.binds, StateDir: e.state}})
	e.vol = e.create(t, e.req("pvc-1", 10<<20, nil, ParamFuseMountOptions, "debug", ParamMounter, MounterFuse))
	return e
}

func (e *nodeEnv) stage(staging string, c *csi.VolumeCapability, vctx map[string]string) error {
	_, err := e.node.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: e.vol.GetVolumeId(),
		StagingTargetPath: staging, VolumeCapability: c, VolumeContext: vctx, Secrets: e.secrets})
	return err
}

func (e *nodeEnv) publish(staging, target string, c *csi.VolumeCapability, readOnly bool) error {
	_, err := e.node.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{VolumeId: e.vol.GetVolumeId(),
		StagingTargetPath: staging, TargetPath: target, VolumeCapability: c, Readonly: readOnly, VolumeContext: e.vol.GetVolumeContext()})
	return err
}

func (e *nodeEnv) health(staging string) []string {
	resp, err := e.node.NodeGetVolumeHealth(context.Background(), &csi.NodeGetVolumeHealthRequest{VolumeId: e.vol.GetVolumeId(),
		StagingTargetPath: staging})
	if err != nil {
		return []string{err.Error()}
	}
	var reasons []string
	for _, h := range resp.GetVolumeHealth().GetHealthStatuses() {
		reasons = append(reasons, h.GetReason())
	}
	return reasons
}

func TestNodeLifecycle(t *testing.T) {
	e := newNodeEnv(t)
	dir := t.TempDir()
	staging, t1, t2 := filepath.Join(dir, "staging"), filepath.Join(dir, "t1"), filepath.Join(dir, "t2")
	for range 2 { // a retry changes nothing
		if err := e.stage(staging, testRWX, e.vol.GetVolumeContext()); err != nil {
			t.Fatal(err)
		}
	}
	mounts := e.fuse.Mounted()
	if len(mounts) != 1 {
		t.Fatalf("mounts after staging twice: %v", mounts)
	}
	for dir, req := range mounts {
		sv, info := e.subvolume(t, e.vol)
		if req.Root != info.Path || req.FS != sv.FS || req.Creds.ID != "csi" || !slices.Equal(req.Options, []string{"debug"}) ||
			!strings.HasPrefix(dir, filepath.Join(e.state, "mounts")+"/") || e.binds.Mounts[staging].BindOf != dir {
			t.Errorf("mounted %+v at %s; staging %+v", req, dir, e.binds.Mounts[staging])
		}
	}
	if err := e.publish(staging, t1, testRWX, false); err != nil {
		t.Fatal(err)
	}
	if err := e.publish(staging, t2, testRWX, true); err != nil {
		t.Fatal(err)
	}
	if err := e.publish(staging, t2, testRWX, false); status.Code(err) != codes.AlreadyExists {
		t.Errorf("publishing t2 again writable: %v, want AlreadyExists", err)
	}
	if !e.binds.Mounts[t2].ReadOnly || e.binds.Mounts[t1].ReadOnly || e.binds.Mounts[t1].BindOf != staging {
		t.Errorf("targets: %+v, %+v", e.binds.Mounts[t1], e.binds.Mounts[t2])
	}
	if h := e.health(""); len(h) != 0 {
		t.Errorf("health of a staged volume: %v", h)
	}
	for _, target := range []string{t1, t2} {
		if _, err := e.node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: e.vol.GetVolumeId(), TargetPath: target}); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if _, err := e.node.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: e.vol.GetVolumeId(),
			StagingTargetPath: staging}); err != nil {
			t.Fatal(err)
		}
	}
	if len(e.fuse.Mounted()) != 0 || len(e.binds.Mounts) != 0 {
		t.Errorf("left mounted: %v, %v", e.fuse.Dirs(), e.binds.Mounts)
	}
	if h := e.health(staging); len(h) != 1 || !strings.Contains(h[0], "NotFound") {
		t.Errorf("health once unstaged: %v", h)
	}
}

// A mount whose ceph-fuse died is reported, and mounted again, staging
// path and targets, at the next stage or publish (with the secrets of the
// stage, which a publish does not carry).
func TestNodeRemountsADeadMount(t *testing.T) {
	e := newNodeEnv(t)
	dir := t.TempDir()
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "target")
	if err := e.stage(staging, testRWX, e.vol.GetVolumeContext()); err != nil {
		t.Fatal(err)
	}
	if err := e.publish(staging, target, testRWX, false); err != nil {
		t.Fatal(err)
	}
	for _, via := range []string{"stage", "publish"} {
		dead := e.fuse.Dirs()[0]
		e.fuse.Kill(dead)
		if h := e.health(""); !slices.Equal(h, []string{"MountDead"}) {
			t.Errorf("health with ceph-fuse dead: %v", h)
		}
		var err error
		if via == "stage" {
			err = e.stage(staging, testRWX, e.vol.GetVolumeContext())
		} else {
			err = e.publish(staging, target, testRWX, false)
		}
		if err != nil {
			t.Fatalf("%s after the death: %v", via, err)
		}
		dirs := e.fuse.Dirs()
		if len(dirs) != 1 || dirs[0] == dead || e.binds.Mounts[staging].BindOf != dirs[0] || e.binds.Mounts[target].BindOf != staging {
			t.Errorf("%s: mounts %v (dead %s), staging %+v, target %+v", via, dirs, dead, e.binds.Mounts[staging], e.binds.Mounts[target])
		}
		if h := e.health(""); len(h) != 0 {
			t.Errorf("health after the %s: %v", via, h)
		}
	}
}

func TestNodeRefusals(t *testing.T) {
	e := newNodeEnv(t)
	dir := t.TempDir()
	staging := filepath.Join(dir, "staging")
	e.kernel.Unavailable = errors.New("kernel: no ceph filesystem")
	kernel := map[string]string{}
	for k, v := range e.vol.GetVolumeContext() {
		kernel[k] = v
	}
	kernel[ParamMounter] = MounterKernel
	block := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}}
	tests := []struct {
		name    string
		staging string
		c       *csi.VolumeCapability
		vctx    map[string]string
		want    codes.Code
	}{
		{"kernel client missing", staging, testRWX, kernel, codes.FailedPrecondition},
		{"block", staging, block, e.vol.GetVolumeContext(), codes.InvalidArgument},
		{"relative staging path", "staging", testRWX, e.vol.GetVolumeContext(), codes.InvalidArgument},
		{"no context", staging, testRWX, nil, codes.InvalidArgument},
		{"no subvolume", staging, testRWX, map[string]string{ParamClusterID: "c1", ParamFSName: "cephfs", CtxSubvolumeName: "csi-vol-x"}, codes.NotFound},
	}
	for _, tc := range tests {
		if err := e.stage(tc.staging, tc.c, tc.vctx); status.Code(err) != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if len(e.fuse.Mounted())+len(e.kernel.Mounted()) != 0 {
		t.Errorf("refused stages mounted something")
	}
	// Without a mounter named, the kernel client where the kernel has it.
	e.kernel.Unavailable = nil
	if err := e.stage(staging, testRWX, map[string]string{ParamClusterID: "c1", ParamFSName: "cephfs",
		CtxSubvolumeName: e.vol.GetVolumeContext()[CtxSubvolumeName]}); err != nil || len(e.kernel.Mounted()) != 1 {
		t.Errorf("staging with no mounter named: %v, kernel mounts %v", err, e.kernel.Dirs())
	}
	rwop := capOf(csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER)
	if err := e.publish(staging, filepath.Join(dir, "t1"), rwop, false); err != nil {
		t.Fatal(err)
	}
	if err := e.publish(staging, filepath.Join(dir, "t2"), rwop, false); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("a single-writer volume at a second target: %v", err)
	}
	if err := e.stage(staging, testROX, e.vol.GetVolumeContext()); status.Code(err) != codes.AlreadyExists {
		t.Errorf("staged writable, staged again read-only: %v", err)
	}
}

// A view of a snapshot mounts the subvolume's directory (ceph-fuse cannot
// mount inside .snap) and binds the snapshot read-only.
func TestNodeMountsAView(t *testing.T) {
	e := newNodeEnv(t)
	snap := e.snapshot(t, "snap-1", e.vol)
	e.vol = e.create(t, e.req("pvc-view", 10<<20, fromSnapshot(snap), ParamBackingSnapshot, "true"))
	staging := filepath.Join(t.TempDir(), "staging")
	if err := e.stage(staging, testROX, e.vol.GetVolumeContext()); err != nil {
		t.Fatal(err)
	}
	path := e.vol.GetVolumeContext()[CtxSubvolumePath]
	top, sub, _ := strings.Cut(path, "/.snap/")
	for dir, req := range e.fuse.Mounted() {
		if req.Root != top || e.binds.Mounts[staging].BindOf != dir+"/.snap/"+sub || !e.binds.Mounts[staging].ReadOnly {
			t.Errorf("view %s: mounted %s at %s, staging %+v", path, req.Root, dir, e.binds.Mounts[staging])
		}
	}
}

// The kernel client reaches monitors at their v1 addresses.
func TestKernelMonAddr(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.1:6789":                             "10.0.0.1:6789",
		"v1:127.0.0.1:23839":                        "127.0.0.1:23839",
		"[v2:10.0.0.1:3300/0,v1:10.0.0.1:6789/0]":   "10.0.0.1:6789",
		"mon.example":                               "mon.example",
		"[v2:[fd00::1]:3300/0,v1:[fd00::1]:6789/0]": "[fd00::1]:6789",
	} {
		if got := kernelMonAddr(in); got != want {
			t.Errorf("kernelMonAddr(%q) = %q, want %q", in, got, want)
		}
	}
}

// The kernel mounter hands the key over in a file, never in options.
func TestKernelMount(t *testing.T) {
	binds := mount.NewFakeMounter()
	k := &KernelMounter{Mounts: binds, Runner: failingRunner{}, KeyDir: t.TempDir(), ProcRoot: t.TempDir()}
	m, err := k.Mount(context.Background(), MountRequest{Monitors: []string{"v1:10.0.0.1:6789", "10.0.0.2:6789"}, FS: "cephfs",
		Root: "/volumes/csi/v/uuid", Creds: ceph.Credentials{ID: "csi", Key: "QUJDRA=="}, Dir: "/state/mnt", Options: []string{"noatime"}})
	if err != nil {
		t.Fatal(err)
	}
	got := binds.Mounts["/state/mnt"]
	opts := strings.Join(got.Options, ",")
	if m.Mounter != MounterKernel || got.Device != "10.0.0.1:6789,10.0.0.2:6789:/volumes/csi/v/uuid" || got.FSType != "ceph" ||
		!strings.Contains(opts, "name=csi,secretfile=") || !strings.HasSuffix(opts, "mds_namespace=cephfs,noatime") || strings.Contains(opts, "QUJDRA") {
		t.Errorf("kernel mount %+v", got)
	}
	if err := k.Check(context.Background()); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Check without ceph in /proc/filesystems: %v", err)
	}
}

// failingRunner runs nothing: every command fails as a missing tool would.
type failingRunner struct{}

func (failingRunner) Run(_ context.Context, name string, _ ...string) ([]byte, error) {
	return nil, errors.New(name + ": not found")
}
