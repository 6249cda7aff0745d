package rbd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ceph/go-ceph/rados"
	librbd "github.com/ceph/go-ceph/rbd"
	"k8s.io/klog/v2"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/util"
)

// CephConnector is the Connector over real clusters: the clusters of
// Config, over the connections Conns caches.
type CephConnector struct {
	Config *ceph.Config
	Conns  *ceph.ConnPool
}

// Connect implements Connector.
func (c *CephConnector) Connect(ctx context.Context, clusterID string, creds ceph.Credentials) (Cluster, error) {
	cl, err := ceph.Connector{Config: c.Config, Conns: c.Conns}.Connect(ctx, clusterID, creds)
	if err != nil {
		return nil, err
	}
	return cephCluster{cl}, nil
}

// JournalPrefix begins the names of the RBD journal's objects
// ("pelagic.volumes", ...): the names every RBD volume's journal has had.
const JournalPrefix = "pelagic"

// cephCluster is a RADOS cluster whose pools hold images.
type cephCluster struct{ *ceph.RadosCluster }

func (c cephCluster) Pool(ctx context.Context, pool, namespace string) (Pool, error) {
	p, err := c.OpenPool(ctx, pool, namespace)
	if err != nil {
		return nil, err
	}
	return &cephPool{RadosPool: p, Rados: journal.NewRados(p.IOContext(), JournalPrefix), ioctx: p.IOContext()}, nil
}

// cephPool is a pool's images and journal.
type cephPool struct {
	*ceph.RadosPool
	*journal.Rados
	ioctx *rados.IOContext
}

func (p *cephPool) imageErr(image string, err error) error {
	if errors.Is(err, librbd.ErrNotFound) || ceph.Errno(err) == syscall.ENOENT {
		return fmt.Errorf("%w: %s/%s", ErrImageNotFound, p.Name(), image)
	}
	return fmt.Errorf("image %s/%s: %w", p.Name(), image, err)
}

func imageOptions(spec ImageSpec) (*librbd.ImageOptions, error) {
	opts := librbd.NewRbdImageOptions()
	set := []error{
		opts.SetUint64(librbd.ImageOptionFormat, 2),
		opts.SetUint64(librbd.ImageOptionFeatures, spec.Features),
	}
	if spec.DataPool != "" {
		set = append(set, opts.SetString(librbd.ImageOptionDataPool, spec.DataPool))
	}
	if spec.ObjectSize != 0 {
		set = append(set, opts.SetUint64(librbd.ImageOptionOrder, uint64(bits.TrailingZeros64(spec.ObjectSize))))
	}
	if spec.StripeUnit != 0 {
		set = append(set, opts.SetUint64(librbd.ImageOptionStripeUnit, spec.StripeUnit),
			opts.SetUint64(librbd.ImageOptionStripeCount, spec.StripeCount))
	}
	if err := errors.Join(set...); err != nil {
		opts.Destroy()
		return nil, err
	}
	return opts, nil
}

func (p *cephPool) CreateImage(ctx context.Context, spec ImageSpec) error {
	return util.Run(ctx, "creating image "+spec.Name, func() error {
		opts, err := imageOptions(spec)
		if err != nil {
			return err
		}
		defer opts.Destroy()
		if err := librbd.CreateImage(p.ioctx, spec.Name, uint64(spec.Size), opts); err != nil {
			return fmt.Errorf("creating image %s/%s: %w", p.Name(), spec.Name, err)
		}
		return nil
	})
}

func (p *cephPool) Clone(ctx context.Context, parentImage, snap string, spec ImageSpec) error {
	return util.Run(ctx, "cloning image "+spec.Name, func() error {
		opts, err := imageOptions(spec)
		if err != nil {
			return err
		}
		defer opts.Destroy()
		if err := opts.SetUint64(librbd.ImageOptionCloneFormat, 2); err != nil {
			return err
		}
		if err := librbd.CloneImage(p.ioctx, parentImage, snap, p.ioctx, spec.Name, opts); err != nil {
			if ceph.Errno(err) == syscall.EOPNOTSUPP { // clone v2 needs mimic clients
				return fmt.Errorf("cloning %s@%s: clone v2 is not enabled; run 'ceph osd set-require-min-compat-client mimic': %w",
					parentImage, snap, err)
			}
			return p.imageErr(parentImage, err)
		}
		return nil
	})
}

