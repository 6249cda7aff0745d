package rbd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/daemonhost"
	"github.com/pelagic-csi/pelagic/pkg/mapper"
	"github.com/pelagic-csi/pelagic/pkg/mount"
	"github.com/pelagic-csi/pelagic/pkg/nodefs"
	"github.com/pelagic-csi/pelagic/pkg/volume"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

// Mappers hands out the mapper a volume asks for ("" means the node default).
type Mappers interface {
	Get(name string) (mapper.Mapper, error)
}

// NodeOptions configure the node service.
type NodeOptions struct {
	// Options' StateDir holds, beside the index of staged volumes, the
	// mapping records whose removal waits for a connection to the cluster.
	nodefs.Options
	Connector Connector // reads and writes image metadata and watchers
	Config    *ceph.Config
	Mappers   Mappers
	// Holders, when set, is told of the stages refused for holders elsewhere.
	Holders HolderObserver
}

// Node implements csi.NodeServer for RBD.
type Node struct {
	csi.UnimplementedNodeServer
	opts    NodeOptions
	vols    *nodefs.Volumes
	known   volume.Known[Cluster] // clusters opened by NodeStage, for unstage
	forgets *forgetQueue
	checked sync.Map // mapper name -> true once its Check succeeded
	ended   endedClients
}

// NewNode returns the node service.
func NewNode(opts NodeOptions) *Node {
	n := &Node{opts: opts, vols: nodefs.NewVolumes(opts.Options)}
	n.forgets = &forgetQueue{dir: opts.StateDir, remove: n.removeMappingRecord}
	return n
}

func (n *Node) checkPath(what, path string) error {
	return nodefs.CheckPath(what, path, n.opts.KubeletDir)
}

func readOnlyMode(c *csi.VolumeCapability) bool {
	switch c.GetAccessMode().GetMode() {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:
		return true
	}
	return false
}

