// Package journal keeps a driver's crash-safe record of what it created:
// CSI request name -> UUID reservations and UUID -> record, in RADOS omap.
// Records say nothing of the driver: what backs a volume is an RBD image
// or a CephFS subvolume.
//
// Two objects hold an entry, both in one pool (and RADOS namespace): the
// RBD image's, or the filesystem's metadata pool. Their names begin with a
// prefix the driver chooses ("pelagic" for RBD, whose volumes' journals
// have always been there):
//
//   - "<prefix>.<kind>.name.<name>": created exclusively, so exactly one
//     caller in the whole cluster wins a name; its omap holds the record.
//   - "<prefix>.<kind>s": a directory whose omap maps UUID -> record, for
//     lookups by ID and paginated listing.
//
// Each write is a single RADOS operation; a reservation costs two.
package journal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Kind tells volumes from snapshots.
type Kind string

// Kinds of entries.
const (
	Volume   Kind = "volume"
	Snapshot Kind = "snapshot"
)

// ErrNotFound is returned for an entry that does not exist.
var ErrNotFound = errors.New("journal entry not found")

// ErrNameTaken is returned by Reserve when another caller holds the name.
var ErrNameTaken = errors.New("name already reserved")

// Record is one journal entry. Its JSON names are the ones the first
// records were written with, RBD's: "image" is any backing.
type Record struct {
	Kind Kind   `json:"kind"`
	Name string `json:"name"` // CSI request name
	UUID string `json:"uuid"` // the ID's UUID part
	// Backing names what holds the data in Ceph: an RBD image or a CephFS
	// subvolume; for a snapshot, what holds the snapshot SnapName (the
	// source's image for Pelagic's, the image ceph-csi cloned for one of
	// its own). BackingID is its ID where Ceph has one (an RBD image ID, to
	// reach a trashed image).
	Backing   string            `json:"image"`
	BackingID string            `json:"imageID,omitempty"`
	SizeBytes int64             `json:"size"`
	Params    map[string]string `json:"params,omitempty"` // creation parameters, secrets excluded
	Source    string            `json:"source,omitempty"` // content source ID, or source volume ID of a snapshot
	SnapName  string            `json:"snap,omitempty"`   // the snapshot's name in Ceph (snapshots)
	Created   time.Time         `json:"created"`

	// What only records read from ceph-csi's journal carry; Pelagic never
	// stores them. Origin is OriginCephCSI there, "" for Pelagic's own.
	Origin string `json:"-"`
	// Owner is the PVC namespace ceph-csi recorded (Pelagic records its
	// owners in the backing's metadata instead).
	Owner string `json:"-"`
	// SourceBacking is what a snapshot ceph-csi recorded was taken of: the
	// source volume's image (Source, a volume ID, is derived from it).
	SourceBacking string `json:"-"`
}

// FromCephCSI reports whether the record was read from ceph-csi's journal:
// the volume or snapshot was provisioned by ceph-csi.
func (r *Record) FromCephCSI() bool { return r.Origin == OriginCephCSI }

// Journal stores records for one pool and namespace. Rados is the real
// one, Memory the one unit tests use.
type Journal interface {
	// LookupName returns the record reserved under name, or ErrNotFound.
	LookupName(ctx context.Context, kind Kind, name string) (*Record, error)
	// Lookup returns the record with uuid, or ErrNotFound.
	Lookup(ctx context.Context, kind Kind, uuid string) (*Record, error)
	// Reserve claims rec.Name for rec; ErrNameTaken if someone holds it.
	Reserve(ctx context.Context, rec *Record) error
	// Repair rewrites rec's directory entry after a crash lost it.
	Repair(ctx context.Context, rec *Record) error
	// Remove deletes both objects' entries; a missing entry is not an error.
	Remove(ctx context.Context, rec *Record) error
	// List returns up to max records with UUIDs after startAfter, in UUID order.
	List(ctx context.Context, kind Kind, startAfter string, max int) ([]*Record, error)
}

// Object names.
func nameObject(prefix string, kind Kind, name string) string {
	return fmt.Sprintf("%s.%s.name.%s", prefix, kind, name)
}
func directoryObject(prefix string, kind Kind) string { return fmt.Sprintf("%s.%ss", prefix, kind) }

// DirectoryObjects names the directory objects of the journal with
// prefix: a pool and namespace holds such a journal when it holds one.
func DirectoryObjects(prefix string) []string {
	return []string{directoryObject(prefix, Volume), directoryObject(prefix, Snapshot)}
}

// ForEach calls fn for every record of kind in j, in UUID order, reading
// pageSize records per List call so a large journal is never read at once.
func ForEach(ctx context.Context, j Journal, kind Kind, pageSize int, fn func(*Record)) error {
	after := ""
	for {
		recs, err := j.List(ctx, kind, after, pageSize)
		if err != nil {
			return err
		}
		for _, r := range recs {
			fn(r)
		}
		if len(recs) < pageSize {
			return nil
		}
		after = recs[len(recs)-1].UUID
	}
}

const recordKey = "record"

func encode(rec *Record) ([]byte, error) { return json.Marshal(rec) }

func decode(b []byte) (*Record, error) {
	var rec Record
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("corrupt journal record: %w", err)
	}
	return &rec, nil
}
