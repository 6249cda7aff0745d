package rbd

// In-memory fakes of Connector, Cluster and Pool for the tests of the RBD
// services and of the tools built on them. They keep the rules the Ceph
// backend keeps: conditional record updates fail with ErrConflict when the
// image changed, deleting a watched image is refused, trashed images stay
// while snapshots or children need them.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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
		f.Clusters[c.ClusterID()] = c
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

// FakeCluster is a ceph.FakeCluster whose pools are FakePools; namespaces
// are ignored.
type FakeCluster struct {
	*ceph.FakeCluster
	pools map[string]*FakePool
}

// NewFakeCluster returns a cluster holding pools, with 100 GiB available.
func NewFakeCluster(id string, pools ...*FakePool) *FakeCluster {
	c := &FakeCluster{FakeCluster: ceph.NewFakeCluster(id), pools: map[string]*FakePool{}}
	for _, p := range pools {
		c.pools[p.Name()] = p
		c.AddPool(p.Name(), p.ID())
	}
	return c
}

// Pool implements Cluster.
func (c *FakeCluster) Pool(_ context.Context, pool, _ string) (Pool, error) {
	if p, ok := c.pools[pool]; ok {
		return p, nil
	}
	return nil, fmt.Errorf("%w: %s", ceph.ErrPoolNotFound, pool)
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
	// mapped: a node has recorded a mapping of the image, so it may hold
	// data; StageView counts an image blank until then.
	mapped   bool
	meta     map[string]string
	trashed  bool
	created  time.Time
	dataPool int64
}

// FakePool keeps images by ID (trashed ones too) next to an in-memory journal.
type FakePool struct {
	*ceph.FakePool
	*journal.Memory

	mu      sync.Mutex
	images  map[string]*FakeImage
	cephCSI map[string]*journal.Memory // by instance ID
	seq     int
	fail    map[string]error // method name -> error to return
	calls   map[string]int   // method name -> number of calls
	hang    bool
	views   int // StageView's, open
	// Before, when set, runs as UpdateRecords and StageView start, with
	// the pool unlocked: tests use it to change the pool under a caller,
	// as another process would, or to hold a call back.
	Before func(method, image string)
}

func (p *FakePool) before(method, image string) {
	if p.Before != nil {
		p.Before(method, image)
	}
}

// NewFakePool returns an empty pool.
func NewFakePool(name string, id int64) *FakePool {
	return &FakePool{FakePool: ceph.NewFakePool(name, id), Memory: journal.NewMemory(),
		images: map[string]*FakeImage{}, fail: map[string]error{}, calls: map[string]int{}}
}

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
	return nil, fmt.Errorf("%w: %s/%s", ErrImageNotFound, p.Name(), name)
}

func (p *FakePool) byID(id string) (*FakeImage, error) {
	if img, ok := p.images[id]; ok {
		return img, nil
	}
	return nil, fmt.Errorf("%w: %s id %s", ErrImageNotFound, p.Name(), id)
}

func (p *FakePool) add(spec ImageSpec, parent *ParentRef) error {
	if _, err := p.byName(spec.Name); err == nil {
		return fmt.Errorf("image %s: %w", spec.Name, syscall.EEXIST) // as librbd
	}
	p.seq++
	id := fmt.Sprintf("%x", 0x1000+p.seq)
	p.images[id] = &FakeImage{id: id, name: spec.Name, size: spec.Size, features: spec.Features,
		parent: parent, snaps: map[string]SnapInfo{}, meta: map[string]string{}, created: time.Now(), dataPool: p.ID()}
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
	if err := p.add(spec, &ParentRef{Pool: p.Name(), Image: parent.name, ImageID: parent.id, Snap: snap}); err != nil {
		return err
	}
	// librbd copies the parent's image metadata into the clone.
	child, _ := p.byName(spec.Name)
	maps.Copy(child.meta, parent.meta)
	return nil
}

// info is what Stat tells of img; a parent in the trash is marked so, as
// librbd marks it. p.mu must be held.
func (p *FakePool) info(img *FakeImage) ImageInfo {
	info := img.info()
	if info.Parent != nil {
		if parent, ok := p.images[info.Parent.ImageID]; ok {
			info.Parent.Trashed = parent.trashed
		}
	}
	return info
}

func (img *FakeImage) info() ImageInfo {
	info := ImageInfo{Name: img.name, ID: img.id, Size: img.size, Features: img.features, Created: img.created,
		DataPoolID: img.dataPool, ObjectSize: defaultObjectSize, StripeUnit: defaultObjectSize, StripeCount: 1}
	if img.parent != nil {
		ref := *img.parent
		info.Parent = &ref
	}
	return info
}

func (p *FakePool) head(img *FakeImage) ImageHead {
	h := ImageHead{ID: img.id, Size: img.size}
	if img.parent != nil {
		h.Parent = &HeadParent{PoolID: p.ID(), ImageID: img.parent.ImageID}
	}
	return h
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
	return p.info(img), nil
}

func (p *FakePool) StatByID(_ context.Context, id string) (ImageInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	img, err := p.byID(id)
	if err != nil {
		return ImageInfo{}, err
	}
	return p.info(img), nil
}

func (p *FakePool) Inspect(_ context.Context, image string) (ImageInfo, []Watcher, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("Inspect"); err != nil {
		return ImageInfo{}, nil, err
	}
	img, err := p.byName(image)
	if err != nil {
		return ImageInfo{}, nil, err
	}
	return p.info(img), append([]Watcher(nil), img.watchers...), nil
}

