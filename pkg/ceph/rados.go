package ceph

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/ceph/go-ceph/rados"

	"github.com/pelagic-csi/pelagic/pkg/util"
)

// Connector opens the clusters of Config over the connections Conns caches.
type Connector struct {
	Config *Config
	Conns  *ConnPool
}

// Connect returns clusterID as the user of creds sees it. Every
// connection has one RadosCluster, so its pool IDs and pool handles are
// looked up once, not per request.
func (c Connector) Connect(ctx context.Context, clusterID string, creds Credentials) (*RadosCluster, error) {
	cc, err := c.Config.Cluster(clusterID)
	if err != nil {
		return nil, err
	}
	conn, err := c.Conns.Get(ctx, cc, creds)
	if err != nil {
		return nil, err
	}
	return conn.cluster, nil
}

// RadosCluster is Cluster over one RADOS connection.
type RadosCluster struct {
	conn *Conn

	mu      sync.Mutex
	pools   map[string]*RadosPool // "pool/namespace"
	poolIDs map[string]int64
}

var _ Cluster = (*RadosCluster)(nil)

func newRadosCluster(conn *Conn) *RadosCluster {
	return &RadosCluster{conn: conn, pools: map[string]*RadosPool{}, poolIDs: map[string]int64{}}
}

// Conn is the connection, for what a driver sends through it itself (the
// mgr commands of CephFS, say).
func (c *RadosCluster) Conn() *Conn { return c.conn }

func (c *RadosCluster) ClusterID() string { return c.conn.ClusterID }

func (c *RadosCluster) PoolID(ctx context.Context, pool string) (int64, error) {
	c.mu.Lock()
	id, ok := c.poolIDs[pool]
	c.mu.Unlock()
	if ok {
		return id, nil
	}
	id, err := util.Do(ctx, "looking up pool "+pool, func() (int64, error) { return c.conn.GetPoolByName(pool) })
	if errors.Is(err, rados.ErrNotFound) {
		return 0, fmt.Errorf("%w: %q in cluster %q", ErrPoolNotFound, pool, c.conn.ClusterID)
	}
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	c.poolIDs[pool] = id
	c.mu.Unlock()
	return id, nil
}

func (c *RadosCluster) PoolName(ctx context.Context, id int64) (string, error) {
	c.mu.Lock()
	for name, pid := range c.poolIDs {
		if pid == id {
			c.mu.Unlock()
			return name, nil
		}
	}
	c.mu.Unlock()
	name, err := util.Do(ctx, "looking up pool ID", func() (string, error) { return c.conn.GetPoolByID(id) })
	if errors.Is(err, rados.ErrNotFound) || (err == nil && name == "") {
		return "", fmt.Errorf("%w: ID %d in cluster %q", ErrPoolNotFound, id, c.conn.ClusterID)
	}
	if err != nil {
		return "", err
	}
	c.mu.Lock()
	c.poolIDs[name] = id
	c.mu.Unlock()
	return name, nil
}

// OpenPool opens a pool and RADOS namespace; handles are cached for the
// life of the connection.
func (c *RadosCluster) OpenPool(ctx context.Context, pool, namespace string) (*RadosPool, error) {
	key := pool + "/" + namespace
	c.mu.Lock()
	p, ok := c.pools[key]
	c.mu.Unlock()
	if ok {
		return p, nil
	}
	id, err := c.PoolID(ctx, pool)
	if err != nil {
		return nil, err
	}
	ioctx, err := util.Do(ctx, "opening pool "+pool, func() (*rados.IOContext, error) { return c.conn.OpenIOContext(pool) })
	if err != nil {
		return nil, fmt.Errorf("opening pool %q: %w", pool, err)
	}
	ioctx.SetNamespace(namespace)
	p = &RadosPool{ioctx: ioctx, conn: c.conn, name: pool, namespace: namespace, id: id}
	c.mu.Lock()
	defer c.mu.Unlock()
	if existing, ok := c.pools[key]; ok {
		ioctx.Destroy()
		return existing, nil
	}
	c.pools[key] = p
	return p, nil
}

