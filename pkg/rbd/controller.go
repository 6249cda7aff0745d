package rbd

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strconv"
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
	"github.com/pelagic-csi/pelagic/pkg/util"
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
	// AfterReserve, when set, runs between the journal reservation and the
	// image creation: tests use it to stop a controller at its worst moment.
	AfterReserve func(name string)
}

// Controller implements csi.ControllerServer for RBD.
type Controller struct {
	csi.UnimplementedControllerServer
	opts       ControllerOptions
	locks      *util.KeyLocks
	known      knownClusters
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
	return &Controller{opts: opts, locks: util.NewKeyLocks()}
}

const mib = 1 << 20

// metaOwnerKey is the image metadata key holding who the volume is for.
const metaOwnerKey = "pelagic.csi/owner"

var controllerCaps = []csi.ControllerServiceCapability_RPC_Type{
	csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
	csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
	csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
	csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
	csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
	csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
	csi.ControllerServiceCapability_RPC_GET_CAPACITY,
	csi.ControllerServiceCapability_RPC_GET_VOLUME,
	csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME,
	csi.ControllerServiceCapability_RPC_PUBLISH_READONLY,
	csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
}

// ControllerGetCapabilities advertises exactly what is implemented.
func (c *Controller) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	caps := make([]*csi.ControllerServiceCapability, 0, len(controllerCaps))
	for _, t := range controllerCaps {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// lock takes per-request locks or fails with Aborted at once.
func (c *Controller) lock(keys ...string) (func(), error) {
	if !c.locks.TryLock(keys...) {
		return nil, status.Errorf(codes.Aborted, "an operation on %v is already in progress", keys)
	}
	return func() { c.locks.Unlock(keys...) }, nil
}

// connect opens the cluster with the request's secrets and remembers it.
func (c *Controller) connect(ctx context.Context, clusterID string, secrets, params map[string]string) (Cluster, error) {
	creds, err := credentialsFrom(secrets, params)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	cl, err := c.opts.Connector.Connect(ctx, clusterID, creds)
	if err != nil {
		if errors.Is(err, ceph.ErrUnknownCluster) {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		return nil, statusFor(err)
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
	pools, err := cl.JournalPools(ctx, cc.RBD.RadosNamespace)
	if err != nil {
		c.discovered.Delete(cl.ClusterID())
		klog.FromContext(ctx).Error(err, "looking for journals", "cluster", cl.ClusterID())
		return
	}
	for _, p := range pools {
		c.known.remember(cl, p, cc.RBD.RadosNamespace)
	}
}

// clusterFor returns a cluster for a request that may or may not carry
// secrets: with secrets it connects, without it uses a remembered handle.
func (c *Controller) clusterFor(ctx context.Context, clusterID string, secrets map[string]string) (Cluster, error) {
	if len(secrets) > 0 {
		return c.connect(ctx, clusterID, secrets, nil)
	}
	if cl, ok := c.known.cluster(clusterID); ok {
		return cl, nil
	}
	return nil, status.Errorf(codes.FailedPrecondition,
		"no credentials for cluster %q yet: this call carries no secrets and no earlier call opened the cluster", clusterID)
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
	vid, err := volumeid.Parse(id)
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "%s %q does not exist: %v", kind, id, err)
	}
	if _, err := c.opts.Config.Cluster(vid.ClusterID); err != nil {
		return nil, status.Errorf(codes.NotFound, "%s %q does not exist: %v", kind, id, err)
	}
	cl, err := c.clusterFor(ctx, vid.ClusterID, secrets)
	if err != nil {
		return nil, err
	}
	poolName, err := cl.PoolName(ctx, vid.PoolID)
	if errors.Is(err, ErrPoolNotFound) {
		return nil, status.Errorf(codes.NotFound, "%s %q does not exist: %v", kind, id, err)
	}
	if err != nil {
		return nil, statusFor(err)
	}
	cc, _ := c.opts.Config.Cluster(vid.ClusterID)
	pool, err := cl.Pool(ctx, poolName, cc.RBD.RadosNamespace)
	if err != nil {
		return nil, statusFor(err)
	}
	c.known.remember(cl, poolName, cc.RBD.RadosNamespace)
	c.register(ctx, cl, pool)
	rec, err := pool.Lookup(ctx, kind, vid.UUID)
	if errors.Is(err, journal.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "%s %q does not exist", kind, id)
	}
	if err != nil {
		return nil, statusFor(err)
	}
	return &resolved{id: vid, cluster: cl, pool: pool, rec: rec}, nil
}