// withImage opens image (by name, or by ID when byID) for fn. Read-only
// opens register no header watch of our own, so they are the default.
func (p *cephPool) withImage(ctx context.Context, what, image string, byID bool, fn func(*librbd.Image) error) error {
	return p.openImage(ctx, what, image, byID, false, fn)
}

// withWritableImage is withImage for calls that change the image.
func (p *cephPool) withWritableImage(ctx context.Context, what, image string, byID bool, fn func(*librbd.Image) error) error {
	return p.openImage(ctx, what, image, byID, true, fn)
}

func (p *cephPool) openImage(ctx context.Context, what, image string, byID, writable bool, fn func(*librbd.Image) error) error {
	open := map[[2]bool]func(*rados.IOContext, string, string) (*librbd.Image, error){
		{false, false}: librbd.OpenImageReadOnly,
		{false, true}:  librbd.OpenImage,
		{true, false}:  librbd.OpenImageByIdReadOnly,
		{true, true}:   librbd.OpenImageById,
	}[[2]bool{byID, writable}]
	return util.Run(ctx, what+" "+image, func() error {
		img, err := open(p.ioctx, image, librbd.NoSnapshot)
		if err != nil {
			return p.imageErr(image, err)
		}
		defer img.Close()
		return fn(img)
	})
}

func statImage(img *librbd.Image) (ImageInfo, error) {
	info := ImageInfo{Name: img.GetName()}
	size, err := img.GetSize()
	if err != nil {
		return info, err
	}
	info.Size = int64(size)
	if info.ID, err = img.GetId(); err != nil {
		return info, err
	}
	if info.Features, err = img.GetFeatures(); err != nil {
		return info, err
	}
	if err := statLayout(img, &info); err != nil {
		return info, err
	}
	parent, err := img.GetParent()
	switch {
	case err == nil:
		info.Parent = &ParentRef{Pool: parent.Image.PoolName, Namespace: parent.Image.PoolNamespace,
			Image: parent.Image.ImageName, ImageID: parent.Image.ImageID, Snap: parent.Snap.SnapName,
			Trashed: parent.Image.Trash}
	case errors.Is(err, librbd.ErrNotFound):
	default:
		return info, err
	}
	return info, nil
}

func (p *cephPool) Stat(ctx context.Context, image string) (ImageInfo, error) {
	var info ImageInfo
	err := p.withImage(ctx, "stat", image, false, func(img *librbd.Image) (err error) {
		info, err = statImage(img)
		return err
	})
	return info, err
}

func (p *cephPool) StatByID(ctx context.Context, id string) (ImageInfo, error) {
	var info ImageInfo
	err := p.withImage(ctx, "stat", id, true, func(img *librbd.Image) (err error) {
		info, err = statImage(img)
		return err
	})
	return info, err
}

func (p *cephPool) Resize(ctx context.Context, image string, size int64) error {
	return p.withWritableImage(ctx, "resizing", image, false, func(img *librbd.Image) error {
		return img.Resize(uint64(size))
	})
}

func (p *cephPool) Flatten(ctx context.Context, image string) error {
	return p.withWritableImage(ctx, "flattening", image, false, func(img *librbd.Image) error {
		err := img.Flatten()
		if errors.Is(err, librbd.ErrNotFound) || ceph.Errno(err) == syscall.EINVAL { // not a clone
			return nil
		}
		return err
	})
}

func (p *cephPool) Watchers(ctx context.Context, image string) ([]Watcher, error) {
	var out []Watcher
	err := p.withImage(ctx, "listing watchers of", image, false, func(img *librbd.Image) (err error) {
		out, err = listWatchers(img)
		return err
	})
	return out, err
}

func (p *cephPool) StageView(ctx context.Context, image string) ([]Watcher, bool, ImageView, error) {
	type seen struct {
		watchers []Watcher
		blank    bool
	}
	v := &imageView{what: p.Name() + "/" + image}
	s, err := util.Do(ctx, "inspecting image "+image, func() (seen, error) {
		img, err := librbd.OpenImageReadOnly(p.ioctx, image, librbd.NoSnapshot)
		if err != nil {
			return seen{}, p.imageErr(image, err)
		}
		v.mu.Lock()
		defer v.mu.Unlock()
		if v.closed { // abandoned, and closed meanwhile
			return seen{}, errors.Join(errViewClosed, img.Close())
		}
		v.img = img
		var s seen
		if s.watchers, err = listWatchers(img); err != nil {
			return s, err
		}
		s.blank, err = signatureFree(img)
		return s, err
	})
	if err != nil {
		v.Close()
		return nil, false, nil, err
	}
	return s.watchers, s.blank, v, nil
}

