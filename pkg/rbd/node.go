package rbd

import (
	"context"
	"encoding/json"
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

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/csiserver"
	"github.com/pelagic-csi/pelagic/pkg/mapper"
	"github.com/pelagic-csi/pelagic/pkg/mount"
	"github.com/pelagic-csi/pelagic/pkg/util"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

// Mappers hands out the mapper a volume asks for ("" means the node default).
type Mappers interface {
	Get(name string) (mapper.Mapper, error)
}

// NodeOptions configure the node service.
type NodeOptions struct {
	NodeID     string
	Connector  Connector // reads and writes image metadata and watchers
	Config     *ceph.Config
	Mappers    Mappers
	Mounter    mount.Mounter
	KubeletDir string // when set, paths must lie inside it
	// StateDir keeps what must outlive a restart of the plugin: mapping
	// records whose removal waits for a connection to the cluster.
	StateDir   string
	Labels     map[string]string // topology
	MaxVolumes int64
}

// Node implements csi.NodeServer for RBD.
type Node struct {
	csi.UnimplementedNodeServer
	opts    NodeOptions
	locks   *util.KeyLocks
	known   knownClusters // clusters opened by NodeStage, for unstage
	forgets *forgetQueue
}

// NewNode returns the node service.
func NewNode(opts NodeOptions) *Node {
	n := &Node{opts: opts, locks: util.NewKeyLocks()}
	n.forgets = &forgetQueue{dir: opts.StateDir, remove: n.removeMappingRecord}
	return n
}

// stageRecord is written beside the staging path once the image is mapped,
// so unstage, publish and expand work after a driver restart.
type stageRecord struct {
	VolumeID  string         `json:"volumeID"`
	ClusterID string         `json:"clusterID"`
	Mapping   mapper.Mapping `json:"mapping"`
	Block     bool           `json:"block"`
	FSType    string         `json:"fsType,omitempty"`
	Staged    time.Time      `json:"staged"`
	Targets   []string       `json:"targets,omitempty"` // where it is published
	// UnmapOptions are the StorageClass's unmapOptions, for the unstage.
	UnmapOptions string `json:"unmapOptions,omitempty"`
}

func recordPath(stagingPath string) string {
	return filepath.Clean(stagingPath) + ".pelagic.json"
}

func readStageRecord(stagingPath string) (*stageRecord, error) {
	b, err := os.ReadFile(recordPath(stagingPath))
	if err != nil {
		return nil, err
	}
	var r stageRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("corrupt stage record %s: %w", recordPath(stagingPath), err)
	}
	return &r, nil
}

func writeStageRecord(stagingPath string, r *stageRecord) error {
	return writeFileAtomic(recordPath(stagingPath), r)
}

func (n *Node) lock(volumeID string) (func(), error) {
	if !n.locks.TryLock(volumeID) {
		return nil, status.Errorf(codes.Aborted, "an operation on volume %s is already in progress", volumeID)
	}
	return func() { n.locks.Unlock(volumeID) }, nil
}

// begin checks the volume ID and the paths a call names (what, path
// pairs), then takes the volume's lock. Nothing is touched on bad input.
func (n *Node) begin(volumeID string, whatPath ...string) (unlock func(), err error) {
	if volumeID == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is missing")
	}
	for i := 0; i+1 < len(whatPath); i += 2 {
		if err := n.checkPath(whatPath[i], whatPath[i+1]); err != nil {
			return nil, err
		}
	}
	return n.lock(volumeID)
}

func (n *Node) checkPath(what, path string) error {
	if err := csiserver.ValidatePath(what, path, n.opts.KubeletDir); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return nil
}

func readOnlyMode(c *csi.VolumeCapability) bool {
	switch c.GetAccessMode().GetMode() {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:
		return true
	}
	return false
}

