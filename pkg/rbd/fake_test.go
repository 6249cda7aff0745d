package rbd

import (
	"context"
	"fmt"
	"maps"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/journal"
)

// fakeConnector hands out in-memory clusters and records who connected.
type fakeConnector struct {
	mu       sync.Mutex
	clusters map[string]*fakeCluster
	creds    []ceph.Credentials
	err      error // returned by Connect when set
}

func (f *fakeConnector) Connect(_ context.Context, clusterID string, creds ceph.Credentials) (Cluster, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creds = append(f.creds, creds)
	if f.err != nil {
		return nil, f.err
	}
	cl, ok := f.clusters[clusterID]
	if !ok {
		return nil, fmt.Errorf("%w %q", ceph.ErrUnknownCluster, clusterID)
	}
	return cl, nil
}

// fakeCluster holds pools by name; namespaces are ignored.
type fakeCluster struct {
	id    string
	avail int64
	pools map[string]*fakePool
}

func newFakeCluster(id string, pools ...*fakePool) *fakeCluster {
	c := &fakeCluster{id: id, avail: 100 << 30, pools: map[string]*fakePool{}}
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
	return 0, fmt.Errorf("%w: %s", ErrPoolNotFound, pool)
}

func (c *fakeCluster) PoolName(_ context.Context, id int64) (string, error) {
	for _, p := range c.pools {
		if p.id == id {
			return p.name, nil
		}
	}
	return "", fmt.Errorf("%w: id %d", ErrPoolNotFound, id)
}

func (c *fakeCluster) Pool(_ context.Context, pool, _ string) (Pool, error) {
	if p, ok := c.pools[pool]; ok {
		return p, nil
	}
	return nil, fmt.Errorf("%w: %s", ErrPoolNotFound, pool)
}

func (c *fakeCluster) AvailableBytes(context.Context, string) (int64, error)  { return c.avail, nil }
func (c *fakeCluster) Blocklist(context.Context, string, time.Duration) error { return nil }
func (c *fakeCluster) Unblocklist(context.Context, string) error              { return nil }
func (c *fakeCluster) ClientAddr(context.Context) (string, error)             { return "10.0.0.1:0/1", nil }
func (c *fakeCluster) JournalPools(context.Context, string) ([]string, error) {
	var out []string
	for name := range c.pools {
		out = append(out, name)
	}
	return out, nil
}

type fakeImage struct {
	id, name string
	size     int64
	features uint64
	parent   *ParentRef
	snaps    map[string]SnapInfo
	watchers []Watcher
	meta     map[string]string
	trashed  bool
}

// fakePool keeps images by ID (trashed ones too) next to an in-memory journal.
type fakePool struct {
	*journal.Memory
	name string
	id   int64

	mu     sync.Mutex
	images map[string]*fakeImage
	seq    int
	fail   map[string]error // method name -> error to return
	calls  map[string]int   // method name -> number of calls
}

func newFakePool(name string, id int64) *fakePool {
	return &fakePool{Memory: journal.NewMemory(), name: name, id: id,
		images: map[string]*fakeImage{}, fail: map[string]error{}, calls: map[string]int{}}
}

func (p *fakePool) Name() string { return p.name }
func (p *fakePool) ID() int64    { return p.id }

// hook counts a call and returns the injected error; p.mu must be held.
func (p *fakePool) hook(method string) error {
	p.calls[method]++
	return p.fail[method]
}

func (p *fakePool) setFail(method string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fail[method] = err
}

func (p *fakePool) count(method string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls[method]
}

func (p *fakePool) byName(name string) (*fakeImage, error) {
	for _, img := range p.images {
		if img.name == name && !img.trashed {
			return img, nil
		}
	}
	return nil, fmt.Errorf("%w: %s/%s", ErrImageNotFound, p.name, name)
}

func (p *fakePool) byID(id string) (*fakeImage, error) {
	if img, ok := p.images[id]; ok {
		return img, nil
	}
	return nil, fmt.Errorf("%w: %s id %s", ErrImageNotFound, p.name, id)
}

func (p *fakePool) add(spec ImageSpec, parent *ParentRef) error {
	if _, err := p.byName(spec.Name); err == nil {
		return fmt.Errorf("image %s exists", spec.Name)
	}
	p.seq++
	id := fmt.Sprintf("%x", 0x1000+p.seq)
	p.images[id] = &fakeImage{id: id, name: spec.Name, size: spec.Size, features: spec.Features,
		parent: parent, snaps: map[string]SnapInfo{}, meta: map[string]string{}}
	return nil
}

func (p *fakePool) CreateImage(_ context.Context, spec ImageSpec) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("CreateImage"); err != nil {
		return err
	}
	return p.add(spec, nil)
}

func (p *fakePool) Clone(_ context.Context, parentImage, snap string, spec ImageSpec) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("Clone"); err != nil {
		return err
	}
	parent, err := p.byName(parentImage)
	if err != nil {
		return err
	}
	if _, ok := parent.snaps[snap]; !ok {
		return fmt.Errorf("%w: %s@%s", ErrSnapNotFound, parentImage, snap)
	}
	return p.add(spec, &ParentRef{Pool: p.name, Image: parent.name, ImageID: parent.id, Snap: snap})
}

