package rbd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/volume"
)

// Connector opens a Cluster for one user. The real one shares cached
// RADOS connections; tests use a fake.
type Connector interface {
	Connect(ctx context.Context, clusterID string, creds ceph.Credentials) (Cluster, error)
}

// Cluster is a Ceph cluster with RBD pools.
type Cluster interface {
	ceph.Cluster
	// Pool opens a pool (and RADOS namespace) of images and their journal.
	Pool(ctx context.Context, pool, namespace string) (Pool, error)
}

// ImageSpec describes an image to create.
type ImageSpec struct {
	Name     string
	Size     int64
	Features uint64
	DataPool string
	// Object size and striping in bytes and objects; 0 means librbd's default.
	ObjectSize, StripeUnit, StripeCount uint64
}

// ImageInfo is what Stat tells of an image.
type ImageInfo struct {
	Name     string
	ID       string
	Size     int64
	Features uint64
	Parent   *ParentRef // nil when the image is not a clone
	Created  time.Time
	// DataPoolID is the pool of the image's data objects: its own pool's
	// ID unless it has a data pool.
	DataPoolID int64
	// Object size and striping in bytes and objects.
	ObjectSize, StripeUnit, StripeCount uint64
}

// ImageHead is what an image's ID and header objects tell without
// opening the image.
type ImageHead struct {
	ID     string
	Size   int64
	Parent *HeadParent // nil when the image is not a clone
}

// parentIn is the ID of the image's parent when that parent is in pool
// (and its namespace), the only parent a purge there can reach; "" else.
func (h ImageHead) parentIn(pool Pool) string {
	if h.Parent == nil || h.Parent.PoolID != pool.ID() || h.Parent.Namespace != pool.Namespace() {
		return ""
	}
	return h.Parent.ImageID
}

// HeadParent is a clone's parent as its header records it: by IDs.
type HeadParent struct {
	PoolID    int64
	Namespace string
	ImageID   string
	SnapID    uint64
}

// ParentRef names a clone's parent snapshot.
type ParentRef struct {
	Pool, Namespace, Image, ImageID, Snap string
	Trashed                               bool
}

// Watcher is one client watching an image header: a mapping somewhere.
type Watcher struct {
	Addr   string // "IP:PORT/NONCE"
	ID     int64  // client global ID, as in client.4123
	Cookie uint64
}

// String renders a watcher the way `rbd status` does.
func (w Watcher) String() string { return fmt.Sprintf("client.%d at %s", w.ID, w.Addr) }

// SnapInfo describes one snapshot.
type SnapInfo struct {
	Name    string
	ID      uint64
	Size    int64
	Created time.Time
}

