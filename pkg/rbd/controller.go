package rbd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/klog/v2"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/kube"
	"github.com/pelagic-csi/pelagic/pkg/util"
	"github.com/pelagic-csi/pelagic/pkg/volume"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

// ControllerOptions configure the controller service.
type ControllerOptions struct {
	Connector Connector
	Config    *ceph.Config
	// Clones deeper than SoftCloneDepth are flattened in the background,
	// deeper than HardCloneDepth before CreateVolume returns.
	SoftCloneDepth int
	HardCloneDepth int
	// DefaultSize is used when a request sets no capacity.
	DefaultSize int64
	// FenceExpiry is how long a fence of a stale holder lasts before the
	// fence keeper must renew it; FenceTimeout how long publish waits for
	// the fenced watch to go; FenceKeeperInterval how often RunFenceKeeper
	// checks fences (default a quarter of FenceExpiry, at most 5 minutes).
	FenceExpiry         time.Duration
	FenceTimeout        time.Duration
	FenceKeeperInterval time.Duration
	// FenceHook, when set, runs after each step of a fence (FenceStep*):
	// tests use it to kill a controller between the steps.
	FenceHook func(step string)
	// CreateHook, when set, runs after each step of a CreateVolume
	// (CreateStep*): tests use it to stop or kill a controller between them.
	CreateHook func(step string)
	// CreatedElsewhereWait bounds how long a CreateVolume waits for an
	// image another request is creating from the same reservation
	// (default 10 s); then it is Aborted, for the provisioner to retry.
	CreatedElsewhereWait time.Duration
	// Holders, when set, is told of refusals and fences.
	Holders HolderObserver
	// Nodes, when set, tells which node IDs exist, so that publishing to
	// any other is NotFound. Without it (no Kubernetes access) the
	// controller cannot tell and publishes to any node ID.
	Nodes kube.NodeChecker
	// CephCSIInstanceID is the instance ID (--instanceid) of the ceph-csi
	// whose volumes this controller serves (default "default").
	CephCSIInstanceID string
}

// Controller implements csi.ControllerServer for RBD.
type Controller struct {
	csi.UnimplementedControllerServer
	opts       ControllerOptions
	locks      volume.Locks
	known      volume.Known[Cluster]
	discovered sync.Map // cluster ID -> true once its journal pools are known
	registered sync.Map // "cluster/pool/namespace" -> true once this instance is in its controller registry
	renewable  sync.Map // cluster ID -> whether a blocklist entry's expiry can be extended in place
}

// NewController returns the controller service.
func NewController(opts ControllerOptions) *Controller {
	if opts.SoftCloneDepth == 0 {
		opts.SoftCloneDepth = 4
	}
	if opts.HardCloneDepth == 0 {
		opts.HardCloneDepth = 8
	}
	if opts.DefaultSize == 0 {
		opts.DefaultSize = 1 << 30
	}
	if opts.CreatedElsewhereWait == 0 {
		opts.CreatedElsewhereWait = 10 * time.Second
	}
	if opts.CephCSIInstanceID == "" {
		opts.CephCSIInstanceID = journal.DefaultCephCSIInstance
	}
	return &Controller{opts: opts}
}

// metaOwnerKey is the image metadata key holding who the volume is for.
const metaOwnerKey = "pelagic.csi/owner"

// ControllerGetCapabilities advertises exactly what is implemented: what
// both drivers do, and attaching, which fences stale holders.
func (c *Controller) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return volume.ControllerCapabilities(csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME,
		csi.ControllerServiceCapability_RPC_PUBLISH_READONLY), nil
}

// connect opens the cluster with the request's secrets and remembers it.
// Controller calls use the secret's own user: all but CreateVolume carry
// no class parameters (see VolumeParams.checkAdminID).
func (c *Controller) connect(ctx context.Context, clusterID string, secrets map[string]string) (Cluster, error) {
	cl, err := volume.Connect(ctx, c.opts.Connector, clusterID, secrets)
	if err != nil {
		return nil, err
	}
	c.discoverPools(ctx, cl)
	return cl, nil
}

// discoverPools learns, once per cluster, every pool that already holds a
// journal, so the calls that carry no secrets (ListVolumes, ListSnapshots,
// GetCapacity) see volumes made before this process started.
func (c *Controller) discoverPools(ctx context.Context, cl Cluster) {
	if _, done := c.discovered.LoadOrStore(cl.ClusterID(), true); done {
		return
	}
	cc, err := c.opts.Config.Cluster(cl.ClusterID())
	if err != nil {
		return
	}
	pools, err := cl.PoolsHolding(ctx, cc.RBD.RadosNamespace,
		append(journal.DirectoryObjects(JournalPrefix), journal.CephCSIDirectoryObjects(c.opts.CephCSIInstanceID)...)...)
	if err != nil {
		c.discovered.Delete(cl.ClusterID())
		klog.FromContext(ctx).Error(err, "looking for journals", "cluster", cl.ClusterID())
		return
	}
	for _, p := range pools {
		c.known.Remember(cl, p, cc.RBD.RadosNamespace)
	}
}