// lockResolved takes the per-ID lock, then resolves the ID. On success
// the caller must call unlock.
func (c *Controller) lockResolved(ctx context.Context, kind journal.Kind, id string, secrets map[string]string) (*resolved, func(), error) {
	unlock, err := c.lock(string(kind) + "/" + id)
	if err != nil {
		return nil, nil, err
	}
	r, err := c.resolve(ctx, kind, id, secrets)
	if err != nil {
		unlock()
		return nil, nil, err
	}
	return r, unlock, nil
}

// requestSize rounds the capacity range to whole MiB.
func requestSize(r *csi.CapacityRange, def int64) (int64, error) {
	req, lim := r.GetRequiredBytes(), r.GetLimitBytes()
	if req < 0 || lim < 0 {
		return 0, status.Error(codes.InvalidArgument, "capacity must not be negative")
	}
	if lim > 0 && req > lim {
		return 0, status.Errorf(codes.InvalidArgument, "required bytes %d exceed limit bytes %d", req, lim)
	}
	size := req
	if size == 0 {
		size = def
		if lim > 0 && lim < size {
			size = max(lim/mib*mib, mib) // the largest whole MiB within the limit
		}
	}
	rounded := (size + mib - 1) / mib * mib
	if lim > 0 && rounded > lim {
		return 0, status.Errorf(codes.OutOfRange, "%d bytes rounded up to whole MiB (%d) exceed the limit %d", size, rounded, lim)
	}
	return rounded, nil
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
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
	size, err := requestSize(req.GetCapacityRange(), c.opts.DefaultSize)
	if err != nil {
		return nil, err
	}
	cc, err := c.opts.Config.Cluster(params.ClusterID)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	params.RadosNamespace = cc.RBD.RadosNamespace
	unlock, err := c.lock("volname/" + req.GetName())
	if err != nil {
		return nil, err
	}
	defer unlock()

	cl, err := c.connect(ctx, params.ClusterID, req.GetSecrets(), req.GetParameters())
	if err != nil {
		return nil, err
	}
	pool, err := cl.Pool(ctx, params.Pool, params.RadosNamespace)
	if err != nil {
		return nil, statusFor(err)
	}
	c.known.remember(cl, params.Pool, params.RadosNamespace)
	c.register(ctx, cl, pool)

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
	rec, reserved, err := c.reserveVolume(ctx, pool, req, params, size, source)
	if err != nil {
		return nil, err
	}
	if c.opts.AfterReserve != nil {
		c.opts.AfterReserve(req.GetName())
	}
	if err := c.ensureImage(ctx, pool, rec, params, source, reserved); err != nil {
		if reserved {
			// Only the caller that made a reservation may take it back:
			// another may be creating the image of one it found.
			c.undoReservation(pool, rec)
		}
		return nil, statusFor(err)
	}
	return &csi.CreateVolumeResponse{Volume: c.volumeOf(cl, pool, rec, params, req.GetVolumeContentSource())}, nil
}

func (c *Controller) volumeOf(cl Cluster, pool Pool, rec *journal.Record, params *VolumeParams, src *csi.VolumeContentSource) *csi.Volume {
	id := volumeid.ID{ClusterID: cl.ClusterID(), PoolID: pool.ID(), UUID: rec.UUID}
	return &csi.Volume{
		VolumeId:      id.String(),
		CapacityBytes: rec.SizeBytes,
		VolumeContext: params.volumeContext(rec.Image),
		ContentSource: src,
	}
}