// NodeStageVolume maps the image and, for a filesystem volume, formats it
// if (and only if) it holds no filesystem, then mounts it at the staging path.
func (n *Node) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	if err := validateCapability(req.GetVolumeCapability()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	vctx := req.GetVolumeContext()
	if vctx[ParamPool] == "" || vctx[CtxImageName] == "" || vctx[ParamClusterID] == "" {
		return nil, status.Errorf(codes.InvalidArgument, "volume context needs %s, %s and %s", ParamClusterID, ParamPool, CtxImageName)
	}
	unlock, err := n.begin(req.GetVolumeId(), "staging target path", req.GetStagingTargetPath())
	if err != nil {
		return nil, err
	}
	defer unlock()

	staging := req.GetStagingTargetPath()
	rec, err := readStageRecord(staging)
	switch {
	case err == nil && rec.VolumeID != req.GetVolumeId():
		return nil, status.Errorf(codes.FailedPrecondition, "staging path %s already holds volume %s (device %s)",
			staging, rec.VolumeID, rec.Mapping.Device)
	case err == nil:
		// Staged before, perhaps half way: finish whatever is missing,
		// unless this node's client was fenced since.
		fenced, ferr := n.stagedMappingFenced(ctx, req, rec)
		if ferr != nil {
			return nil, ferr
		}
		if fenced {
			if err := n.dropFencedStage(ctx, staging, rec); err != nil {
				return nil, err
			}
			if rec, err = n.mapImage(ctx, req); err != nil {
				return nil, err
			}
		}
	case errors.Is(err, os.ErrNotExist):
		if rec, err = n.mapImage(ctx, req); err != nil {
			return nil, err
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

func (n *Node) mapImage(ctx context.Context, req *csi.NodeStageVolumeRequest) (*stageRecord, error) {
	vctx := req.GetVolumeContext()
	cc, err := n.opts.Config.Cluster(vctx[ParamClusterID])
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	creds, err := credentialsFrom(req.GetSecrets(), vctx)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	m, err := n.opts.Mappers.Get(vctx[ParamMounter])
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := m.Check(ctx); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "mapper %s cannot work on node %s: %v", m.Name(), n.opts.NodeID, err)
	}
	cl, err := n.opts.Connector.Connect(ctx, cc.ClusterID, creds)
	if err != nil {
		return nil, statusFor(err)
	}
	pool, err := cl.Pool(ctx, vctx[ParamPool], cc.RBD.RadosNamespace)
	if err != nil {
		return nil, statusFor(err)
	}
	n.known.remember(cl, pool.Name(), cc.RBD.RadosNamespace)
	n.forgets.drain(ctx, cl)
	image := vctx[CtxImageName]
	mode := req.GetVolumeCapability().GetAccessMode().GetMode()
	usage, err := n.checkHolders(ctx, pool, image, req.GetVolumeId(), mode)
	if err != nil {
		return nil, err
	}
	img := mapper.Image{ClusterID: cc.ClusterID, Monitors: cc.Monitors, Pool: pool.Name(),
		RadosNamespace: cc.RBD.RadosNamespace, Name: image, Creds: creds}
	mapping, err := n.mapFresh(ctx, m, img, usage.Records, mapper.MapOptions{
		ReadOnly:  readOnlyMode(req.GetVolumeCapability()),
		Exclusive: m.Name() == mapper.KRBD && singleNode(mode) && strings.Contains(vctx[ParamImageFeatures], "exclusive-lock"),
		Options:   vctx[ParamMapOptions]})
	if err != nil {
		return nil, err
	}
	recorded, err := n.recordMapping(ctx, pool, image, req.GetVolumeId(), mode, mapping, usage.Watchers)
	if err != nil {
		_ = m.Unmap(context.WithoutCancel(ctx), mapping, mapper.UnmapOptions{Force: true})
		return nil, err
	}
	mapping.ClientAddr, mapping.ClientID = recorded.ClientAddr, recorded.ClientID
	rec := &stageRecord{VolumeID: req.GetVolumeId(), ClusterID: cc.ClusterID, Mapping: mapping,
		Block: req.GetVolumeCapability().GetBlock() != nil, Staged: time.Now().UTC(),
		UnmapOptions: vctx[ParamUnmapOptions]}
	if !rec.Block {
		rec.FSType = fsTypeOf(req.GetVolumeCapability())
	}
	// The stage record only after the image's mapping record: it makes a
	// retry skip mapping, so it must only exist once the controller can
	// see this node's client.
	if err := writeStageRecord(req.GetStagingTargetPath(), rec); err != nil {
		_ = m.Unmap(context.WithoutCancel(ctx), mapping, mapper.UnmapOptions{})
		return nil, status.Errorf(codes.Internal, "recording the mapping: %v", err)
	}
	return rec, nil
}

// checkHolders refuses to map a single-node volume that another node, or a
// client no node recorded, may still write. Fencing is the controller's
// call, made at publish; a node only refuses, and names the holder.
func (n *Node) checkHolders(ctx context.Context, pool Pool, image, volumeID string,
	mode csi.VolumeCapability_AccessMode_Mode) (*Usage, error) {
	usage, err := readUsageOf(ctx, pool, image)
	if err != nil {
		return nil, statusFor(err)
	}
	if err := n.refuseConflicts(usage, pool, image, volumeID, mode); err != nil {
		return nil, err
	}
	return usage, nil
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
// node has taken the volume meanwhile.
func (n *Node) recordMapping(ctx context.Context, pool Pool, image, volumeID string, mode csi.VolumeCapability_AccessMode_Mode,
	m mapper.Mapping, before []Watcher) (NodeMapping, error) {
	rec := NodeMapping{Node: n.opts.NodeID, ClientAddr: m.ClientAddr, ClientID: m.ClientID, Mapper: m.Mapper,
		Since: time.Now().UTC()}
	if rec.ClientAddr == "" {
		after, err := pool.Watchers(ctx, image)
		if err != nil {
			return rec, statusFor(err)
		}
		var fresh []Watcher
		for _, w := range after {
			if !watchedBy(before, w.Addr) {
				fresh = append(fresh, w)
			}
		}
		if len(fresh) == 1 {
			rec.ClientAddr, rec.ClientID = fresh[0].Addr, fmt.Sprintf("client.%d", fresh[0].ID)
		}
	}
	_, err := updateRecords(ctx, pool, image, func(recs *Records) (*recordChange, error) {
		if err := n.refuseConflicts(&Usage{Records: recs, Now: time.Now()}, pool, image, volumeID, mode); err != nil {
			return nil, err
		}
		return (&recordChange{}).put(metaMapPrefix+n.opts.NodeID, rec), nil
	})
	if err != nil {
		return rec, statusFor(err)
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
	}
	return status.Errorf(codes.Internal, "%s: %v", what, err)
}

func fsTypeOf(c *csi.VolumeCapability) string {
	if fs := c.GetMount().GetFsType(); fs != "" {
		return fs
	}
	return DefaultFSType
}

// mountFilesystem formats a blank device and mounts it at the staging path.
func (n *Node) mountFilesystem(ctx context.Context, req *csi.NodeStageVolumeRequest, rec *stageRecord) error {
	staging := req.GetStagingTargetPath()
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
	existing, err := n.opts.Mounter.GetFormat(ctx, dev)
	if err != nil {
		return status.Errorf(codes.Internal, "probing %s for a filesystem: %v", dev, err)
	}
	fstype := rec.FSType
	switch {
	case existing == "":
		if readOnlyMode(req.GetVolumeCapability()) {
			return status.Errorf(codes.FailedPrecondition, "volume %s has no filesystem and is staged read-only", req.GetVolumeId())
		}
		opts := strings.Fields(req.GetVolumeContext()[ParamMkfsOptions])
		if err := n.opts.Mounter.Format(ctx, dev, fstype, opts); err != nil {
			return status.Errorf(codes.Internal, "formatting %s as %s: %v", dev, fstype, err)
		}
	case existing != fstype:
		// Never reformat a volume that holds data; mount what is there.
		fstype = existing
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
	return nil
}

// NodeUnstageVolume unmounts and unmaps. It succeeds when nothing is staged.
func (n *Node) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	unlock, err := n.begin(req.GetVolumeId(), "staging target path", req.GetStagingTargetPath())
	if err != nil {
		return nil, err
	}
	defer unlock()
	staging := req.GetStagingTargetPath()
	rec, err := readStageRecord(staging)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, status.Error(codes.Internal, err.Error())
	}
	// Check whose staging path this is before touching its mount.
	if rec != nil && rec.VolumeID != req.GetVolumeId() {
		return nil, status.Errorf(codes.FailedPrecondition, "staging path %s holds volume %s, not %s",
			staging, rec.VolumeID, req.GetVolumeId())
	}
	if err := n.opts.Mounter.Unmount(ctx, staging); err != nil {
		return nil, status.Errorf(codes.Internal, "unmounting %s: %v", staging, err)
	}
	if rec == nil {
		return &csi.NodeUnstageVolumeResponse{}, nil
	}
	m, err := n.opts.Mappers.Get(rec.Mapping.Mapper)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := m.Unmap(ctx, rec.Mapping, mapper.UnmapOptions{Options: rec.UnmapOptions}); err != nil {
		if errors.Is(err, mapper.ErrBusy) {
			holders, _ := n.opts.Mounter.Holders(ctx, rec.Mapping.Device)
			return nil, status.Errorf(codes.FailedPrecondition, "device %s of volume %s is busy (held by %s): %v",
				rec.Mapping.Device, rec.VolumeID, strings.Join(holders, ", "), err)
		}
		return nil, mapperStatus(err, "unmapping "+rec.Mapping.Device)
	}
	n.forgetMapping(ctx, rec)
	if err := os.Remove(recordPath(staging)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// NodePublishVolume bind-mounts the staged filesystem (or the device, for
// a block volume) at the target path.
func (n *Node) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	if err := validateCapability(req.GetVolumeCapability()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	unlock, err := n.begin(req.GetVolumeId(), "staging target path", req.GetStagingTargetPath(),
		"target path", req.GetTargetPath())
	if err != nil {
		return nil, err
	}
	defer unlock()
	target := req.GetTargetPath()
	rec, err := readStageRecord(req.GetStagingTargetPath())
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not staged at %s", req.GetVolumeId(), req.GetStagingTargetPath())
	}
	if rec.VolumeID != req.GetVolumeId() {
		return nil, status.Errorf(codes.FailedPrecondition, "staging path %s holds volume %s, not %s",
			req.GetStagingTargetPath(), rec.VolumeID, req.GetVolumeId())
	}
	if mounted, _ := n.opts.Mounter.IsMountPoint(ctx, target); mounted {
		if !slices.Contains(rec.Targets, target) {
			return nil, status.Errorf(codes.AlreadyExists, "target %s already holds a mount that is not volume %s", target, req.GetVolumeId())
		}
		return &csi.NodePublishVolumeResponse{}, nil
	}
	// Targets unpublished since (or before a restart) are no longer mounted.
	rec.Targets = slices.DeleteFunc(rec.Targets, func(t string) bool {
		mounted, _ := n.opts.Mounter.IsMountPoint(ctx, t)
		return !mounted
	})
	if req.GetVolumeCapability().GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER {
		for _, t := range rec.Targets {
			if t != target {
				return nil, status.Errorf(codes.FailedPrecondition,
					"volume %s is single-writer and already published at %s", req.GetVolumeId(), t)
			}
		}
	}
	source := req.GetStagingTargetPath()
	if rec.Block {
		source = rec.Mapping.Device
		if err := makeFile(target); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	} else if err := os.MkdirAll(target, 0o750); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := n.opts.Mounter.BindMount(ctx, source, target, req.GetReadonly() || readOnlyMode(req.GetVolumeCapability())); err != nil {
		return nil, status.Errorf(codes.Internal, "bind-mounting %s at %s: %v", source, target, err)
	}
	rec.Targets = append(rec.Targets, target)
	if err := writeStageRecord(req.GetStagingTargetPath(), rec); err != nil {
		return nil, status.Errorf(codes.Internal, "recording the publication: %v", err)
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

func makeFile(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE, 0o640)
	if err != nil {
		return err
	}
	return f.Close()
}

// NodeUnpublishVolume unmounts the target and removes it.
func (n *Node) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	unlock, err := n.begin(req.GetVolumeId(), "target path", req.GetTargetPath())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := n.opts.Mounter.Unmount(ctx, req.GetTargetPath()); err != nil {
		return nil, status.Errorf(codes.Internal, "unmounting %s: %v", req.GetTargetPath(), err)
	}
	if err := os.Remove(req.GetTargetPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// NodeGetVolumeStats reports bytes and inodes of a published volume.
func (n *Node) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is missing")
	}
	if req.GetVolumePath() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume path is missing")
	}
	path := req.GetVolumePath()
	fi, err := os.Stat(path)
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "volume path %s: %v", path, err)
	}
	mounted, err := n.opts.Mounter.IsMountPoint(ctx, path)
	if err != nil || !mounted {
		return nil, status.Errorf(codes.NotFound, "volume path %s is not a mounted volume", path)
	}
	if !fi.IsDir() { // a block volume: the device file bind-mounted here
		size, err := n.opts.Mounter.DeviceSize(ctx, path)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "sizing %s: %v", path, err)
		}
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: size}}}, nil
	}
	st, err := n.opts.Mounter.Stats(path)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "statfs %s: %v", path, err)
	}
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: st.TotalBytes, Used: st.UsedBytes, Available: st.AvailableBytes},
		{Unit: csi.VolumeUsage_INODES, Total: st.TotalInodes, Used: st.UsedInodes, Available: st.FreeInodes},
	}}, nil
}