// clusterFor returns a cluster for a request that may or may not carry
// secrets: with secrets it connects, without it uses a remembered handle.
func (c *Controller) clusterFor(ctx context.Context, clusterID string, secrets map[string]string) (Cluster, error) {
	if len(secrets) > 0 {
		return c.connect(ctx, clusterID, secrets)
	}
	return c.known.Opened(clusterID)
}

// resolved is an ID resolved to its pool and journal record.
type resolved struct {
	id      volumeid.ID
	cluster Cluster
	pool    Pool
	rec     *journal.Record
}

// resolve parses an ID and reads its journal record. A malformed ID or
// one naming an unknown cluster or pool is NotFound.
func (c *Controller) resolve(ctx context.Context, kind journal.Kind, id string, secrets map[string]string) (*resolved, error) {
	var cl Cluster
	vid, pool, rec, err := volume.Resolve(ctx, kind, id, func(ctx context.Context, vid volumeid.ID) (Pool, error) {
		cc, err := c.opts.Config.Cluster(vid.ClusterID)
		if err != nil {
			return nil, err
		}
		if cl, err = c.clusterFor(ctx, vid.ClusterID, secrets); err != nil {
			return nil, err
		}
		name, err := cl.PoolName(ctx, vid.PoolID)
		if err != nil {
			return nil, err
		}
		return c.usePool(ctx, cl, name, cc.RBD.RadosNamespace)
	})
	if status.Code(err) == codes.NotFound && pool != nil {
		rec, err = c.resolveCephCSI(ctx, kind, id, vid, pool)
	}
	if err != nil {
		return nil, err
	}
	return &resolved{id: vid, cluster: cl, pool: pool, rec: rec}, nil
}

// usePool opens a pool for a request and remembers it, for the calls that
// carry no secrets and for the fence keeper.
func (c *Controller) usePool(ctx context.Context, cl Cluster, pool, namespace string) (Pool, error) {
	p, err := cl.Pool(ctx, pool, namespace)
	if err != nil {
		return nil, err
	}
	c.known.Remember(cl, pool, namespace)
	c.register(ctx, cl, p)
	return p, nil
}

// Record is the journal record the ID resolved to.
func (r *resolved) Record() *journal.Record { return r.rec }

// calls are the CSI side of the calls both drivers answer alike; with
// LockResolved, the caller must call unlock on success.
func (c *Controller) calls() volume.Calls[*resolved] {
	return volume.Calls[*resolved]{Locks: &c.locks, Resolve: c.resolve}
}

// CreateVolume creates an image, from nothing, a snapshot or a volume.
func (c *Controller) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume name is missing")
	}
	if err := validateCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	params, err := ParseVolumeParams(req.GetParameters())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := params.checkAdminID(req.GetSecrets()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	size, err := volume.RequestSize(req.GetCapacityRange(), c.opts.DefaultSize)
	if err != nil {
		return nil, err
	}
	cc, err := c.opts.Config.Cluster(params.ClusterID)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	params.RadosNamespace = cc.RBD.RadosNamespace
	unlock, err := c.locks.Lock(volume.NameKey(req.GetName()))
	if err != nil {
		return nil, err
	}
	handedOver := false // to undoReservation, which unlocks when done
	defer func() {
		if !handedOver {
			unlock()
		}
	}()

	cl, err := c.connect(ctx, params.ClusterID, req.GetSecrets())
	if err != nil {
		return nil, err
	}
	pool, err := c.usePool(ctx, cl, params.Pool, params.RadosNamespace)
	if err != nil {
		return nil, volume.Status(err)
	}

	source, err := c.resolveSource(ctx, req.GetVolumeContentSource(), req.GetSecrets())
	if err != nil {
		return nil, err
	}
	if source != nil && source.size > size {
		if lim := req.GetCapacityRange().GetLimitBytes(); lim > 0 && source.size > lim {
			return nil, status.Errorf(codes.OutOfRange, "source is %d bytes, more than the limit %d", source.size, lim)
		}
		size = source.size
	}
	if vol, err := c.cephCSIVolume(ctx, cl, pool, req, params, size); vol != nil || err != nil {
		return &csi.CreateVolumeResponse{Volume: vol}, err
	}
	rec, reserved, err := volume.Reserve(ctx, pool, volume.Request{Name: req.GetName(), Params: params.journalParams(),
		Source: source.id(), Size: size, Limit: req.GetCapacityRange().GetLimitBytes(), BackingPrefix: params.NamePrefix})
	if err != nil {
		return nil, err
	}
	c.createStep(CreateStepReserved)
	if err := volume.Status(c.ensureImage(ctx, pool, rec, params, source, reserved)); err != nil {
		if reserved && volume.Final(err) {
			// Only the caller that made a reservation may take it back:
			// another may be creating the image of one it found.
			handedOver = true
			c.undoReservation(ctx, pool, rec, unlock)
		}
		return nil, err
	}
	return &csi.CreateVolumeResponse{Volume: c.volumeOf(cl, pool, rec, params, req.GetVolumeContentSource())}, nil
}

