package rbd

// Volumes ceph-csi's node plugin staged, taken over by Pelagic's after the
// plugin was swapped (docs/ceph-csi-format.md, "Node side"). ceph-csi
// writes image-meta.json at the staging path before it maps the image,
// then mounts the filesystem (or bind-mounts the device, for a block
// volume) at <staging>/<volume ID>, and publishes from there. Its krbd
// mappings live in the kernel and outlive the plugin; Pelagic finds them
// in sysfs by the stash's pool, namespace and image. It unstages such a
// volume as ceph-csi would, and when asked to stage or publish it first,
// adopts it in place: the pods using it keep their mounts.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/pelagic-csi/pelagic/pkg/mapper"
	"github.com/pelagic-csi/pelagic/pkg/nodefs"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

// cephCSIStashFile is what ceph-csi's node plugin writes at the staging
// path before it maps an image.
const cephCSIStashFile = "image-meta.json"

// cephCSIStash is that file (its version 3), as far as unstaging needs it.
type cephCSIStash struct {
	Pool           string `json:"pool"`
	RadosNamespace string `json:"radosNamespace"`
	Image          string `json:"image"`
	UnmapOptions   string `json:"unmapOptions"`
	NBD            bool   `json:"accessType"` // mapped by rbd-nbd, not krbd
	Encrypted      bool   `json:"encrypted"`
	Device         string `json:"device"` // rbd-nbd's; "" for krbd
}

// fsPath is where a staged volume's filesystem (or, for a block volume
// ceph-csi staged, its device's bind) is mounted.
func (r *stageRecord) fsPath(staging string) string {
	if r.MountPath != "" {
		return r.MountPath
	}
	return staging
}

// cephCSIStaged returns the stage record of the volume ceph-csi's node
// plugin staged at staging, from its stash and this node's mappings; an
// error matching os.ErrNotExist when it staged nothing there.
func (n *Node) cephCSIStaged(ctx context.Context, volumeID, staging string) (*stageRecord, error) {
	b, err := os.ReadFile(filepath.Join(staging, cephCSIStashFile))
	if err != nil {
		return nil, err
	}
	var st cephCSIStash
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, status.Errorf(codes.Internal, "ceph-csi's %s at %s: %v", cephCSIStashFile, staging, err)
	}
	if st.Encrypted {
		return nil, status.Errorf(codes.FailedPrecondition,
			"volume %s was staged encrypted by ceph-csi's node plugin; Pelagic has no encryption: unstage it with ceph-csi", volumeID)
	}
	name := mapper.KRBD
	if st.NBD {
		name = mapper.NBD
	}
	m, err := n.opts.Mappers.Get(name)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	mapping := mapper.Mapping{Mapper: name, Pool: st.Pool, RadosNamespace: st.RadosNamespace, Image: st.Image, Device: st.Device}
	mapped, err := m.List(ctx)
	if err != nil {
		return nil, mapperStatus(err, "listing "+name+" mappings")
	}
	for _, l := range mapped {
		if l.Pool == st.Pool && l.RadosNamespace == st.RadosNamespace && l.Image == st.Image {
			mapping = l
		}
	}
	unmap, err := mapper.ParseClassOptions(st.UnmapOptions)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "ceph-csi's %s at %s: unmapOptions: %v", cephCSIStashFile, staging, err)
	}
	rec := &stageRecord{VolumeID: volumeID, Mapping: mapping, MountPath: filepath.Join(staging, volumeID),
		CephCSIStash: true, UnmapOptions: unmap.For(name), Staged: time.Now().UTC()}
	if vid, err := volumeid.Parse(volumeID); err == nil {
		rec.ClusterID = vid.ClusterID
	}
	if fi, err := nodefs.StatBounded(ctx, rec.MountPath); err == nil && !fi.IsDir() {
		rec.Block = true // ceph-csi binds a block volume's device onto a file
	}
	return rec, nil
}

// removeCephCSIStaging removes what ceph-csi's node plugin left at a
// staging path once the volume is unmapped: its mount point and its stash.
func removeCephCSIStaging(staging, volumeID string) error {
	for _, p := range []string{filepath.Join(staging, volumeID), filepath.Join(staging, cephCSIStashFile)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return status.Error(codes.Internal, err.Error())
		}
	}
	return nil
}

// adoptCephCSIStage takes over, at NodeStage, a volume ceph-csi's node
// plugin staged and that is still mapped and mounted: this node's mapping
// is recorded in the image (the client instance is the kernel's, which
// ceph-csi shares among the images it mapped, since it maps without
// noshare), then the stage record is written. A stash whose mapping or
// mount is gone (the node restarted) is removed, and nil returned: the
// volume is staged afresh. Nil too when ceph-csi staged nothing there.
func (n *Node) adoptCephCSIStage(ctx context.Context, req *csi.NodeStageVolumeRequest) (*stageRecord, error) {
	staging := req.GetStagingTargetPath()
	rec, err := n.cephCSIStaged(ctx, req.GetVolumeId(), staging)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !n.cephCSIStagingLive(ctx, rec) {
		klog.FromContext(ctx).Info("removing what ceph-csi's node plugin left of a volume no longer staged",
			"volume", req.GetVolumeId(), "staging", staging)
		return nil, removeCephCSIStaging(staging, req.GetVolumeId())
	}
	c := req.GetVolumeCapability()
	if why := stageConflict(rec, c); why != "" {
		return nil, status.Errorf(codes.AlreadyExists, "volume %s is already staged at %s (by ceph-csi) incompatibly: %s",
			req.GetVolumeId(), staging, why)
	}
	if err := n.recordAdopted(ctx, req, rec); err != nil {
		return nil, err
	}
	rec.Mode, rec.VolumeContext, rec.MountFlags = c.GetAccessMode().GetMode().String(), req.GetVolumeContext(), c.GetMount().GetMountFlags()
	if !rec.Block {
		rec.FSType = fsTypeOf(c)
	}
	if err := n.writeAdopted(rec, staging); err != nil {
		return nil, err
	}
	klog.FromContext(ctx).Info("adopted a volume ceph-csi's node plugin staged", "volume", rec.VolumeID,
		"device", rec.Mapping.Device, "client", rec.Mapping.ClientAddr, "mountPath", rec.MountPath)
	return rec, nil
}

