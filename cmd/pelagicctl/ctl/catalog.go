package ctl

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/ceph/go-ceph/rados"
	librbd "github.com/ceph/go-ceph/rbd"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
	"github.com/pelagic-csi/pelagic/pkg/util"
)

// Catalog is what pelagicctl reads of a pool beyond the records: its
// images, its trash, snapshots, clone children and the space images use.
// Every call returns at ctx's deadline.
type Catalog interface {
	Images(ctx context.Context) ([]string, error)
	Trash(ctx context.Context) ([]TrashEntry, error)
	// RemoveTrash purges a trashed image; ErrStillNeeded while snapshots
	// or clone children need it.
	RemoveTrash(ctx context.Context, id string) error
	Snapshots(ctx context.Context, image string) ([]SnapEntry, error)
	// Children lists the clones of any snapshot of the image (which may
	// be trashed: then its ID names it), trashed clones too.
	Children(ctx context.Context, image ImageRef) ([]ImageRef, error)
	// UsedBytes is what the image has allocated, its parent's share not counted.
	UsedBytes(ctx context.Context, image string) (int64, error)
}

// ErrStillNeeded: a trashed image keeps snapshots that clones need.
var ErrStillNeeded = errors.New("still needed by snapshots or clones")

// TrashEntry is an image in the trash.
type TrashEntry struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Deleted   time.Time `json:"deleted"`
	DeferEnds time.Time `json:"deferEnds"`
}

// SnapEntry is one snapshot of an image. Namespace is "user", or "trash"
// for a snapshot removed while clones still need it (clone v2).
type SnapEntry struct {
	ID        uint64    `json:"id"`
	Name      string    `json:"name"`
	SizeBytes int64     `json:"sizeBytes"`
	Created   time.Time `json:"created"`
	Namespace string    `json:"namespace"`
}

// ImageRef names an image, possibly trashed.
type ImageRef struct {
	Pool    string `json:"pool"`
	Image   string `json:"image"`
	ID      string `json:"id,omitempty"`
	Trashed bool   `json:"trashed,omitempty"`
}

// FakeCatalog is a Catalog in memory, for tests.
type FakeCatalog struct {
	mu        sync.Mutex
	ImageList []string
	TrashList []TrashEntry
	Snaps     map[string][]SnapEntry // by image
	Kids      map[string][]ImageRef  // by image
	Used      map[string]int64       // by image
	Needed    map[string]bool        // trashed image IDs that RemoveTrash refuses
}

// Images implements Catalog.
func (f *FakeCatalog) Images(context.Context) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string{}, f.ImageList...), nil
}

// Trash implements Catalog.
func (f *FakeCatalog) Trash(context.Context) ([]TrashEntry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]TrashEntry{}, f.TrashList...), nil
}

// RemoveTrash implements Catalog.
func (f *FakeCatalog) RemoveTrash(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Needed[id] {
		return ErrStillNeeded
	}
	for i, e := range f.TrashList {
		if e.ID == id {
			f.TrashList = append(f.TrashList[:i], f.TrashList[i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("no trashed image %s", id)
}

// Snapshots implements Catalog.
func (f *FakeCatalog) Snapshots(_ context.Context, image string) ([]SnapEntry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]SnapEntry{}, f.Snaps[image]...), nil
}

// Children implements Catalog.
func (f *FakeCatalog) Children(_ context.Context, image ImageRef) ([]ImageRef, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]ImageRef{}, f.Kids[image.Image]...), nil
}

// UsedBytes implements Catalog.
func (f *FakeCatalog) UsedBytes(_ context.Context, image string) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.Used[image], nil
}

// cephCatalog reads a pool with librbd, opening images read-only (which
// adds no watcher).
type cephCatalog struct {
	pool  string
	ioctx *rados.IOContext
}

// catalog returns the Catalog of pool.
func (s *session) catalog(pool rbd.Pool) (Catalog, error) {
	if s.tool.Catalog != nil {
		return s.tool.Catalog(pool)
	}
	p := pool
	if tp, ok := p.(timedPool); ok {
		p = tp.Pool
	}
	withIO, ok := p.(interface{ IOContext() *rados.IOContext })
	if !ok {
		return nil, fmt.Errorf("pool %s: cannot read its images with librbd", pool.Name())
	}
	return &cephCatalog{pool: pool.Name(), ioctx: withIO.IOContext()}, nil
}