// Steps of a CreateVolume, passed to ControllerOptions.CreateHook.
const (
	CreateStepReserved  = "reserved"       // the journal holds the name; no image yet
	CreateStepCloneSnap = "clone-snapshot" // a clone's temporary snapshot of its source exists; no image yet
	CreateStepImage     = "image"          // the image exists; its owner record is not written yet
)

func (c *Controller) createStep(step string) {
	if c.opts.CreateHook != nil {
		c.opts.CreateHook(step)
	}
}

func (c *Controller) volumeOf(cl Cluster, pool Pool, rec *journal.Record, params *VolumeParams, src *csi.VolumeContentSource) *csi.Volume {
	id := volumeid.ID{ClusterID: cl.ClusterID(), PoolID: pool.ID(), UUID: rec.UUID}
	return &csi.Volume{
		VolumeId:      id.String(),
		CapacityBytes: rec.SizeBytes,
		VolumeContext: params.volumeContext(rec.Backing),
		ContentSource: src,
	}
}

// undoReservation removes a reservation whose image was never created, so
// a failed request leaves nothing behind, then calls unlock: until then no
// retry may create the image it is disowning. It runs on its own deadline,
// as the request's may be what failed, but the request waits for it no
// longer than its own deadline: a stalled cluster must not hold the reply.
func (c *Controller) undoReservation(ctx context.Context, pool Pool, rec *journal.Record, unlock func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer unlock()
		c.removeReservation(pool, rec)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

func (c *Controller) removeReservation(pool Pool, rec *journal.Record) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := pool.Head(ctx, rec.Backing); !errors.Is(err, ErrImageNotFound) {
		return // the image exists or we cannot tell: keep the reservation for the retry
	}
	if err := pool.Remove(ctx, rec); err != nil {
		klog.FromContext(ctx).Error(err, "removing reservation", "name", rec.Name, "uuid", rec.UUID)
	}
}

// ensureImage creates the reserved image unless it exists already, then
// finishes the steps a crash may have cut short; each is idempotent. A
// reservation made just now under a fresh UUID cannot have an image yet.
func (c *Controller) ensureImage(ctx context.Context, pool Pool, rec *journal.Record, params *VolumeParams,
	source *contentSource, fresh bool) error {
	var head ImageHead
	err := ErrImageNotFound
	if !fresh {
		head, err = pool.Head(ctx, rec.Backing)
	}
	created := false // a new image, no clone: its metadata is empty
	if errors.Is(err, ErrImageNotFound) {
		spec := ImageSpec{Name: rec.Backing, Size: rec.SizeBytes, Features: params.Features, DataPool: params.DataPool,
			ObjectSize: params.ObjectSize, StripeUnit: params.StripeUnit, StripeCount: params.StripeCount}
		if source == nil {
			err = pool.CreateImage(ctx, spec)
		} else {
			err = c.cloneImage(ctx, pool, rec, spec, source)
		}
		if err == nil {
			created = source == nil
			c.createStep(CreateStepImage)
		} else if ceph.Errno(err) == syscall.EEXIST {
			head, err = c.awaitCreated(ctx, pool, rec.Backing, source != nil)
			if err == nil {
				err = c.finishExisting(ctx, pool, rec, head, source)
			}
		}
	} else if err == nil {
		err = c.finishExisting(ctx, pool, rec, head, source)
	}
	if err != nil {
		return err
	}
	if source != nil && source.kind == journal.Volume {
		if err := pool.RemoveSnap(ctx, source.head.ID, cloneSnapName(rec.UUID)); err != nil {
			return err
		}
	}
	return writeOwner(ctx, pool, rec.Backing, Owner{Name: rec.Name, PVC: params.PVCName, Namespace: params.PVCNamespace,
		PV: params.PVName, Params: rec.Params}, created)
}