// reserveVolume returns the journal record for the request name: the
// existing one when it matches, a fresh reservation otherwise (reserved).
func (c *Controller) reserveVolume(ctx context.Context, pool Pool, req *csi.CreateVolumeRequest,
	params *VolumeParams, size int64, source *contentSource) (rec *journal.Record, reserved bool, err error) {
	sourceID := source.id()
	rec, err = pool.LookupName(ctx, journal.Volume, req.GetName())
	switch {
	case err == nil:
		if !maps.Equal(rec.Params, params.journalParams()) || rec.Source != sourceID {
			return nil, false, status.Errorf(codes.AlreadyExists,
				"volume %q already exists with other parameters or content source", req.GetName())
		}
		lim := req.GetCapacityRange().GetLimitBytes()
		if rec.SizeBytes < size || (lim > 0 && rec.SizeBytes > lim) {
			return nil, false, status.Errorf(codes.AlreadyExists,
				"volume %q already exists with size %d bytes; this request asks for %d", req.GetName(), rec.SizeBytes, size)
		}
		// A crash may have lost the directory entry; rewriting it is cheap
		// next to a retry, and makes the volume resolvable by ID.
		if _, err := pool.Lookup(ctx, journal.Volume, rec.UUID); errors.Is(err, journal.ErrNotFound) {
			if err := pool.Repair(ctx, rec); err != nil {
				return nil, false, statusFor(err)
			}
		}
		return rec, false, nil
	case errors.Is(err, journal.ErrNotFound):
	default:
		return nil, false, statusFor(err)
	}
	uuid := newUUID()
	rec = &journal.Record{
		Kind: journal.Volume, Name: req.GetName(), UUID: uuid, Image: params.NamePrefix + uuid,
		SizeBytes: size, Params: params.journalParams(), Source: sourceID, Created: time.Now().UTC(),
	}
	if err := pool.Reserve(ctx, rec); err != nil {
		return nil, false, statusFor(err)
	}
	return rec, true, nil
}

// undoReservation removes a reservation whose image was never created, so
// a failed request leaves nothing behind. It runs on its own deadline: the
// request's may be what failed.
func (c *Controller) undoReservation(pool Pool, rec *journal.Record) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := pool.Stat(ctx, rec.Image); !errors.Is(err, ErrImageNotFound) {
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
	exists := false
	if !fresh {
		info, err := pool.Stat(ctx, rec.Image)
		switch {
		case err == nil:
			exists = true
			if info.Size < rec.SizeBytes {
				if err := pool.Resize(ctx, rec.Image, rec.SizeBytes); err != nil {
					return err
				}
			}
		case !errors.Is(err, ErrImageNotFound):
			return err
		}
	}
	if !exists {
		spec := ImageSpec{Name: rec.Image, Size: rec.SizeBytes, Features: params.Features, DataPool: params.DataPool}
		var err error
		if source == nil {
			err = pool.CreateImage(ctx, spec)
		} else {
			err = c.cloneImage(ctx, pool, rec, spec, source)
		}
		if ceph.Errno(err) == syscall.EEXIST {
			return nil // another controller created it from the same reservation
		}
		if err != nil {
			return err
		}
	} else if source != nil {
		if err := c.applyFlattenPolicy(ctx, pool, rec.Image); err != nil {
			return err
		}
	}
	if source != nil && source.kind == journal.Volume {
		if err := pool.RemoveSnap(ctx, source.imageID, cloneSnapName(rec.UUID)); err != nil {
			return err
		}
	}
	owner, _ := json.Marshal(Owner{Name: rec.Name, PVC: params.PVCName, Namespace: params.PVCNamespace,
		PV: params.PVName, Params: rec.Params})
	return pool.SetMetadata(ctx, rec.Image, map[string]string{metaOwnerKey: string(owner)})
}

