package journal

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/ceph/go-ceph/rados"

	"github.com/pelagic-csi/pelagic/pkg/util"
)

// OriginCephCSI marks records read from ceph-csi's journal.
const OriginCephCSI = "ceph-csi"

// DefaultCephCSIInstance is the instance ID ceph-csi names its directory
// objects with unless its --instanceid says otherwise (Rook keeps it).
const DefaultCephCSIInstance = "default"

// ErrDangling wraps ErrNotFound for a ceph-csi entry left half made or half
// removed: a directory key whose entry object is missing, or an entry
// object without its name or image. The lookup returns what it read of it
// (name and UUID), so the caller can remove the rest, as ceph-csi does.
var ErrDangling = fmt.Errorf("%w: ceph-csi's entry is incomplete", ErrNotFound)

// ErrOtherPool is returned for a ceph-csi directory entry whose record lives
// in another pool (older releases honoured a journalPool apart from the
// image's pool; the measured one never does): Pelagic does not follow it.
var ErrOtherPool = errors.New("ceph-csi's journal entry points to another pool")

// errReadOnly: Pelagic's new volumes and snapshots go to its own journal.
var errReadOnly = errors.New("names are reserved only in Pelagic's own journal, never in ceph-csi's")

// cephCSIKind holds the names ceph-csi's journals (RBD's and CephFS's) use for one kind.
type cephCSIKind struct {
	directory string // + instance ID: request name -> UUID
	entry     string // + request name: a directory key; + UUID: the entry object
	nameKey   string // the entry's request name
}

var cephCSIKinds = map[Kind]cephCSIKind{
	Volume:   {directory: "csi.volumes.", entry: "csi.volume.", nameKey: "csi.volname"},
	Snapshot: {directory: "csi.snaps.", entry: "csi.snap.", nameKey: "csi.snapname"},
}

// Keys of ceph-csi's entry objects; every value is a plain string.
const (
	cephCSIImageKey   = "csi.imagename"    // the image (a snapshot's: the image it cloned)
	cephCSIImageIDKey = "csi.imageid"      // written after the image exists
	cephCSIOwnerKey   = "csi.volume.owner" // the PVC's namespace, when the request named one
	cephCSISourceKey  = "csi.source"       // a snapshot's source image
	// cephCSIFSSnapOwnerKey holds a CephFS snapshot's owner: ceph-csi's
	// CephFS snapshot journal names no key for it. Only a read by name
	// finds it (a listing "after ''" starts past it).
	cephCSIFSSnapOwnerKey = ""
)

// CephCSIDirectoryObjects names the directory objects of ceph-csi's journal
// under instanceID: a pool and namespace holds such a journal when it holds one.
func CephCSIDirectoryObjects(instanceID string) []string {
	return []string{cephCSIKinds[Volume].directory + instanceID, cephCSIKinds[Snapshot].directory + instanceID}
}

// CephCSI is ceph-csi's journal in one pool and RADOS namespace
// (docs/ceph-csi-format.md): per kind a directory, "csi.volumes.<instance>"
// mapping "csi.volume.<request name>" to a UUID, and an entry object per
// UUID, "csi.volume.<uuid>", whose omap names the request, the image and
// its ID. Pelagic reads it to serve what ceph-csi provisioned, and removes
// entries when it deletes their volumes and snapshots, but reserves nothing
// there. Records it returns carry Origin OriginCephCSI, the image as Backing
// and its ID as BackingID; a snapshot's Backing and SnapName are both its
// snapshot image, which holds one snapshot of its own name. Sizes, creation
// times and source volume IDs are not in this journal. In CephFS's, the
// "image" is the subvolume; a snapshot's is its subvolume snapshot's name,
// taken of the subvolume SourceBacking names.
type CephCSI struct {
	ioctx    *rados.IOContext
	poolID   int64
	instance string
}

// NewCephCSI returns ceph-csi's journal over ioctx, the pool with ID poolID,
// under ceph-csi's instance ID. The caller owns ioctx.
func NewCephCSI(ioctx *rados.IOContext, poolID int64, instanceID string) *CephCSI {
	return &CephCSI{ioctx: ioctx, poolID: poolID, instance: instanceID}
}

// LookupName implements Journal. A name whose entry is incomplete returns
// the part read with ErrDangling.
func (j *CephCSI) LookupName(ctx context.Context, kind Kind, name string) (*Record, error) {
	k := cephCSIKinds[kind]
	dir := k.directory + j.instance
	vals, err := j.readKeys(ctx, dir, k.entry+name)
	if err != nil {
		return nil, err
	}
	raw, ok := vals[k.entry+name]
	if !ok {
		return nil, ErrNotFound
	}
	uuid, err := parseCephCSIDirectoryValue(raw, j.poolID)
	if err != nil {
		return nil, fmt.Errorf("%s key %s%s: %w", dir, k.entry, name, err)
	}
	rec, err := j.Lookup(ctx, kind, uuid)
	switch {
	case errors.Is(err, ErrNotFound):
		return &Record{Kind: kind, Name: name, UUID: uuid, Origin: OriginCephCSI}, ErrDangling
	case err != nil:
		return nil, err
	case rec.Name != name:
		return nil, fmt.Errorf("ceph-csi's %s %q points to entry %s, which names %q", kind, name, uuid, rec.Name)
	}
	return rec, nil
}