// finishExisting does what creating the existing image head may have left
// undone: its growth to the reserved size and a clone's flatten policy.
func (c *Controller) finishExisting(ctx context.Context, pool Pool, rec *journal.Record, head ImageHead, source *contentSource) error {
	if head.Size < rec.SizeBytes {
		if err := pool.Resize(ctx, rec.Backing, rec.SizeBytes); err != nil {
			return err
		}
	}
	if source == nil || head.Parent == nil {
		return nil
	}
	depth, err := cloneDepth(ctx, pool, head, c.opts.HardCloneDepth)
	if err != nil {
		return err
	}
	return c.applyFlattenPolicy(ctx, pool, rec.Backing, head.Parent.ImageID, depth)
}

// awaitCreated waits until the image another request is creating opens,
// with its parent attached if it is a clone. librbd takes the name before
// it writes the header and attaches a clone's parent after: answering on
// EEXIST alone would report a volume a DeleteVolume cannot find yet, whose
// creation then lands after the delete. A request abandoned at its
// deadline goes on in librbd, so the other creator may be this controller.
func (c *Controller) awaitCreated(ctx context.Context, pool Pool, image string, clone bool) (ImageHead, error) {
	var head ImageHead
	var readErr error
	err := util.WaitFor(ctx, c.opts.CreatedElsewhereWait, "image "+image, func() (bool, error) {
		head, readErr = pool.Head(ctx, image)
		if errors.Is(readErr, ErrImageNotFound) {
			return false, nil
		}
		return readErr == nil && (!clone || head.Parent != nil), readErr
	})
	if err != nil && ctx.Err() == nil && (readErr == nil || errors.Is(readErr, ErrImageNotFound)) {
		return head, status.Errorf(codes.Aborted, "image %s is being created by another request; not open after %v, retry",
			image, c.opts.CreatedElsewhereWait)
	}
	return head, err
}

// writeOwner records who the volume is for, the last step of its creation.
// librbd copies a parent's metadata into a clone, so until its own owner
// record is written a clone carries its parent's, and the parent's
// attachment, mapping and fence records, which name the parent's holders:
// those go in the same conditional write. Once the owner record names this
// volume, its usage records are its own and are left alone. An image this
// call has just created, no clone (created), has nothing to drop: the
// record is written without a read.
func writeOwner(ctx context.Context, pool Pool, image string, owner Owner, created bool) error {
	b, _ := json.Marshal(owner)
	if created {
		return pool.SetMetadata(ctx, image, map[string]string{metaOwnerKey: string(b)})
	}
	for attempt := 1; ; attempt++ {
		meta, version, err := pool.Records(ctx, image)
		if err != nil {
			return err
		}
		var current Owner
		if json.Unmarshal([]byte(meta[metaOwnerKey]), &current) == nil && current.Name == owner.Name {
			return pool.SetMetadata(ctx, image, map[string]string{metaOwnerKey: string(b)})
		}
		var inherited []string
		for k := range meta {
			if strings.HasPrefix(k, metaAttachPrefix) || strings.HasPrefix(k, metaMapPrefix) || strings.HasPrefix(k, metaFencePrefix) {
				inherited = append(inherited, k)
			}
		}
		err = pool.UpdateRecords(ctx, image, version, map[string]string{metaOwnerKey: string(b)}, inherited)
		if !errors.Is(err, ErrConflict) || attempt == maxRecordAttempts {
			return err
		}
	}
}

// DeleteVolume removes the image and its journal entry. A volume that
// does not exist (or an ID that cannot name one) is already deleted.
func (c *Controller) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	return c.calls().DeleteVolume(ctx, req, c.deleteUnresolved, c.deleteVolume)
}