// recordAdopted records in the image that this node maps an adopted
// volume, through ceph-csi's mapping, unless that is recorded already: the
// controller then knows who holds it, and whom to fence should this node
// be cut off. The client instance is the kernel's, which ceph-csi shares
// among the images it mapped, since it maps without noshare.
func (n *Node) recordAdopted(ctx context.Context, req *csi.NodeStageVolumeRequest, rec *stageRecord) error {
	cc, err := n.opts.Config.Cluster(req.GetVolumeContext()[ParamClusterID])
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	pool, err := n.mappedPool(ctx, req, cc.ClusterID, rec)
	if err != nil {
		return err
	}
	rec.ClusterID = cc.ClusterID
	recs, err := readRecords(ctx, pool, rec.Mapping.Image)
	if err != nil {
		return nodeStatus(err, req.GetVolumeId())
	}
	if m, ok := recs.Mappings[n.opts.NodeID]; ok && m.ClientAddr != "" && m.ClientAddr == rec.Mapping.ClientAddr {
		return nil
	}
	recorded, err := n.recordMapping(ctx, pool, rec.Mapping.Image, req.GetVolumeId(),
		req.GetVolumeCapability().GetAccessMode().GetMode(), rec.Mapping, &Usage{Records: recs},
		func(ctx context.Context) ([]Watcher, error) { return pool.Watchers(ctx, rec.Mapping.Image) })
	if err != nil {
		return err
	}
	rec.Mapping.ClientAddr, rec.Mapping.ClientID = recorded.ClientAddr, recorded.ClientID
	return nil
}

// adoptCephCSIPublish takes over, at NodePublish, a volume ceph-csi's node
// plugin staged: NodePublish carries no secrets, so the image's mapping
// record waits for the volume's next NodeStage (recordAdopted); os.ErrNotExist when
// ceph-csi staged nothing there.
func (n *Node) adoptCephCSIPublish(ctx context.Context, req *csi.NodePublishVolumeRequest) (*stageRecord, error) {
	rec, err := n.cephCSIStaged(ctx, req.GetVolumeId(), req.GetStagingTargetPath())
	if err != nil {
		return nil, err
	}
	if !n.cephCSIStagingLive(ctx, rec) {
		return nil, status.Errorf(codes.FailedPrecondition,
			"volume %s: ceph-csi's node plugin staged it at %s, but its mapping or mount is gone; NodeStageVolume stages it again",
			req.GetVolumeId(), req.GetStagingTargetPath())
	}
	c := req.GetVolumeCapability()
	rec.Mode, rec.VolumeContext = c.GetAccessMode().GetMode().String(), req.GetVolumeContext()
	if !rec.Block {
		rec.FSType = fsTypeOf(c)
	}
	if err := n.writeAdopted(rec, req.GetStagingTargetPath()); err != nil {
		return nil, err
	}
	return rec, nil
}

// cephCSIStagingLive reports whether what ceph-csi staged still carries
// the volume: its mapping is alive and its mount point mounted.
func (n *Node) cephCSIStagingLive(ctx context.Context, rec *stageRecord) bool {
	m, err := n.opts.Mappers.Get(rec.Mapping.Mapper)
	if err != nil || m.Alive(ctx, rec.Mapping) != nil {
		return false
	}
	mounted, err := n.opts.Mounter.IsMountPoint(ctx, rec.MountPath)
	return err == nil && mounted
}

// writeAdopted makes an adopted volume staged in Pelagic's eyes: index
// first, then the stage record (see mapImage).
func (n *Node) writeAdopted(rec *stageRecord, staging string) error {
	if err := n.vols.Staged.Put(rec.VolumeID, staging); err != nil {
		return status.Errorf(codes.Internal, "recording the staged volume: %v", err)
	}
	if err := nodefs.WriteRecord(staging, rec); err != nil {
		return status.Errorf(codes.Internal, "recording the staged volume: %v", err)
	}
	return nil
}

// imagePool is the pool of a volume's image: the one its ID names. The
// volume context of ceph-csi's volumes names the class's pool, which is
// not the image's with topologyConstrainedPools. An ID Pelagic cannot read
// (a static volume's) leaves the context's.
func imagePool(ctx context.Context, cl Cluster, volumeID string, vctx map[string]string) string {
	if vid, err := volumeid.Parse(volumeID); err == nil && vid.ClusterID == cl.ClusterID() {
		if name, err := cl.PoolName(ctx, vid.PoolID); err == nil {
			return name
		}
	}
	return vctx[ParamPool]
}

// unstageCephCSILeftovers removes, after the unmap, what ceph-csi's node
// plugin left of a volume it staged.
func unstageCephCSILeftovers(rec *stageRecord, staging string) error {
	if !rec.CephCSIStash {
		return nil
	}
	if err := removeCephCSIStaging(staging, rec.VolumeID); err != nil {
		return fmt.Errorf("volume %s: %w", rec.VolumeID, err)
	}
	return nil
}