// DeleteVolume removes the image and its journal entry. A volume that
// does not exist (or an ID that cannot name one) is already deleted.
func (c *Controller) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is missing")
	}
	r, unlock, err := c.lockResolved(ctx, journal.Volume, req.GetVolumeId(), req.GetSecrets())
	if status.Code(err) == codes.NotFound {
		return &csi.DeleteVolumeResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer unlock()
	unlockName, err := c.lock("volname/" + r.rec.Name)
	if err != nil {
		return nil, err
	}
	defer unlockName()
	if err := c.refuseHolders(ctx, r, "deleted", func(h Holder) bool {
		return h.Watcher != nil && h.State != HolderFenced && h.State != HolderController
	}); err != nil {
		return nil, err
	}
	if err := r.pool.Delete(ctx, r.rec.Image); err != nil {
		return nil, statusFor(fmt.Errorf("deleting volume %s: %w", req.GetVolumeId(), err))
	}
	if err := r.pool.Remove(ctx, r.rec); err != nil {
		return nil, statusFor(err)
	}
	c.purgeTrash(ctx, r.pool, r.rec.Image)
	return &csi.DeleteVolumeResponse{}, nil
}

// refuseHolders fails with FailedPrecondition, naming them, when any
// holder of the volume's image matches blocks.
func (c *Controller) refuseHolders(ctx context.Context, r *resolved, verb string, blocks func(Holder) bool) error {
	usage, err := c.usage(ctx, r)
	if status.Code(err) == codes.NotFound {
		return nil
	}
	if err != nil {
		return err
	}
	var in []Holder
	for _, h := range usage.Holders("") {
		if blocks(h) {
			in = append(in, h)
		}
	}
	if len(in) > 0 {
		return status.Errorf(codes.FailedPrecondition, "volume %s (image %s/%s) cannot be %s while in use: %s",
			r.id, r.pool.Name(), r.rec.Image, verb, describeAll(in))
	}
	return nil
}

// purgeTrash frees trashed images that nothing needs any more (parents
// whose last clone or snapshot went away); failure only delays that.
func (c *Controller) purgeTrash(ctx context.Context, pool Pool, image string) {
	prefix := image
	if len(prefix) > 36 {
		prefix = prefix[:len(prefix)-36]
	}
	if err := pool.PurgeTrash(ctx, prefix); err != nil {
		klog.FromContext(ctx).V(2).Info("trash purge deferred", "pool", pool.Name(), "error", err.Error())
	}
}

// ControllerExpandVolume grows the image.
func (c *Controller) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is missing")
	}
	if req.GetCapacityRange() == nil {
		return nil, status.Error(codes.InvalidArgument, "capacity range is missing")
	}
	size, err := requestSize(req.GetCapacityRange(), 0)
	if err != nil {
		return nil, err
	}
	r, unlock, err := c.lockResolved(ctx, journal.Volume, req.GetVolumeId(), req.GetSecrets())
	if err != nil {
		return nil, err
	}
	defer unlock()
	// Growing an image a stale or unknown client still maps would change it
	// under a holder the CO no longer accounts for.
	if err := c.refuseHolders(ctx, r, "expanded", func(h Holder) bool {
		return h.Watcher != nil && (h.State == HolderStale || h.State == HolderUnknown)
	}); err != nil {
		return nil, err
	}
	info, err := r.pool.Stat(ctx, r.rec.Image)
	if err != nil {
		return nil, statusFor(err)
	}
	nodeExpansion := req.GetVolumeCapability().GetBlock() == nil
	if info.Size >= size {
		return &csi.ControllerExpandVolumeResponse{CapacityBytes: info.Size, NodeExpansionRequired: nodeExpansion}, nil
	}
	if err := r.pool.Resize(ctx, r.rec.Image, size); err != nil {
		return nil, statusFor(err)
	}
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: size, NodeExpansionRequired: nodeExpansion}, nil
}