// Pool holds images and their journal in one pool and namespace.
type Pool interface {
	ceph.Pool
	journal.Journal
	CreateImage(ctx context.Context, spec ImageSpec) error
	// Clone makes spec.Name a copy-on-write child of parentImage@snap (clone v2).
	Clone(ctx context.Context, parentImage, snap string, spec ImageSpec) error
	Stat(ctx context.Context, image string) (ImageInfo, error)
	// StatByID reaches an image by ID, in the trash too.
	StatByID(ctx context.Context, id string) (ImageInfo, error)
	// Inspect is Stat and Watchers from one open of the image.
	Inspect(ctx context.Context, image string) (ImageInfo, []Watcher, error)
	// Head reads the image's ID, size and parent without opening it.
	Head(ctx context.Context, image string) (ImageHead, error)
	// HeadByID is Head of an image reached by ID, in the trash too.
	HeadByID(ctx context.Context, id string) (ImageHead, error)
	Resize(ctx context.Context, image string, size int64) error
	// Grow opens the image once, lets check judge its size and watchers
	// (its own open's watch among them), and grows it to size unless it
	// is that large already. It returns the size the image has then.
	Grow(ctx context.Context, image string, size int64, check func(ImageInfo, []Watcher) error) (int64, error)
	Flatten(ctx context.Context, image string) error
	Watchers(ctx context.Context, image string) ([]Watcher, error)
	// StageView is Watchers and, from the same read-only open, whether the
	// image is blank where signatures are kept (see SignatureSpan): no
	// parent, and no data there. The open is kept in view, for the
	// watchers to be listed again with one read, until view is closed.
	StageView(ctx context.Context, image string) (watchers []Watcher, blank bool, view ImageView, err error)
	Metadata(ctx context.Context, image string) (map[string]string, error)
	SetMetadata(ctx context.Context, image string, kv map[string]string) error
	RemoveMetadata(ctx context.Context, image, key string) error
	// Records reads the image metadata together with the version of the
	// image header it was read at.
	Records(ctx context.Context, image string) (map[string]string, uint64, error)
	// UpdateRecords sets and removes metadata keys in one operation that
	// applies only while the header is still at version: ErrConflict
	// otherwise, and then nothing changed.
	UpdateRecords(ctx context.Context, image string, version uint64, set map[string]string, remove []string) error
	// Trash moves the image to the trash (ErrImageNotFound when no image
	// has that name).
	Trash(ctx context.Context, image string) error
	// TrashedID finds the ID of a trashed image by its name ("" when the
	// trash holds none).
	TrashedID(ctx context.Context, image string) (string, error)
	// InTrash reports whether the trash holds the image with id.
	InTrash(ctx context.Context, id string) (bool, error)
	// Purge removes the trashed image with id unless snapshots or clone
	// children still need it; removed says whether it did.
	Purge(ctx context.Context, id string) (removed bool, err error)
	// CreateSnap opens the image, lets name name the snapshot from the
	// image's ID and size (or refuse, and nothing changes), snapshots it (a
	// snapshot that exists is a retry) and describes the snapshot, all in
	// one open.
	CreateSnap(ctx context.Context, image string, name SnapName) (SnapInfo, error)
	// RemoveSnap removes a snapshot of the image with imageID (possibly
	// trashed); clone v2 keeps it in the trash namespace while children need it.
	RemoveSnap(ctx context.Context, imageID, snap string) error
	Snap(ctx context.Context, imageID, snap string) (SnapInfo, error)
	// ListImages names the images of the pool and namespace (not the trash).
	ListImages(ctx context.Context) ([]string, error)
	// CephCSI is the journal ceph-csi keeps in the pool and namespace under
	// its instance ID (see journal.CephCSI).
	CephCSI(instanceID string) journal.Journal
}

// ImageView is an image kept open read-only: listing its watchers again
// costs one read, where an open costs several. Close never blocks.
type ImageView interface {
	Watchers(ctx context.Context) ([]Watcher, error)
	Close()
}

// errViewClosed is an ImageView's answer once it is closed.
var errViewClosed = errors.New("image view closed")

// SnapName names the snapshot CreateSnap takes of the open image (head
// has its ID and size; no parent), or refuses to take one.
type SnapName func(head ImageHead) (string, error)

// SnapOf names snapshot snap of the image with id, and refuses any other
// image (ErrImageNotFound: the image of that name is not the one meant).
func SnapOf(id, snap string) SnapName {
	return func(head ImageHead) (string, error) {
		if head.ID != id {
			return "", fmt.Errorf("%w: image ID %s, not %s", ErrImageNotFound, head.ID, id)
		}
		return snap, nil
	}
}

// Errors the backends return; they wrap the volume layer's, which give
// them their gRPC codes.
var (
	ErrImageNotFound = fmt.Errorf("image %w", volume.ErrNotFound)
	ErrSnapNotFound  = fmt.Errorf("snapshot %w", volume.ErrNotFound)
	ErrImageInUse    = fmt.Errorf("image %w", volume.ErrInUse)
	// ErrConflict: a conditional update found the object changed since it was read.
	ErrConflict = errors.New("changed since read")
)

// InUseError names the watchers that hold an image.
type InUseError struct {
	Image    string
	Watchers []Watcher
}

func (e *InUseError) Error() string {
	parts := make([]string, len(e.Watchers))
	for i, w := range e.Watchers {
		parts[i] = w.String()
	}
	return fmt.Sprintf("image %s is in use by %s", e.Image, strings.Join(parts, ", "))
}

// Unwrap lets errors.Is(err, ErrImageInUse) match.
func (e *InUseError) Unwrap() error { return ErrImageInUse }
