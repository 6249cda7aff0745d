package volume

import (
	"sort"
	"sync"
)

// Known remembers the clusters, and the journal pools in them, that calls
// with secrets opened, so that calls carrying none (ListVolumes,
// ListSnapshots, GetCapacity, ControllerGetVolume, NodeUnstageVolume) can
// reach them. C is the driver's cluster. The zero value is ready to use.
type Known[C interface{ ClusterID() string }] struct {
	mu       sync.Mutex
	clusters map[string]C
	pools    map[string]map[Place]bool // by cluster ID
}

// Place is a pool and RADOS namespace.
type Place struct{ Pool, Namespace string }

// KnownPool is a remembered pool of a remembered cluster.
type KnownPool[C any] struct {
	Cluster   C
	ClusterID string
	Place
}

// Remember keeps c, and its pool and namespace.
func (k *Known[C]) Remember(c C, pool, namespace string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.clusters == nil {
		k.clusters, k.pools = map[string]C{}, map[string]map[Place]bool{}
	}
	id := c.ClusterID()
	k.clusters[id] = c
	if k.pools[id] == nil {
		k.pools[id] = map[Place]bool{}
	}
	k.pools[id][Place{pool, namespace}] = true
}

// Cluster returns the remembered cluster id.
func (k *Known[C]) Cluster(id string) (C, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	c, ok := k.clusters[id]
	return c, ok
}

// Pools returns every remembered pool, ordered by cluster, pool and namespace.
func (k *Known[C]) Pools() []KnownPool[C] {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []KnownPool[C]
	for id, places := range k.pools {
		for p := range places {
			out = append(out, KnownPool[C]{Cluster: k.clusters[id], ClusterID: id, Place: p})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.ClusterID != b.ClusterID {
			return a.ClusterID < b.ClusterID
		}
		return a.Pool+"/"+a.Namespace < b.Pool+"/"+b.Namespace
	})
	return out
}