// NodeExpandVolume grows the filesystem to the size of the grown image.
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
	unlock, err := n.lock(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	path := req.GetVolumePath()
	if _, err := os.Stat(path); err != nil {
		return nil, status.Errorf(codes.NotFound, "volume path %s: %v", path, err)
	}
	if req.GetVolumeCapability().GetBlock() != nil {
		return &csi.NodeExpandVolumeResponse{}, nil
	}
	dev, err := n.opts.Mounter.MountSource(ctx, path)
	if err != nil || dev == "" {
		return nil, status.Errorf(codes.NotFound, "no volume is mounted at %s", path)
	}
	if p := req.GetStagingTargetPath(); p != "" {
		if err := n.checkPath("staging target path", p); err != nil {
			return nil, err
		}
	}
	if err := n.growDevice(ctx, req.GetVolumeId(), req.GetStagingTargetPath()); err != nil {
		return nil, err
	}
	if err := n.opts.Mounter.ResizeFS(ctx, dev, path); err != nil {
		if errors.Is(err, mount.ErrOnlineResizeNotPermitted) {
			return nil, status.Errorf(codes.FailedPrecondition,
				"growing the filesystem on %s online is not permitted on this node (resize2fs needs CAP_SYS_RESOURCE); it grows at the next stage: %v", dev, err)
		}
		return nil, status.Errorf(codes.Internal, "growing the filesystem on %s: %v", dev, err)
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
			return mapperStatus(err, "growing "+rec.Mapping.Device)
		}
	}
	return nil
}

