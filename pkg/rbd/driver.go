// Package rbd implements the CSI Controller and Node services for RBD
// block volumes.
package rbd

import (
	"context"
	"errors"
	"sort"
	"strings"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/journal"
)

// statusFor turns a backend error into a gRPC status. Messages name the
// image, pool or cluster; they never carry a key.
func statusFor(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, ErrImageInUse):
		code = codes.FailedPrecondition
	case errors.Is(err, ErrImageNotFound), errors.Is(err, ErrSnapNotFound), errors.Is(err, journal.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, journal.ErrNameTaken):
		code = codes.Aborted
	case errors.Is(err, ceph.ErrMissingCredentials), errors.Is(err, ceph.ErrUnknownCluster), errors.Is(err, ceph.ErrPoolNotFound):
		code = codes.InvalidArgument
	default:
		if c := ceph.Code(err); c != codes.Internal {
			code = c
		}
	}
	return status.Error(code, err.Error())
}

// knownClusters remembers cluster handles and pools that requests with
// secrets opened, so calls that carry no secrets (ListVolumes,
// ListSnapshots, GetCapacity, ControllerGetVolume) can reach them.
type knownClusters struct {
	mu       sync.Mutex
	clusters map[string]Cluster
	pools    map[string]map[string]bool // clusterID -> "pool/namespace"
}

func (k *knownClusters) remember(c Cluster, pool, ns string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.clusters == nil {
		k.clusters, k.pools = map[string]Cluster{}, map[string]map[string]bool{}
	}
	k.clusters[c.ClusterID()] = c
	if k.pools[c.ClusterID()] == nil {
		k.pools[c.ClusterID()] = map[string]bool{}
	}
	k.pools[c.ClusterID()][pool+"/"+ns] = true
}

func (k *knownClusters) cluster(id string) (Cluster, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	c, ok := k.clusters[id]
	return c, ok
}

type knownPool struct {
	cluster   Cluster
	pool, ns  string
	clusterID string
}

// all returns every known pool in a stable order.
func (k *knownClusters) all() []knownPool {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []knownPool
	for id, pools := range k.pools {
		for key := range pools {
			pool, ns, _ := strings.Cut(key, "/")
			out = append(out, knownPool{cluster: k.clusters[id], pool: pool, ns: ns, clusterID: id})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].clusterID != out[j].clusterID {
			return out[i].clusterID < out[j].clusterID
		}
		return out[i].pool+"/"+out[i].ns < out[j].pool+"/"+out[j].ns
	})
	return out
}
