package cephfs

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/volume"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

// ControllerOptions configure the controller service.
type ControllerOptions struct {
	Connector Connector
	Config    *ceph.Config
	// DefaultSize is used when a request sets no capacity (default 1 GiB).
	DefaultSize int64
	// ClonePoll is the first interval between two reads of a clone's
	// state while CreateVolume waits for it; it grows to ten times that.
	// Default 20 ms.
	ClonePoll time.Duration
	// CephCSIInstanceID is the instance ID (--instanceid) of the ceph-csi
	// whose volumes this controller serves in place; default "default".
	CephCSIInstanceID string
	// AfterReserve, when set, runs between the journal reservation and the
	// subvolume's creation: tests use it to stop a controller there.
	AfterReserve func(name string)
}

// Controller implements csi.ControllerServer for CephFS: volumes are
// subvolumes of the mgr volumes module, with a quota of their size.
type Controller struct {
	csi.UnimplementedControllerServer
	opts  ControllerOptions
	locks volume.Locks
	// known remembers, per cluster, the filesystems whose journals calls
	// without secrets list (a Place's Pool is a filesystem's name).
	known volume.Known[Cluster]
	fss   sync.Map // "cluster/name" and "cluster#FSCID" -> FSInfo
}

// NewController returns the controller service.
func NewController(opts ControllerOptions) *Controller {
	if opts.DefaultSize == 0 {
		opts.DefaultSize = 1 << 30
	}
	if opts.CephCSIInstanceID == "" {
		opts.CephCSIInstanceID = journal.DefaultCephCSIInstance
	}
	if opts.ClonePoll == 0 {
		opts.ClonePoll = 20 * time.Millisecond
	}
	return &Controller{opts: opts}
}

// ControllerGetCapabilities advertises exactly what is implemented: no
// attach, since shared filesystems need none.
func (c *Controller) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return volume.ControllerCapabilities(), nil
}

// connect opens the cluster with the request's secrets; the first time,
// it remembers every filesystem's journal, for the calls without secrets.
func (c *Controller) connect(ctx context.Context, clusterID string, secrets map[string]string) (Cluster, error) {
	cl, err := volume.Connect(ctx, c.opts.Connector, clusterID, secrets)
	if err != nil {
		return nil, err
	}
	if _, ok := c.known.Cluster(clusterID); !ok {
		if err := c.learnFileSystems(ctx, cl); err != nil {
			return nil, toStatus(err)
		}
	}
	return cl, nil
}

// clusterFor connects with secrets, or uses the cluster an earlier call
// with secrets opened.
func (c *Controller) clusterFor(ctx context.Context, clusterID string, secrets map[string]string) (Cluster, error) {
	if len(secrets) > 0 {
		return c.connect(ctx, clusterID, secrets)
	}
	return c.known.Opened(clusterID)
}

// learnFileSystems caches the cluster's filesystems, by name and FSCID,
// and remembers each as a place journals may be.
func (c *Controller) learnFileSystems(ctx context.Context, cl Cluster) error {
	fss, err := cl.Volumes().FileSystems(ctx)
	if err != nil {
		return err
	}
	cc, err := c.opts.Config.Cluster(cl.ClusterID())
	if err != nil {
		return err
	}
	for _, fs := range fss {
		c.fss.Store(cl.ClusterID()+"/"+fs.Name, fs)
		c.fss.Store(cl.ClusterID()+"#"+strconv.FormatInt(fs.ID, 10), fs)
		c.known.Remember(cl, fs.Name, cc.CephFSRadosNamespace())
	}
	return nil
}

// fileSystem finds a filesystem by name ("/name") or FSCID ("#ID"),
// learning the cluster's filesystems again when it is not known yet.
func (c *Controller) fileSystem(ctx context.Context, cl Cluster, key string) (FSInfo, error) {
	if fs, ok := c.fss.Load(cl.ClusterID() + key); ok {
		return fs.(FSInfo), nil
	}
	if err := c.learnFileSystems(ctx, cl); err != nil {
		return FSInfo{}, err
	}
	if fs, ok := c.fss.Load(cl.ClusterID() + key); ok {
		return fs.(FSInfo), nil
	}
	return FSInfo{}, fmt.Errorf("%w: no filesystem %s in cluster %q", ceph.ErrPoolNotFound, key[1:], cl.ClusterID())
}