// parseCephCSIDirectoryValue reads a directory value: "<uuid>", or
// "<16 hex digits of a pool ID>/<uuid>" when the entry is in that pool.
func parseCephCSIDirectoryValue(v string, ownPool int64) (string, error) {
	pool, uuid, twoPart := strings.Cut(v, "/")
	if !twoPart {
		return v, nil
	}
	id, err := strconv.ParseInt(pool, 16, 64)
	switch {
	case err != nil || len(pool) != 16:
		return "", fmt.Errorf("malformed value %q", v)
	case id != ownPool:
		return "", fmt.Errorf("%w (pool ID %d, entry %s)", ErrOtherPool, id, uuid)
	}
	return uuid, nil
}

// Lookup implements Journal. An entry object without its name or image
// returns ErrDangling.
func (j *CephCSI) Lookup(ctx context.Context, kind Kind, uuid string) (*Record, error) {
	k := cephCSIKinds[kind]
	oid := k.entry + uuid
	vals, err := j.readKeys(ctx, oid, k.nameKey, cephCSIImageKey, cephCSIImageIDKey, cephCSIOwnerKey, cephCSISourceKey,
		cephCSIFSSnapOwnerKey)
	if err != nil {
		return nil, err
	}
	if vals == nil {
		return nil, ErrNotFound
	}
	rec := &Record{Kind: kind, UUID: uuid, Name: vals[k.nameKey], Backing: vals[cephCSIImageKey],
		BackingID: vals[cephCSIImageIDKey], Owner: cmp.Or(vals[cephCSIOwnerKey], vals[cephCSIFSSnapOwnerKey]),
		Origin: OriginCephCSI}
	if kind == Snapshot {
		rec.SnapName, rec.SourceBacking = rec.Backing, vals[cephCSISourceKey]
	}
	if rec.Name == "" || rec.Backing == "" {
		return rec, ErrDangling
	}
	return rec, nil
}

// readKeys reads string values of omap keys of oid in one op; a missing
// object returns nil.
func (j *CephCSI) readKeys(ctx context.Context, oid string, keys ...string) (map[string]string, error) {
	vals, found, err := readOmapKeys(ctx, j.ioctx, oid, keys)
	if err != nil || !found {
		return nil, err
	}
	out := make(map[string]string, len(vals))
	for k, v := range vals {
		out[k] = string(v)
	}
	return out, nil
}

// Reserve implements Journal: it refuses, Pelagic keeps its own.
func (j *CephCSI) Reserve(context.Context, *Record) error { return errReadOnly }

// Repair implements Journal: it refuses, Pelagic keeps its own.
func (j *CephCSI) Repair(context.Context, *Record) error { return errReadOnly }

// Remove implements Journal: the directory key first, then the entry
// object, so that a retry after a crash in between still finds the entry by
// its UUID (a DeleteVolume retry has nothing else). The key goes only while
// it still points to rec's UUID. Missing pieces are no error.
func (j *CephCSI) Remove(ctx context.Context, rec *Record) error {
	k := cephCSIKinds[rec.Kind]
	dir := k.directory + j.instance
	if rec.Name != "" {
		vals, err := j.readKeys(ctx, dir, k.entry+rec.Name)
		if err != nil {
			return err
		}
		if raw, ok := vals[k.entry+rec.Name]; ok {
			if uuid, err := parseCephCSIDirectoryValue(raw, j.poolID); err == nil && uuid == rec.UUID {
				err := util.Run(ctx, "removing from "+dir, func() error {
					return j.ioctx.RmOmapKeys(dir, []string{k.entry + rec.Name})
				})
				if err != nil && !errors.Is(err, rados.ErrNotFound) {
					return err
				}
			}
		}
	}
	oid := k.entry + rec.UUID
	err := util.Run(ctx, "removing "+oid, func() error { return j.ioctx.Delete(oid) })
	if err != nil && !errors.Is(err, rados.ErrNotFound) {
		return err
	}
	return nil
}

// List implements Journal. The directory is ordered by request name, so
// each call reads all of it (a few hundred bytes per entry) and then the
// entries of the page; entries of other pools and dangling ones are left out.
func (j *CephCSI) List(ctx context.Context, kind Kind, startAfter string, max int) ([]*Record, error) {
	k := cephCSIKinds[kind]
	dir := k.directory + j.instance
	vals, err := util.Do(ctx, "listing "+dir, func() (map[string][]byte, error) {
		return j.ioctx.GetAllOmapValues(dir, "", k.entry, 1000)
	})
	if errors.Is(err, rados.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	uuids := make([]string, 0, len(vals))
	for _, v := range vals {
		if uuid, err := parseCephCSIDirectoryValue(string(v), j.poolID); err == nil && uuid > startAfter {
			uuids = append(uuids, uuid)
		}
	}
	sort.Strings(uuids)
	var out []*Record
	for _, uuid := range uuids {
		if max > 0 && len(out) == max {
			break
		}
		rec, err := j.Lookup(ctx, kind, uuid)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, rec)
	}
	return out, nil
}
