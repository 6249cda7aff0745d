package ctl

import (
	"context"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
)

// timedCluster gives every Ceph call pelagicctl makes a deadline of its own,
// so a hung monitor or OSD fails that call after --timeout instead of
// hanging the operator's shell. Calls pelagicctl does not make pass
// through; librados' own op timeouts (set to --timeout) still bound them.
type timedCluster struct {
	rbd.Cluster
	timeout time.Duration
}

func (c timedCluster) PoolName(ctx context.Context, id int64) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	return c.Cluster.PoolName(ctx, id)
}

func (c timedCluster) Pool(ctx context.Context, pool, namespace string) (rbd.Pool, error) {
	tctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	p, err := c.Cluster.Pool(tctx, pool, namespace)
	if err != nil {
		return nil, err
	}
	return timedPool{Pool: p, timeout: c.timeout}, nil
}

func (c timedCluster) Unblocklist(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	return c.Cluster.Unblocklist(ctx, addr)
}

// timedPool is timedCluster for the calls on one pool.
type timedPool struct {
	rbd.Pool
	timeout time.Duration
}

func (p timedPool) Stat(ctx context.Context, image string) (rbd.ImageInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	return p.Pool.Stat(ctx, image)
}

func (p timedPool) Watchers(ctx context.Context, image string) ([]rbd.Watcher, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	return p.Pool.Watchers(ctx, image)
}

func (p timedPool) Metadata(ctx context.Context, image string) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	return p.Pool.Metadata(ctx, image)
}

func (p timedPool) RemoveMetadata(ctx context.Context, image, key string) error {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	return p.Pool.RemoveMetadata(ctx, image, key)
}

func (p timedPool) Lookup(ctx context.Context, kind journal.Kind, uuid string) (*journal.Record, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	return p.Pool.Lookup(ctx, kind, uuid)
}

func (p timedPool) LookupName(ctx context.Context, kind journal.Kind, name string) (*journal.Record, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	return p.Pool.LookupName(ctx, kind, name)
}

func (p timedPool) List(ctx context.Context, kind journal.Kind, startAfter string, max int) ([]*journal.Record, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	return p.Pool.List(ctx, kind, startAfter, max)
}

func (c timedCluster) Blocklist(ctx context.Context, addr string, expiry time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	return c.Cluster.Blocklist(ctx, addr, expiry)
}

func (c timedCluster) BlocklistExpiry(ctx context.Context, addr string) (time.Time, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	return c.Cluster.BlocklistExpiry(ctx, addr)
}

func (c timedCluster) PoolsHolding(ctx context.Context, namespace string, oids ...string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	return c.Cluster.PoolsHolding(ctx, namespace, oids...)
}

func (c timedCluster) AvailableBytes(ctx context.Context, pool string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	return c.Cluster.AvailableBytes(ctx, pool)
}

func (p timedPool) Records(ctx context.Context, image string) (map[string]string, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	return p.Pool.Records(ctx, image)
}

func (p timedPool) UpdateRecords(ctx context.Context, image string, version uint64, set map[string]string, remove []string) error {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	return p.Pool.UpdateRecords(ctx, image, version, set, remove)
}

func (p timedPool) ReadObjectMap(ctx context.Context, oid string) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	return p.Pool.ReadObjectMap(ctx, oid)
}

func (p timedPool) UpdateObjectMap(ctx context.Context, oid string, set map[string]string, remove []string) error {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	return p.Pool.UpdateObjectMap(ctx, oid, set, remove)
}

func (p timedPool) StatByID(ctx context.Context, id string) (rbd.ImageInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	return p.Pool.StatByID(ctx, id)
}