// NodeStageVolume maps the image and, for a filesystem volume, formats it
// if (and only if) it holds no filesystem, then mounts it at the staging
// path. A volume staged before whose mapping can no longer carry I/O (its
// daemon died, or its client was fenced) is mapped again, and its staging
// and target mounts are made anew.
func (n *Node) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	if err := validateCapability(req.GetVolumeCapability()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	vctx := req.GetVolumeContext()
	if vctx[ParamPool] == "" || vctx[CtxImageName] == "" || vctx[ParamClusterID] == "" {
		return nil, status.Errorf(codes.InvalidArgument, "volume context needs %s, %s and %s", ParamClusterID, ParamPool, CtxImageName)
	}
	unlock, err := n.vols.Begin(req.GetVolumeId(), "staging target path", req.GetStagingTargetPath())
	if err != nil {
		return nil, err
	}
	defer unlock()
	n.vols.Secrets.Remember(req.GetVolumeId(), req.GetSecrets())

	staging := req.GetStagingTargetPath()
	rec, err := readStageRecord(staging)
	switch {
	case err == nil && rec.VolumeID != req.GetVolumeId():
		return nil, status.Errorf(codes.FailedPrecondition, "staging path %s already holds volume %s (device %s)",
			staging, rec.VolumeID, rec.Mapping.Device)
	case err == nil:
		if why := stageConflict(rec, req.GetVolumeCapability()); why != "" {
			return nil, status.Errorf(codes.AlreadyExists, "volume %s is already staged at %s incompatibly: %s",
				req.GetVolumeId(), staging, why)
		}
		// Staged before, perhaps half way: finish whatever is missing,
		// on a mapping that can still write.
		if rec, err = n.keepMappingUsable(ctx, req, rec); err != nil {
			return nil, err
		}
		if rec.CephCSIStash && rec.MountPath != "" {
			if err := n.recordAdopted(ctx, req, rec); err != nil {
				return nil, err
			}
		}
	case errors.Is(err, os.ErrNotExist):
		if rec, err = n.adoptCephCSIStage(ctx, req); err != nil {
			return nil, err
		}
		if rec == nil {
			if rec, err = n.mapImage(ctx, req, nil); err != nil {
				return nil, err
			}
		}
	default:
		return nil, status.Error(codes.Internal, err.Error())
	}
	if rec.Block {
		return &csi.NodeStageVolumeResponse{}, nil
	}
	if err := n.mountFilesystem(ctx, req, rec); err != nil {
		return nil, err
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

// mapImage maps the image of a stage request and records the mapping: in
// the image's metadata, then in the stage record. prev is the stage record
// of a mapping being replaced (its Unmap done), nil for a first mapping.
func (n *Node) mapImage(ctx context.Context, req *csi.NodeStageVolumeRequest, prev *stageRecord) (*stageRecord, error) {
	t, err := n.stageTargetOf(ctx, req)
	if err != nil {
		return nil, err
	}
	image := req.GetVolumeContext()[CtxImageName]
	if prev != nil {
		if err := waitForWatchGone(ctx, t.pool, image, prev.Mapping.ClientAddr); err != nil {
			return nil, err
		}
	}
	mapping, blank, err := n.mapAndRecord(ctx, req, t)
	if err != nil {
		return nil, err
	}
	rec := newStageRecord(req, t, mapping, prev)
	rec.blank = blank
	// The stage record only after the image's mapping record: it makes a
	// retry skip mapping, so it must only exist once the controller can
	// see this node's client.
	// The index first: an entry whose stage record is missing is dropped
	// when found, and a stage record must never be missing from it.
	err = n.vols.Staged.Put(req.GetVolumeId(), req.GetStagingTargetPath())
	if err == nil {
		err = nodefs.WriteRecord(req.GetStagingTargetPath(), rec)
	}
	if err != nil {
		_ = t.mapper.Unmap(context.WithoutCancel(ctx), mapping, mapper.UnmapOptions{})
		return nil, status.Errorf(codes.Internal, "recording the mapping: %v", err)
	}
	return rec, nil
}

// stageTarget is what a stage request maps with, and where.
type stageTarget struct {
	mapper             mapper.Mapper
	mapOpts, unmapOpts string
	cluster            *ceph.ClusterConfig
	creds              ceph.Credentials
	pool               Pool
}

// stageTargetOf checks a stage request's mapper and options, and opens
// the pool of its image.
func (n *Node) stageTargetOf(ctx context.Context, req *csi.NodeStageVolumeRequest) (*stageTarget, error) {
	vctx := req.GetVolumeContext()
	cc, creds, err := volume.StageCluster(n.opts.Config, vctx[ParamClusterID], req.GetSecrets(), vctx)
	if err != nil {
		return nil, err
	}
	m, err := n.opts.Mappers.Get(vctx[ParamMounter])
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	mapOpts, unmapOpts, err := mapperOptions(vctx, m.Name())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := n.checkMapper(ctx, m); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "mapper %s cannot work on node %s: %v", m.Name(), n.opts.NodeID, err)
	}
	cl, err := n.opts.Connector.Connect(ctx, cc.ClusterID, creds)
	if err != nil {
		return nil, volume.Status(err)
	}
	pool, err := cl.Pool(ctx, imagePool(ctx, cl, req.GetVolumeId(), vctx), cc.RBD.RadosNamespace)
	if err != nil {
		return nil, nodeStatus(err, req.GetVolumeId())
	}
	n.known.Remember(cl, pool.Name(), cc.RBD.RadosNamespace)
	n.forgets.drain(ctx, cl)
	return &stageTarget{mapper: m, mapOpts: mapOpts, unmapOpts: unmapOpts, cluster: cc, creds: creds, pool: pool}, nil
}

