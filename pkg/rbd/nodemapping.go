package rbd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/mapper"
	"github.com/pelagic-csi/pelagic/pkg/nodefs"
	"github.com/pelagic-csi/pelagic/pkg/volume"
)

// mapFresh maps img, making sure the mapping it returns is not one whose
// client instance was fenced: a mapper returns an existing mapping of the
// image as it is, and a fenced one can no longer write. checked waits for
// the holder check opts.Admit waits for, and returns the image's records
// or the check's refusal, which is the answer whatever the map did (a new
// mapping it refused was undone by the mapper).
func (n *Node) mapFresh(ctx context.Context, m mapper.Mapper, img mapper.Image, opts mapper.MapOptions,
	checked func() (*Records, error)) (mapper.Mapping, error) {
	mapping, err := m.Map(ctx, img, opts)
	recs, checkErr := checked()
	if checkErr != nil {
		return mapper.Mapping{}, checkErr
	}
	if err != nil {
		return mapping, mapperStatus(err, "mapping "+img.Spec())
	}
	if _, fenced := recs.fenceOf(mapping.ClientAddr); !fenced {
		return mapping, nil
	}
	klog.FromContext(ctx).Info("replacing a fenced mapping", "image", img.Spec(), "client", mapping.ClientAddr)
	if err := m.Unmap(ctx, mapping, mapper.UnmapOptions{Force: true}); err != nil {
		return mapping, mapperStatus(err, "unmapping the fenced mapping of "+img.Spec())
	}
	if mapping, err = m.Map(ctx, img, opts); err != nil {
		return mapping, mapperStatus(err, "mapping "+img.Spec())
	}
	return mapping, nil
}

// ownMappingClient returns the client address of a live mapping of the
// image that mapper m already holds on this node, "" if none: a NodeStage
// cut short (the plugin killed) between the map and its records leaves
// one, which the retry reuses. Its watch is this node's own, not that of
// a client no node recorded.
func ownMappingClient(ctx context.Context, m mapper.Mapper, pool, namespace, image string) string {
	mappings, err := m.List(ctx)
	if err != nil {
		return ""
	}
	for _, mp := range mappings {
		if mp.Pool == pool && mp.RadosNamespace == namespace && mp.Image == image && mp.ClientAddr != "" &&
			m.Alive(ctx, mp) == nil {
			return mp.ClientAddr
		}
	}
	return ""
}

// stagedMappingFenced reports whether the mapping a stage record names was
// fenced since: its client can no longer write, so the volume must be
// mapped afresh rather than mounted from it.
func (n *Node) stagedMappingFenced(ctx context.Context, req *csi.NodeStageVolumeRequest, rec *stageRecord) (bool, error) {
	if rec.Mapping.ClientAddr == "" {
		return false, nil
	}
	pool, err := n.mappedPool(ctx, req, rec.ClusterID, rec)
	if err != nil {
		return false, err
	}
	recs, err := readRecords(ctx, pool, rec.Mapping.Image)
	if err != nil {
		return false, nodeStatus(err, rec.VolumeID)
	}
	_, fenced := recs.fenceOf(rec.Mapping.ClientAddr)
	return fenced, nil
}

// mappedPool opens, with a stage request's credentials, the pool of the
// image a stage record's mapping maps, and remembers it for unstage.
func (n *Node) mappedPool(ctx context.Context, req *csi.NodeStageVolumeRequest, clusterID string, rec *stageRecord) (Pool, error) {
	creds, err := ceph.CredentialsFrom(req.GetSecrets(), req.GetVolumeContext())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	cl, err := n.opts.Connector.Connect(ctx, clusterID, creds)
	if err != nil {
		return nil, volume.Status(err)
	}
	pool, err := cl.Pool(ctx, rec.Mapping.Pool, rec.Mapping.RadosNamespace)
	if err != nil {
		return nil, nodeStatus(err, rec.VolumeID)
	}
	n.known.Remember(cl, pool.Name(), rec.Mapping.RadosNamespace)
	return pool, nil
}

// mappingDead returns why the mapping a stage record names can no longer
// carry I/O (its device or daemon is gone), or nil while it can, or when
// that cannot be told: nothing is replaced on a guess.
func (n *Node) mappingDead(ctx context.Context, rec *stageRecord) error {
	m, err := n.opts.Mappers.Get(rec.Mapping.Mapper)
	if err != nil {
		return nil
	}
	if err := m.Alive(ctx, rec.Mapping); errors.Is(err, mapper.ErrMappingDead) {
		return err
	}
	return nil
}

