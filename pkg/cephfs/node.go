package cephfs

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/nodefs"
	"github.com/pelagic-csi/pelagic/pkg/volume"
)

// NodeOptions configure the node service.
type NodeOptions struct {
	// Options' StateDir holds, beside the index of staged volumes, the
	// mounts (mounts/) and short-lived key files (keys/).
	nodefs.Options
	// Connector asks the mgr for a subvolume's path when the volume
	// context does not name it.
	Connector Connector
	Config    *ceph.Config
	// Mounters are the ways this node mounts, by name (fuse, kernel).
	Mounters map[string]Mounter
}

// Node implements csi.NodeServer for CephFS. NodeStage mounts a volume
// once per node, in a directory of the node's own, and binds it at the
// staging path; NodePublish binds the staging path at each target.
type Node struct {
	csi.UnimplementedNodeServer
	opts NodeOptions
	vols *nodefs.Volumes
}

// NewNode returns the node service.
func NewNode(opts NodeOptions) *Node {
	return &Node{opts: opts, vols: nodefs.NewVolumes(opts.Options)}
}

// maxSocketPath is the longest path a unix socket (ceph-fuse's admin
// socket, beside each mount) can bind to.
const maxSocketPath = 107

// NodeStageVolume mounts the volume (once per node) and binds it at the
// staging path, read-only in a read-only access mode. A volume staged
// before whose mount died is mounted again, with its targets.
func (n *Node) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	unlock, err := n.vols.Begin(req.GetVolumeId(), "staging target path", req.GetStagingTargetPath())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := checkCapability(req.GetVolumeCapability()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	vctx := req.GetVolumeContext()
	if vctx[ParamClusterID] == "" || vctx[ParamFSName] == "" || (vctx[CtxSubvolumeName] == "" && vctx[CtxSubvolumePath] == "") {
		return nil, status.Errorf(codes.InvalidArgument, "volume context needs %s, %s and %s", ParamClusterID, ParamFSName, CtxSubvolumeName)
	}
	n.vols.Secrets.Remember(req.GetVolumeId(), req.GetSecrets())
	rec, err := readStageRecord(req.GetStagingTargetPath())
	switch {
	case errors.Is(err, os.ErrNotExist):
		_, err = n.stage(ctx, req, nil)
		return &csi.NodeStageVolumeResponse{}, err
	case err != nil:
		return nil, status.Error(codes.Internal, err.Error())
	case rec.VolumeID != req.GetVolumeId():
		return nil, status.Errorf(codes.FailedPrecondition, "staging path %s already holds volume %s", req.GetStagingTargetPath(), rec.VolumeID)
	case rec.Mode != "" && readOnlyMode(rec.capability()) != readOnlyMode(req.GetVolumeCapability()):
		return nil, status.Errorf(codes.AlreadyExists, "volume %s is already staged at %s with access mode %s, asked for %s",
			req.GetVolumeId(), req.GetStagingTargetPath(), rec.Mode, req.GetVolumeCapability().GetAccessMode().GetMode())
	}
	if dead := n.mountDead(ctx, rec); dead != nil {
		_, err = n.remount(ctx, req, rec, dead)
		return &csi.NodeStageVolumeResponse{}, err
	}
	return &csi.NodeStageVolumeResponse{}, n.bindStaging(ctx, rec, req.GetStagingTargetPath())
}