// journal opens the journals of a filesystem, in its metadata pool:
// Pelagic's over ceph-csi's (see cephcsi.go).
func (c *Controller) journal(ctx context.Context, cl Cluster, fs FSInfo) (journal.Journal, error) {
	cc, err := c.opts.Config.Cluster(cl.ClusterID())
	if err != nil {
		return nil, err
	}
	own, err := cl.Journal(ctx, fs.MetadataPool, cc.CephFSRadosNamespace())
	if err != nil {
		return nil, err
	}
	theirs, err := cl.CephCSIJournal(ctx, fs.MetadataPool, cc.CephFSRadosNamespace(), c.opts.CephCSIInstanceID)
	if err != nil {
		return nil, err
	}
	return journal.Layered{Own: own, CephCSI: cephCSIRecords{Journal: theirs, clusterID: cl.ClusterID(), fs: fs,
		group: cc.SubvolumeGroup(), vols: cl.Volumes()}}, nil
}

// resolved is an ID resolved to its filesystem and journal record.
type resolved struct {
	id      volumeid.ID
	cluster Cluster
	fs      FSInfo
	journal journal.Journal
	rec     *journal.Record
}

// subvolume is what backs the record: a volume's subvolume, or the
// subvolume a snapshot was taken of.
func (r *resolved) subvolume() Subvolume {
	return Subvolume{FS: r.fs.Name, Group: r.rec.Params[ParamSubvolumeGroup], Name: r.rec.Backing}
}

// backedBySnapshot tells a volume that is a read-only view of a snapshot.
func (r *resolved) backedBySnapshot() bool { return r.rec.Params[ParamBackingSnapshot] == "true" }

// resolve parses an ID (its location is the FSCID) and reads its record.
func (c *Controller) resolve(ctx context.Context, kind journal.Kind, id string, secrets map[string]string) (*resolved, error) {
	r := &resolved{}
	vid, j, rec, err := volume.Resolve(ctx, kind, id, func(ctx context.Context, vid volumeid.ID) (journal.Journal, error) {
		if _, err := c.opts.Config.Cluster(vid.ClusterID); err != nil {
			return nil, err
		}
		cl, err := c.clusterFor(ctx, vid.ClusterID, secrets)
		if err != nil {
			return nil, err
		}
		if r.fs, err = c.fileSystem(ctx, cl, "#"+strconv.FormatInt(vid.PoolID, 10)); err != nil {
			return nil, err
		}
		r.cluster = cl
		return c.journal(ctx, cl, r.fs)
	})
	if err != nil {
		return nil, err
	}
	r.id, r.journal, r.rec = vid, j, rec
	return r, nil
}

// Record is the journal record the ID resolved to.
func (r *resolved) Record() *journal.Record { return r.rec }

// calls are the CSI side of the calls both drivers answer alike.
func (c *Controller) calls() volume.Calls[*resolved] {
	return volume.Calls[*resolved]{Locks: &c.locks, Resolve: c.resolve}
}

// CreateVolume makes a subvolume with a quota of the requested size, empty
// or a copy of a snapshot or volume, or, with backingSnapshot, a read-only
// view of a snapshot. The name is reserved in the journal first, so a
// retry finds what an interrupted call made instead of making another.
func (c *Controller) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	params, size, err := c.checkCreate(req)
	if err != nil {
		return nil, err
	}
	unlock, err := c.locks.Lock(volume.NameKey(req.GetName()))
	if err != nil {
		return nil, err
	}
	defer unlock()
	cl, err := c.connect(ctx, params.ClusterID, req.GetSecrets())
	if err != nil {
		return nil, err
	}
	fs, err := c.fileSystem(ctx, cl, "/"+params.FSName)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%s %q: %v", ParamFSName, params.FSName, err)
	}
	j, err := c.journal(ctx, cl, fs)
	if err == nil {
		err = takeBackHalfCephCSI(ctx, j, cl.Volumes(), journal.Volume, req.GetName())
	}
	if err != nil {
		return nil, toStatus(err)
	}
	src, unlockSrc, err := c.resolveSource(ctx, req, fs, params.BackingSnapshot)
	if err != nil {
		return nil, err
	}
	defer unlockSrc()
	if size, err = sourceSize(size, src, req.GetCapacityRange()); err != nil {
		return nil, err
	}
	rec, reserved, err := volume.Reserve(ctx, j, volume.Request{Name: req.GetName(), Params: params.journalParams(),
		Source: src.id(), Size: size, Limit: req.GetCapacityRange().GetLimitBytes(), BackingPrefix: params.NamePrefix})
	if err != nil {
		return nil, err
	}
	if c.opts.AfterReserve != nil {
		c.opts.AfterReserve(req.GetName())
	}
	sv := Subvolume{FS: fs.Name, Group: params.Group, Name: rec.Backing}
	path, err := c.ensureVolume(ctx, cl.Volumes(), sv, rec, params, src, reserved)
	if err := toStatus(err); err != nil {
		if reserved && volume.Final(err) {
			c.undoReservation(cl.Volumes(), j, sv, rec, params.BackingSnapshot)
		}
		return nil, err
	}
	id := volumeid.ID{ClusterID: params.ClusterID, PoolID: fs.ID, UUID: rec.UUID}
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{VolumeId: id.String(), CapacityBytes: rec.SizeBytes,
		VolumeContext: volumeContext(params.ClusterID, contextParams(rec, params), rec.Backing, path), ContentSource: req.GetVolumeContentSource()}}, nil
}

