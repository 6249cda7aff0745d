package rbd

// In-memory fakes of Connector, Cluster and Pool for the tests of the RBD
// services and of the tools built on them. They keep the rules the Ceph
// backend keeps: conditional record updates fail with ErrConflict when the
// image changed, deleting a watched image is refused, trashed images stay
// while snapshots or children need them.

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

// FakeConnector hands out in-memory clusters and records who connected.
type FakeConnector struct {
	Clusters map[string]*FakeCluster
	Err      error // returned by Connect when set

	mu    sync.Mutex
	creds []ceph.Credentials
}

// NewFakeConnector serves the given clusters by their IDs.
func NewFakeConnector(clusters ...*FakeCluster) *FakeConnector {
	f := &FakeConnector{Clusters: map[string]*FakeCluster{}}
	for _, c := range clusters {
		f.Clusters[c.id] = c
	}
	return f
}

// Creds returns the credentials of every Connect call so far.
func (f *FakeConnector) Creds() []ceph.Credentials {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]ceph.Credentials(nil), f.creds...)
}

func (f *FakeConnector) Connect(_ context.Context, clusterID string, creds ceph.Credentials) (Cluster, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creds = append(f.creds, creds)
	if f.Err != nil {
		return nil, f.Err
	}
	cl, ok := f.Clusters[clusterID]
	if !ok {
		return nil, fmt.Errorf("%w %q", ceph.ErrUnknownCluster, clusterID)
	}
	return cl, nil
}

// FakeCluster holds pools by name; namespaces are ignored.
type FakeCluster struct {
	id    string
	avail int64
	pools map[string]*FakePool
	// Addr is the client instance ClientAddr reports.
	Addr string
	// KeepBlocklistExpiry makes blocklisting a listed instance keep its
	// expiry, as Ceph Pacific does; otherwise the expiry moves.
	KeepBlocklistExpiry bool

	mu        sync.Mutex
	blocklist map[string]time.Time // address -> expiry
}

// NewFakeCluster returns a cluster holding pools, with 100 GiB available.
func NewFakeCluster(id string, pools ...*FakePool) *FakeCluster {
	c := &FakeCluster{id: id, avail: 100 << 30, pools: map[string]*FakePool{}, Addr: "10.0.0.1:0/1",
		blocklist: map[string]time.Time{}}
	for _, p := range pools {
		c.pools[p.name] = p
	}
	return c
}

func (c *FakeCluster) ClusterID() string { return c.id }

func (c *FakeCluster) PoolID(_ context.Context, pool string) (int64, error) {
	if p, ok := c.pools[pool]; ok {
		return p.id, nil
	}
	return 0, fmt.Errorf("%w: %s", ErrPoolNotFound, pool)
}

func (c *FakeCluster) PoolName(_ context.Context, id int64) (string, error) {
	for _, p := range c.pools {
		if p.id == id {
			return p.name, nil
		}
	}
	return "", fmt.Errorf("%w: id %d", ErrPoolNotFound, id)
}