// ValidateVolumeCapabilities confirms the capabilities an existing volume supports.
func (c *Controller) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is missing")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume capabilities are missing")
	}
	r, err := c.resolve(ctx, journal.Volume, req.GetVolumeId(), req.GetSecrets())
	if err != nil {
		return nil, err
	}
	if _, err := r.pool.Stat(ctx, r.rec.Image); err != nil {
		return nil, statusFor(err)
	}
	if err := validateCapabilities(req.GetVolumeCapabilities()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// ControllerGetVolume reports a volume whose image exists.
func (c *Controller) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is missing")
	}
	r, err := c.resolve(ctx, journal.Volume, req.GetVolumeId(), nil)
	if err != nil {
		return nil, err
	}
	info, err := r.pool.Stat(ctx, r.rec.Image)
	if err != nil {
		return nil, statusFor(err)
	}
	return &csi.ControllerGetVolumeResponse{
		Volume: &csi.Volume{VolumeId: req.GetVolumeId(), CapacityBytes: info.Size},
		Status: &csi.ControllerGetVolumeResponse_VolumeStatus{},
	}, nil
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
	for _, kp := range c.known.all() {
		if (clusterID != "" && kp.clusterID != clusterID) || (pool != "" && kp.pool != pool) {
			continue
		}
		avail, err := kp.cluster.AvailableBytes(ctx, kp.pool)
		if err != nil {
			return nil, statusFor(err)
		}
		best = max(best, avail)
	}
	return &csi.GetCapacityResponse{AvailableCapacity: best}, nil
}

// page applies CSI pagination (a decimal offset token) to n items.
func page(token string, maxEntries int32, n int) (start, end int, next string, err error) {
	if maxEntries < 0 {
		return 0, 0, "", status.Error(codes.InvalidArgument, "max_entries must not be negative")
	}
	if token != "" {
		start, err = strconv.Atoi(token)
		if err != nil || start < 0 || start > n {
			return 0, 0, "", status.Errorf(codes.Aborted, "invalid starting token %q", token)
		}
	}
	end = n
	if maxEntries > 0 && start+int(maxEntries) < n {
		end = start + int(maxEntries)
		next = strconv.Itoa(end)
	}
	return start, end, next, nil
}

// listRecords gathers journal records of kind from every known pool.
func (c *Controller) listRecords(ctx context.Context, kind journal.Kind) ([]*journal.Record, []string, error) {
	var recs []*journal.Record
	var ids []string
	for _, kp := range c.known.all() {
		pool, err := kp.cluster.Pool(ctx, kp.pool, kp.ns)
		if errors.Is(err, ErrPoolNotFound) {
			continue // deleted since: nothing of ours is left in it
		}
		if err != nil {
			return nil, nil, statusFor(err)
		}
		after := ""
		for {
			batch, err := pool.List(ctx, kind, after, 1000)
			if err != nil {
				return nil, nil, statusFor(err)
			}
			for _, r := range batch {
				recs = append(recs, r)
				ids = append(ids, volumeid.ID{ClusterID: kp.clusterID, PoolID: pool.ID(), UUID: r.UUID}.String())
			}
			if len(batch) < 1000 {
				break
			}
			after = batch[len(batch)-1].UUID
		}
	}
	return recs, ids, nil
}

// ListVolumes lists the volumes in every pool this controller has served.
func (c *Controller) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	recs, ids, err := c.listRecords(ctx, journal.Volume)
	if err != nil {
		return nil, err
	}
	start, end, next, err := page(req.GetStartingToken(), req.GetMaxEntries(), len(recs))
	if err != nil {
		return nil, err
	}
	resp := &csi.ListVolumesResponse{NextToken: next}
	for i := start; i < end; i++ {
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{
			Volume: &csi.Volume{VolumeId: ids[i], CapacityBytes: recs[i].SizeBytes}})
	}
	return resp, nil
}