// stage mounts the volume of a stage request in a new directory, binds it
// at the staging path and records both; targets (of a mount being
// replaced) are bound again. Whatever it mounted is undone on failure.
func (n *Node) stage(ctx context.Context, req *csi.NodeStageVolumeRequest, targets []nodefs.Publication) (*stageRecord, error) {
	vctx := req.GetVolumeContext()
	cc, creds, err := volume.StageCluster(n.opts.Config, vctx[ParamClusterID], req.GetSecrets(), vctx)
	if err != nil {
		return nil, err
	}
	m, err := n.mounter(ctx, vctx[ParamMounter])
	if err != nil {
		return nil, err
	}
	root, err := n.rootOf(ctx, cc, creds, vctx)
	if err != nil {
		return nil, err
	}
	n.clearLeftovers(ctx, req.GetVolumeId())
	dir, err := n.newMountDir(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	// ceph-fuse cannot mount a path inside .snap: mount the directory
	// above it, and bind the snapshot.
	top, sub, _ := strings.Cut(root, "/.snap/")
	if sub != "" {
		sub = "/.snap/" + sub
	}
	mnt, err := m.Mount(ctx, MountRequest{Monitors: cc.Monitors, FS: vctx[ParamFSName], Root: top, Creds: creds,
		Dir: dir, Options: n.mountOptions(m.Name(), cc, vctx, req.GetVolumeCapability())})
	if err != nil {
		n.removeMountDir(ctx, dir)
		return nil, mountStatus(err, "mounting volume "+req.GetVolumeId())
	}
	rec := &stageRecord{VolumeID: req.GetVolumeId(), ClusterID: cc.ClusterID, Mount: mnt, SubPath: sub,
		Mode: req.GetVolumeCapability().GetAccessMode().GetMode().String(), MountFlags: req.GetVolumeCapability().GetMount().GetMountFlags(),
		Staged: time.Now().UTC(), Targets: targets, VolumeContext: vctx}
	if err := n.record(ctx, req.GetStagingTargetPath(), rec); err != nil {
		n.unmount(context.WithoutCancel(ctx), mnt, true)
		return nil, err
	}
	return rec, nil
}

// record binds the staging path and the targets, then writes the stage
// record (the staged index first: a record must never be missing from it).
func (n *Node) record(ctx context.Context, staging string, rec *stageRecord) error {
	if err := n.bindStaging(ctx, rec, staging); err != nil {
		return err
	}
	for _, p := range rec.Targets {
		if err := nodefs.Bind(ctx, n.opts.Mounter, staging, false, p); err != nil {
			return err
		}
	}
	err := n.vols.Staged.Put(rec.VolumeID, staging)
	if err == nil {
		err = nodefs.WriteRecord(staging, rec)
	}
	if err != nil {
		return status.Errorf(codes.Internal, "recording the mount of volume %s: %v", rec.VolumeID, err)
	}
	return nil
}

// bindStaging binds the mount (or the snapshot below it) at the staging
// path, unless it is there already.
func (n *Node) bindStaging(ctx context.Context, rec *stageRecord, staging string) error {
	if mounted, err := n.opts.Mounter.IsMountPoint(ctx, staging); err != nil && !errors.Is(err, os.ErrNotExist) {
		return status.Error(codes.Internal, err.Error())
	} else if mounted {
		return nil
	}
	pub := nodefs.Publication{Path: staging, ReadOnly: readOnlyMode(rec.capability())}
	return nodefs.Bind(ctx, n.opts.Mounter, rec.Mount.Dir+rec.SubPath, false, pub)
}

// mounter returns the mounter a volume asks for; with none, the kernel
// client where the kernel has it, else ceph-fuse (as ceph-csi chooses).
func (n *Node) mounter(ctx context.Context, name string) (Mounter, error) {
	if name == "" {
		if k, ok := n.opts.Mounters[MounterKernel]; ok && k.Check(ctx) == nil {
			return k, nil
		}
		name = MounterFuse
	}
	m, ok := n.opts.Mounters[name]
	if !ok {
		return nil, status.Errorf(codes.InvalidArgument, "mounter %q: this node mounts with %s or %s", name, MounterKernel, MounterFuse)
	}
	if err := m.Check(ctx); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "node %s cannot mount volumes: %v", n.opts.NodeID, err)
	}
	return m, nil
}

