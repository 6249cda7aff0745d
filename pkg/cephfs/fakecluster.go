package cephfs

import (
	"context"
	"fmt"
	"sync"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/journal"
)

// FakeCluster is a Cluster in memory for the services' unit tests:
// ceph.FakeCluster's pools, FakeVolumes' filesystems, and a memory journal
// per pool and namespace. Every filesystem's pools exist.
type FakeCluster struct {
	*ceph.FakeCluster
	Vols *FakeVolumes

	mu       sync.Mutex
	journals map[string]*journal.Memory
}

var _ Cluster = (*FakeCluster)(nil)

// NewFakeCluster returns cluster id serving the filesystems of vols.
func NewFakeCluster(ctx context.Context, id string, vols *FakeVolumes) (*FakeCluster, error) {
	c := &FakeCluster{FakeCluster: ceph.NewFakeCluster(id), Vols: vols, journals: map[string]*journal.Memory{}}
	fss, err := vols.FileSystems(ctx)
	if err != nil {
		return nil, err
	}
	for _, fs := range fss {
		c.AddPool(fs.MetadataPool, fs.MetadataPoolID)
		for i, p := range fs.DataPools {
			c.AddPool(p, fs.DataPoolIDs[i])
		}
	}
	return c, nil
}

func (c *FakeCluster) Volumes() Volumes { return c.Vols }

func (c *FakeCluster) Journal(ctx context.Context, pool, namespace string) (journal.Journal, error) {
	return c.memory(ctx, pool+"/"+namespace, pool, "")
}

// CephCSIJournal implements Cluster: a memory journal whose records report
// FromCephCSI, for tests to fill as ceph-csi would.
func (c *FakeCluster) CephCSIJournal(ctx context.Context, pool, namespace, instanceID string) (journal.Journal, error) {
	return c.memory(ctx, pool+"/"+namespace+"#"+instanceID, pool, journal.OriginCephCSI)
}

func (c *FakeCluster) memory(ctx context.Context, key, pool, origin string) (*journal.Memory, error) {
	if _, err := c.PoolID(ctx, pool); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.journals[key] == nil {
		c.journals[key] = journal.NewMemory()
		c.journals[key].Origin = origin
	}
	return c.journals[key], nil
}

// FakeConnector connects to its clusters by ID, with any credentials.
type FakeConnector map[string]*FakeCluster

func (f FakeConnector) Connect(_ context.Context, clusterID string, _ ceph.Credentials) (Cluster, error) {
	if c, ok := f[clusterID]; ok {
		return c, nil
	}
	return nil, fmt.Errorf("%w %q", ceph.ErrUnknownCluster, clusterID)
}