// mapAndRecord maps the image once no other node holds it, and records in
// the image which client maps it on this node. blank is the image's
// Pool.StageView before the map. The holder check runs while the mapper
// starts (rbd-fuse takes tens of milliseconds to mount and connect): the
// mapper's Admit waits for it before anything opens the image.
func (n *Node) mapAndRecord(ctx context.Context, req *csi.NodeStageVolumeRequest, t *stageTarget) (mapper.Mapping, bool, error) {
	vctx, cc, m := req.GetVolumeContext(), t.cluster, t.mapper
	image := vctx[CtxImageName]
	mode := req.GetVolumeCapability().GetAccessMode().GetMode()
	own := ownMappingClient(ctx, m, t.pool.Name(), cc.RBD.RadosNamespace, image)
	check := n.startHolderCheck(ctx, t.pool, image, req.GetVolumeId(), mode, own)
	defer check.release()
	img := mapper.Image{ClusterID: cc.ClusterID, Monitors: cc.Monitors, Pool: t.pool.Name(),
		RadosNamespace: cc.RBD.RadosNamespace, Name: image, Creds: t.creds}
	mapping, err := n.mapFresh(ctx, m, img, mapper.MapOptions{
		ReadOnly:  readOnlyMode(req.GetVolumeCapability()),
		Exclusive: m.Name() == mapper.KRBD && singleNode(mode) && strings.Contains(vctx[ParamImageFeatures], "exclusive-lock"),
		Options:   t.mapOpts,
		Admit:     check.admit,
		Watchers:  check.watchers,
	}, check.records)
	if err != nil {
		return mapper.Mapping{}, false, err
	}
	usage, blank := check.usage, check.blank
	recorded, err := n.recordMapping(ctx, t.pool, image, req.GetVolumeId(), mode, mapping, usage, check.view.Watchers)
	if err != nil {
		if m.Unmap(context.WithoutCancel(ctx), mapping, mapper.UnmapOptions{Force: true}) == nil {
			n.ended.add(mapping.ClientAddr, time.Now())
		}
		return mapper.Mapping{}, false, err
	}
	mapping.ClientAddr, mapping.ClientID = recorded.ClientAddr, recorded.ClientID
	return mapping, blank, nil
}

// holderCheck is checkHolders run while the mapper starts. Its view of
// the image stays open for the mapper to list the watchers again (the
// fuse mapper finds rbd-fuse's client among them) until release.
type holderCheck struct {
	done  chan struct{}
	usage *Usage
	blank bool
	view  ImageView
	err   error
}

func (n *Node) startHolderCheck(ctx context.Context, pool Pool, image, volumeID string,
	mode csi.VolumeCapability_AccessMode_Mode, own string) *holderCheck {
	c := &holderCheck{done: make(chan struct{})}
	go func() {
		defer close(c.done)
		c.usage, c.blank, c.view, c.err = n.checkHolders(ctx, pool, image, volumeID, mode, own)
	}()
	return c
}

// release closes the check's view once the check is over, without
// waiting for it.
func (c *holderCheck) release() {
	go func() {
		<-c.done
		if c.view != nil {
			c.view.Close()
		}
	}()
}

// watchers is the mapper's Watchers: the image's watchers, listed over
// the check's view.
func (c *holderCheck) watchers(ctx context.Context) ([]mapper.Watcher, error) {
	if err := c.admit(ctx); err != nil {
		return nil, err
	}
	ws, err := c.view.Watchers(ctx)
	return mapperWatchers(ws), err
}

