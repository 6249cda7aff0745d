package rbd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/journal"
)

// Connector opens a Cluster for one user. The real one shares cached
// RADOS connections; tests use a fake.
type Connector interface {
	Connect(ctx context.Context, clusterID string, creds ceph.Credentials) (Cluster, error)
}

// Cluster is what the services need from one Ceph cluster.
type Cluster interface {
	ClusterID() string
	PoolID(ctx context.Context, pool string) (int64, error)
	PoolName(ctx context.Context, id int64) (string, error)
	// Pool opens a pool (and RADOS namespace); handles are cached.
	Pool(ctx context.Context, pool, namespace string) (Pool, error)
	// AvailableBytes is what the pool can still store.
	AvailableBytes(ctx context.Context, pool string) (int64, error)
	// Blocklist fences one client instance ("IP:PORT/NONCE") until expiry.
	// Whether blocklisting an instance already listed moves its expiry
	// depends on the Ceph release (Pacific keeps the old one).
	Blocklist(ctx context.Context, addr string, expiry time.Duration) error
	// BlocklistExpiry tells whether addr is blocklisted, and until when.
	BlocklistExpiry(ctx context.Context, addr string) (time.Time, bool, error)
	// Unblocklist lifts a fence.
	Unblocklist(ctx context.Context, addr string) error
	// ClientAddr is this connection's own client instance address.
	ClientAddr(ctx context.Context) (string, error)
	// JournalPools lists the pools whose namespace holds a Pelagic journal.
	JournalPools(ctx context.Context, namespace string) ([]string, error)
}

// ImageSpec describes an image to create.
type ImageSpec struct {
	Name     string
	Size     int64
	Features uint64
	DataPool string
}

// ImageInfo is what Stat tells of an image.
type ImageInfo struct {
	Name     string
	ID       string
	Size     int64
	Features uint64
	Parent   *ParentRef // nil when the image is not a clone
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
	journal.Journal
	Name() string
	ID() int64
	Namespace() string
	CreateImage(ctx context.Context, spec ImageSpec) error
	// Clone makes spec.Name a copy-on-write child of parentImage@snap (clone v2).
	Clone(ctx context.Context, parentImage, snap string, spec ImageSpec) error
	Stat(ctx context.Context, image string) (ImageInfo, error)
	// StatByID reaches an image by ID, in the trash too.
	StatByID(ctx context.Context, id string) (ImageInfo, error)
	Resize(ctx context.Context, image string, size int64) error
	Flatten(ctx context.Context, image string) error
	Watchers(ctx context.Context, image string) ([]Watcher, error)
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
	// ReadObjectMap reads the omap of a small pool-level object; a missing
	// object reads as empty.
	ReadObjectMap(ctx context.Context, oid string) (map[string]string, error)
	// UpdateObjectMap sets and removes keys of such an object in one operation.
	UpdateObjectMap(ctx context.Context, oid string, set map[string]string, remove []string) error
	// Delete moves the image to the trash and purges it when nothing
	// (snapshots, clone children) still needs it.
	Delete(ctx context.Context, image string) error
	// PurgeTrash removes trashed images with the prefix that nothing needs any more.
	PurgeTrash(ctx context.Context, prefix string) error
	CreateSnap(ctx context.Context, imageID, snap string) (SnapInfo, error)
	// RemoveSnap removes a snapshot of the image with imageID (possibly
	// trashed); clone v2 keeps it in the trash namespace while children need it.
	RemoveSnap(ctx context.Context, imageID, snap string) error
	Snap(ctx context.Context, imageID, snap string) (SnapInfo, error)
}

// Errors the backends return, so the services can pick gRPC codes.
var (
	ErrImageNotFound = errors.New("image not found")
	ErrSnapNotFound  = errors.New("snapshot not found")
	ErrPoolNotFound  = errors.New("pool not found")
	ErrImageInUse    = errors.New("image in use")
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