// checkCreate validates a CreateVolume request and fills in the defaults.
func (c *Controller) checkCreate(req *csi.CreateVolumeRequest) (*VolumeParams, int64, error) {
	if req.GetName() == "" {
		return nil, 0, status.Error(codes.InvalidArgument, "volume name is missing")
	}
	params, err := ParseVolumeParams(req.GetParameters())
	if err != nil {
		return nil, 0, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := checkCapabilities(req.GetVolumeCapabilities(), params.BackingSnapshot); err != nil {
		return nil, 0, status.Error(codes.InvalidArgument, err.Error())
	}
	if params.BackingSnapshot && req.GetVolumeContentSource().GetSnapshot() == nil {
		return nil, 0, status.Errorf(codes.InvalidArgument, "%s needs a snapshot as the volume's content source", ParamBackingSnapshot)
	}
	size, err := volume.RequestSize(req.GetCapacityRange(), c.opts.DefaultSize)
	if err != nil {
		return nil, 0, err
	}
	cc, err := c.opts.Config.Cluster(params.ClusterID)
	if err != nil {
		return nil, 0, status.Error(codes.InvalidArgument, err.Error())
	}
	if params.Group == "" {
		params.Group = cc.SubvolumeGroup()
	}
	return params, size, nil
}

// ensureVolume makes the reserved volume unless it exists, then finishes
// what an interrupted call left; it returns the path to mount when the
// node cannot ask the mgr for it (a view of a snapshot). A reservation
// made just now cannot have a subvolume yet; an older one is looked at
// first: creating a subvolume that exists would change it.
func (c *Controller) ensureVolume(ctx context.Context, v Volumes, sv Subvolume, rec *journal.Record, params *VolumeParams,
	src *contentSource, fresh bool) (string, error) {
	if params.BackingSnapshot {
		return SnapshotPath(ctx, v, src.snapshot)
	}
	if !fresh {
		info, err := v.Subvolume(ctx, sv)
		switch {
		case err == nil && info.State == StateSnapRetained:
			return "", status.Errorf(codes.FailedPrecondition, "subvolume %s of volume %q was deleted; only its snapshots remain", sv, rec.Name)
		case err == nil:
			return "", c.finishCopy(ctx, v, sv, rec, src, info.BytesQuota)
		case errors.Is(err, ErrInProgress):
			return "", c.awaitClone(ctx, v, sv, rec, src)
		case !errors.Is(err, ErrNotFound):
			return "", err
		}
	}
	if src == nil {
		err := v.EnsureGroup(ctx, sv.FS, sv.Group)
		if err == nil {
			err = v.CreateSubvolume(ctx, sv, SubvolumeSpec{Size: rec.SizeBytes, Pool: params.Pool})
		}
		return "", err
	}
	return "", c.cloneInto(ctx, v, sv, rec, params.Pool, src)
}

// undoReservation takes back a reservation whose volume was never made,
// so a failed request leaves nothing behind; one whose subvolume exists
// (a clone still running) or may exist stays for the retry. It runs on
// its own deadline: the request's may be what failed.
func (c *Controller) undoReservation(v Volumes, j journal.Journal, sv Subvolume, rec *journal.Record, view bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if !view {
		if _, err := v.Subvolume(ctx, sv); !errors.Is(err, ErrNotFound) {
			return
		}
	}
	if err := j.Remove(ctx, rec); err != nil {
		klog.FromContext(ctx).Error(err, "removing reservation", "name", rec.Name, "uuid", rec.UUID)
	}
}

// DeleteVolume removes the subvolume, keeping its snapshots (they outlive
// it, as CSI snapshots must), and its journal entry. A volume no journal
// knows is already deleted unless a subvolume of its UUID is left; a view
// of a snapshot has nothing to remove.
func (c *Controller) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	return c.calls().DeleteVolume(ctx, req, c.deleteUnknown, c.deleteVolume)
}