// admit is the mapper's Admit: the check's refusal, once it is known.
func (c *holderCheck) admit(ctx context.Context) error {
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// records waits for the check and returns the image's records, or the
// check's refusal.
func (c *holderCheck) records() (*Records, error) {
	<-c.done
	if c.err != nil {
		return nil, c.err
	}
	return c.usage.Records, nil
}

// newStageRecord is the stage record of a mapping made for req; a
// replaced mapping's targets (bound again by the caller) carry over.
func newStageRecord(req *csi.NodeStageVolumeRequest, t *stageTarget, mapping mapper.Mapping, prev *stageRecord) *stageRecord {
	c := req.GetVolumeCapability()
	rec := &stageRecord{VolumeID: req.GetVolumeId(), ClusterID: t.cluster.ClusterID, Mapping: mapping,
		Block: c.GetBlock() != nil, Mode: c.GetAccessMode().GetMode().String(), Staged: time.Now().UTC(),
		UnmapOptions: t.unmapOpts, VolumeContext: req.GetVolumeContext(), MountFlags: c.GetMount().GetMountFlags()}
	if !rec.Block {
		rec.FSType = fsTypeOf(c)
	}
	if prev != nil {
		rec.Targets = prev.Targets
		rec.CephCSIStash = prev.CephCSIStash
	}
	return rec
}

// checkMapper runs a mapper's Check until it has succeeded once: the tools
// and modules a mapper found stay, and checking starts a process per tool.
func (n *Node) checkMapper(ctx context.Context, m mapper.Mapper) error {
	if _, ok := n.checked.Load(m.Name()); ok {
		return nil
	}
	if err := m.Check(ctx); err != nil {
		return err
	}
	n.checked.Store(m.Name(), true)
	return nil
}

// nodeStatus is volume.Status for the node: a pool that does not exist means
// the volume does not either (its pool was deleted).
func nodeStatus(err error, volumeID string) error {
	if errors.Is(err, ceph.ErrPoolNotFound) {
		return status.Errorf(codes.NotFound, "volume %s does not exist: %v", volumeID, err)
	}
	return volume.Status(err)
}

// checkHolders refuses to map a single-node volume that another node, or a
// client no node recorded, may still write. Fencing is the controller's
// call, made at publish; a node only refuses, and names the holder. The
// watch of own, this node's mapping of the image, is not a holder's. The
// view it returns (Pool.StageView) is the caller's to close.
func (n *Node) checkHolders(ctx context.Context, pool Pool, image, volumeID string,
	mode csi.VolumeCapability_AccessMode_Mode, own string) (*Usage, bool, ImageView, error) {
	usage, blank, view, err := readStageUsage(ctx, pool, image)
	if err != nil {
		return nil, false, nil, nodeStatus(err, volumeID)
	}
	now := time.Now()
	usage.Watchers = slices.DeleteFunc(usage.Watchers, func(w Watcher) bool {
		return (own != "" && ceph.SameClient(w.Addr, own)) || n.ended.has(w.Addr, now)
	})
	if err := n.refuseConflicts(usage, pool, image, volumeID, mode); err != nil {
		view.Close()
		return nil, false, nil, err
	}
	return usage, blank, view, nil
}

// readStageUsage is readUsageOf for a stage, with the image's blankness
// (Pool.StageView): the records are read while the image opens.
func readStageUsage(ctx context.Context, pool Pool, image string) (*Usage, bool, ImageView, error) {
	var recs *Records
	var recsErr error
	read := make(chan struct{})
	go func() {
		defer close(read)
		recs, recsErr = readRecords(ctx, pool, image)
	}()
	watchers, blank, view, err := pool.StageView(ctx, image)
	<-read
	if err = errors.Join(recsErr, err); err == nil {
		u := &Usage{Records: recs, Watchers: watchers, Now: time.Now()}
		if err = recognizeControllers(ctx, pool, u); err == nil {
			return u, blank, view, nil
		}
	}
	if view != nil {
		view.Close()
	}
	return nil, false, nil, err
}

func (n *Node) refuseConflicts(usage *Usage, pool Pool, image, volumeID string, mode csi.VolumeCapability_AccessMode_Mode) error {
	if !singleNode(mode) {
		return nil
	}
	var conflicts []Holder
	for _, h := range usage.Holders(n.opts.NodeID) {
		if StageConflict(h) {
			conflicts = append(conflicts, h)
		}
	}
	if len(conflicts) > 0 {
		observeRefused(n.opts.Holders, "stage", conflicts)
		return status.Errorf(codes.FailedPrecondition, "volume %s (image %s/%s) is held elsewhere; not mapping it on node %s: %s",
			volumeID, pool.Name(), image, n.opts.NodeID, describeAll(conflicts))
	}
	return nil
}

// recordMapping writes which client instance maps the image on this node,
// before anything writes the device, so that the controller can fence
// exactly it should this node be cut off. A mapper that cannot tell its
// client address is covered by the watcher that appeared with the mapping.
// The record is written only if, on the records as they are now, no other
// node has taken the volume meanwhile. seen is what the holder check read
// before the map: its watchers, and its records, which the write starts
// from (one write when they have not changed since). watchers lists the
// image's watchers now (over the check's open, when there is one).
func (n *Node) recordMapping(ctx context.Context, pool Pool, image, volumeID string, mode csi.VolumeCapability_AccessMode_Mode,
	m mapper.Mapping, seen *Usage, watchers func(context.Context) ([]Watcher, error)) (NodeMapping, error) {
	rec := NodeMapping{Node: n.opts.NodeID, ClientAddr: m.ClientAddr, ClientID: m.ClientID, Mapper: m.Mapper,
		ReadOnly: readOnlyMode(&csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode}}),
		Since:    time.Now().UTC()}
	if rec.ClientAddr == "" {
		after, err := watchers(ctx)
		if err != nil {
			return rec, volume.Status(err)
		}
		var fresh []Watcher
		for _, w := range after {
			if !watchedBy(seen.Watchers, w.Addr) {
				fresh = append(fresh, w)
			}
		}
		if len(fresh) == 1 {
			rec.ClientAddr, rec.ClientID = fresh[0].Addr, fmt.Sprintf("client.%d", fresh[0].ID)
		}
	}
	_, err := updateReadRecords(ctx, pool, image, seen.Records, func(recs *Records) (*recordChange, error) {
		if err := n.refuseConflicts(&Usage{Records: recs, Now: time.Now()}, pool, image, volumeID, mode); err != nil {
			return nil, err
		}
		return (&recordChange{}).put(metaMapPrefix+n.opts.NodeID, rec), nil
	})
	if err != nil {
		return rec, volume.Status(err)
	}
	return rec, nil
}