// rootOf is the path to mount: the volume context's, or the subvolume's
// as the mgr tells it.
func (n *Node) rootOf(ctx context.Context, cc *ceph.ClusterConfig, creds ceph.Credentials, vctx map[string]string) (string, error) {
	if p := vctx[CtxSubvolumePath]; p != "" {
		return p, nil
	}
	cl, err := n.opts.Connector.Connect(ctx, cc.ClusterID, creds)
	if err != nil {
		return "", volume.Status(err)
	}
	sv := Subvolume{FS: vctx[ParamFSName], Group: cmpOr(vctx[ParamSubvolumeGroup], cc.SubvolumeGroup()), Name: vctx[CtxSubvolumeName]}
	p, err := cl.Volumes().SubvolumePath(ctx, sv)
	if errors.Is(err, ErrNotFound) {
		return "", status.Errorf(codes.NotFound, "subvolume %s does not exist: %v", sv, err)
	}
	return p, toStatus(err)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// mountOptions are the volume's (else the cluster config's) options of
// the mounter, and the capability's mount flags.
func (n *Node) mountOptions(mounter string, cc *ceph.ClusterConfig, vctx map[string]string, c *csi.VolumeCapability) []string {
	opts := cmpOr(vctx[ParamFuseMountOptions], cc.CephFS.FuseMountOptions)
	if mounter == MounterKernel {
		opts = cmpOr(vctx[ParamKernelMountOptions], cc.CephFS.KernelMountOptions)
	}
	var out []string
	if opts != "" {
		out = strings.Split(opts, ",")
	}
	return append(out, c.GetMount().GetMountFlags()...)
}

// mountsDir holds one directory per mount: mnt/, and ceph-fuse's socket
// and log beside it.
func (n *Node) mountsDir() string { return filepath.Join(n.opts.StateDir, "mounts") }

// mountDirPrefix begins the names of a volume's mount directories.
func (n *Node) mountDirPrefix(volumeID string) string {
	sum := sha256.Sum256([]byte(volumeID))
	return filepath.Join(n.mountsDir(), hex.EncodeToString(sum[:8])+"-")
}

// newMountDir makes a fresh directory for a mount of the volume: fresh,
// so that a client still exiting from an earlier mount never meets it.
func (n *Node) newMountDir(volumeID string) (string, error) {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	dir := n.mountDirPrefix(volumeID) + hex.EncodeToString(b)
	if sock := filepath.Join(dir, "client.asok"); len(sock) > maxSocketPath {
		return "", status.Errorf(codes.FailedPrecondition, "state directory %s is too long for admin sockets (%s is over %d bytes)",
			n.opts.StateDir, sock, maxSocketPath)
	}
	if err := os.MkdirAll(filepath.Join(dir, "mnt"), 0o700); err != nil {
		return "", status.Error(codes.Internal, err.Error())
	}
	return filepath.Join(dir, "mnt"), nil
}

// clearLeftovers unmounts and removes the mount directories of a volume
// that no stage record names: what a crash between mounting and recording
// left.
func (n *Node) clearLeftovers(ctx context.Context, volumeID string) {
	dirs, _ := filepath.Glob(n.mountDirPrefix(volumeID) + "*")
	for _, d := range dirs {
		mnt := filepath.Join(d, "mnt")
		klog.FromContext(ctx).Info("removing a mount no stage record names", "volume", volumeID, "dir", mnt)
		name := MounterFuse
		if _, ok := n.opts.Mounters[name]; !ok {
			name = MounterKernel
		}
		// Unmounted cleanly, the client closes its MDS session and gives
		// its caps back; stopped by force, it keeps them until the MDS
		// times the session out (a minute), and the volume's next mount
		// waits on them. Forced only when the clean unmount fails (a dead
		// client, a busy mount): either mounter detaches it then, and
		// ceph-fuse's is stopped.
		m := Mount{Mounter: name, Dir: mnt}
		if err := n.unmountMount(ctx, m, false); err != nil {
			n.unmount(ctx, m, true)
		}
	}
}

// unmount unmounts a mount and removes its directory; it logs what fails.
func (n *Node) unmount(ctx context.Context, m Mount, force bool) {
	if err := n.unmountMount(ctx, m, force); err != nil {
		klog.FromContext(ctx).Error(err, "unmounting", "dir", m.Dir)
	}
}

func (n *Node) unmountMount(ctx context.Context, m Mount, force bool) error {
	mounter, ok := n.opts.Mounters[m.Mounter]
	if !ok {
		return fmt.Errorf("unknown mounter %q", m.Mounter)
	}
	if err := mounter.Unmount(ctx, m, force); err != nil {
		return err
	}
	n.removeMountDir(ctx, m.Dir)
	return nil
}

// removeMountDir removes a mount's directory once nothing is mounted in
// it. It never recurses: were mnt still mounted, that would delete data.
func (n *Node) removeMountDir(ctx context.Context, mnt string) {
	if mounted, err := n.opts.Mounter.IsMountPoint(ctx, mnt); err != nil || mounted {
		return
	}
	dir := filepath.Dir(mnt)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if !e.IsDir() {
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	_ = os.Remove(mnt)
	_ = os.Remove(dir)
}

// mountStatus turns a mounter's error into a status.
func mountStatus(err error, what string) error {
	switch {
	case errors.Is(err, ErrUnavailable):
		return status.Errorf(codes.FailedPrecondition, "%s: %v", what, err)
	case errors.Is(err, context.DeadlineExceeded):
		return status.Errorf(codes.DeadlineExceeded, "%s: %v", what, err)
	}
	return status.Errorf(codes.Internal, "%s: %v", what, err)
}

// NodeUnstageVolume unbinds the staging path and unmounts the volume. It
// succeeds when nothing is staged.
func (n *Node) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	return n.vols.UnstageVolume(ctx, req, n.unstage)
}

// unstage unbinds the staging path, unmounts the volume's mount (or what
// a crash left of one) and removes the stage record.
func (n *Node) unstage(ctx context.Context, volumeID, staging string) error {
	rec, err := readStageRecord(staging)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return status.Error(codes.Internal, err.Error())
	}
	if rec != nil && rec.VolumeID != volumeID {
		return status.Errorf(codes.FailedPrecondition, "staging path %s holds volume %s, not %s", staging, rec.VolumeID, volumeID)
	}
	if err := n.opts.Mounter.Unmount(ctx, staging); err != nil {
		return status.Errorf(codes.Internal, "unmounting %s: %v", staging, err)
	}
	if rec == nil {
		n.clearLeftovers(ctx, volumeID)
	} else if err := n.unmountMount(ctx, rec.Mount, false); err != nil {
		code := codes.Internal
		if strings.Contains(err.Error(), "busy") {
			code = codes.FailedPrecondition
		}
		return status.Errorf(code, "unmounting volume %s at %s: %v", rec.VolumeID, rec.Mount.Dir, err)
	}
	if err := nodefs.RemoveRecord(staging); err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	return n.vols.Unstaged(volumeID)
}