// NodeGetVolumeHealth reports a volume whose mount or mapping is gone as
// inaccessible; no entries means healthy. Paths are checked when given.
func (n *Node) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is missing")
	}
	health := &csi.VolumeHealth{VolumeId: req.GetVolumeId()}
	problem := func(reason, format string, args ...any) {
		health.HealthStatuses = append(health.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{
			Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: reason, Message: fmt.Sprintf(format, args...)})
	}
	if p := req.GetVolumePublishPath(); p != "" {
		if mounted, _ := n.opts.Mounter.IsMountPoint(ctx, p); !mounted {
			problem("NotPublished", "nothing is mounted at the publish path %s", p)
		}
	}
	if p := req.GetStagingTargetPath(); p != "" {
		rec, err := readStageRecord(p)
		switch {
		case err != nil:
			problem("NotStaged", "volume is not staged at %s: %v", p, err)
		case rec.VolumeID != req.GetVolumeId():
			problem("WrongVolume", "staging path %s holds volume %s", p, rec.VolumeID)
		default:
			if _, err := os.Stat(rec.Mapping.Device); err != nil {
				problem("DeviceGone", "mapped device %s is gone: %v", rec.Mapping.Device, err)
			} else if mounted, _ := n.opts.Mounter.IsMountPoint(ctx, p); !rec.Block && !mounted {
				problem("NotMounted", "the filesystem on %s is not mounted at %s", rec.Mapping.Device, p)
			}
		}
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: health}, nil
}

var nodeCaps = []csi.NodeServiceCapability_RPC_Type{
	csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
	csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
	csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
	csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
}

// NodeGetCapabilities advertises what the node service implements.
func (n *Node) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	caps := make([]*csi.NodeServiceCapability, 0, len(nodeCaps))
	for _, t := range nodeCaps {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{
			Rpc: &csi.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

// NodeGetInfo names the node, its volume limit and its topology.
func (n *Node) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	resp := &csi.NodeGetInfoResponse{NodeId: n.opts.NodeID, MaxVolumesPerNode: n.opts.MaxVolumes}
	if len(n.opts.Labels) > 0 {
		resp.AccessibleTopology = &csi.Topology{Segments: n.opts.Labels}
	}
	return resp, nil
}