func mapperStatus(err error, what string) error {
	switch {
	case errors.Is(err, mapper.ErrUnavailable):
		return status.Errorf(codes.FailedPrecondition, "%s: %v", what, err)
	case errors.Is(err, mapper.ErrBusy):
		return status.Errorf(codes.FailedPrecondition, "%s: %v", what, err)
	case errors.Is(err, mapper.ErrUnsupportedOption), errors.Is(err, mapper.ErrInvalidImage), errors.Is(err, mapper.ErrUnknownMapper):
		return status.Errorf(codes.InvalidArgument, "%s: %v", what, err)
	case errors.Is(err, context.DeadlineExceeded):
		return status.Errorf(codes.DeadlineExceeded, "%s: %v", what, err)
	case errors.Is(err, daemonhost.ErrUnreachable):
		return status.Errorf(codes.Unavailable, "%s: %v", what, err)
	}
	return status.Errorf(codes.Internal, "%s: %v", what, err)
}

func fsTypeOf(c *csi.VolumeCapability) string {
	if fs := c.GetMount().GetFsType(); fs != "" {
		return fs
	}
	return DefaultFSType
}

// mountFilesystem formats a blank device and mounts it at the staging path
// (or where ceph-csi mounted a volume Pelagic adopted).
func (n *Node) mountFilesystem(ctx context.Context, req *csi.NodeStageVolumeRequest, rec *stageRecord) error {
	staging := rec.fsPath(req.GetStagingTargetPath())
	mounted, err := n.opts.Mounter.IsMountPoint(ctx, staging)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return status.Error(codes.Internal, err.Error())
	}
	if mounted {
		return nil
	}
	if err := os.MkdirAll(staging, 0o750); err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	dev := rec.Mapping.Device
	fstype, formatted, err := n.ensureFilesystem(ctx, req, dev, rec.FSType, rec.blank)
	if err != nil {
		return err
	}
	grow := !formatted && !readOnlyMode(req.GetVolumeCapability()) && n.filesystemSmaller(ctx, dev, fstype)
	if grow && fstype != "xfs" {
		// An expansion the node could not do online (resize2fs needs
		// CAP_SYS_RESOURCE there) is done here, before the mount.
		if err := n.opts.Mounter.ResizeFS(ctx, dev, ""); err != nil {
			return status.Errorf(codes.Internal, "growing the %s filesystem on %s: %v", fstype, dev, err)
		}
	}
	options := append([]string{}, req.GetVolumeCapability().GetMount().GetMountFlags()...)
	if fstype == "xfs" {
		// Clones and restored snapshots share the source's XFS UUID.
		options = append(options, "nouuid")
	}
	if readOnlyMode(req.GetVolumeCapability()) {
		options = append(options, "ro")
	}
	if err := n.opts.Mounter.Mount(ctx, dev, staging, fstype, options); err != nil {
		return status.Errorf(codes.Internal, "mounting %s at %s: %v", dev, staging, err)
	}
	if grow && fstype == "xfs" { // xfs grows only while mounted
		if err := n.opts.Mounter.ResizeFS(ctx, dev, staging); err != nil {
			return status.Errorf(codes.Internal, "growing the xfs filesystem on %s: %v", dev, err)
		}
	}
	return nil
}