// deleteUnresolved answers a DeleteVolume whose ID resolved to nothing:
// one that names an existing pool is looked for further.
func (c *Controller) deleteUnresolved(ctx context.Context, _ *csi.DeleteVolumeRequest, err error) (*csi.DeleteVolumeResponse, error) {
	if unknown := (*unknownID)(nil); errors.As(err, &unknown) {
		return c.deleteUnknown(ctx, unknown)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// deleteVolume removes a resolved volume's image, then its record.
func (c *Controller) deleteVolume(ctx context.Context, r *resolved, req *csi.DeleteVolumeRequest) error {
	if err := c.deleteImage(ctx, r); err != nil {
		return err
	}
	if r.rec.FromCephCSI() {
		// A clone ceph-csi made is chained to its source through this
		// image, which goes once the volume's own is gone.
		if err := removeImage(ctx, r.pool, r.rec.Backing+cephCSITempSuffix); err != nil {
			return volume.Status(fmt.Errorf("deleting volume %s: %w", req.GetVolumeId(), err))
		}
	}
	return volume.Status(c.journalOf(r.pool, r.rec).Remove(ctx, r.rec))
}

// deleteImage moves the volume's image to the trash, unless a client
// other than a fenced one or a controller watches it, and purges it
// unless snapshots or clones still need it; then the trashed ancestors it
// was the last child of. The image is opened once, for its watchers and
// its parent. An image found only in the trash (a retry after a crash) is
// purged the same way.
func (c *Controller) deleteImage(ctx context.Context, r *resolved) error {
	recs, err := readRecords(ctx, r.pool, r.rec.Backing)
	if errors.Is(err, ErrImageNotFound) {
		return volume.Status(purgeTrashed(ctx, r.pool, r.rec.Backing))
	}
	if err != nil {
		return volume.Status(err)
	}
	info, watchers, err := r.pool.Inspect(ctx, r.rec.Backing)
	if errors.Is(err, ErrImageNotFound) {
		return volume.Status(purgeTrashed(ctx, r.pool, r.rec.Backing))
	}
	if err != nil {
		return volume.Status(err)
	}
	err = c.refuseHolders(ctx, r, &Usage{Records: recs, Watchers: watchers, Now: time.Now()}, "deleted", func(h Holder) bool {
		return h.Watcher != nil && h.State != HolderFenced && h.State != HolderController
	})
	if err != nil {
		return err
	}
	if err := r.pool.Trash(ctx, r.rec.Backing); err != nil && !errors.Is(err, ErrImageNotFound) {
		return volume.Status(fmt.Errorf("deleting volume %s: %w", r.id, err))
	}
	var parentID string
	if p := info.Parent; p != nil && p.Trashed && p.Pool == r.pool.Name() && p.Namespace == r.pool.Namespace() {
		parentID = p.ImageID
	}
	if err := purgeWithAncestors(ctx, r.pool, info.ID, parentID); err != nil {
		return volume.Status(fmt.Errorf("deleting volume %s: %w", r.id, err))
	}
	return nil
}

// removeImage is deleteImage for an image no client maps (what ceph-csi
// chained its clones and snapshots through): to the trash, purged, then
// the trashed ancestors it was the last child of. An image only in the
// trash is purged; one that is nowhere is gone.
func removeImage(ctx context.Context, pool Pool, image string) error {
	head, err := pool.Head(ctx, image)
	if errors.Is(err, ErrImageNotFound) {
		return purgeTrashed(ctx, pool, image)
	}
	if err != nil {
		return err
	}
	if err := pool.Trash(ctx, image); err != nil && !errors.Is(err, ErrImageNotFound) {
		return err
	}
	return purgeWithAncestors(ctx, pool, head.ID, head.parentIn(pool))
}

// purgeTrashed purges the image the trash holds under that name, if any,
// and the trashed ancestors it was the last child of.
func purgeTrashed(ctx context.Context, pool Pool, image string) error {
	id, err := pool.TrashedID(ctx, image)
	if err != nil || id == "" {
		return err // "": gone
	}
	head, err := pool.HeadByID(ctx, id)
	if err != nil && !errors.Is(err, ErrImageNotFound) {
		return err
	}
	return purgeWithAncestors(ctx, pool, id, head.parentIn(pool))
}

// purgeWithAncestors purges the trashed image id unless snapshots or
// clones still need it; once it is gone, its parent parentID ("" for none)
// and the trashed ancestors above are purged as they are freed (purgeFreed).
// Failing to purge the image itself is the error.
func purgeWithAncestors(ctx context.Context, pool Pool, id, parentID string) error {
	removed, err := pool.Purge(ctx, id)
	if err != nil {
		return err
	}
	if removed && parentID != "" {
		purgeFreed(ctx, pool, parentID)
	}
	return nil
}

// purgeFreed purges the trashed image id, which a call has just freed
// (it removed its last snapshot or clone child), then each trashed
// ancestor freed in turn, reading an image's parent before it goes. It
// touches nothing else in the trash. An image that is not trashed, or is
// still needed, ends the chain; so does an error, which only leaves an
// image in the trash until the next call that frees it, and is logged.
// The trash entry is read first: most often (a snapshot's deletion while
// its volume lives) there is none, and that is one read.
func purgeFreed(ctx context.Context, pool Pool, id string) {
	for id != "" {
		if trashed, err := pool.InTrash(ctx, id); err == nil && !trashed {
			return
		}
		head, err := pool.HeadByID(ctx, id)
		if err != nil {
			if !errors.Is(err, ErrImageNotFound) {
				klog.FromContext(ctx).Error(err, "reading a trashed parent before purging it", "pool", pool.Name(), "id", id)
			}
			return
		}
		removed, err := pool.Purge(ctx, id)
		if err != nil {
			klog.FromContext(ctx).Error(err, "purging a freed trashed image", "pool", pool.Name(), "id", id)
			return
		}
		if !removed {
			return
		}
		id = head.parentIn(pool)
	}
}

// refuseHolders fails with FailedPrecondition, naming them, when any
// holder of the volume's image matches blocks.
func (c *Controller) refuseHolders(ctx context.Context, r *resolved, usage *Usage, verb string, blocks func(Holder) bool) error {
	if err := recognizeControllers(ctx, r.pool, usage); err != nil {
		return volume.Status(err)
	}
	var in []Holder
	for _, h := range usage.Holders("") {
		if blocks(h) {
			in = append(in, h)
		}
	}
	if len(in) > 0 {
		return status.Errorf(codes.FailedPrecondition, "volume %s (image %s/%s) cannot be %s while in use: %s",
			r.id, r.pool.Name(), r.rec.Backing, verb, describeAll(in))
	}
	return nil
}

// ControllerExpandVolume grows the image.
func (c *Controller) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	return c.calls().ExpandVolume(ctx, req, c.growImage)
}

// growImage grows a resolved volume's image to size, unless a holder the
// CO no longer accounts for maps it.
func (c *Controller) growImage(ctx context.Context, r *resolved, size int64, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	own, err := r.cluster.ClientAddr(ctx)
	if err != nil {
		return nil, volume.Status(err)
	}
	// Growing an image a stale or unknown client still maps would change it
	// under a holder the CO no longer accounts for. The watch of the open
	// that grows it is this controller's own. A client no node recorded on
	// a volume ceph-csi provisioned is its node plugin's mapping, which
	// ceph-csi grew in use as Pelagic grows its own.
	now, err := r.pool.Grow(ctx, r.rec.Backing, size, func(_ ImageInfo, watchers []Watcher) error {
		usage := &Usage{Records: &Records{}, Watchers: watchers, Controllers: ceph.AddrVec(own), Now: time.Now()}
		// The records only tell who a watcher is: with no watcher but this
		// open, they cannot refuse, and are not read.
		if usage.unexplainedWatcher() {
			recs, err := readRecords(ctx, r.pool, r.rec.Backing)
			if err != nil {
				return err
			}
			usage.Records = recs
		}
		return c.refuseHolders(ctx, r, usage, "expanded", func(h Holder) bool {
			return h.Watcher != nil && (h.State == HolderStale || (h.State == HolderUnknown && !r.rec.FromCephCSI()))
		})
	})
	if err != nil {
		return nil, volume.Status(err)
	}
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: now, NodeExpansionRequired: req.GetVolumeCapability().GetBlock() == nil}, nil
}