func (c *FakeCluster) Pool(_ context.Context, pool, _ string) (Pool, error) {
	if p, ok := c.pools[pool]; ok {
		return p, nil
	}
	return nil, fmt.Errorf("%w: %s", ErrPoolNotFound, pool)
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
func (c *FakeCluster) JournalPools(context.Context, string) ([]string, error) {
	var out []string
	for name := range c.pools {
		out = append(out, name)
	}
	return out, nil
}

// FakeImage is one image of a FakePool. Version counts changes of its
// records, as the header object's version does.
type FakeImage struct {
	id, name string
	version  uint64
	size     int64
	features uint64
	parent   *ParentRef
	snaps    map[string]SnapInfo
	watchers []Watcher
	meta     map[string]string
	trashed  bool
}

// FakePool keeps images by ID (trashed ones too) next to an in-memory journal.
type FakePool struct {
	*journal.Memory
	name string
	id   int64

	mu     sync.Mutex
	images map[string]*FakeImage
	seq    int
	fail   map[string]error // method name -> error to return
	calls  map[string]int   // method name -> number of calls
	objs   map[string]map[string]string
	hang   bool
	// BeforeUpdate, when set, runs inside UpdateRecords before the version
	// check (with the pool unlocked): tests use it to change the records
	// under a caller, as another process would.
	BeforeUpdate func(image string)
}

// NewFakePool returns an empty pool.
func NewFakePool(name string, id int64) *FakePool {
	return &FakePool{Memory: journal.NewMemory(), name: name, id: id,
		images: map[string]*FakeImage{}, fail: map[string]error{}, calls: map[string]int{},
		objs: map[string]map[string]string{}}
}

func (p *FakePool) Name() string      { return p.name }
func (p *FakePool) ID() int64         { return p.id }
func (p *FakePool) Namespace() string { return "" }

// hook counts a call and returns the injected error; p.mu must be held.
func (p *FakePool) hook(method string) error {
	p.calls[method]++
	return p.fail[method]
}

// SetFail makes every later call of method fail with err (nil: succeed).
func (p *FakePool) SetFail(method string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fail[method] = err
}

// Calls counts the calls of method so far.
func (p *FakePool) Calls(method string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls[method]
}

func (p *FakePool) byName(name string) (*FakeImage, error) {
	for _, img := range p.images {
		if img.name == name && !img.trashed {
			return img, nil
		}
	}
	return nil, fmt.Errorf("%w: %s/%s", ErrImageNotFound, p.name, name)
}

func (p *FakePool) byID(id string) (*FakeImage, error) {
	if img, ok := p.images[id]; ok {
		return img, nil
	}
	return nil, fmt.Errorf("%w: %s id %s", ErrImageNotFound, p.name, id)
}

func (p *FakePool) add(spec ImageSpec, parent *ParentRef) error {
	if _, err := p.byName(spec.Name); err == nil {
		return fmt.Errorf("image %s exists", spec.Name)
	}
	p.seq++
	id := fmt.Sprintf("%x", 0x1000+p.seq)
	p.images[id] = &FakeImage{id: id, name: spec.Name, size: spec.Size, features: spec.Features,
		parent: parent, snaps: map[string]SnapInfo{}, meta: map[string]string{}}
	return nil
}

func (p *FakePool) CreateImage(_ context.Context, spec ImageSpec) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("CreateImage"); err != nil {
		return err
	}
	return p.add(spec, nil)
}