// AvailableBytes is the pool's max_avail from "df". The mgr reports a new
// pool there only with its next statistics digest, a few seconds after the
// pool exists: for a pool the OSD map has, it asks again until then.
func (c *RadosCluster) AvailableBytes(ctx context.Context, pool string) (int64, error) {
	for {
		avail, found, err := c.dfMaxAvail(ctx, pool)
		if err != nil || found {
			return avail, err
		}
		if _, err := c.PoolID(ctx, pool); err != nil {
			return 0, err // ErrPoolNotFound when the OSD map has no such pool either
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("pool %q in cluster %q is not in the mgr's statistics yet: %w", pool, c.conn.ClusterID, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (c *RadosCluster) dfMaxAvail(ctx context.Context, pool string) (avail int64, found bool, err error) {
	out, err := c.conn.MonCommand(ctx, map[string]any{"prefix": "df", "format": "json"})
	if err != nil {
		return 0, false, err
	}
	var df struct {
		Pools []struct {
			Name  string `json:"name"`
			Stats struct {
				MaxAvail int64 `json:"max_avail"`
			} `json:"stats"`
		} `json:"pools"`
	}
	if err := json.Unmarshal(out, &df); err != nil {
		return 0, false, fmt.Errorf("decoding df: %w", err)
	}
	for _, p := range df.Pools {
		if p.Name == pool {
			return p.Stats.MaxAvail, true, nil
		}
	}
	return 0, false, nil
}

func (c *RadosCluster) Blocklist(ctx context.Context, addr string, expiry time.Duration) error {
	cmd := map[string]any{"prefix": "osd blocklist", "blocklistop": "add", "addr": addr}
	if expiry > 0 {
		// The mon wants a float here and rejects a JSON integer.
		cmd["expire"] = json.Number(strconv.FormatFloat(expiry.Seconds(), 'f', 1, 64))
	}
	_, err := c.conn.MonCommand(ctx, cmd)
	return err
}

func (c *RadosCluster) BlocklistExpiry(ctx context.Context, addr string) (time.Time, bool, error) {
	out, err := c.conn.MonCommand(ctx, map[string]any{"prefix": "osd blocklist ls", "format": "json"})
	if err != nil {
		return time.Time{}, false, err
	}
	var entries []struct {
		Addr  string `json:"addr"`
		Until string `json:"until"`
	}
	// The mon answers with the instance list, then the range list.
	if err := json.NewDecoder(bytes.NewReader(out)).Decode(&entries); err != nil {
		return time.Time{}, false, fmt.Errorf("decoding the blocklist: %w", err)
	}
	for _, e := range entries {
		if SameClient(e.Addr, addr) {
			until, err := time.Parse("2006-01-02T15:04:05.999999-0700", e.Until)
			return until, true, err
		}
	}
	return time.Time{}, false, nil
}

func (c *RadosCluster) Unblocklist(ctx context.Context, addr string) error {
	_, err := c.conn.MonCommand(ctx, map[string]any{"prefix": "osd blocklist", "blocklistop": "rm", "addr": addr})
	return err
}

func (c *RadosCluster) ClientAddr(ctx context.Context) (string, error) {
	return util.Do(ctx, "reading client address", c.conn.GetAddrs)
}

func (c *RadosCluster) PoolsHolding(ctx context.Context, namespace string, oids ...string) ([]string, error) {
	names, err := util.Do(ctx, "listing pools", c.conn.ListPools)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, name := range names {
		p, err := c.OpenPool(ctx, name, namespace)
		if err != nil {
			continue // a pool this user may not open holds nothing of ours
		}
		if ok, err := p.holdsAny(ctx, oids); err == nil && ok {
			out = append(out, name)
		}
	}
	return out, nil
}

// RadosPool is Pool over one I/O context.
type RadosPool struct {
	ioctx     *rados.IOContext
	conn      *Conn
	name      string
	namespace string
	id        int64
}

var _ Pool = (*RadosPool)(nil)

func (p *RadosPool) Name() string { return p.name }

func (p *RadosPool) ID() int64 { return p.id }

func (p *RadosPool) Namespace() string { return p.namespace }

// IOContext is the pool's shared I/O context, for the driver's own
// objects (journal, images). It stays open as long as the connection.
func (p *RadosPool) IOContext() *rados.IOContext { return p.ioctx }

// PrivateIOContext opens an I/O context of the pool and namespace for one
// caller, who destroys it: its last object version is then its own, where
// the shared context's is overwritten by concurrent calls.
func (p *RadosPool) PrivateIOContext() (*rados.IOContext, error) {
	ioctx, err := p.conn.OpenIOContext(p.name)
	if err != nil {
		return nil, err
	}
	ioctx.SetNamespace(p.namespace)
	return ioctx, nil
}

func (p *RadosPool) ReadObjectMap(ctx context.Context, oid string) (map[string]string, error) {
	vals, err := util.Do(ctx, "reading "+oid, func() (map[string][]byte, error) {
		return p.ioctx.GetAllOmapValues(oid, "", "", 256)
	})
	if errors.Is(err, rados.ErrNotFound) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s in pool %s: %w", oid, p.name, err)
	}
	out := make(map[string]string, len(vals))
	for k, v := range vals {
		out[k] = string(v)
	}
	return out, nil
}

func (p *RadosPool) UpdateObjectMap(ctx context.Context, oid string, set map[string]string, remove []string) error {
	if len(set) == 0 && len(remove) == 0 {
		return nil
	}
	err := util.Run(ctx, "updating "+oid, func() error {
		op := rados.CreateWriteOp()
		defer op.Release()
		op.Create(rados.CreateIdempotent)
		if len(set) > 0 {
			pairs := make(map[string][]byte, len(set))
			for k, v := range set {
				pairs[k] = []byte(v)
			}
			op.SetOmap(pairs)
		}
		if len(remove) > 0 {
			op.RmOmapKeys(remove)
		}
		return op.Operate(p.ioctx, oid, rados.OperationNoFlag)
	})
	if err != nil {
		return fmt.Errorf("updating %s in pool %s: %w", oid, p.name, err)
	}
	return nil
}

// holdsAny reports whether any of oids exists in the pool's namespace.
func (p *RadosPool) holdsAny(ctx context.Context, oids []string) (bool, error) {
	for _, oid := range oids {
		_, err := util.Do(ctx, "looking for "+oid, func() (rados.ObjectStat, error) { return p.ioctx.Stat(oid) })
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, rados.ErrNotFound) {
			return false, err
		}
	}
	return false, nil
}
