package cephfs

import (
	"context"
	"sync"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/journal"
)

// JournalPrefix begins the names of the CephFS journal's objects, kept in
// a filesystem's metadata pool ("pelagic.cephfs.volumes", ...), in the
// namespace where ceph-csi keeps its own (cephFS.radosNamespace, "csi").
const JournalPrefix = "pelagic.cephfs"

// Connector opens a Cluster for one user. The real one shares cached
// RADOS connections; tests use FakeConnector.
type Connector interface {
	Connect(ctx context.Context, clusterID string, creds ceph.Credentials) (Cluster, error)
}

// Cluster is a Ceph cluster as the CephFS services use it: its pools, the
// mgr volumes module of its filesystems, and the journals in their
// metadata pools.
type Cluster interface {
	ceph.Cluster
	Volumes() Volumes
	// Journal opens the journal kept in a pool's namespace.
	Journal(ctx context.Context, pool, namespace string) (journal.Journal, error)
	// CephCSIJournal opens the journal ceph-csi keeps in a pool's
	// namespace under its instance ID (see journal.CephCSI).
	CephCSIJournal(ctx context.Context, pool, namespace, instanceID string) (journal.Journal, error)
}

// CephConnector is the Connector over real clusters: the clusters of
// Config, over the connections Conns caches.
type CephConnector struct {
	Config *ceph.Config
	Conns  *ceph.ConnPool

	vols sync.Map // *ceph.Conn -> *MgrVolumes, which remembers groups
}

// Connect implements Connector. The mgr commands go over a connection of
// their own, which librados never times out (see ceph.ConnPool.GetForMgr).
func (c *CephConnector) Connect(ctx context.Context, clusterID string, creds ceph.Credentials) (Cluster, error) {
	rc, err := ceph.Connector{Config: c.Config, Conns: c.Conns}.Connect(ctx, clusterID, creds)
	if err != nil {
		return nil, err
	}
	cc, err := c.Config.Cluster(clusterID)
	if err != nil {
		return nil, err
	}
	mgr, err := c.Conns.GetForMgr(ctx, cc, creds)
	if err != nil {
		return nil, err
	}
	v, ok := c.vols.Load(mgr)
	if !ok {
		v, _ = c.vols.LoadOrStore(mgr, NewMgrVolumes(mgr.Conn))
	}
	return &cephCluster{RadosCluster: rc, vols: v.(*MgrVolumes)}, nil
}

type cephCluster struct {
	*ceph.RadosCluster
	vols *MgrVolumes
}

func (c *cephCluster) Volumes() Volumes { return c.vols }

func (c *cephCluster) Journal(ctx context.Context, pool, namespace string) (journal.Journal, error) {
	p, err := c.OpenPool(ctx, pool, namespace)
	if err != nil {
		return nil, err
	}
	return journal.NewRados(p.IOContext(), JournalPrefix), nil
}

func (c *cephCluster) CephCSIJournal(ctx context.Context, pool, namespace, instanceID string) (journal.Journal, error) {
	p, err := c.OpenPool(ctx, pool, namespace)
	if err != nil {
		return nil, err
	}
	return journal.NewCephCSI(p.IOContext(), p.ID(), instanceID), nil
}