// ensureFilesystem formats a blank device with fstype and returns the
// filesystem to mount, and whether it has just been made: a device that
// holds one is never formatted again, whatever the request asks for. The
// device is probed once, by Format itself, unless it is staged read-only
// and must not be formatted at all, or blank says the image read as
// zeroes wherever a probe looks when this call mapped it.
func (n *Node) ensureFilesystem(ctx context.Context, req *csi.NodeStageVolumeRequest, dev, fstype string, blank bool) (string, bool, error) {
	if readOnlyMode(req.GetVolumeCapability()) {
		existing, err := n.opts.Mounter.GetFormat(ctx, dev)
		if err != nil {
			return "", false, status.Errorf(codes.Internal, "probing %s for a filesystem: %v", dev, err)
		}
		if existing == "" {
			return "", false, status.Errorf(codes.FailedPrecondition, "volume %s has no filesystem and is staged read-only", req.GetVolumeId())
		}
		return existing, false, nil
	}
	opts := strings.Fields(req.GetVolumeContext()[ParamMkfsOptions])
	format := n.opts.Mounter.Format
	if blank {
		format = n.opts.Mounter.FormatBlank
	}
	err := format(ctx, dev, fstype, opts)
	var found *mount.NotEmptyError
	switch {
	case err == nil:
		return fstype, true, nil
	case errors.As(err, &found) && found.FSType != "":
		return found.FSType, false, nil
	}
	return "", false, status.Errorf(codes.Internal, "formatting %s as %s: %v", dev, fstype, err)
}

// filesystemSmaller reports whether the filesystem on dev is smaller than
// the device: the image was expanded and the filesystem not yet grown. A
// size it cannot read only means no growth now: the volume still mounts.
func (n *Node) filesystemSmaller(ctx context.Context, dev, fstype string) bool {
	fsSize, err := n.opts.Mounter.FilesystemSize(ctx, dev, fstype)
	if err == nil {
		var devSize int64
		if devSize, err = n.opts.Mounter.DeviceSize(ctx, dev); err == nil {
			// Filesystems end on a whole block or allocation group; less
			// than a MiB short is as grown as they get.
			return devSize-fsSize >= 1<<20
		}
	}
	if !errors.Is(err, mount.ErrUnsupportedFilesystem) {
		klog.FromContext(ctx).Info("not growing the filesystem at stage: its size is unknown", "device", dev, "error", err.Error())
	}
	return false
}

// NodeUnstageVolume unmounts and unmaps. It succeeds when nothing is staged.
func (n *Node) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	return n.vols.UnstageVolume(ctx, req, n.unstage)
}

// unstage unmounts the staging path, unmaps the image and removes the
// stage record, of this plugin or of ceph-csi's.
func (n *Node) unstage(ctx context.Context, volumeID, staging string) error {
	rec, err := readStageRecord(staging)
	fromStash := false // staged by ceph-csi's node plugin, never seen by this one
	if errors.Is(err, os.ErrNotExist) {
		rec, err = n.cephCSIStaged(ctx, volumeID, staging)
		fromStash = err == nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return status.Convert(err).Err()
	}
	// Check whose staging path this is before touching its mount.
	if rec != nil && rec.VolumeID != volumeID {
		return status.Errorf(codes.FailedPrecondition, "staging path %s holds volume %s, not %s",
			staging, rec.VolumeID, volumeID)
	}
	mounted := staging
	if rec != nil {
		mounted = rec.fsPath(staging)
	}
	if err := n.opts.Mounter.Unmount(ctx, mounted); err != nil {
		return status.Errorf(codes.Internal, "unmounting %s: %v", mounted, err)
	}
	if rec == nil {
		return n.vols.Unstaged(volumeID)
	}
	if err := n.unmap(ctx, rec, fromStash); err != nil {
		return err
	}
	if err := nodefs.RemoveRecord(staging); err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	if err := unstageCephCSILeftovers(rec, staging); err != nil {
		return err
	}
	return n.vols.Unstaged(volumeID)
}