// imageView is cephPool's ImageView. mu is held across each librbd call
// on img, so that a call abandoned at its deadline ends before the image
// is closed under it.
type imageView struct {
	what   string
	mu     sync.Mutex
	img    *librbd.Image
	closed bool
}

func (v *imageView) Watchers(ctx context.Context) ([]Watcher, error) {
	return util.Do(ctx, "listing the watchers of "+v.what, func() ([]Watcher, error) {
		v.mu.Lock()
		defer v.mu.Unlock()
		if v.img == nil {
			return nil, errViewClosed
		}
		return listWatchers(v.img)
	})
}

func (v *imageView) Close() {
	go func() {
		v.mu.Lock()
		defer v.mu.Unlock()
		v.closed = true
		if v.img != nil {
			if err := v.img.Close(); err != nil {
				klog.ErrorS(err, "closing an image view", "image", v.what)
			}
			v.img = nil
		}
	}()
}

// SignatureSpan is how much of an image's start and of its end a probe
// for filesystems, partition tables, RAID, LVM and LUKS headers reads:
// blkid looks no further in (LUKS2's last secondary header starts at 4
// MiB; a GPT's backup, md and ZFS labels sit in the last MiB).
const SignatureSpan = 8 << 20

// signatureFree reports whether the open image has no parent and no data
// in its first and last SignatureSpan bytes: all a probe would read there
// are zeroes. It asks librbd which objects exist there, a few reads, not
// the device.
func signatureFree(img *librbd.Image) (bool, error) {
	if _, err := img.GetParent(); !errors.Is(err, librbd.ErrNotFound) {
		return false, err // a clone, or unknown
	}
	size, err := img.GetSize()
	if err != nil {
		return false, err
	}
	head := min(size, SignatureSpan)
	tail := max(head, size-min(size, SignatureSpan))
	found := false
	for _, r := range [][2]uint64{{0, head}, {tail, size - tail}} {
		if r[1] == 0 {
			continue
		}
		err := img.DiffIterate(librbd.DiffIterateConfig{Offset: r[0], Length: r[1],
			IncludeParent: librbd.ExcludeParent, WholeObject: librbd.EnableWholeObject,
			Callback: func(_, _ uint64, exists int, _ interface{}) int {
				if exists == 0 {
					return 0
				}
				found = true
				return -int(syscall.ECANCELED) // one is enough
			}})
		if found {
			return false, nil
		}
		if err != nil {
			return false, err
		}
	}
	return true, nil
}

func (p *cephPool) Inspect(ctx context.Context, image string) (ImageInfo, []Watcher, error) {
	var info ImageInfo
	var watchers []Watcher
	err := p.withImage(ctx, "inspecting", image, false, func(img *librbd.Image) (err error) {
		if info, err = statImage(img); err != nil {
			return err
		}
		watchers, err = listWatchers(img)
		return err
	})
	return info, watchers, err
}

func listWatchers(img *librbd.Image) ([]Watcher, error) {
	ws, err := img.ListWatchers()
	out := make([]Watcher, 0, len(ws))
	for _, w := range ws {
		out = append(out, Watcher{Addr: w.Addr, ID: w.Id, Cookie: w.Cookie})
	}
	return out, err
}

func (p *cephPool) Grow(ctx context.Context, image string, size int64, check func(ImageInfo, []Watcher) error) (int64, error) {
	var now int64
	err := p.withWritableImage(ctx, "growing", image, false, func(img *librbd.Image) error {
		info, err := statImage(img)
		if err != nil {
			return err
		}
		watchers, err := listWatchers(img)
		if err != nil {
			return err
		}
		if err := check(info, watchers); err != nil {
			return err
		}
		if now = info.Size; now >= size {
			return nil
		}
		if err := img.Resize(uint64(size)); err != nil {
			return err
		}
		now = size
		return nil
	})
	return now, err
}