// ValidateVolumeCapabilities confirms the capabilities an existing volume
// supports, and the parameters and volume context the request names when
// they describe that volume.
func (c *Controller) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	return c.calls().ValidateVolumeCapabilities(ctx, req, c.mismatch)
}

// mismatch says why a validation request does not describe the volume,
// "" when it does; it fails when the volume's image is gone.
func (c *Controller) mismatch(ctx context.Context, r *resolved, req *csi.ValidateVolumeCapabilitiesRequest) (string, error) {
	var info ImageInfo
	var err error
	if r.rec.FromCephCSI() {
		info, err = r.pool.Stat(ctx, r.rec.Backing) // its parameters are read from the image
	} else {
		_, err = r.pool.Head(ctx, r.rec.Backing)
	}
	if err != nil {
		return "", volume.Status(err)
	}
	if err := validateCapabilities(req.GetVolumeCapabilities()); err != nil {
		return err.Error(), nil
	}
	cc, _ := c.opts.Config.Cluster(r.id.ClusterID)
	facts := volumeFacts{clusterID: r.id.ClusterID, pool: r.pool.Name(), namespace: cc.RBD.RadosNamespace,
		image: r.rec.Backing, params: r.rec.Params}
	if r.rec.FromCephCSI() {
		if facts, err = cephCSIFacts(ctx, r, info, cc.RBD.RadosNamespace); err != nil {
			return "", volume.Status(err)
		}
	}
	return strings.Join(facts.mismatch(req.GetParameters(), req.GetVolumeContext()), "; "), nil
}

// ControllerGetVolume reports a volume whose image exists.
func (c *Controller) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	return c.calls().GetVolume(ctx, req, func(ctx context.Context, r *resolved) (int64, error) {
		head, err := r.pool.Head(ctx, r.rec.Backing)
		return head.Size, volume.Status(err)
	})
}