// unmap unmaps a staged image and, unless ceph-csi mapped it, removes the
// image's record of this node's mapping.
func (n *Node) unmap(ctx context.Context, rec *stageRecord, fromStash bool) error {
	m, err := n.opts.Mappers.Get(rec.Mapping.Mapper)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	if err := m.Unmap(ctx, rec.Mapping, mapper.UnmapOptions{Options: rec.UnmapOptions}); err != nil {
		if errors.Is(err, mapper.ErrBusy) {
			holders, _ := n.opts.Mounter.Holders(ctx, rec.Mapping.Device)
			return status.Errorf(codes.FailedPrecondition, "device %s of volume %s is busy (held by %s): %v",
				rec.Mapping.Device, rec.VolumeID, strings.Join(holders, ", "), err)
		}
		return mapperStatus(err, "unmapping "+rec.Mapping.Device)
	}
	if !fromStash {
		n.forgetMapping(ctx, rec)
	}
	return nil
}

// NodePublishVolume bind-mounts the staged filesystem (or the device, for
// a block volume) at the target path. A staged volume whose mapping died is
// mapped again first, with the secrets of its NodeStage.
func (n *Node) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	return n.vols.PublishVolume(ctx, req, validateCapability, n.stagedRecord)
}

// stagedRecord reads the stage record a publish names (or adopts ceph-csi's
// stage), mapping the volume again when its mapping died.
func (n *Node) stagedRecord(ctx context.Context, req *csi.NodePublishVolumeRequest) (nodefs.Staged, error) {
	rec, err := readStageRecord(req.GetStagingTargetPath())
	if errors.Is(err, os.ErrNotExist) {
		rec, err = n.adoptCephCSIPublish(ctx, req)
	}
	if status.Code(err) == codes.FailedPrecondition || status.Code(err) == codes.Internal {
		return nil, err
	}
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not staged at %s", req.GetVolumeId(), req.GetStagingTargetPath())
	}
	if rec.VolumeID != req.GetVolumeId() {
		return nil, status.Errorf(codes.FailedPrecondition, "staging path %s holds volume %s, not %s",
			req.GetStagingTargetPath(), rec.VolumeID, req.GetVolumeId())
	}
	if dead := n.mappingDead(ctx, rec); dead != nil {
		if rec, err = n.replaceDeadForPublish(ctx, req, rec, dead); err != nil {
			return nil, err
		}
	}
	return rec, nil
}

// bindTarget binds the staged filesystem, or the device of a block
// volume, at a publication's target.
func (n *Node) bindTarget(ctx context.Context, staging string, rec *stageRecord, pub nodefs.Publication) error {
	return nodefs.Bind(ctx, n.opts.Mounter, rec.source(staging), rec.Block, pub)
}

// NodeUnpublishVolume unmounts the target and removes it.
func (n *Node) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	return n.vols.UnpublishVolume(ctx, req)
}

// NodeGetVolumeStats reports bytes and inodes of a published volume.
func (n *Node) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	return nodefs.VolumeStats(ctx, n.opts.Mounter, req)
}