// Image metadata lives in the image header's omap under "metadata_<key>"
// (RBD image format 2). Reading and writing it there costs one RADOS op,
// where opening the image costs a header read and a watch round trip.

// imageID reads the ID of image from its ID object.
func (p *cephPool) imageID(ctx context.Context, image string) (string, error) {
	return util.Do(ctx, "reading the ID of "+image, func() (string, error) {
		buf := make([]byte, 256)
		n, err := p.ioctx.Read("rbd_id."+image, buf, 0)
		if errors.Is(err, rados.ErrNotFound) {
			return "", fmt.Errorf("%w: %s/%s", ErrImageNotFound, p.Name(), image)
		}
		if err != nil {
			return "", err
		}
		// The object holds an encoded string: a little-endian length, then the ID.
		if n < 4 || int(binary.LittleEndian.Uint32(buf))+4 != n {
			return "", fmt.Errorf("image %s/%s has a malformed ID object", p.Name(), image)
		}
		return string(buf[4:n]), nil
	})
}

// headerOf returns the header object name of image.
func (p *cephPool) headerOf(ctx context.Context, image string) (string, error) {
	id, err := p.imageID(ctx, image)
	return headerObject(id), err
}

func (p *cephPool) Head(ctx context.Context, image string) (ImageHead, error) {
	id, err := p.imageID(ctx, image)
	if err != nil {
		return ImageHead{}, err
	}
	return p.HeadByID(ctx, id)
}

// HeadByID reads size and parent in one operation on the header, with
// the rbd class methods librbd's open calls.
func (p *cephPool) HeadByID(ctx context.Context, id string) (ImageHead, error) {
	head := ImageHead{ID: id}
	err := util.Run(ctx, "reading the header of image "+id, func() error {
		op := rados.CreateReadOp()
		defer op.Release()
		size := op.Exec("rbd", "get_size", sizeArg())
		parent := op.Exec("rbd", "parent_get", nil)
		if err := op.Operate(p.ioctx, headerObject(id), rados.OperationNoFlag); err != nil {
			return err
		}
		b, err := size.Bytes()
		if err != nil {
			return err
		}
		if head.Size, err = decodeSize(b); err != nil {
			return err
		}
		if b, err = parent.Bytes(); err != nil {
			return err
		}
		head.Parent, err = decodeParent(b)
		return err
	})
	if ceph.Errno(err) == syscall.ENOENT {
		return head, fmt.Errorf("%w: %s id %s", ErrImageNotFound, p.Name(), id)
	}
	if err != nil {
		return head, fmt.Errorf("image %s/%s: %w", p.Name(), id, err)
	}
	return head, nil
}

const metadataPrefix = "metadata_"

func (p *cephPool) Metadata(ctx context.Context, image string) (map[string]string, error) {
	header, err := p.headerOf(ctx, image)
	if err != nil {
		return nil, err
	}
	vals, err := util.Do(ctx, "reading metadata of "+image, func() (map[string][]byte, error) {
		return p.ioctx.GetAllOmapValues(header, "", metadataPrefix, 256)
	})
	if err != nil {
		return nil, p.imageErr(image, err)
	}
	out := make(map[string]string, len(vals))
	for k, v := range vals {
		out[strings.TrimPrefix(k, metadataPrefix)] = string(v)
	}
	return out, nil
}

func (p *cephPool) SetMetadata(ctx context.Context, image string, kv map[string]string) error {
	header, err := p.headerOf(ctx, image)
	if err != nil {
		return err
	}
	pairs := make(map[string][]byte, len(kv))
	for k, v := range kv {
		pairs[metadataPrefix+k] = []byte(v)
	}
	return util.Run(ctx, "writing metadata of "+image, func() error {
		op := rados.CreateWriteOp()
		defer op.Release()
		op.AssertExists()
		op.SetOmap(pairs)
		return op.Operate(p.ioctx, header, rados.OperationNoFlag)
	})
}

func (p *cephPool) RemoveMetadata(ctx context.Context, image, key string) error {
	header, err := p.headerOf(ctx, image)
	if err != nil {
		return err
	}
	return util.Run(ctx, "removing metadata of "+image, func() error {
		return p.ioctx.RmOmapKeys(header, []string{metadataPrefix + key})
	})
}