// GetCapacity reports the available bytes of the pool named in the
// parameters, or the largest known pool when none is named.
func (c *Controller) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	for _, cap := range req.GetVolumeCapabilities() {
		if err := validateCapability(cap); err != nil {
			return &csi.GetCapacityResponse{}, nil // not servable: no capacity
		}
	}
	clusterID, pool := req.GetParameters()[ParamClusterID], req.GetParameters()[ParamPool]
	var best int64
	for _, kp := range c.known.Pools() {
		if (clusterID != "" && kp.ClusterID != clusterID) || (pool != "" && kp.Pool != pool) {
			continue
		}
		avail, err := kp.Cluster.AvailableBytes(ctx, kp.Pool)
		if err != nil {
			return nil, volume.Status(err)
		}
		best = max(best, avail)
	}
	return &csi.GetCapacityResponse{AvailableCapacity: best}, nil
}

// listedRecord is a journal record with its ID and pool.
type listedRecord struct {
	rec  *journal.Record
	id   string
	pool Pool
}

// Record is the listed journal record.
func (l listedRecord) Record() *journal.Record { return l.rec }

// listRecords gathers journal records of kind from every known pool,
// Pelagic's then ceph-csi's, each in UUID order.
func (c *Controller) listRecords(ctx context.Context, kind journal.Kind) ([]listedRecord, error) {
	var out []listedRecord
	for _, kp := range c.known.Pools() {
		pool, err := kp.Cluster.Pool(ctx, kp.Pool, kp.Namespace)
		if errors.Is(err, ceph.ErrPoolNotFound) {
			continue // deleted since: nothing of ours is left in it
		}
		if err != nil {
			return nil, volume.Status(err)
		}
		for _, j := range Journals(pool, c.opts.CephCSIInstanceID) {
			err = journal.ForEach(ctx, j, kind, 1000, func(r *journal.Record) {
				if r.FromCephCSI() && kind == journal.Snapshot {
					r.Source = volumeid.OfBacking(kp.ClusterID, pool.ID(), r.SourceBacking)
				}
				out = append(out, listedRecord{rec: r, pool: pool,
					id: volumeid.ID{ClusterID: kp.ClusterID, PoolID: pool.ID(), UUID: r.UUID}.String()})
			})
			if err != nil {
				return nil, volume.Status(err)
			}
		}
	}
	return out, nil
}

// sized fills in what ceph-csi's journal lacks of a listed record (size
// and creation time) from its image, unless done; nothing for Pelagic's.
func sized(ctx context.Context, l listedRecord) (*journal.Record, error) {
	if !l.rec.FromCephCSI() || !l.rec.Created.IsZero() {
		return l.rec, nil
	}
	info, err := l.pool.Stat(ctx, l.rec.Backing)
	if errors.Is(err, ErrImageNotFound) {
		return l.rec, nil // being deleted: listed without a size
	}
	if err != nil {
		return nil, volume.Status(err)
	}
	l.rec.SizeBytes, l.rec.Created = info.Size, info.Created
	return l.rec, nil
}

// ListVolumes lists the volumes in every pool this controller has served.
func (c *Controller) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	all, err := c.listRecords(ctx, journal.Volume)
	if err != nil {
		return nil, err
	}
	return volume.ListVolumes(len(all), req, func(i int) (*csi.Volume, error) {
		rec, err := sized(ctx, all[i])
		if err != nil {
			return nil, err
		}
		return &csi.Volume{VolumeId: all[i].id, CapacityBytes: rec.SizeBytes}, nil
	})
}

// CreateSnapshot takes an RBD snapshot of the source volume's image.
func (c *Controller) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	return c.calls().CreateSnapshot(ctx, req, c.snapshotImage)
}

// snapshotImage snapshots the image of src, the resolved source.
func (c *Controller) snapshotImage(ctx context.Context, src *resolved, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if snap, err := c.cephCSISnapshot(ctx, src, req); snap != nil || err != nil {
		return &csi.CreateSnapshotResponse{Snapshot: snap}, err
	}
	unlockFlatten, err := c.lockAgainstFlatten(ctx, src.pool, src.rec.Backing)
	if err != nil {
		return nil, err
	}
	defer unlockFlatten()
	// The reservation takes the image's ID and size from the open that
	// snapshots it: no read of its own. rec is read only once CreateSnap
	// has returned with no error: a call abandoned at its deadline may
	// still be running.
	var rec *journal.Record
	snap, err := src.pool.CreateSnap(ctx, src.rec.Backing, func(head ImageHead) (string, error) {
		if err := ctx.Err(); err != nil { // abandoned: reserve nothing after the answer
			return "", err
		}
		r, err := c.reserveSnapshot(ctx, src, req, head)
		if err != nil {
			return "", err // its status, as it is
		}
		rec = r
		return SnapOf(rec.BackingID, rec.SnapName)(head)
	})
	if err != nil {
		return nil, volume.Status(err)
	}
	if snap.Size != rec.SizeBytes {
		// The volume grew between its header read and the snapshot: restores
		// size themselves by the record.
		rec.SizeBytes = snap.Size
		if err := src.pool.Repair(ctx, rec); err != nil {
			return nil, volume.Status(err)
		}
	}
	id := volumeid.ID{ClusterID: src.id.ClusterID, PoolID: src.id.PoolID, UUID: rec.UUID}
	return &csi.CreateSnapshotResponse{Snapshot: snapshotOf(id.String(), rec, snap)}, nil
}