// deleteVolume removes a resolved volume's subvolume, then its record.
func (c *Controller) deleteVolume(ctx context.Context, r *resolved, req *csi.DeleteVolumeRequest) error {
	if !r.backedBySnapshot() {
		if err := c.removeSubvolume(ctx, r); err != nil {
			return toStatus(fmt.Errorf("deleting volume %s: %w", req.GetVolumeId(), err))
		}
	}
	return toStatus(r.journal.Remove(ctx, r.rec))
}

// removeSubvolume removes a volume's subvolume, stopping a clone into it
// first, and the temporary snapshot a clone of a volume took of its source.
func (c *Controller) removeSubvolume(ctx context.Context, r *resolved) error {
	v, sv := r.cluster.Volumes(), r.subvolume()
	err := v.RemoveSubvolume(ctx, sv, RemoveOptions{RetainSnapshots: true})
	if errors.Is(err, ErrInProgress) {
		err = c.removeClone(ctx, v, sv)
	}
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	if kind, id, ok := parseSource(r.rec.Source); ok && kind == journal.Volume {
		return c.removeCloneSnapshot(ctx, r, id)
	}
	return nil
}

// removeCloneSnapshot removes the snapshot a clone of the volume id took,
// should the clone's own CreateVolume not have removed it.
func (c *Controller) removeCloneSnapshot(ctx context.Context, r *resolved, id string) error {
	src, err := c.resolve(ctx, journal.Volume, id, nil)
	if err != nil {
		return nil // the source is gone, and its snapshots with it
	}
	return ignoreNotFound(r.cluster.Volumes().RemoveSnapshot(ctx, Snapshot{Subvolume: src.subvolume(), Name: r.rec.Backing}))
}

// ControllerExpandVolume raises the quota. Nothing is left for the node.
func (c *Controller) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	return c.calls().ExpandVolume(ctx, req, c.raiseQuota)
}

// raiseQuota raises a resolved volume's quota to size.
func (c *Controller) raiseQuota(ctx context.Context, r *resolved, size int64, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	if r.backedBySnapshot() {
		return nil, status.Errorf(codes.InvalidArgument, "volume %s is a read-only view of a snapshot: it cannot grow", req.GetVolumeId())
	}
	info, err := r.cluster.Volumes().Subvolume(ctx, r.subvolume())
	if err != nil {
		return nil, toStatus(err)
	}
	if info.BytesQuota == 0 || info.BytesQuota >= size { // no quota: nothing limits it
		return &csi.ControllerExpandVolumeResponse{CapacityBytes: max(info.BytesQuota, size)}, nil
	}
	if err := r.cluster.Volumes().ResizeSubvolume(ctx, r.subvolume(), size); err != nil {
		return nil, toStatus(err)
	}
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: size}, nil
}

// ValidateVolumeCapabilities confirms capabilities the volume supports,
// with the parameters and volume context given when they describe it.
func (c *Controller) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	return c.calls().ValidateVolumeCapabilities(ctx, req, func(ctx context.Context, r *resolved, req *csi.ValidateVolumeCapabilitiesRequest) (string, error) {
		if _, err := c.volumeSize(ctx, r); err != nil {
			return "", toStatus(err)
		}
		return r.mismatch(req), nil
	})
}

// mismatch says why a validation request does not describe the volume.
func (r *resolved) mismatch(req *csi.ValidateVolumeCapabilitiesRequest) string {
	if err := checkCapabilities(req.GetVolumeCapabilities(), r.backedBySnapshot()); err != nil {
		return err.Error()
	}
	if len(req.GetParameters()) > 0 {
		p, err := ParseVolumeParams(req.GetParameters())
		if err != nil {
			return err.Error()
		}
		if p.Group == "" {
			p.Group = r.rec.Params[ParamSubvolumeGroup]
		}
		if !describes(r.rec, p.journalParams()) {
			return "the parameters are not those the volume was created with"
		}
	}
	vctx := req.GetVolumeContext()
	if n := vctx[CtxSubvolumeName]; n != "" && n != r.rec.Backing {
		return fmt.Sprintf("the volume context names subvolume %s; the volume is %s", n, r.rec.Backing)
	}
	if fs := vctx[ParamFSName]; fs != "" && fs != r.fs.Name {
		return fmt.Sprintf("the volume context names filesystem %s; the volume is in %s", fs, r.fs.Name)
	}
	return ""
}