// Records reads the metadata through an I/O context of its own, whose
// last object version is then the header's as read: the shared context's
// would be overwritten by concurrent calls.
func (p *cephPool) Records(ctx context.Context, image string) (map[string]string, uint64, error) {
	header, err := p.headerOf(ctx, image)
	if err != nil {
		return nil, 0, err
	}
	var version uint64
	vals, err := util.Do(ctx, "reading records of "+image, func() (map[string][]byte, error) {
		ioctx, err := p.PrivateIOContext()
		if err != nil {
			return nil, err
		}
		defer ioctx.Destroy()
		var vals map[string][]byte
		vals, version, err = readOmapAtOneVersion(ioctx, header, metadataPrefix)
		return vals, err
	})
	if err != nil {
		return nil, 0, p.imageErr(image, err)
	}
	out := make(map[string]string, len(vals))
	for k, v := range vals {
		out[strings.TrimPrefix(k, metadataPrefix)] = string(v)
	}
	return out, version, nil
}

// omapPage is how many omap values one read returns.
const omapPage = 512

// readOmapAtOneVersion reads the omap values of oid with prefix and the
// object version they were read at. Each page is one read operation, and
// every page after the first asserts the first's version, so the values
// and the version always belong together: a version read by a separate
// operation may be newer than the values, and a conditional write on it
// would then act on stale records. A change between pages starts over.
func readOmapAtOneVersion(ioctx *rados.IOContext, oid, prefix string) (map[string][]byte, uint64, error) {
	for attempt := 0; attempt < maxRecordAttempts; attempt++ {
		vals := map[string][]byte{}
		var version uint64
		after, first, more := "", true, true
		var err error
		for more && err == nil {
			more, after, err = readOmapPage(ioctx, oid, prefix, after, vals, first, &version)
			first = false
		}
		if errno := ceph.Errno(err); errno == syscall.ERANGE || errno == syscall.EOVERFLOW {
			continue // the object changed between two pages
		}
		return vals, version, err
	}
	return nil, 0, fmt.Errorf("reading %s: it kept changing: %w", oid, ErrConflict)
}

// readOmapPage reads one page of omap values after the key after into
// vals. The first page records the object version; later ones assert it.
func readOmapPage(ioctx *rados.IOContext, oid, prefix, after string, vals map[string][]byte, first bool,
	version *uint64) (more bool, last string, err error) {
	op := rados.CreateReadOp()
	defer op.Release()
	if !first {
		op.AssertVersion(*version)
	}
	step := op.GetOmapValues(after, prefix, omapPage)
	if err := op.Operate(ioctx, oid, rados.OperationNoFlag); err != nil {
		return false, "", err
	}
	if first {
		v, err := ioctx.GetLastVersion()
		if err != nil {
			return false, "", err
		}
		*version = v
	}
	last = after
	for {
		kv, err := step.Next()
		if err != nil {
			return false, "", err
		}
		if kv == nil {
			break
		}
		vals[kv.Key], last = kv.Value, kv.Key
	}
	return step.More(), last, nil
}

// UpdateRecords asserts the header version inside the write operation, so
// the check and the change are one atomic step on the OSD.
func (p *cephPool) UpdateRecords(ctx context.Context, image string, version uint64, set map[string]string, remove []string) error {
	header, err := p.headerOf(ctx, image)
	if err != nil {
		return err
	}
	pairs := make(map[string][]byte, len(set))
	for k, v := range set {
		pairs[metadataPrefix+k] = []byte(v)
	}
	keys := make([]string, len(remove))
	for i, k := range remove {
		keys[i] = metadataPrefix + k
	}
	err = util.Run(ctx, "updating records of "+image, func() error {
		op := rados.CreateWriteOp()
		defer op.Release()
		op.AssertVersion(version)
		if len(pairs) > 0 {
			op.SetOmap(pairs)
		}
		if len(keys) > 0 {
			op.RmOmapKeys(keys)
		}
		return op.Operate(p.ioctx, header, rados.OperationNoFlag)
	})
	// The OSD answers ERANGE when the object is newer than asserted,
	// EOVERFLOW when older (it was recreated).
	if errno := ceph.Errno(err); errno == syscall.ERANGE || errno == syscall.EOVERFLOW {
		return fmt.Errorf("records of %s/%s: %w", p.Name(), image, ErrConflict)
	}
	if err != nil {
		return p.imageErr(image, err)
	}
	return nil
}