// NodeExpandVolume grows the filesystem to the size of the grown image.
// It answers FailedPrecondition only where no retry can succeed: a
// filesystem this node may not grow while it is mounted, a staging path
// holding another volume, a mapper this node cannot run.
func (n *Node) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is missing")
	}
	if _, err := volumeid.Parse(req.GetVolumeId()); err != nil {
		return nil, status.Errorf(codes.NotFound, "volume %q does not exist: %v", req.GetVolumeId(), err)
	}
	if err := n.checkPath("volume path", req.GetVolumePath()); err != nil {
		return nil, err
	}
	if p := req.GetStagingTargetPath(); p != "" {
		if err := n.checkPath("staging target path", p); err != nil {
			return nil, err
		}
	}
	unlock, err := n.vols.Locks.Lock(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	path := req.GetVolumePath()
	if _, err := nodefs.StatBounded(ctx, path); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, status.Errorf(codes.DeadlineExceeded, "volume path %s: %v", path, err)
		}
		return nil, status.Errorf(codes.NotFound, "volume path %s: %v", path, err)
	}
	dev, err := n.opts.Mounter.MountSource(ctx, path)
	if err != nil || dev == "" {
		return nil, status.Errorf(codes.NotFound, "no volume is mounted at %s", path)
	}
	if err := n.growDevice(ctx, req.GetVolumeId(), req.GetStagingTargetPath()); err != nil {
		return nil, err
	}
	if req.GetVolumeCapability().GetBlock() == nil {
		if err := n.opts.Mounter.ResizeFS(ctx, dev, path); err != nil {
			if errors.Is(err, mount.ErrOnlineResizeNotPermitted) {
				return nil, status.Errorf(codes.FailedPrecondition,
					"growing the filesystem on %s online is not permitted on this node (resize2fs needs CAP_SYS_RESOURCE); it grows at the next stage, before it is mounted (restart the pod): %v", dev, err)
			}
			return nil, status.Errorf(codes.Internal, "growing the filesystem on %s: %v", dev, err)
		}
	}
	size, err := n.opts.Mounter.DeviceSize(ctx, dev)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "sizing %s: %v", dev, err)
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: size}, nil
}

// growDevice makes a mapping whose device does not follow the image size
// by itself (a loop device over rbd-fuse) pick up the new size.
func (n *Node) growDevice(ctx context.Context, volumeID, staging string) error {
	if staging == "" {
		return nil
	}
	rec, err := readStageRecord(staging)
	if err != nil {
		return nil // not staged by us: nothing to grow below the filesystem
	}
	if rec.VolumeID != volumeID {
		return status.Errorf(codes.FailedPrecondition, "staging path %s holds volume %s, not %s", staging, rec.VolumeID, volumeID)
	}
	m, err := n.opts.Mappers.Get(rec.Mapping.Mapper)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	if r, ok := m.(mapper.Resizer); ok {
		if err := r.Resize(ctx, rec.Mapping); err != nil {
			if errors.Is(err, mapper.ErrBusy) {
				return status.Errorf(codes.Unavailable, "growing %s: %v", rec.Mapping.Device, err)
			}
			return mapperStatus(err, "growing "+rec.Mapping.Device)
		}
	}
	return nil
}

// NodeGetVolumeHealth reports a staged volume whose mapping is dead, or
// whose mounts are gone, as inaccessible; no entries means healthy. The
// staging path may be left out: the node knows where it staged the volume.
// A volume not staged on this node is NotFound.
func (n *Node) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	rec := &stageRecord{}
	return n.vols.VolumeHealth(ctx, req, rec, func() string { return rec.VolumeID }, func(health nodefs.Health, staging string) error {
		return n.checkStaged(ctx, health, rec, staging)
	})
}

// checkStaged adds to health what is wrong with a staged volume's mapping
// and, for a filesystem, its mount at the staging path.
func (n *Node) checkStaged(ctx context.Context, health nodefs.Health, rec *stageRecord, staging string) error {
	m, err := n.opts.Mappers.Get(rec.Mapping.Mapper)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	switch err := m.Alive(ctx, rec.Mapping); {
	case errors.Is(err, mapper.ErrMappingDead):
		health.Inaccessible("MappingDead", "%v; the next NodeStage or NodePublish maps the volume again", err)
	case err != nil:
		health.Inaccessible("MappingUnknown", "cannot tell whether %s still carries I/O: %v", rec.Mapping.Device, err)
	}
	if mounted, _ := n.opts.Mounter.IsMountPoint(ctx, rec.fsPath(staging)); !rec.Block && !mounted {
		health.Inaccessible("NotMounted", "the filesystem on %s is not mounted at %s", rec.Mapping.Device, rec.fsPath(staging))
	}
	return nil
}

// NodeGetCapabilities advertises what the node service implements: what
// both drivers do, and growing a filesystem to its grown image.
func (n *Node) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return volume.NodeCapabilities(csi.NodeServiceCapability_RPC_EXPAND_VOLUME), nil
}

// NodeGetInfo names the node, its volume limit and, when the plugin
// advertises VOLUME_ACCESSIBILITY_CONSTRAINTS, its topology.
func (n *Node) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return n.opts.NodeInfo(), nil
}