func (c *cephCatalog) readImage(ctx context.Context, what, image string, fn func(*librbd.Image) error) error {
	return c.read(ctx, what, ImageRef{Image: image}, fn)
}

// read opens an image read-only, by ID when it is trashed.
func (c *cephCatalog) read(ctx context.Context, what string, ref ImageRef, fn func(*librbd.Image) error) error {
	image := ref.Image
	return util.Run(ctx, what+" "+c.pool+"/"+image, func() error {
		var img *librbd.Image
		var err error
		if ref.Trashed && ref.ID != "" {
			img, err = librbd.OpenImageByIdReadOnly(c.ioctx, ref.ID, librbd.NoSnapshot)
		} else {
			img, err = librbd.OpenImageReadOnly(c.ioctx, image, librbd.NoSnapshot)
		}
		if err != nil {
			if errors.Is(err, librbd.ErrNotFound) {
				return fmt.Errorf("%w: %s/%s", rbd.ErrImageNotFound, c.pool, image)
			}
			return err
		}
		defer func() { _ = img.Close() }()
		return fn(img)
	})
}

func (c *cephCatalog) Images(ctx context.Context) ([]string, error) {
	names, err := util.Do(ctx, "listing the images of "+c.pool, func() ([]string, error) { return librbd.GetImageNames(c.ioctx) })
	sort.Strings(names)
	return names, err
}

func (c *cephCatalog) Trash(ctx context.Context) ([]TrashEntry, error) {
	items, err := util.Do(ctx, "listing the trash of "+c.pool, func() ([]librbd.TrashInfo, error) { return librbd.GetTrashList(c.ioctx) })
	if err != nil {
		return nil, err
	}
	out := make([]TrashEntry, 0, len(items))
	for _, it := range items {
		out = append(out, TrashEntry{ID: it.Id, Name: it.Name, Deleted: it.DeletionTime.UTC(), DeferEnds: it.DefermentEndTime.UTC()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name+out[i].ID < out[j].Name+out[j].ID })
	return out, nil
}

func (c *cephCatalog) RemoveTrash(ctx context.Context, id string) error {
	err := util.Run(ctx, "purging trashed image "+id, func() error { return librbd.TrashRemove(c.ioctx, id, false) })
	switch ceph.Errno(err) {
	case 0:
		return nil
	case syscall.EBUSY, syscall.ENOTEMPTY:
		return ErrStillNeeded
	}
	return err
}

func (c *cephCatalog) Snapshots(ctx context.Context, image string) ([]SnapEntry, error) {
	var out []SnapEntry
	err := c.readImage(ctx, "listing the snapshots of", image, func(img *librbd.Image) error {
		snaps, err := img.GetSnapshotNames()
		if err != nil {
			return err
		}
		for _, sn := range snaps {
			e := SnapEntry{ID: sn.Id, Name: sn.Name, SizeBytes: int64(sn.Size), Namespace: "user"}
			if ts, err := img.GetSnapTimestamp(sn.Id); err == nil {
				e.Created = time.Unix(ts.Sec, ts.Nsec).UTC()
			}
			if ns, err := img.GetSnapNamespaceType(sn.Id); err == nil && ns == librbd.SnapNamespaceTypeTrash {
				e.Namespace = "trash"
			}
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

func (c *cephCatalog) Children(ctx context.Context, image ImageRef) ([]ImageRef, error) {
	var out []ImageRef
	err := c.read(ctx, "listing the clones of", image, func(img *librbd.Image) error {
		kids, err := img.ListChildrenAttributes()
		for _, k := range kids {
			out = append(out, ImageRef{Pool: k.PoolName, Image: k.ImageName, ID: k.ImageID, Trashed: k.Trash})
		}
		return err
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Pool+"/"+out[i].Image < out[j].Pool+"/"+out[j].Image })
	return out, err
}

func (c *cephCatalog) UsedBytes(ctx context.Context, image string) (int64, error) {
	var used uint64
	err := c.readImage(ctx, "measuring", image, func(img *librbd.Image) error {
		size, err := img.GetSize()
		if err != nil || size == 0 {
			return err
		}
		return img.DiffIterate(librbd.DiffIterateConfig{Length: size, IncludeParent: librbd.ExcludeParent,
			WholeObject: librbd.EnableWholeObject, Callback: func(_, length uint64, exists int, _ interface{}) int {
				if exists != 0 {
					used += length
				}
				return 0
			}})
	})
	return int64(used), err
}