func (p *cephPool) Trash(ctx context.Context, image string) error {
	err := util.Run(ctx, "trashing image "+image, func() error { return librbd.GetImage(p.ioctx, image).Trash(0) })
	if err != nil {
		return p.imageErr(image, err)
	}
	return nil
}

func (p *cephPool) TrashedID(ctx context.Context, image string) (string, error) {
	items, err := util.Do(ctx, "listing trash", func() ([]librbd.TrashInfo, error) { return librbd.GetTrashList(p.ioctx) })
	if err != nil {
		return "", fmt.Errorf("listing the trash of %s: %w", p.Name(), err)
	}
	for _, it := range items {
		if it.Name == image {
			return it.Id, nil
		}
	}
	return "", nil
}

// InTrash reads the trash directory's entry for id: one operation.
func (p *cephPool) InTrash(ctx context.Context, id string) (bool, error) {
	return util.Do(ctx, "reading the trash entry of image "+id, func() (bool, error) {
		op := rados.CreateReadOp()
		defer op.Release()
		op.Exec("rbd", "trash_get", stringArg(id))
		err := op.Operate(p.ioctx, trashObject, rados.OperationNoFlag)
		switch ceph.Errno(err) {
		case 0:
			return true, nil
		case syscall.ENOENT: // no entry, or no trash object at all
			return false, nil
		}
		return false, fmt.Errorf("reading the trash entry of %s/%s: %w", p.Name(), id, err)
	})
}

func (p *cephPool) Purge(ctx context.Context, id string) (bool, error) {
	err := util.Run(ctx, "purging image "+id, func() error { return librbd.TrashRemove(p.ioctx, id, false) })
	switch ceph.Errno(err) {
	case 0:
		return true, nil
	case syscall.ENOENT: // not in the trash
		return false, nil
	case syscall.EBUSY, syscall.ENOTEMPTY: // snapshots or children remain
		return false, nil
	}
	return false, fmt.Errorf("purging trashed image %s/%s: %w", p.Name(), id, err)
}

func (p *cephPool) CreateSnap(ctx context.Context, image string, name SnapName) (SnapInfo, error) {
	var out SnapInfo
	err := p.withWritableImage(ctx, "snapshotting", image, false, func(img *librbd.Image) error {
		id, err := img.GetId()
		if err != nil {
			return err
		}
		size, err := img.GetSize()
		if err != nil {
			return err
		}
		snap, err := name(ImageHead{ID: id, Size: int64(size)})
		if err != nil {
			return err
		}
		if _, err := img.CreateSnapshot(snap); err != nil && ceph.Errno(err) != syscall.EEXIST { // a retry after a crash
			return err
		}
		out, err = findSnap(img, id, snap)
		return err
	})
	return out, err
}

func (p *cephPool) RemoveSnap(ctx context.Context, imageID, snap string) error {
	err := p.withWritableImage(ctx, "removing snapshot of", imageID, true, func(img *librbd.Image) error {
		return img.GetSnapshot(snap).Remove()
	})
	if errors.Is(err, ErrImageNotFound) || errors.Is(err, librbd.ErrNotFound) || ceph.Errno(err) == syscall.ENOENT {
		return nil
	}
	return err
}

func (p *cephPool) Snap(ctx context.Context, imageID, snap string) (SnapInfo, error) {
	var out SnapInfo
	err := p.withImage(ctx, "reading snapshot of", imageID, true, func(img *librbd.Image) (err error) {
		out, err = findSnap(img, imageID, snap)
		return err
	})
	return out, err
}

// findSnap describes the snapshot named snap of the open image.
func findSnap(img *librbd.Image, imageID, snap string) (SnapInfo, error) {
	snaps, err := img.GetSnapshotNames()
	if err != nil {
		return SnapInfo{}, err
	}
	for _, s := range snaps {
		if s.Name != snap {
			continue
		}
		out := SnapInfo{Name: s.Name, ID: s.Id, Size: int64(s.Size)}
		if ts, err := img.GetSnapTimestamp(s.Id); err == nil {
			out.Created = time.Unix(ts.Sec, ts.Nsec)
		}
		return out, nil
	}
	return SnapInfo{}, fmt.Errorf("%w: %s@%s", ErrSnapNotFound, imageID, snap)
}
