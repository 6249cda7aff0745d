package rbd

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/pelagic-csi/pelagic/pkg/mapper"
)

// mapFresh maps img, making sure the mapping it returns is not one whose
// client instance was fenced: a mapper returns an existing mapping of the
// image as it is, and a fenced one can no longer write.
func (n *Node) mapFresh(ctx context.Context, m mapper.Mapper, img mapper.Image, recs *Records, opts mapper.MapOptions) (mapper.Mapping, error) {
	mapping, err := m.Map(ctx, img, opts)
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

// stagedMappingFenced reports whether the mapping a stage record names was
// fenced since: its client can no longer write, so the volume must be
// mapped afresh rather than mounted from it.
func (n *Node) stagedMappingFenced(ctx context.Context, req *csi.NodeStageVolumeRequest, rec *stageRecord) (bool, error) {
	if rec.Mapping.ClientAddr == "" {
		return false, nil
	}
	creds, err := credentialsFrom(req.GetSecrets(), req.GetVolumeContext())
	if err != nil {
		return false, status.Error(codes.InvalidArgument, err.Error())
	}
	cl, err := n.opts.Connector.Connect(ctx, rec.ClusterID, creds)
	if err != nil {
		return false, statusFor(err)
	}
	pool, err := cl.Pool(ctx, rec.Mapping.Pool, rec.Mapping.RadosNamespace)
	if err != nil {
		return false, statusFor(err)
	}
	n.known.remember(cl, pool.Name(), rec.Mapping.RadosNamespace)
	recs, err := readRecords(ctx, pool, rec.Mapping.Image)
	if err != nil {
		return false, statusFor(err)
	}
	_, fenced := recs.fenceOf(rec.Mapping.ClientAddr)
	return fenced, nil
}

// dropFencedStage undoes a stage whose mapping was fenced: the staging
// mount, the mapping (forced: its client cannot flush anything) and the
// stage record. Published targets still hold the old filesystem; while
// they do, the mapping cannot go and the caller is told to unpublish.
func (n *Node) dropFencedStage(ctx context.Context, staging string, rec *stageRecord) error {
	if err := n.opts.Mounter.Unmount(ctx, staging); err != nil {
		return status.Errorf(codes.Internal, "unmounting the fenced filesystem at %s: %v", staging, err)
	}
	m, err := n.opts.Mappers.Get(rec.Mapping.Mapper)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	if err := m.Unmap(ctx, rec.Mapping, mapper.UnmapOptions{Force: true}); err != nil {
		return status.Errorf(codes.FailedPrecondition,
			"volume %s: this node's mapping %s was fenced and cannot be replaced while it is in use (unpublish its targets %v): %v",
			rec.VolumeID, rec.Mapping.Device, rec.Targets, err)
	}
	n.forgetMapping(ctx, rec)
	if err := os.Remove(recordPath(staging)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return status.Error(codes.Internal, err.Error())
	}
	return nil
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
	if cl, ok := n.known.cluster(rec.ClusterID); ok {
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
	_, err = updateRecords(ctx, pool, f.Image, func(recs *Records) (*recordChange, error) {
		m, ok := recs.Mappings[n.opts.NodeID]
		if !ok || (m.ClientAddr != f.ClientAddr && !sameClient(m.ClientAddr, f.ClientAddr)) {
			return nil, nil // gone, or a newer mapping's record
		}
		return (&recordChange{}).drop(metaMapPrefix + n.opts.NodeID), nil
	})
	if errors.Is(err, ErrImageNotFound) || errors.Is(err, ErrPoolNotFound) {
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
		err = writeFileAtomic(q.path(), list)
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

// writeFileAtomic writes v as JSON to path through a temporary file.
func writeFileAtomic(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