// keepMappingUsable returns the stage record of a staged volume, after
// replacing its mapping if that can no longer write: dead, or fenced.
func (n *Node) keepMappingUsable(ctx context.Context, req *csi.NodeStageVolumeRequest, rec *stageRecord) (*stageRecord, error) {
	why := n.mappingDead(ctx, rec)
	if why == nil {
		fenced, err := n.stagedMappingFenced(ctx, req, rec)
		if err != nil || !fenced {
			return rec, err
		}
		why = fmt.Errorf("its client instance %s was fenced", rec.Mapping.ClientAddr)
	}
	return n.replaceMapping(ctx, req, rec, why)
}

// replaceDeadForPublish replaces a dead mapping at NodePublish, with the
// request's secrets or those of the volume's NodeStage in this process.
func (n *Node) replaceDeadForPublish(ctx context.Context, req *csi.NodePublishVolumeRequest, rec *stageRecord, dead error) (*stageRecord, error) {
	secrets := req.GetSecrets()
	if len(secrets) == 0 {
		secrets = n.vols.Secrets.Get(req.GetVolumeId())
	}
	if len(secrets) == 0 {
		return nil, status.Errorf(codes.FailedPrecondition,
			"volume %s: %v; mapping it again needs the credentials of its NodeStage, which this plugin has not seen since it started: the next NodeStage maps it again",
			req.GetVolumeId(), dead)
	}
	vctx := rec.VolumeContext
	if len(vctx) == 0 {
		vctx = req.GetVolumeContext()
	}
	stage := &csi.NodeStageVolumeRequest{VolumeId: req.GetVolumeId(), StagingTargetPath: req.GetStagingTargetPath(),
		VolumeCapability: rec.capability(), Secrets: secrets, VolumeContext: vctx}
	return n.replaceMapping(ctx, stage, rec, dead)
}

// replaceMapping maps a staged volume again whose mapping can no longer
// write, and remounts what was mounted from it. Its mounts go first,
// lazily if in use (nothing reaches the volume through them any more),
// then the mapping, by force: when Unmap returns its client instance is
// gone. Only then does mapImage, once Ceph no longer lists that instance's
// watch, record the new instance in place of the old, by the conditional
// update that refuses when another node has taken the volume meanwhile,
// and only after that is the new device mounted and written. Until this
// succeeds the stage record names the old mapping, so a retry starts over.
func (n *Node) replaceMapping(ctx context.Context, req *csi.NodeStageVolumeRequest, rec *stageRecord, why error) (*stageRecord, error) {
	klog.FromContext(ctx).Info("replacing a mapping that can no longer write", "volume", rec.VolumeID,
		"device", rec.Mapping.Device, "client", rec.Mapping.ClientAddr, "reason", why.Error())
	staging := req.GetStagingTargetPath()
	mounts := make([]string, 0, len(rec.Targets)+1)
	for _, p := range rec.Targets {
		mounts = append(mounts, p.Path)
	}
	if !rec.Block || rec.MountPath != "" {
		mounts = append(mounts, rec.fsPath(staging))
	}
	for _, p := range mounts {
		if err := n.opts.Mounter.Detach(ctx, p); err != nil {
			return nil, status.Errorf(codes.Internal, "volume %s (%v): detaching %s: %v", rec.VolumeID, why, p, err)
		}
	}
	m, err := n.opts.Mappers.Get(rec.Mapping.Mapper)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := m.Unmap(ctx, rec.Mapping, mapper.UnmapOptions{Force: true}); err != nil {
		return nil, mapperStatus(err, fmt.Sprintf("volume %s (%v): unmapping %s", rec.VolumeID, why, rec.Mapping.Device))
	}
	fresh, err := n.mapImage(ctx, req, rec)
	if err != nil {
		return nil, err
	}
	if !fresh.Block {
		if err := n.mountFilesystem(ctx, req, fresh); err != nil {
			return nil, err
		}
	}
	for _, p := range fresh.Targets {
		if err := n.bindTarget(ctx, staging, fresh, p); err != nil {
			return nil, err
		}
	}
	klog.FromContext(ctx).Info("mapping replaced", "volume", rec.VolumeID, "device", fresh.Mapping.Device,
		"client", fresh.Mapping.ClientAddr, "targets", len(fresh.Targets))
	return fresh, nil
}

// waitForWatchGone waits until Ceph no longer lists the watch of a client
// instance this node has just stopped. A killed daemon's watch stays until
// the OSD times it out (30 s); until then it is a holder no record
// explains, and the old instance is not gone in Ceph's eyes either.
func waitForWatchGone(ctx context.Context, pool Pool, image, addr string) error {
	if addr == "" {
		return nil
	}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		watchers, err := pool.Watchers(ctx, image)
		if err != nil {
			return volume.Status(err)
		}
		if !watchedBy(watchers, addr) {
			return nil
		}
		select {
		case <-ctx.Done():
			return status.Errorf(codes.DeadlineExceeded,
				"image %s/%s: the watch of the replaced client instance %s is still listed (Ceph drops it within 30 s of its daemon's end): %v",
				pool.Name(), image, addr, ctx.Err())
		case <-tick.C:
		}
	}
}

