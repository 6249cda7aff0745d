package volume

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

// Resolve parses a volume or snapshot ID and reads its record from the
// journal open finds for the ID's cluster and location (a pool ID for RBD).
// An ID that cannot name anything, whose cluster or pool does not exist
// (open returns ceph.ErrUnknownCluster or ceph.ErrPoolNotFound), or whose
// record is gone, is NotFound; other errors become statuses.
func Resolve[J journal.Journal](ctx context.Context, kind journal.Kind, id string,
	open func(context.Context, volumeid.ID) (J, error)) (vid volumeid.ID, j J, rec *journal.Record, err error) {
	notFound := func(err error) error { return status.Errorf(codes.NotFound, "%s %q does not exist: %v", kind, id, err) }
	if vid, err = volumeid.Parse(id); err != nil {
		return vid, j, nil, notFound(err)
	}
	j, err = open(ctx, vid)
	if errors.Is(err, ceph.ErrUnknownCluster) || errors.Is(err, ceph.ErrPoolNotFound) {
		return vid, j, nil, notFound(err)
	}
	if err != nil {
		return vid, j, nil, Status(err)
	}
	rec, err = j.Lookup(ctx, kind, vid.UUID)
	if errors.Is(err, journal.ErrNotFound) {
		return vid, j, nil, status.Errorf(codes.NotFound, "%s %q does not exist", kind, id)
	}
	return vid, j, rec, Status(err)
}

// Request is what a CreateVolume asks of the journal.
type Request struct {
	Name   string            // the CSI request name
	Params map[string]string // the parameters that define the volume
	Source string            // the content source, "" for none
	Size   int64             // the size it needs
	Limit  int64             // the size it may not pass; 0 for none
	// BackingPrefix begins the name of the new backing, which ends with
	// the volume's UUID.
	BackingPrefix string
}

// Reserve returns the record of req's name: the existing one when it
// describes the same volume (its directory entry repaired, should a crash
// have lost it), AlreadyExists when it describes another, and otherwise a
// fresh reservation (reserved). Only a caller that reserved may take the
// reservation back: another may be creating the backing of one it found.
// A name is reserved first and looked up only when it is taken: a retry is
// rarer than a new name.
func Reserve(ctx context.Context, j journal.Journal, req Request) (rec *journal.Record, reserved bool, err error) {
	uuid := NewUUID()
	rec = &journal.Record{Kind: journal.Volume, Name: req.Name, UUID: uuid, Backing: req.BackingPrefix + uuid,
		SizeBytes: req.Size, Params: req.Params, Source: req.Source, Created: time.Now().UTC()}
	if rec, reserved, err = ReserveName(ctx, j, rec); err != nil || reserved {
		return rec, reserved, err
	}
	return rec, false, reuse(ctx, j, rec, req)
}

// ReserveName reserves rec's name for rec (reserved), or returns the
// record that holds the name already; which is the caller's to check.
// Reserving first and looking up only a taken name costs a new name, the
// common case, no read.
func ReserveName(ctx context.Context, j journal.Journal, rec *journal.Record) (held *journal.Record, reserved bool, err error) {
	err = j.Reserve(ctx, rec)
	if err == nil {
		return rec, true, nil
	}
	if !errors.Is(err, journal.ErrNameTaken) {
		return nil, false, Status(err)
	}
	held, err = j.LookupName(ctx, rec.Kind, rec.Name)
	if errors.Is(err, journal.ErrNotFound) {
		// Taken, then gone again: another call's undone reservation.
		return nil, false, status.Errorf(codes.Aborted, "%s %q: another request reserved its name and gave it up; retry", rec.Kind, rec.Name)
	}
	if err != nil {
		return nil, false, Status(err)
	}
	return held, false, nil
}

// reuse checks that an existing reservation is the volume req asks for.
// Of a volume ceph-csi provisioned only the size can be: its journal
// records neither parameters nor content source.
func reuse(ctx context.Context, j journal.Journal, rec *journal.Record, req Request) error {
	if !rec.FromCephCSI() && (!maps.Equal(rec.Params, req.Params) || rec.Source != req.Source) {
		return status.Errorf(codes.AlreadyExists, "volume %q already exists with other parameters or content source", req.Name)
	}
	if rec.SizeBytes < req.Size || (req.Limit > 0 && rec.SizeBytes > req.Limit) {
		return status.Errorf(codes.AlreadyExists,
			"volume %q already exists with size %d bytes; this request asks for %d", req.Name, rec.SizeBytes, req.Size)
	}
	// A crash may have lost the directory entry; rewriting it is cheap
	// next to a retry, and makes the volume resolvable by ID. ceph-csi's
	// entries are never rewritten.
	if rec.FromCephCSI() {
		return nil
	}
	if _, err := j.Lookup(ctx, journal.Volume, rec.UUID); errors.Is(err, journal.ErrNotFound) {
		return Status(j.Repair(ctx, rec))
	}
	return nil
}

// NewUUID returns a random (version 4) UUID, the part of an ID a journal
// entry is found by.
func NewUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