func (p *FakePool) Clone(_ context.Context, parentImage, snap string, spec ImageSpec) error {
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

func (img *FakeImage) info() ImageInfo {
	info := ImageInfo{Name: img.name, ID: img.id, Size: img.size, Features: img.features}
	if img.parent != nil {
		ref := *img.parent
		info.Parent = &ref
	}
	return info
}

func (p *FakePool) Stat(_ context.Context, image string) (ImageInfo, error) {
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

func (p *FakePool) StatByID(_ context.Context, id string) (ImageInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	img, err := p.byID(id)
	if err != nil {
		return ImageInfo{}, err
	}
	return img.info(), nil
}

func (p *FakePool) Resize(_ context.Context, image string, size int64) error {
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

func (p *FakePool) Flatten(_ context.Context, image string) error {
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

func (p *FakePool) Watchers(_ context.Context, image string) ([]Watcher, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	img, err := p.byName(image)
	if err != nil {
		return nil, err
	}
	return append([]Watcher(nil), img.watchers...), nil
}

func (p *FakePool) Metadata(ctx context.Context, image string) (map[string]string, error) {
	m, _, err := p.Records(ctx, image)
	return m, err
}

// Records reads the metadata with the image's version. With SetHang it
// blocks until ctx ends, like a stuck OSD.
func (p *FakePool) Records(ctx context.Context, image string) (map[string]string, uint64, error) {
	p.mu.Lock()
	hang := p.hang
	p.mu.Unlock()
	if hang {
		<-ctx.Done()
		return nil, 0, ctx.Err()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("Records"); err != nil {
		return nil, 0, err
	}
	img, err := p.byName(image)
	if err != nil {
		return nil, 0, err
	}
	return maps.Clone(img.meta), img.version, nil
}

// UpdateRecords applies the change only at the image's current version.
func (p *FakePool) UpdateRecords(_ context.Context, image string, version uint64, set map[string]string, remove []string) error {
	if p.BeforeUpdate != nil {
		p.BeforeUpdate(image)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("UpdateRecords"); err != nil {
		return err
	}
	img, err := p.byName(image)
	if err != nil {
		return err
	}
	if img.version != version {
		return fmt.Errorf("records of %s/%s at version %d, not %d: %w", p.name, image, img.version, version, ErrConflict)
	}
	maps.Copy(img.meta, set)
	for _, k := range remove {
		delete(img.meta, k)
	}
	img.version++
	return nil
}

// ReadObjectMap implements Pool.
func (p *FakePool) ReadObjectMap(_ context.Context, oid string) (map[string]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("ReadObjectMap"); err != nil {
		return nil, err
	}
	return maps.Clone(p.objs[oid]), nil
}

// UpdateObjectMap implements Pool.
func (p *FakePool) UpdateObjectMap(_ context.Context, oid string, set map[string]string, remove []string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("UpdateObjectMap"); err != nil {
		return err
	}
	if p.objs[oid] == nil {
		p.objs[oid] = map[string]string{}
	}
	maps.Copy(p.objs[oid], set)
	for _, k := range remove {
		delete(p.objs[oid], k)
	}
	return nil
}

// SetHang makes metadata reads block until their context ends.
func (p *FakePool) SetHang(hang bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hang = hang
}

// AddImage adds an image with the given metadata and watchers, as another
// tool or an earlier driver left it.
func (p *FakePool) AddImage(name string, size int64, meta map[string]string, watchers ...Watcher) {
	p.mu.Lock()
	defer p.mu.Unlock()
	_ = p.add(ImageSpec{Name: name, Size: size}, nil)
	img, _ := p.byName(name)
	maps.Copy(img.meta, meta)
	img.watchers = watchers
}

func (p *FakePool) SetMetadata(_ context.Context, image string, kv map[string]string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("SetMetadata"); err != nil {
		return err
	}
	img, err := p.byName(image)
	if err != nil {
		return err
	}
	maps.Copy(img.meta, kv)
	img.version++
	return nil
}

func (p *FakePool) RemoveMetadata(_ context.Context, image, key string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	img, err := p.byName(image)
	if err == nil {
		delete(img.meta, key)
		img.version++
	}
	return err
}

// Delete behaves like the Ceph backend: gone is fine, watchers refuse,
// otherwise trash and purge what nothing needs.
func (p *FakePool) Delete(_ context.Context, image string) error {
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
func (p *FakePool) purgeFree(prefix string) {
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

func (p *FakePool) hasChildren(id string) bool {
	for _, img := range p.images {
		if img.parent != nil && img.parent.ImageID == id {
			return true
		}
	}
	return false
}

func (p *FakePool) PurgeTrash(_ context.Context, prefix string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("PurgeTrash"); err != nil {
		return err
	}
	p.purgeFree(prefix)
	return nil
}

func (p *FakePool) CreateSnap(_ context.Context, imageID, snap string) (SnapInfo, error) {
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
func (p *FakePool) RemoveSnap(_ context.Context, imageID, snap string) error {
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

func (p *FakePool) Snap(_ context.Context, imageID, snap string) (SnapInfo, error) {
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

// ImageNames lists the live (untrashed) images, sorted.
func (p *FakePool) ImageNames() []string {
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

// Image returns a copy of the named image (trashed ones too), or nil.
func (p *FakePool) Image(name string) *FakeImage {
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

// SetWatchers replaces the watchers of the named image.
func (p *FakePool) SetWatchers(name string, ws ...Watcher) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if img, err := p.byName(name); err == nil {
		img.watchers = ws
	}
}