// volumeSize is the quota of a volume's subvolume, or the size of the
// snapshot a view shows; NotFound when either is gone.
func (c *Controller) volumeSize(ctx context.Context, r *resolved) (int64, error) {
	v := r.cluster.Volumes()
	if r.backedBySnapshot() {
		_, id, _ := parseSource(r.rec.Source)
		snap, err := c.resolve(ctx, journal.Snapshot, id, nil)
		if err != nil {
			return 0, err
		}
		_, err = v.Snapshot(ctx, Snapshot{Subvolume: snap.subvolume(), Name: snap.rec.SnapName})
		return snap.rec.SizeBytes, err
	}
	info, err := v.Subvolume(ctx, r.subvolume())
	if errors.Is(err, ErrInProgress) {
		return r.rec.SizeBytes, nil // a clone still copying: it exists
	}
	if info.BytesQuota == 0 {
		info.BytesQuota = r.rec.SizeBytes
	}
	return info.BytesQuota, err
}

// ControllerGetVolume reports a volume whose subvolume exists.
func (c *Controller) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	return c.calls().GetVolume(ctx, req, func(ctx context.Context, r *resolved) (int64, error) {
		size, err := c.volumeSize(ctx, r)
		return size, toStatus(err)
	})
}

// GetCapacity reports the space of the data pool the parameters name (the
// class's pool, else its filesystem's default data pool), or the most any
// known filesystem's default data pool has.
func (c *Controller) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	if err := checkCapabilities(req.GetVolumeCapabilities(), false); len(req.GetVolumeCapabilities()) > 0 && err != nil {
		return &csi.GetCapacityResponse{}, nil // not servable: no capacity
	}
	p := req.GetParameters()
	var best int64
	for _, kp := range c.known.Pools() {
		if (p[ParamClusterID] != "" && kp.ClusterID != p[ParamClusterID]) || (p[ParamFSName] != "" && kp.Pool != p[ParamFSName]) {
			continue
		}
		fs, err := c.fileSystem(ctx, kp.Cluster, "/"+kp.Pool)
		if err != nil || len(fs.DataPools) == 0 {
			continue // removed since
		}
		pool := fs.DataPools[0]
		if p[ParamPool] != "" {
			pool = p[ParamPool]
		}
		avail, err := kp.Cluster.AvailableBytes(ctx, pool)
		if err != nil {
			return nil, toStatus(err)
		}
		best = max(best, avail)
	}
	return &csi.GetCapacityResponse{AvailableCapacity: best}, nil
}

// listedRecord is a journal record with its ID.
type listedRecord struct {
	rec *journal.Record
	id  string
}

// Record is the listed journal record.
func (l listedRecord) Record() *journal.Record { return l.rec }

// listRecords gathers the journal records of kind of every known
// filesystem, with their IDs.
func (c *Controller) listRecords(ctx context.Context, kind journal.Kind) ([]listedRecord, error) {
	var out []listedRecord
	for _, kp := range c.known.Pools() {
		fs, err := c.fileSystem(ctx, kp.Cluster, "/"+kp.Pool)
		if errors.Is(err, ceph.ErrPoolNotFound) {
			continue // removed since: nothing of ours is left in it
		}
		if err != nil {
			return nil, toStatus(err)
		}
		j, err := c.journal(ctx, kp.Cluster, fs)
		if err != nil {
			return nil, toStatus(err)
		}
		err = journal.ForEach(ctx, j, kind, 1000, func(r *journal.Record) {
			out = append(out, listedRecord{rec: r, id: volumeid.ID{ClusterID: kp.ClusterID, PoolID: fs.ID, UUID: r.UUID}.String()})
		})
		if err != nil {
			return nil, toStatus(err)
		}
	}
	return out, nil
}

// ListVolumes lists the volumes of every filesystem this controller knows.
func (c *Controller) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	all, err := c.listRecords(ctx, journal.Volume)
	if err != nil {
		return nil, err
	}
	return volume.ListVolumes(len(all), req, func(i int) (*csi.Volume, error) {
		return &csi.Volume{VolumeId: all[i].id, CapacityBytes: all[i].rec.SizeBytes}, nil
	})
}

// toStatus is volume.Status with the mgr's refusals coded: a clone not done
// yet is a retry's business, a group or filesystem gone is NotFound.
func toStatus(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrInProgress):
		return status.Error(codes.Aborted, err.Error())
	case errors.Is(err, ErrHasSnapshots):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, ErrTimedOut):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return volume.Status(err)
}

func ignoreNotFound(err error) error {
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}
