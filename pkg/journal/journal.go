// Package journal keeps the driver's crash-safe record of what it created:
// CSI request name -> UUID reservations and UUID -> record, in RADOS omap.
//
// Two objects hold an entry, both in the pool (and RADOS namespace) of the
// image they describe:
//
//   - "pelagic.<kind>.name.<name>": created exclusively, so exactly one
//     caller in the whole cluster wins a name; its omap holds the record.
//   - "pelagic.<kind>s": a directory whose omap maps UUID -> record, for
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

// Record is one journal entry.
type Record struct {
	Kind      Kind              `json:"kind"`
	Name      string            `json:"name"`              // CSI request name
	UUID      string            `json:"uuid"`              // the ID's UUID part
	Image     string            `json:"image"`             // RBD image name (of the source image, for a snapshot)
	ImageID   string            `json:"imageID,omitempty"` // RBD image ID, to reach a trashed source image
	SizeBytes int64             `json:"size"`
	Params    map[string]string `json:"params,omitempty"` // creation parameters, secrets excluded
	Source    string            `json:"source,omitempty"` // content source ID, or source volume ID of a snapshot
	SnapName  string            `json:"snap,omitempty"`   // RBD snapshot name (snapshots)
	Created   time.Time         `json:"created"`
}

// Journal stores records for one pool and namespace.
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
func nameObject(kind Kind, name string) string { return fmt.Sprintf("pelagic.%s.name.%s", kind, name) }
func directoryObject(kind Kind) string         { return fmt.Sprintf("pelagic.%ss", kind) }

// DirectoryObjects names the directory objects of a journal: a pool and
// namespace holds a journal when it holds one of them.
func DirectoryObjects() []string { return []string{directoryObject(Volume), directoryObject(Snapshot)} }

const recordKey = "record"

func encode(rec *Record) ([]byte, error) { return json.Marshal(rec) }

func decode(b []byte) (*Record, error) {
	var rec Record
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("corrupt journal record: %w", err)
	}
	return &rec, nil
}