// CreateSnapshot takes an RBD snapshot of the source volume's image.
func (c *Controller) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot name is missing")
	}
	if req.GetSourceVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "source volume ID is missing")
	}
	unlock, err := c.lock("snapname/" + req.GetName())
	if err != nil {
		return nil, err
	}
	defer unlock()
	src, err := c.resolve(ctx, journal.Volume, req.GetSourceVolumeId(), req.GetSecrets())
	if err != nil {
		return nil, err
	}
	rec, err := src.pool.LookupName(ctx, journal.Snapshot, req.GetName())
	switch {
	case err == nil:
		if rec.Source != req.GetSourceVolumeId() {
			return nil, status.Errorf(codes.AlreadyExists, "snapshot %q already exists for another volume", req.GetName())
		}
	case errors.Is(err, journal.ErrNotFound):
		info, err := src.pool.Stat(ctx, src.rec.Image)
		if err != nil {
			return nil, statusFor(err)
		}
		uuid := newUUID()
		rec = &journal.Record{Kind: journal.Snapshot, Name: req.GetName(), UUID: uuid, Image: src.rec.Image,
			ImageID: info.ID, SnapName: "csi-snap-" + uuid, Source: req.GetSourceVolumeId(),
			SizeBytes: info.Size, Created: time.Now().UTC()}
		if err := src.pool.Reserve(ctx, rec); err != nil {
			return nil, statusFor(err)
		}
	default:
		return nil, statusFor(err)
	}
	snap, err := src.pool.CreateSnap(ctx, rec.ImageID, rec.SnapName)
	if err != nil {
		return nil, statusFor(err)
	}
	id := volumeid.ID{ClusterID: src.id.ClusterID, PoolID: src.id.PoolID, UUID: rec.UUID}
	return &csi.CreateSnapshotResponse{Snapshot: snapshotOf(id.String(), rec, snap)}, nil
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
	if req.GetSnapshotId() == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot ID is missing")
	}
	r, err := c.resolve(ctx, journal.Snapshot, req.GetSnapshotId(), req.GetSecrets())
	if err != nil {
		return nil, err
	}
	snap, err := r.pool.Snap(ctx, r.rec.ImageID, r.rec.SnapName)
	if err != nil {
		return nil, statusFor(err)
	}
	return &csi.GetSnapshotResponse{Snapshot: snapshotOf(req.GetSnapshotId(), r.rec, snap)}, nil
}

// DeleteSnapshot removes the RBD snapshot and its journal entry.
func (c *Controller) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot ID is missing")
	}
	r, unlock, err := c.lockResolved(ctx, journal.Snapshot, req.GetSnapshotId(), req.GetSecrets())
	if status.Code(err) == codes.NotFound {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := r.pool.RemoveSnap(ctx, r.rec.ImageID, r.rec.SnapName); err != nil {
		return nil, statusFor(err)
	}
	if err := r.pool.Remove(ctx, r.rec); err != nil {
		return nil, statusFor(err)
	}
	c.purgeTrash(ctx, r.pool, r.rec.Image)
	return &csi.DeleteSnapshotResponse{}, nil
}

// ListSnapshots lists snapshots, filtered by snapshot or source volume ID.
func (c *Controller) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	var recs []*journal.Record
	var ids []string
	switch {
	case req.GetSnapshotId() != "":
		r, err := c.resolve(ctx, journal.Snapshot, req.GetSnapshotId(), req.GetSecrets())
		if status.Code(err) == codes.NotFound {
			return &csi.ListSnapshotsResponse{}, nil
		}
		if err != nil {
			return nil, err
		}
		if req.GetSourceVolumeId() == "" || req.GetSourceVolumeId() == r.rec.Source {
			recs, ids = []*journal.Record{r.rec}, []string{req.GetSnapshotId()}
		}
	default:
		all, allIDs, err := c.listRecords(ctx, journal.Snapshot)
		if err != nil {
			return nil, err
		}
		for i, r := range all {
			if req.GetSourceVolumeId() == "" || r.Source == req.GetSourceVolumeId() {
				recs, ids = append(recs, r), append(ids, allIDs[i])
			}
		}
	}
	start, end, next, err := page(req.GetStartingToken(), req.GetMaxEntries(), len(recs))
	if err != nil {
		return nil, err
	}
	resp := &csi.ListSnapshotsResponse{NextToken: next}
	for i := start; i < end; i++ {
		snap := SnapInfo{Size: recs[i].SizeBytes, Created: recs[i].Created}
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: snapshotOf(ids[i], recs[i], snap)})
	}
	return resp, nil
}