// NodePublishVolume binds the staging path at the target, read-only when
// asked. A staged volume whose mount died is mounted again first, with
// the secrets of its NodeStage.
func (n *Node) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	return n.vols.PublishVolume(ctx, req, checkCapability, n.stagedRecord)
}

// stagedRecord reads the stage record a publish names, mounting the
// volume again when its mount died.
func (n *Node) stagedRecord(ctx context.Context, req *csi.NodePublishVolumeRequest) (nodefs.Staged, error) {
	rec, err := readStageRecord(req.GetStagingTargetPath())
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not staged at %s", req.GetVolumeId(), req.GetStagingTargetPath())
	}
	if rec.VolumeID != req.GetVolumeId() {
		return nil, status.Errorf(codes.FailedPrecondition, "staging path %s holds volume %s, not %s",
			req.GetStagingTargetPath(), rec.VolumeID, req.GetVolumeId())
	}
	dead := n.mountDead(ctx, rec)
	if dead == nil {
		return rec, nil
	}
	secrets := req.GetSecrets()
	if len(secrets) == 0 {
		secrets = n.vols.Secrets.Get(req.GetVolumeId())
	}
	if len(secrets) == 0 {
		return nil, status.Errorf(codes.FailedPrecondition,
			"volume %s: %v; mounting it again needs the credentials of its NodeStage, which this plugin has not seen since it started: the next NodeStage mounts it again",
			req.GetVolumeId(), dead)
	}
	stage := &csi.NodeStageVolumeRequest{VolumeId: rec.VolumeID, StagingTargetPath: req.GetStagingTargetPath(),
		VolumeCapability: rec.capability(), Secrets: secrets, VolumeContext: rec.VolumeContext}
	return n.remount(ctx, stage, rec, dead)
}