func (img *fakeImage) info() ImageInfo {
	info := ImageInfo{Name: img.name, ID: img.id, Size: img.size, Features: img.features}
	if img.parent != nil {
		ref := *img.parent
		info.Parent = &ref
	}
	return info
}

func (p *fakePool) Stat(_ context.Context, image string) (ImageInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("Stat"); err != nil {
		return ImageInfo{}, err
	}
	img, err := p.byName(image)
	if err != nil {
		return ImageInfo{}, err
	}
	return img.info(), nil
}

func (p *fakePool) StatByID(_ context.Context, id string) (ImageInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	img, err := p.byID(id)
	if err != nil {
		return ImageInfo{}, err
	}
	return img.info(), nil
}

func (p *fakePool) Resize(_ context.Context, image string, size int64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("Resize"); err != nil {
		return err
	}
	img, err := p.byName(image)
	if err == nil {
		img.size = size
	}
	return err
}

func (p *fakePool) Flatten(_ context.Context, image string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("Flatten"); err != nil {
		return err
	}
	img, err := p.byName(image)
	if err == nil {
		img.parent = nil
		p.purgeFree("")
	}
	return err
}

func (p *fakePool) Watchers(_ context.Context, image string) ([]Watcher, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	img, err := p.byName(image)
	if err != nil {
		return nil, err
	}
	return append([]Watcher(nil), img.watchers...), nil
}

func (p *fakePool) Metadata(_ context.Context, image string) (map[string]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	img, err := p.byName(image)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for k, v := range img.meta {
		out[k] = v
	}
	return out, nil
}

func (p *fakePool) SetMetadata(_ context.Context, image string, kv map[string]string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("SetMetadata"); err != nil {
		return err
	}
	img, err := p.byName(image)
	if err != nil {
		return err
	}
	for k, v := range kv {
		img.meta[k] = v
	}
	return nil
}

func (p *fakePool) RemoveMetadata(_ context.Context, image, key string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	img, err := p.byName(image)
	if err == nil {
		delete(img.meta, key)
	}
	return err
}

// Delete behaves like the Ceph backend: gone is fine, watchers refuse,
// otherwise trash and purge what nothing needs.
func (p *fakePool) Delete(_ context.Context, image string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("Delete"); err != nil {
		return err
	}
	img, err := p.byName(image)
	if err != nil {
		return nil
	}
	if len(img.watchers) > 0 {
		return &InUseError{Image: p.name + "/" + image, Watchers: img.watchers}
	}
	img.trashed = true
	p.purgeFree("")
	return nil
}

// purgeFree removes trashed images (named with prefix) without snapshots
// or children, repeatedly, since a purge can free a parent.
func (p *fakePool) purgeFree(prefix string) {
	for again := true; again; {
		again = false
		for id, img := range p.images {
			if !img.trashed || !strings.HasPrefix(img.name, prefix) || len(img.snaps) > 0 || p.hasChildren(id) {
				continue
			}
			delete(p.images, id)
			again = true
		}
	}
}

func (p *fakePool) hasChildren(id string) bool {
	for _, img := range p.images {
		if img.parent != nil && img.parent.ImageID == id {
			return true
		}
	}
	return false
}

func (p *fakePool) PurgeTrash(_ context.Context, prefix string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("PurgeTrash"); err != nil {
		return err
	}
	p.purgeFree(prefix)
	return nil
}

func (p *fakePool) CreateSnap(_ context.Context, imageID, snap string) (SnapInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("CreateSnap"); err != nil {
		return SnapInfo{}, err
	}
	img, err := p.byID(imageID)
	if err != nil {
		return SnapInfo{}, err
	}
	if s, ok := img.snaps[snap]; ok {
		return s, nil // EEXIST is a retry
	}
	p.seq++
	s := SnapInfo{Name: snap, ID: uint64(p.seq), Size: img.size, Created: time.Now()}
	img.snaps[snap] = s
	return s, nil
}

// RemoveSnap drops the snapshot; children keep their ParentRef, as clone v2
// keeps the snapshot in the trash namespace.
func (p *fakePool) RemoveSnap(_ context.Context, imageID, snap string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("RemoveSnap"); err != nil {
		return err
	}
	if img, err := p.byID(imageID); err == nil {
		delete(img.snaps, snap)
	}
	return nil
}

func (p *fakePool) Snap(_ context.Context, imageID, snap string) (SnapInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	img, err := p.byID(imageID)
	if err != nil {
		return SnapInfo{}, err
	}
	s, ok := img.snaps[snap]
	if !ok {
		return SnapInfo{}, fmt.Errorf("%w: %s@%s", ErrSnapNotFound, imageID, snap)
	}
	return s, nil
}

// Test helpers.

// imageNames lists the live (untrashed) images, sorted.
func (p *fakePool) imageNames() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, img := range p.images {
		if !img.trashed {
			out = append(out, img.name)
		}
	}
	sort.Strings(out)
	return out
}

// image returns a copy of the named image (trashed ones too), or nil.
func (p *fakePool) image(name string) *fakeImage {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, img := range p.images {
		if img.name == name {
			c := *img
			c.snaps, c.meta = maps.Clone(img.snaps), maps.Clone(img.meta)
			return &c
		}
	}
	return nil
}

func (p *fakePool) setWatchers(name string, ws ...Watcher) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if img, err := p.byName(name); err == nil {
		img.watchers = ws
	}
}