func (p *FakePool) Head(_ context.Context, image string) (ImageHead, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("Head"); err != nil {
		return ImageHead{}, err
	}
	img, err := p.byName(image)
	if err != nil {
		return ImageHead{}, err
	}
	return p.head(img), nil
}

func (p *FakePool) HeadByID(_ context.Context, id string) (ImageHead, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("HeadByID"); err != nil {
		return ImageHead{}, err
	}
	img, err := p.byID(id)
	if err != nil {
		return ImageHead{}, err
	}
	return p.head(img), nil
}

// Grow runs check outside the pool's lock, as it may read the pool.
func (p *FakePool) Grow(_ context.Context, image string, size int64, check func(ImageInfo, []Watcher) error) (int64, error) {
	p.mu.Lock()
	err := p.hook("Grow")
	img, ierr := p.byName(image)
	var info ImageInfo
	var watchers []Watcher
	if ierr == nil {
		info, watchers = p.info(img), append([]Watcher(nil), img.watchers...)
	}
	p.mu.Unlock()
	if err = errors.Join(err, ierr); err != nil {
		return 0, err
	}
	if err := check(info, watchers); err != nil {
		return 0, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if img.size < size {
		img.size = size
	}
	return img.size, nil
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

// StageView implements Pool: an image without a parent is blank until a
// mapping of it is first recorded, or SetWritten says otherwise.
func (p *FakePool) StageView(ctx context.Context, image string) ([]Watcher, bool, ImageView, error) {
	p.before("StageView", image)
	watchers, err := p.Watchers(ctx, image)
	if err != nil {
		return nil, false, nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("StageView"); err != nil {
		return nil, false, nil, err
	}
	img, err := p.byName(image)
	if err != nil {
		return nil, false, nil, err
	}
	p.views++
	return watchers, img.parent == nil && !img.mapped, &fakeView{pool: p, image: image}, nil
}

// OpenViews counts the views StageView returned that are not closed yet.
func (p *FakePool) OpenViews() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.views
}

type fakeView struct {
	pool   *FakePool
	image  string
	closed atomic.Bool
}

func (v *fakeView) Watchers(ctx context.Context) ([]Watcher, error) {
	if v.closed.Load() {
		return nil, errViewClosed
	}
	v.pool.mu.Lock()
	v.pool.calls["ViewWatchers"]++
	v.pool.mu.Unlock()
	return v.pool.Watchers(ctx, v.image)
}

func (v *fakeView) Close() {
	if v.closed.CompareAndSwap(false, true) {
		v.pool.mu.Lock()
		v.pool.views--
		v.pool.mu.Unlock()
	}
}

// SetWritten marks an image as holding data, as one written outside the
// driver does.
func (p *FakePool) SetWritten(image string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if img, err := p.byName(image); err == nil {
		img.mapped = true
	}
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
	p.before("UpdateRecords", image)
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
		return fmt.Errorf("records of %s/%s at version %d, not %d: %w", p.Name(), image, img.version, version, ErrConflict)
	}
	maps.Copy(img.meta, set)
	for k := range set {
		img.mapped = img.mapped || strings.HasPrefix(k, metaMapPrefix)
	}
	for _, k := range remove {
		delete(img.meta, k)
	}
	img.version++
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

func (p *FakePool) Trash(_ context.Context, image string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("Trash"); err != nil {
		return err
	}
	img, err := p.byName(image)
	if err != nil {
		return err
	}
	img.trashed = true
	return nil
}

func (p *FakePool) TrashedID(_ context.Context, image string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("TrashedID"); err != nil {
		return "", err
	}
	for id, img := range p.images {
		if img.trashed && img.name == image {
			return id, nil
		}
	}
	return "", nil
}

func (p *FakePool) InTrash(_ context.Context, id string) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("InTrash"); err != nil {
		return false, err
	}
	img, ok := p.images[id]
	return ok && img.trashed, nil
}

// Purge removes a trashed image that nothing needs, as the Ceph backend
// does: not trashed, watched, with snapshots or with children, it stays.
func (p *FakePool) Purge(_ context.Context, id string) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("Purge"); err != nil {
		return false, err
	}
	img, ok := p.images[id]
	if !ok || !img.trashed || len(img.watchers) > 0 || len(img.snaps) > 0 || p.hasChildren(id) {
		return false, nil
	}
	delete(p.images, id)
	return true, nil
}

func (p *FakePool) hasChildren(id string) bool {
	for _, img := range p.images {
		if img.parent != nil && img.parent.ImageID == id {
			return true
		}
	}
	return false
}

func (p *FakePool) CreateSnap(_ context.Context, image string, name SnapName) (SnapInfo, error) {
	p.mu.Lock()
	err := p.hook("CreateSnap")
	img, ierr := p.byName(image)
	var head ImageHead
	if ierr == nil {
		head = ImageHead{ID: img.id, Size: img.size}
	}
	p.mu.Unlock()
	if err = errors.Join(err, ierr); err != nil {
		return SnapInfo{}, err
	}
	snap, err := name(head) // unlocked: it calls into the pool
	if err != nil {
		return SnapInfo{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
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
	return p.names(false)
}

// names lists the images in the trash or not, sorted; p.mu must be held.
func (p *FakePool) names(trashed bool) []string {
	var out []string
	for _, img := range p.images {
		if img.trashed == trashed {
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