// forgetMapping removes this node's mapping record after a clean unmap,
// provided it still names the client that was unmapped. The request
// carries no secrets, so it needs a connection a stage opened; without
// one (after a restart) the removal is queued in the state directory and
// done by the next stage that reaches the cluster. Until then the record
// stays, and keeps a fence of that client in force: safe, never unsafe.
func (n *Node) forgetMapping(ctx context.Context, rec *stageRecord) {
	f := pendingForget{ClusterID: rec.ClusterID, Pool: rec.Mapping.Pool, Namespace: rec.Mapping.RadosNamespace,
		Image: rec.Mapping.Image, ClientAddr: rec.Mapping.ClientAddr}
	if cl, ok := n.known.Cluster(rec.ClusterID); ok {
		err := n.removeMappingRecord(ctx, cl, f)
		if err == nil {
			return
		}
		klog.FromContext(ctx).Info("mapping record removal deferred", "image", f.Image, "error", err.Error())
	}
	n.forgets.add(ctx, f)
}

func (n *Node) removeMappingRecord(ctx context.Context, cl Cluster, f pendingForget) error {
	pool, err := cl.Pool(ctx, f.Pool, f.Namespace)
	if err != nil {
		return err
	}
	_, err = RemoveMappingRecord(ctx, pool, f.Image, n.opts.NodeID, f.ClientAddr)
	if errors.Is(err, ErrImageNotFound) || errors.Is(err, ceph.ErrPoolNotFound) {
		return nil
	}
	return err
}

// pendingForget is a mapping record to remove once the cluster is reachable.
type pendingForget struct {
	ClusterID  string `json:"clusterID"`
	Pool       string `json:"pool"`
	Namespace  string `json:"namespace,omitempty"`
	Image      string `json:"image"`
	ClientAddr string `json:"clientAddr"`
}

// forgetQueue keeps pending removals in dir/forget.json.
type forgetQueue struct {
	mu     sync.Mutex
	dir    string
	remove func(context.Context, Cluster, pendingForget) error
}

func (q *forgetQueue) path() string { return filepath.Join(q.dir, "forget.json") }

func (q *forgetQueue) load() []pendingForget {
	var out []pendingForget
	if b, err := os.ReadFile(q.path()); err == nil {
		_ = json.Unmarshal(b, &out)
	}
	return out
}

func (q *forgetQueue) save(ctx context.Context, list []pendingForget) {
	var err error
	if len(list) == 0 {
		err = os.Remove(q.path())
		if errors.Is(err, os.ErrNotExist) {
			err = nil
		}
	} else {
		err = nodefs.WriteJSON(q.path(), list)
	}
	if err != nil {
		klog.FromContext(ctx).Error(err, "saving pending mapping record removals")
	}
}

func (q *forgetQueue) add(ctx context.Context, f pendingForget) {
	if q.dir == "" {
		klog.FromContext(ctx).Info("mapping record stays: no state directory to queue its removal", "image", f.Image)
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	list := q.load()
	if !slices.Contains(list, f) {
		list = append(list, f)
	}
	q.save(ctx, list)
}

// drain removes the queued records that belong to cl's cluster.
func (q *forgetQueue) drain(ctx context.Context, cl Cluster) {
	if q.dir == "" {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	list := q.load()
	if len(list) == 0 {
		return
	}
	kept := list[:0]
	for _, f := range list {
		if f.ClusterID == cl.ClusterID() && q.remove(ctx, cl, f) == nil {
			continue
		}
		kept = append(kept, f)
	}
	q.save(ctx, kept)
}

// MapperWatchers lists an image's watchers for the mappers over the node's
// own cluster connections (mapper.Config.Watchers).
type MapperWatchers struct{ Connector Connector }

// Watchers implements mapper.WatcherLister.
func (w MapperWatchers) Watchers(ctx context.Context, img mapper.Image) ([]mapper.Watcher, error) {
	cl, err := w.Connector.Connect(ctx, img.ClusterID, img.Creds)
	if err != nil {
		return nil, err
	}
	pool, err := cl.Pool(ctx, img.Pool, img.RadosNamespace)
	if err != nil {
		return nil, err
	}
	ws, err := pool.Watchers(ctx, img.Name)
	return mapperWatchers(ws), err
}

// mapperWatchers is ws as the mappers see watchers.
func mapperWatchers(ws []Watcher) []mapper.Watcher {
	out := make([]mapper.Watcher, 0, len(ws))
	for _, w := range ws {
		out = append(out, mapper.Watcher{Addr: w.Addr, Client: uint64(w.ID)})
	}
	return out
}
