package ceph

import (
	"context"
	"fmt"
	"maps"
	"sort"
	"sync"
	"syscall"
	"time"
)

// FakeCluster is an in-memory Cluster for unit tests: pools by name and
// ID, a blocklist with expiries, 100 GiB available in every pool.
type FakeCluster struct {
	// Addr is the client instance ClientAddr reports.
	Addr string
	// KeepBlocklistExpiry makes blocklisting a listed instance keep its
	// expiry, as Ceph Pacific does; otherwise the expiry moves.
	KeepBlocklistExpiry bool
	// AddOnlyBlocklist refuses removals with EACCES, as a user with
	// `profile rbd` but not "allow command 'osd blocklist'" is refused.
	AddOnlyBlocklist bool

	id    string
	avail int64

	mu        sync.Mutex
	pools     map[string]int64     // name -> ID
	blocklist map[string]time.Time // address -> expiry
}

var _ Cluster = (*FakeCluster)(nil)

// NewFakeCluster returns a cluster without pools.
func NewFakeCluster(id string) *FakeCluster {
	return &FakeCluster{Addr: "10.0.0.1:0/1", id: id, avail: 100 << 30,
		pools: map[string]int64{}, blocklist: map[string]time.Time{}}
}

// AddPool creates a pool.
func (c *FakeCluster) AddPool(name string, id int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pools[name] = id
}

func (c *FakeCluster) ClusterID() string { return c.id }

func (c *FakeCluster) PoolID(_ context.Context, pool string) (int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if id, ok := c.pools[pool]; ok {
		return id, nil
	}
	return 0, fmt.Errorf("%w: %s", ErrPoolNotFound, pool)
}

func (c *FakeCluster) PoolName(_ context.Context, id int64) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, pid := range c.pools {
		if pid == id {
			return name, nil
		}
	}
	return "", fmt.Errorf("%w: id %d", ErrPoolNotFound, id)
}

func (c *FakeCluster) AvailableBytes(context.Context, string) (int64, error) { return c.avail, nil }

func (c *FakeCluster) Blocklist(_ context.Context, addr string, expiry time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if exp, ok := c.blocklist[addr]; ok && c.KeepBlocklistExpiry && time.Now().Before(exp) {
		return nil
	}
	c.blocklist[addr] = time.Now().Add(expiry)
	return nil
}

func (c *FakeCluster) BlocklistExpiry(_ context.Context, addr string) (time.Time, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	exp, ok := c.blocklist[addr]
	if ok && !time.Now().Before(exp) {
		return time.Time{}, false, nil
	}
	return exp, ok, nil
}

func (c *FakeCluster) Unblocklist(_ context.Context, addr string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.AddOnlyBlocklist {
		return fmt.Errorf("osd blocklist rm %s: %w", addr, syscall.EACCES)
	}
	delete(c.blocklist, addr)
	return nil
}

// Blocklisted reports whether addr is blocklisted and unexpired.
func (c *FakeCluster) Blocklisted(addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	exp, ok := c.blocklist[addr]
	return ok && time.Now().Before(exp)
}

// AgeBlocklist moves the expiry of addr's entry to until, as time passing
// would; it adds no entry.
func (c *FakeCluster) AgeBlocklist(addr string, until time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.blocklist[addr]; ok {
		c.blocklist[addr] = until
	}
}

func (c *FakeCluster) ClientAddr(context.Context) (string, error) { return c.Addr, nil }

// PoolsHolding returns every pool, sorted, as though each held
// one of the objects.
func (c *FakeCluster) PoolsHolding(context.Context, string, ...string) ([]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.pools))
	for name := range c.pools {
		out = append(out, name)
	}
	sort.Strings(out)
	return out, nil
}

// FakePool is an in-memory Pool; namespaces are ignored.
type FakePool struct {
	name string
	id   int64

	mu   sync.Mutex
	objs map[string]map[string]string
}

var _ Pool = (*FakePool)(nil)

// NewFakePool returns an empty pool.
func NewFakePool(name string, id int64) *FakePool {
	return &FakePool{name: name, id: id, objs: map[string]map[string]string{}}
}

func (p *FakePool) Name() string { return p.name }

func (p *FakePool) ID() int64 { return p.id }

func (p *FakePool) Namespace() string { return "" }

func (p *FakePool) ReadObjectMap(_ context.Context, oid string) (map[string]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.objs[oid]), nil
}

func (p *FakePool) UpdateObjectMap(_ context.Context, oid string, set map[string]string, remove []string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.objs[oid] == nil {
		p.objs[oid] = map[string]string{}
	}
	maps.Copy(p.objs[oid], set)
	for _, k := range remove {
		delete(p.objs[oid], k)
	}
	return nil
}