// mountDead returns why the volume's mount no longer serves, or nil while
// it does or when that cannot be told: nothing is remounted on a guess.
func (n *Node) mountDead(ctx context.Context, rec *stageRecord) error {
	m, ok := n.opts.Mounters[rec.Mount.Mounter]
	if !ok {
		return nil
	}
	if err := m.Alive(ctx, rec.Mount); errors.Is(err, ErrMountDead) {
		return err
	}
	return nil
}

// remount mounts a staged volume again whose mount died, and binds the
// staging path and every target anew. The dead mounts go first, lazily
// (a pod may hold files there, which fail as they already did). Until it
// succeeds the stage record names the old mount, so a retry starts over.
func (n *Node) remount(ctx context.Context, req *csi.NodeStageVolumeRequest, rec *stageRecord, why error) (*stageRecord, error) {
	klog.FromContext(ctx).Info("mounting a volume again", "volume", rec.VolumeID, "dir", rec.Mount.Dir, "reason", why.Error())
	for _, p := range append(slices.Clone(rec.Targets), nodefs.Publication{Path: req.GetStagingTargetPath()}) {
		if err := n.opts.Mounter.Detach(ctx, p.Path); err != nil {
			return nil, status.Errorf(codes.Internal, "volume %s (%v): detaching %s: %v", rec.VolumeID, why, p.Path, err)
		}
	}
	if err := n.unmountMount(ctx, rec.Mount, true); err != nil {
		return nil, status.Errorf(codes.Internal, "volume %s (%v): %v", rec.VolumeID, why, err)
	}
	return n.stage(ctx, req, rec.Targets)
}

// NodeUnpublishVolume unmounts the target and removes it.
func (n *Node) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	return n.vols.UnpublishVolume(ctx, req)
}

// NodeGetVolumeStats reports bytes (the quota is the size) and inodes.
func (n *Node) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	return nodefs.VolumeStats(ctx, n.opts.Mounter, req)
}

// NodeGetVolumeHealth reports a staged volume whose mount died, or whose
// staging or publish path lost its bind, as inaccessible; no entries means
// healthy. A volume not staged on this node is NotFound.
func (n *Node) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	rec := &stageRecord{}
	return n.vols.VolumeHealth(ctx, req, rec, func() string { return rec.VolumeID }, func(health nodefs.Health, staging string) error {
		if dead := n.mountDead(ctx, rec); dead != nil {
			health.Inaccessible("MountDead", "%v; the next NodeStage or NodePublish mounts the volume again", dead)
		}
		health.CheckMounted(ctx, n.opts.Mounter, "NotStaged", staging)
		return nil
	})
}

// NodeGetCapabilities advertises what the node service implements: no
// expansion, since a quota needs nothing on the node.
func (n *Node) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return volume.NodeCapabilities(), nil
}

// NodeGetInfo names the node, its volume limit and, when the plugin
// advertises VOLUME_ACCESSIBILITY_CONSTRAINTS, its topology.
func (n *Node) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return n.opts.NodeInfo(), nil
}