// reserveSnapshot returns the journal record of the snapshot req names, of
// the image with head: a fresh reservation, or the existing one of a retry
// for the same source.
func (c *Controller) reserveSnapshot(ctx context.Context, src *resolved, req *csi.CreateSnapshotRequest, head ImageHead) (*journal.Record, error) {
	uuid := volume.NewUUID()
	rec, _, err := volume.ReserveName(ctx, src.pool, &journal.Record{Kind: journal.Snapshot, Name: req.GetName(),
		UUID: uuid, Backing: src.rec.Backing, BackingID: head.ID, SnapName: "csi-snap-" + uuid,
		Source: req.GetSourceVolumeId(), SizeBytes: head.Size, Created: time.Now().UTC()})
	if err == nil && rec.Source != req.GetSourceVolumeId() {
		return nil, status.Errorf(codes.AlreadyExists, "snapshot %q already exists for another volume", req.GetName())
	}
	return rec, err
}

func snapshotOf(id string, rec *journal.Record, snap SnapInfo) *csi.Snapshot {
	created := snap.Created
	if created.IsZero() {
		created = rec.Created
	}
	return &csi.Snapshot{
		SnapshotId: id, SourceVolumeId: rec.Source, SizeBytes: snap.Size,
		CreationTime: timestamppb.New(created), ReadyToUse: true, // an RBD snapshot is complete when created
	}
}

// GetSnapshot reports one snapshot whose RBD snapshot still exists.
func (c *Controller) GetSnapshot(ctx context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	return c.calls().GetSnapshot(ctx, req, func(ctx context.Context, r *resolved, id string) (*csi.GetSnapshotResponse, error) {
		snap, err := r.pool.Snap(ctx, r.rec.BackingID, r.rec.SnapName)
		if err != nil {
			return nil, volume.Status(err)
		}
		if r.rec.FromCephCSI() {
			snap.Created = r.rec.Created // ceph-csi answered its image's
		}
		return &csi.GetSnapshotResponse{Snapshot: snapshotOf(id, r.rec, snap)}, nil
	})
}

// DeleteSnapshot removes the RBD snapshot and its journal entry.
func (c *Controller) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	return c.calls().DeleteSnapshot(ctx, req, c.removeSnapshot)
}

// removeSnapshot removes a resolved snapshot's RBD snapshot, then its record.
func (c *Controller) removeSnapshot(ctx context.Context, r *resolved, _ string) error {
	if r.rec.FromCephCSI() {
		return volume.Status(c.deleteCephCSISnapshot(ctx, r))
	}
	if err := r.pool.RemoveSnap(ctx, r.rec.BackingID, r.rec.SnapName); err != nil {
		return volume.Status(err)
	}
	// The volume may be gone, its image kept in the trash by this snapshot;
	// purged before the record goes, so that a retry gets to do it, and
	// its trashed ancestors after it (a clone ceph-csi chained through
	// "-temp").
	purgeFreed(ctx, r.pool, r.rec.BackingID)
	return volume.Status(r.pool.Remove(ctx, r.rec))
}

// ListSnapshots lists snapshots, filtered by snapshot or source volume ID.
func (c *Controller) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	return volume.SnapshotList[*resolved, listedRecord]{Calls: c.calls(),
		Listed: func(r *resolved, id string) listedRecord { return listedRecord{rec: r.rec, id: id, pool: r.pool} },
		All:    func() ([]listedRecord, error) { return c.listRecords(ctx, journal.Snapshot) },
		Describe: func(l listedRecord) (*csi.Snapshot, error) {
			rec, err := sized(ctx, l)
			if err != nil {
				return nil, err
			}
			return snapshotOf(l.id, rec, SnapInfo{Size: rec.SizeBytes, Created: rec.Created}), nil
		},
	}.ListSnapshots(ctx, req)
}
