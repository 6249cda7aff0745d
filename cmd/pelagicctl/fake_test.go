package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
)

// fakeConnector hands out one in-memory cluster and remembers the
// credentials it was given.
type fakeConnector struct {
	cluster *fakeCluster
	err     error // returned by Connect when set
	creds   []ceph.Credentials
}

func (f *fakeConnector) Connect(_ context.Context, clusterID string, creds ceph.Credentials) (rbd.Cluster, error) {
	f.creds = append(f.creds, creds)
	if f.err != nil {
		return nil, f.err
	}
	if clusterID != f.cluster.id {
		return nil, fmt.Errorf("%w %q", ceph.ErrUnknownCluster, clusterID)
	}
	return f.cluster, nil
}

// fakeCluster holds pools by name and a blocklist; namespaces are ignored.
type fakeCluster struct {
	id        string
	pools     map[string]*fakePool
	mu        sync.Mutex
	blocklist map[string]bool
}

func newFakeCluster(id string, pools ...*fakePool) *fakeCluster {
	c := &fakeCluster{id: id, pools: map[string]*fakePool{}, blocklist: map[string]bool{}}
	for _, p := range pools {
		c.pools[p.name] = p
	}
	return c
}

func (c *fakeCluster) ClusterID() string { return c.id }

func (c *fakeCluster) PoolID(_ context.Context, pool string) (int64, error) {
	if p, ok := c.pools[pool]; ok {
		return p.id, nil
	}
	return 0, fmt.Errorf("%w: %s", rbd.ErrPoolNotFound, pool)
}

func (c *fakeCluster) PoolName(_ context.Context, id int64) (string, error) {
	for _, p := range c.pools {
		if p.id == id {
			return p.name, nil
		}
	}
	return "", fmt.Errorf("%w: id %d", rbd.ErrPoolNotFound, id)
}

func (c *fakeCluster) Pool(_ context.Context, pool, _ string) (rbd.Pool, error) {
	if p, ok := c.pools[pool]; ok {
		return p, nil
	}
	return nil, fmt.Errorf("%w: %s", rbd.ErrPoolNotFound, pool)
}

func (c *fakeCluster) AvailableBytes(context.Context, string) (int64, error) { return 1 << 40, nil }

func (c *fakeCluster) Blocklist(_ context.Context, addr string, _ time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.blocklist[addr] = true
	return nil
}

func (c *fakeCluster) Unblocklist(_ context.Context, addr string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.blocklist, addr)
	return nil
}

func (c *fakeCluster) blocklisted(addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.blocklist[addr]
}

func (c *fakeCluster) ClientAddr(context.Context) (string, error) { return "10.0.0.1:0/1", nil }
func (c *fakeCluster) JournalPools(context.Context, string) ([]string, error) {
	var out []string
	for name := range c.pools {
		out = append(out, name)
	}
	return out, nil
}

type fakeImage struct {
	size     int64
	meta     map[string]string
	watchers []rbd.Watcher
}

// fakePool keeps images by name next to an in-memory journal. Only the
// calls pelagicctl makes are implemented; the others fail loudly.
type fakePool struct {
	*journal.Memory
	name   string
	id     int64
	mu     sync.Mutex
	images map[string]*fakeImage
	// hang makes Metadata block until its context ends, like a stuck OSD.
	hang bool
}

func newFakePool(name string, id int64) *fakePool {
	return &fakePool{Memory: journal.NewMemory(), name: name, id: id, images: map[string]*fakeImage{}}
}

func (p *fakePool) Name() string { return p.name }
func (p *fakePool) ID() int64    { return p.id }

func (p *fakePool) image(name string) (*fakeImage, error) {
	img, ok := p.images[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s/%s", rbd.ErrImageNotFound, p.name, name)
	}
	return img, nil
}

func (p *fakePool) Stat(_ context.Context, name string) (rbd.ImageInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	img, err := p.image(name)
	if err != nil {
		return rbd.ImageInfo{}, err
	}
	return rbd.ImageInfo{Name: name, ID: "id-" + name, Size: img.size}, nil
}

func (p *fakePool) Watchers(_ context.Context, name string) ([]rbd.Watcher, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	img, err := p.image(name)
	if err != nil {
		return nil, err
	}
	return append([]rbd.Watcher(nil), img.watchers...), nil
}

func (p *fakePool) Metadata(ctx context.Context, name string) (map[string]string, error) {
	if p.hang {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	img, err := p.image(name)
	if err != nil {
		return nil, err
	}
	return maps.Clone(img.meta), nil
}

func (p *fakePool) SetMetadata(_ context.Context, name string, kv map[string]string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	img, err := p.image(name)
	if err != nil {
		return err
	}
	maps.Copy(img.meta, kv)
	return nil
}

func (p *fakePool) RemoveMetadata(_ context.Context, name, key string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	img, err := p.image(name)
	if err != nil {
		return err
	}
	delete(img.meta, key)
	return nil
}

func (p *fakePool) metadata(name string) map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.images[name].meta)
}

var errNotFaked = errors.New("not used by pelagicctl")

func (p *fakePool) CreateImage(context.Context, rbd.ImageSpec) error { return errNotFaked }
func (p *fakePool) Clone(context.Context, string, string, rbd.ImageSpec) error {
	return errNotFaked
}
func (p *fakePool) StatByID(context.Context, string) (rbd.ImageInfo, error) {
	return rbd.ImageInfo{}, errNotFaked
}
func (p *fakePool) Resize(context.Context, string, int64) error      { return errNotFaked }
func (p *fakePool) Flatten(context.Context, string) error            { return errNotFaked }
func (p *fakePool) Delete(context.Context, string) error             { return errNotFaked }
func (p *fakePool) PurgeTrash(context.Context, string) error         { return errNotFaked }
func (p *fakePool) RemoveSnap(context.Context, string, string) error { return errNotFaked }
func (p *fakePool) CreateSnap(context.Context, string, string) (rbd.SnapInfo, error) {
	return rbd.SnapInfo{}, errNotFaked
}
func (p *fakePool) Snap(context.Context, string, string) (rbd.SnapInfo, error) {
	return rbd.SnapInfo{}, errNotFaked
}
